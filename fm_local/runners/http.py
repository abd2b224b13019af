"""The ``http`` node: one request; output ``{status, headers, body}``.

429 -> RATE_LIMIT (Retry-After is kept as ``details.retryAfterMs``, the least retry
delay), 5xx -> SERVER_ERROR, other 4xx -> CLIENT_ERROR, no connection -> NETWORK.
"""

from __future__ import annotations

import email.utils
import json
import time
import urllib.parse
from typing import Any

from fm_local import errors

_client: Any = None


def _get_client() -> Any:
    global _client
    if _client is None:
        import httpx

        _client = httpx.Client(follow_redirects=True)
    return _client


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
    import httpx

    spec = task["spec"]
    method = str(spec.get("method") or "GET").upper()
    url = str(spec["url"])
    timeout_ms = spec.get("timeout")
    # The url's own query string is kept; ``query`` adds to it (httpx's ``params``
    # would replace it).
    split = urllib.parse.urlsplit(url)
    params: list[tuple[str, str]] = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
    for k, v in (spec.get("query") or {}).items():
        for item in v if isinstance(v, list) else [v]:
            params.append((str(k), _text(item)))
    url = urllib.parse.urlunsplit(split._replace(query=""))
    kwargs: dict[str, Any] = {
        "headers": {k: str(v) for k, v in (spec.get("headers") or {}).items()},
        "params": params,
        "timeout": (timeout_ms / 1000.0) if timeout_ms else 30.0,
    }
    if spec.get("json") is not None:
        kwargs["json"] = spec["json"]
    elif spec.get("body") is not None:
        raw = spec["body"]
        kwargs["content"] = raw if isinstance(raw, (str, bytes)) else str(raw)
    cap.add("log", f"{method} {url}")
    try:
        client = _get_client()
        cap.started = time.time()
        resp = client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise errors.NodeError(f"{method} {url}: timed out ({exc})", errors.TIMEOUT) from exc
    except (httpx.ConnectError, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        raise errors.NodeError(
            f"{method} {url}: {type(exc).__name__}: {exc}", errors.NETWORK
        ) from exc
    except httpx.HTTPError as exc:
        raise errors.NodeError(
            f"{method} {url}: {type(exc).__name__}: {exc}", errors.NETWORK
        ) from exc
    body: Any
    ctype = resp.headers.get("content-type", "")
    if "json" in ctype:
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
    else:
        body = resp.text
    cap.add("log", f"-> {resp.status_code} ({len(resp.content)} bytes)")
    out = {"status": resp.status_code, "headers": dict(resp.headers), "body": body}
    if resp.status_code >= 400:
        details: dict[str, Any] = {"status": resp.status_code, "body": body}
        if resp.status_code == 429:
            code = errors.RATE_LIMIT
            ra = _retry_after_ms(resp.headers.get("retry-after"))
            if ra is not None:
                details["retryAfterMs"] = ra
        elif resp.status_code >= 500:
            code = errors.SERVER_ERROR
        else:
            code = errors.CLIENT_ERROR
        raise errors.NodeError(f"{method} {url}: HTTP {resp.status_code}", code, details)
    return out
