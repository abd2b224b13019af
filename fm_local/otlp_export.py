"""The daemon's OpenTelemetry exporter (``fm daemon --otlp-endpoint URL``): when an
execution ends, its spans (:mod:`fm_local.otlp`) are POSTed to an OTLP/HTTP
collector as JSON (``Content-Type: application/json``).

Invariant: the scheduling loop never waits for a collector. The supervisor only
puts the id of an execution whose end it has committed on a bounded queue (a
full queue drops it, with one log line); a thread of its own reads the rows with
its own read-only connection, builds the spans and posts them, retrying a failed
post with back-off a few times, one log line per failure, then dropping it. A
dead or slow collector costs the daemon nothing but that thread's time."""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger("fm_local.otlp")

DEFAULT_PATH = "/v1/traces"
TRIES = 4  # posts of one request before it is dropped
BACKOFF = 1.0  # seconds before the second try; doubled each time after
MAX_BACKOFF = 30.0
POST_TIMEOUT = 10.0  # seconds a collector may take to answer one post
QUEUE_SIZE = 1000  # ended executions waiting for export
MAX_SPANS = 2000  # spans per request: a big execution goes in several


def endpoint_url(text: str) -> str | None:
    """The URL to post to: ``text`` as it is when it names a path, else with
    ``/v1/traces`` appended (``http://host:4318`` → ``http://host:4318/v1/traces``,
    as OpenTelemetry SDKs treat a base endpoint). None: not an http(s) URL."""
    try:
        u = urllib.parse.urlsplit(text.strip())
        port_ok = u.port is None or 0 < u.port < 65536
    except ValueError:
        return None
    if u.scheme not in ("http", "https") or not u.hostname or not port_ok:
        return None
    if u.path in ("", "/"):
        u = u._replace(path=DEFAULT_PATH)
    return urllib.parse.urlunsplit(u)


class Retryable(Exception):
    """A post that may succeed later (no connection, a timeout, 429, 5xx)."""


class OtlpExporter:
    """Posts ended executions' spans to ``url`` from a thread of its own."""

    def __init__(
        self,
        db: str | Path,
        url: str,
        *,
        tries: int = TRIES,
        backoff: float = BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        timeout: float = POST_TIMEOUT,
        queue_size: int = QUEUE_SIZE,
        max_spans: int = MAX_SPANS,
    ) -> None:
        self.db = Path(db)
        self.url = url
        self.tries = max(1, tries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.max_spans = max(1, max_spans)
        self.queue: queue.Queue[str] = queue.Queue(maxsize=queue_size)
        self.host = socket.gethostname()
        self.sent = 0  # executions exported whole
        self.dropped = 0  # executions given up (queue full, collector down, refused)
        self._overflow_logged = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fm-otlp-export", daemon=True)
        self._store: Any = None

    def start(self) -> None:
        self._thread.start()

    def finished(self, execution_id: str) -> None:
        """The end of this execution is committed (called by the supervisor's loop:
        never blocks)."""
        try:
            self.queue.put_nowait(execution_id)
        except queue.Full:
            self.dropped += 1
            now = time.monotonic()
            if now - self._overflow_logged > 10.0:  # one line per 10 s, not per execution
                self._overflow_logged = now
                log.warning(
                    "OTLP export: %d ended executions wait for %s already; execution %s "
                    "is not exported (the collector is down or slow)",
                    self.queue.qsize(),
                    self.url,
                    execution_id,
                )

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued for up to ``timeout`` seconds, then stop; what is
        left is dropped, in one log line."""
        deadline = time.monotonic() + timeout
        while not self.queue.empty() and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        left = self.queue.qsize()
        if left:
            self.dropped += left
            log.warning("OTLP export: stopping; %d ended executions not exported", left)

    # --- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    eid = self.queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                try:
                    self._export(eid)
                except Exception as exc:  # noqa: BLE001 - the exporter must not die
                    self.dropped += 1
                    log.warning("OTLP export of execution %s failed: %r; dropped", eid, exc)
        finally:
            if self._store is not None:
                self._store.close()

    def _export(self, eid: str) -> None:
        from fm_local.otlp import execution_spans, export_request
        from fm_local.store import Store

        if self._store is None:
            self._store = Store(self.db, readonly=True)
        store = self._store
        row = store.get_execution(eid)
        if row is None:
            return
        spans = execution_spans(row, store.node_runs(eid), store.attempts(eid), time.time())
        for i in range(0, len(spans), self.max_spans):
            body = json.dumps(export_request(row, spans[i : i + self.max_spans], self.host))
            if not self._post_with_retries(eid, body.encode()):
                self.dropped += 1
                return
        self.sent += 1

    def _post_with_retries(self, eid: str, body: bytes) -> bool:
        delay = self.backoff
        for attempt in range(1, self.tries + 1):
            try:
                self._post(body)
                return True
            except Retryable as exc:
                last = attempt == self.tries or self._stop.is_set()
                log.warning(
                    "OTLP export of execution %s to %s failed (try %d of %d): %s; %s",
                    eid,
                    self.url,
                    attempt,
                    self.tries,
                    exc,
                    "dropped" if last else f"again in {delay:g}s",
                )
                if last:
                    return False
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, self.max_backoff)
            except ValueError as exc:  # refused for good (400...): trying again will not help
                log.warning(
                    "OTLP export of execution %s to %s refused: %s; dropped", eid, self.url, exc
                )
                return False
        return False

    def _post(self, body: bytes) -> None:
        req = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                answer = resp.read(64 * 1024)
        except urllib.error.HTTPError as exc:
            text = f"HTTP {exc.code} {exc.reason}"
            if exc.code in (408, 429) or exc.code >= 500:
                raise Retryable(text) from None
            raise ValueError(text) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Retryable(str(reason) or type(exc).__name__) from None
        _partial_success(answer, self.url)


def _partial_success(answer: bytes, url: str) -> None:
    """A collector that took the request but refused some spans says so in
    ``partialSuccess`` (OTLP): say it in the log."""
    try:
        partial = json.loads(answer or b"{}").get("partialSuccess") or {}
    except (ValueError, AttributeError):
        return
    rejected = partial.get("rejectedSpans") if isinstance(partial, dict) else None
    if rejected and str(rejected) != "0":
        log.warning(
            "OTLP export: %s rejected %s spans: %s", url, rejected, partial.get("errorMessage")
        )
