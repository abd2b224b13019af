"""The ``http`` node: one request; output ``{status, headers, body}``.

The request is made with aiohttp on the worker's I/O event loop (many at once per
worker; benchmarks/http_clients.py measured it against httpx's async client).
Header names in the output are lower case; a header sent twice is joined with ", ".

429 -> RATE_LIMIT (Retry-After is kept as ``details.retryAfterMs``, the least retry
delay), 5xx -> SERVER_ERROR, other 4xx -> CLIENT_ERROR, no connection -> NETWORK,
a url that is not http(s) -> VALIDATION_ERROR (not retried). None of them carries a
traceback: the message says what happened.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import json
import os
import time
import urllib.parse
from typing import Any

from fm_local import errors

# One client session per event loop (a worker's I/O loop lives as long as the worker):
# connections are pooled per host and kept alive between calls.
_sessions: dict[int, Any] = {}

# The log capture of the call this asyncio task makes (each task has its own context).
_call: contextvars.ContextVar[Any] = contextvars.ContextVar("fm_http_call", default=None)
_request_class: Any = None


def _session() -> Any:
    import aiohttp

    loop = asyncio.get_running_loop()
    session = _sessions.get(id(loop))
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        # Proxies (and .netrc) from the environment when it names a proxy: reading
        # them costs aiohttp two thread hops per request, so not otherwise.
        session = aiohttp.ClientSession(
            connector=connector, trust_env=_proxy_in_env(), request_class=_request_type()
        )
        _sessions[id(loop)] = session
    return session


def _request_type() -> Any:
    """aiohttp's request, noting when it is sent: its connection made, its headers
    about to be written. That is the start rate limits count, the closest to the
    request's arrival at the server (a new connection, a TLS handshake or a wait for
    the pool come before it). An aiohttp trace would tell the same, at about a fifth
    of a call's CPU (measured: 10,000 calls, 1,000 in flight)."""
    global _request_class
    if _request_class is None:
        import aiohttp

        class Request(aiohttp.ClientRequest):
            async def send(self, conn: Any) -> Any:
                cap = _call.get()
                if cap is not None:
                    cap.started = time.time()
                    _call.set(None)  # a redirect's next request is the same call
                return await super().send(conn)

        _request_class = Request
    return _request_class


def _proxy_in_env() -> bool:
    names = ("http_proxy", "https_proxy", "all_proxy")
    return any(os.environ.get(n) or os.environ.get(n.upper()) for n in names)


async def close_sessions() -> None:
    for session in list(_sessions.values()):
        await session.close()
    _sessions.clear()


def _retry_after_ms(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return max(0, int(float(value) * 1000))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(value)
        return max(0, int((dt.timestamp() - time.time()) * 1000))
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)


def run(task: dict[str, Any], cap: Any) -> Any:
    """In a process worker (or the inline executor): the same request, on an event
    loop of its own."""

    async def once() -> Any:
        try:
            return await run_async(task, cap)
        finally:
            await close_sessions()

    return asyncio.run(once())


async def run_async(task: dict[str, Any], cap: Any) -> Any:
    import aiohttp

    spec = task["spec"]
    method = str(spec.get("method") or "GET").upper()
    url = str(spec["url"])
    timeout_ms = spec.get("timeout")
    kwargs: dict[str, Any] = {
        "timeout": aiohttp.ClientTimeout(total=(timeout_ms / 1000.0) if timeout_ms else 30.0),
    }
    if spec.get("headers"):
        kwargs["headers"] = {k: str(v) for k, v in spec["headers"].items()}
    if spec.get("query"):
        # The url's own query string is kept; ``query`` adds to it.
        split = urllib.parse.urlsplit(url)
        params = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
        for k, v in spec["query"].items():
            for item in v if isinstance(v, list) else [v]:
                params.append((str(k), _text(item)))
        url = urllib.parse.urlunsplit(split._replace(query=""))
        kwargs["params"] = params
    if spec.get("json") is not None:
        kwargs["json"] = spec["json"]
    elif spec.get("body") is not None:
        raw = spec["body"]
        kwargs["data"] = raw if isinstance(raw, (str, bytes)) else str(raw)
    # One log line per call, written when it ended: "GET url -> 200 (12 bytes)".
    # Logs and errors name the url without its query string (it may hold a key).
    shown = url
    if "?" in shown:
        shown = urllib.parse.urlunsplit(urllib.parse.urlsplit(shown)._replace(query=""))
    try:
        session = _session()
        cap.started = time.time()
        _call.set(cap)
        async with session.request(method, url, **kwargs) as resp:
            content = await resp.read()
            status = resp.status
            headers = {k.lower(): ", ".join(resp.headers.getall(k)) for k in resp.headers}
            charset = resp.charset or "utf-8"
    except TimeoutError as exc:
        cap.add("log", f"{method} {shown} -> timed out")
        raise errors.NodeError(f"{method} {shown}: timed out", errors.TIMEOUT) from exc
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        # Not a network failure: the same url fails the same way, so not retried.
        cap.add("log", f"{method} {shown} -> {type(exc).__name__}")
        raise errors.NodeError(
            f"{method} {shown}: not an http(s) url ({type(exc).__name__})",
            errors.VALIDATION_ERROR,
        ) from exc
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        cap.add("log", f"{method} {shown} -> {type(exc).__name__}")
        raise errors.NodeError(
            f"{method} {shown}: {type(exc).__name__}: {exc}", errors.NETWORK
        ) from exc
    try:
        text = content.decode(charset, errors="replace")
    except LookupError:
        text = content.decode("utf-8", errors="replace")
    body: Any = text
    if "json" in headers.get("content-type", ""):
        try:
            body = json.loads(text)
        except ValueError:
            body = text
    cap.add("log", f"{method} {shown} -> {status} ({len(content)} bytes)")
    out = {"status": status, "headers": headers, "body": body}
    if status >= 400:
        details: dict[str, Any] = {"status": status, "body": body}
        if status == 429:
            code = errors.RATE_LIMIT
            ra = _retry_after_ms(headers.get("retry-after"))
            if ra is not None:
                details["retryAfterMs"] = ra
        elif status >= 500:
            code = errors.SERVER_ERROR
        else:
            code = errors.CLIENT_ERROR
        raise errors.NodeError(f"{method} {shown}: HTTP {status}", code, details)
    return out
