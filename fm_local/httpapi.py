"""The daemon's loopback HTTP API (SPEC §8): a client like the CLI, nothing more.

``POST /api/executions/{id}/signal`` writes a signal row; ``GET /api/executions/{id}``
reads one execution. Every request needs ``Authorization: Bearer <token>``; the
token lives in ``<db>.token`` beside the database, readable only by its owner (a
token file open to group or others is refused). The server runs in a thread of the
daemon but shares nothing with the supervisor: it opens its own connection per
request, so a slow client cannot slow the engine.

Invariant: no client can exhaust or confuse the daemon through this API. At most
:data:`MAX_HANDLERS` requests are served at once (beyond that, 503 at once from the
accepting thread, which never blocks); every connection serves one request and is
cut after :data:`IDLE_TIMEOUT` seconds without a byte or :data:`REQUEST_TIMEOUT`
seconds in all; a body is read only up to its ``Content-Length`` (required, at most
:data:`MAX_BODY`); a body is refused (400, naming the JSON path) *before* anything
is written unless it is JSON the engine can carry: no NaN/Infinity, huge integers,
duplicate keys, deep nesting, lone surrogates, NUL or over-long ``type``/``reason``.
Every reply is one line of JSON; every error is ``{"error": "..."}``.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import os
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from fm_local.api import execution_record
from fm_local.apitoken import ensure_token, token_path  # noqa: F401 - token_path is part of this module's API
from fm_local.client import SignalRefused, send_signal
from fm_local.jsonio import JsonProblem, PathPart, format_path, strict_loads
from fm_local.store import Store


def _env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


MAX_BODY = 1024 * 1024
MAX_TYPE = 200  # characters of a signal's type
MAX_REASON = 10_000  # characters of a signal's reason
MAX_ERROR = 1000  # characters of an error message
MAX_HANDLERS = 32  # requests served at once, each by its own thread
# Waiting connections the kernel holds for us (capped by net.core.somaxconn): a
# burst of clients waits there instead of being dropped.
BACKLOG = 1024
# The longest a connection may stay silent (socket timeout), and the longest a client
# may take to send its whole request or read our reply.
IDLE_TIMEOUT = _env_seconds("FM_HTTP_IDLE_TIMEOUT", 10.0)
REQUEST_TIMEOUT = _env_seconds("FM_HTTP_REQUEST_TIMEOUT", 30.0)
# After replying, how long we read (and drop) what a client still sends before closing.
LINGER = 2.0
MAX_LINGERING = 256  # refused connections waiting for their client to close


_SIGNAL = re.compile(r"^/api/executions/([A-Za-z0-9_-]+)/signal/?$")
_EXECUTION = re.compile(r"^/api/executions/([A-Za-z0-9_-]+)/?$")
_DIGITS = re.compile(r"[0-9]+")


def execution_json(store: Store, row: dict[str, Any]) -> dict[str, Any]:
    return {**execution_record(row), "nodeCounts": store.node_counts(row["id"])}


def _json_reply(status: int, reason: str, body: dict[str, Any], extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + data


_BUSY = _json_reply(
    503,
    "Service Unavailable",
    {"error": f"the HTTP API is busy ({MAX_HANDLERS} requests in progress); try again shortly"},
    "Retry-After: 1\r\n",
)


class _DeadlineReader(io.RawIOBase):
    """A socket's input that gives up at a deadline: each read waits at most
    IDLE_TIMEOUT, and none starts after ``deadline``, so a client that sends one byte
    at a time (slow loris) holds a handler no longer than REQUEST_TIMEOUT."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"request not received within {REQUEST_TIMEOUT:g} s")
        self.sock.settimeout(min(IDLE_TIMEOUT, left))
        return self.sock.recv_into(buf)


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"
    # Not HTTP/0.9: every reply, even to a garbled request line, has a status line.
    default_request_version = "HTTP/1.0"
    timeout = IDLE_TIMEOUT  # socket timeout, set by StreamRequestHandler.setup

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket file; ours below enforces the deadline
        deadline = time.monotonic() + REQUEST_TIMEOUT
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # the daemon's stderr is for the daemon

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own refusals (bad request line, headers too large, unknown
        method) in our JSON form instead of its HTML page."""
        try:
            phrase = self.responses[code][0]
        except KeyError:
            phrase = "error"
        self._reply(code, {"error": message or phrase})

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        if status >= 400 and len(body["error"]) > MAX_ERROR:  # it may quote the client's input
            body = {"error": body["error"][: MAX_ERROR - 1] + "…"}
        data = json.dumps(body).encode()
        self.connection.settimeout(REQUEST_TIMEOUT)  # bounds the whole sendall
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")  # one request per connection
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _guarded(self, serve: Callable[[], None]) -> None:
        try:
            serve()
        except OSError:
            self.close_connection = True  # the client went away or stalled: nobody to tell
        except Exception as exc:  # noqa: BLE001 - a bug answers 500, it does not drop the connection
            self._reply(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.server.token.encode()
        ):
            self._reply(401, {"error": "missing or wrong bearer token (see: fm token)"})
            return False
        return True

    def _no_route(self) -> None:
        self._reply(404, {"error": f"no route {self.path[:200]}"})

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._guarded(self._post)

    def _get(self) -> None:
        if not self._authorized():
            return
        m = _EXECUTION.match(self.path.split("?")[0])
        if not m:
            self._no_route()
            return
        store = Store(self.server.db, create=False)
        try:
            row = store.get_execution(m.group(1))
            if row is None:
                self._reply(404, {"error": f"no execution '{m.group(1)}'"})
                return
            self._reply(200, execution_json(store, row))
        finally:
            store.close()

    def _post(self) -> None:
        if not self._authorized():
            return
        m = _SIGNAL.match(self.path.split("?")[0])
        if not m:
            self._no_route()
            return
        raw = self._read_body()
        if raw is None:
            return
        if not raw.strip():
            self._reply(400, {"error": 'empty body; expected a JSON object {"type", ...}'})
            return
        try:
            body = strict_loads(raw, root="body")
        except JsonProblem as exc:
            self._reply(400, {"error": _json_problem(exc)})
            return
        problem = _surrogate_problem(body) or _body_problem(body)
        if problem:
            self._reply(400, {"error": problem})
            return
        self._signal(m.group(1), body)

    def _read_body(self) -> bytes | None:
        """The request body, exactly ``Content-Length`` bytes; None once refused."""
        if "Transfer-Encoding" in self.headers:
            self._reply(411, {"error": "send the body with a Content-Length, not chunked"})
            return None
        values = [v.strip() for v in self.headers.get_all("Content-Length") or []]
        if not values:
            self._reply(411, {"error": "Content-Length is required (the body's size in bytes)"})
            return None
        if len(set(values)) > 1 or not _DIGITS.fullmatch(values[0]):
            shown = ", ".join(values)[:40]
            self._reply(400, {"error": f"bad Content-Length '{shown}': one integer >= 0 is needed"})
            return None
        length = int(values[0]) if len(values[0]) <= 12 else MAX_BODY + 1
        if length > MAX_BODY:
            self._reply(413, {"error": f"body of {length} bytes is over the limit of {MAX_BODY}"})
            return None
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            raw = b""
        if len(raw) < length:
            self._reply(
                400,
                {
                    "error": f"body shorter than its Content-Length of {length} bytes "
                    "(it ended or stalled before the rest arrived)"
                },
            )
            return None
        return raw

    def _signal(self, eid: str, body: dict[str, Any]) -> None:
        store = Store(self.server.db, create=False)
        try:
            try:
                sent = send_signal(
                    store,
                    eid,
                    body["type"],
                    body.get("reason"),
                    body.get("data"),
                    wait=2.0,
                    served=True,  # this daemon serves it
                )
            except SignalRefused as exc:
                code = {"missing": 404, "finished": 409}.get(exc.why, 400)
                self._reply(code, {"error": str(exc)})
                return
            code = {"applied": 200, "refused": 409}.get(sent.status, 202)
            self._reply(code, sent.as_json())
        finally:
            store.close()


def _json_problem(exc: JsonProblem) -> str:
    if exc.path:
        return str(exc)  # body.data.x: NaN is not valid JSON ...
    return "body is not JSON: " + exc.reason.removeprefix("not valid JSON: ")


def _is_text(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _surrogate_problem(value: Any) -> str | None:
    """Where the body holds a lone surrogate (``"\\ud800"``): valid JSON, but not text,
    and SQLite cannot store it."""
    stack: list[tuple[Any, list[PathPart]]] = [(value, [])]
    while stack:
        v, path = stack.pop()
        if isinstance(v, str) and not _is_text(v):
            return f"{format_path(path, 'body')}: a lone surrogate (e.g. \\ud800) is not text"
        if isinstance(v, dict):
            for k, item in reversed(list(v.items())):
                if not _is_text(k):
                    where = format_path(path, "body")
                    return (
                        f"{where}: a key holds a lone surrogate (e.g. \\ud800), which is not text"
                    )
                stack.append((item, [*path, k]))
        elif isinstance(v, list):
            stack.extend((v[i], [*path, i]) for i in range(len(v) - 1, -1, -1))
    return None


def _body_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return 'body must be a JSON object {"type", "reason"?, "data"?}'
    unknown = set(body) - {"type", "reason", "data"}
    if unknown:
        return f"unknown key(s) {sorted(unknown)[:5]}; allowed: type, reason, data"
    if not isinstance(body.get("type"), str) or not body["type"]:
        return "'type' is required and must be a non-empty string"
    if body.get("reason") is not None and not isinstance(body["reason"], str):
        return "'reason' must be a string"
    for key, limit in (("type", MAX_TYPE), ("reason", MAX_REASON)):
        text = body.get(key)
        if text is None:
            continue
        if "\x00" in text:
            return f"body.{key}: a NUL character (\\u0000) is not allowed"
        if len(text) > limit:
            return f"body.{key}: {len(text)} characters, over the limit of {limit}"
    if body["type"].startswith("__"):
        return f"body.type: '{body['type']}' is reserved for the engine itself"
    return None


def _close_politely(sock: socket.socket) -> None:
    """Half-close, then drop what the client still sends until it closes (LINGER at
    most): closing with unread input resets the connection, and a reset can destroy
    our reply before the client reads it."""
    deadline = time.monotonic() + LINGER
    try:
        sock.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                break
    except OSError:
        pass
    sock.close()


def _client_closed(sock: socket.socket) -> bool:
    """Drop what a non-blocking socket has received; True once the client has closed."""
    try:
        for _ in range(16):  # a client that keeps sending is closed by the deadline instead
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    return False


class ApiServer(HTTPServer):
    """One thread accepts; at most MAX_HANDLERS threads serve (see the module doc)."""

    request_queue_size = BACKLOG

    def __init__(self, host: str, port: int, db: Path, token: str) -> None:
        self.db = db
        self.token = token
        self._slots = threading.BoundedSemaphore(MAX_HANDLERS)
        # Refused connections, answered and half-closed, until their client closes.
        self._lingering: deque[tuple[float, socket.socket]] = deque()
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind also looks up the host's FQDN, which can wait on DNS.
        super(HTTPServer, self).server_bind()
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            threading.Thread(
                target=self._serve,
                args=(request, client_address),
                name="fm-http-request",
                daemon=True,
            ).start()
        except RuntimeError:  # no thread to be had
            self._slots.release()
            self._refuse(request)

    def _serve(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one connection's trouble is not the server's
            pass
        finally:
            _close_politely(request)
            self._slots.release()

    def _refuse(self, sock: socket.socket) -> None:
        """All handlers are busy: answer 503 from the accepting thread, never blocking."""
        try:
            sock.setblocking(False)
            _client_closed(sock)  # drop the request if it is already here
            sock.send(_BUSY)  # a few hundred bytes: an empty send buffer takes them at once
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self._lingering.append((time.monotonic() + LINGER, sock))
        if len(self._lingering) > MAX_LINGERING:
            self._lingering.popleft()[1].close()
        self.service_actions()

    def service_actions(self) -> None:
        """Close refused connections once their client has closed, or after LINGER
        (serve_forever calls this at least every half second)."""
        now = time.monotonic()
        keep: deque[tuple[float, socket.socket]] = deque()
        for deadline, sock in self._lingering:
            if deadline > now and not _client_closed(sock):
                keep.append((deadline, sock))
            else:
                sock.close()
        self._lingering = keep

    def server_close(self) -> None:
        super().server_close()
        while self._lingering:
            self._lingering.popleft()[1].close()


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def start(db: Path, bind: str) -> ApiServer:
    """Start serving in a background thread; ``bind`` is ``HOST:PORT``. Warns on
    stderr when the address is not a loopback one: the token travels in clear text."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    server = ApiServer(host, int(port), db, ensure_token(db))
    where = str(server.server_address[0])
    if not _is_loopback(where):
        print(
            f"fm daemon: warning: the HTTP API listens on {bind}, not a loopback address; "
            "its bearer token travels in clear text over HTTP to anyone on the network path",
            file=sys.stderr,
            flush=True,
        )
    threading.Thread(target=server.serve_forever, name="fm-http", daemon=True).start()
    return server
