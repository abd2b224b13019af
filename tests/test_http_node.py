"""The ``http`` node against a real local HTTP server (SPEC §3, §6).

The server runs in a thread of the test process on 127.0.0.1 (port 0); every
request it receives is recorded, so the tests count real hits and their times.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import query, run_wf, show

SLOW_ROUTE_SECONDS = 10  # /slow answers this long after the request arrived


class Server:
    def __init__(self) -> None:
        self.hits: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep pytest output quiet
                pass

            def _handle(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with server.lock:
                    server.hits.append({"path": split.path, "t": time.time()})
                route = split.path
                if route == "/json":
                    try:
                        parsed: Any = json.loads(raw) if raw else None
                    except ValueError:
                        parsed = raw.decode()
                    payload = {
                        "method": self.command,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "query": {k: v for k, v in parse_qs(split.query).items()},
                        "body": parsed,
                    }
                    self._send(200, json.dumps(payload).encode(), "application/json")
                elif route == "/text":
                    self._send(200, b"hello, plain text", "text/plain; charset=utf-8")
                elif route == "/missing":
                    self._send(404, b'{"error": "not here"}', "application/json")
                elif route == "/boom":
                    self._send(500, b"internal trouble", "text/plain")
                elif route == "/limited":
                    self._send(429, b"slow down", "text/plain", {"Retry-After": "1"})
                elif route == "/slow":
                    time.sleep(SLOW_ROUTE_SECONDS)
                    self._send(200, b"late", "text/plain")
                else:
                    self._send(404, b"no route", "text/plain")

            def _send(
                self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
            ) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("X-Test-Server", "fm")
                    for k, v in (extra or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the timeout test)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.port}{route}"

    def count(self, route: str) -> int:
        with self.lock:
            return sum(1 for h in self.hits if h["path"] == route)

    def times(self, route: str) -> list[float]:
        with self.lock:
            return [h["t"] for h in self.hits if h["path"] == route]


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def http(nid: str, url: str, **kw: Any) -> dict[str, Any]:
    node = {"id": nid, "type": "http", "url": url}
    node.update(kw)
    return node


def one_node(node: dict[str, Any], **doc: Any) -> dict[str, Any]:
    return {"name": f"http-{node['id']}", "nodes": [node], **doc}


def node_record(db, eid: str, path: str) -> dict[str, Any]:
    nodes = {n["path"]: n for n in show(db, eid)["nodes"]}
    return nodes[path]


def test_json_response_output_shape(wf, db, server):
    res = run_wf(wf(one_node(http("get", server.url("/json")))), db)
    assert res["status"] == "succeeded", res
    out = res["output"]["get"]
    assert set(out) == {"status", "headers", "body"}
    assert out["status"] == 200
    # The body is parsed JSON, not text.
    assert isinstance(out["body"], dict)
    assert out["body"]["method"] == "GET"
    assert out["body"]["body"] is None
    headers = {k.lower(): v for k, v in out["headers"].items()}
    assert headers["x-test-server"] == "fm"
    assert headers["content-type"] == "application/json"
    assert server.count("/json") == 1
    # One log line per call, written when it ended.
    logs = query(db, "SELECT line FROM logs WHERE execution_id=?", (res["id"],))
    assert len(logs) == 1
    assert re.fullmatch(
        rf"GET {re.escape(server.url('/json'))} -> 200 \(\d+ bytes\)", logs[0]["line"]
    )


def test_logs_and_errors_leave_out_the_query_string(wf, db, server):
    """A url's query string may carry a key: the log line and an error message name
    the url without it (the request itself carries it)."""
    res = run_wf(wf(one_node(http("q", server.url("/json?api_key=s3cret")))), db)
    assert res["status"] == "succeeded", res
    assert res["output"]["q"]["body"]["query"] == {"api_key": ["s3cret"]}
    res = run_wf(wf(one_node(http("nf", server.url("/missing?api_key=s3cret")))), db)
    assert res["status"] == "failed"
    assert "s3cret" not in json.dumps(res["error"])
    lines = [r["line"] for r in query(db, "SELECT line FROM logs")]
    assert len(lines) == 2 and not any("s3cret" in line for line in lines), lines
    assert lines[0].startswith(f"GET {server.url('/json')} -> 200 (")


def test_text_response_body_is_text(wf, db, server):
    res = run_wf(wf(one_node(http("t", server.url("/text")))), db)
    assert res["status"] == "succeeded", res
    out = res["output"]["t"]
    assert out["status"] == 200
    assert out["body"] == "hello, plain text"


def test_method_query_headers_json_templated_from_input(wf, db, server):
    node = http(
        "post",
        server.url("/json"),
        method="POST",
        query={"user": "{{input.user}}", "page": "{{page}}"},
        headers={"X-Token": "tok-{{input.token}}", "X-Plain": "fixed"},
        json={"name": "{{input.user}}", "n": "{{page}}", "tags": "{{input.tags}}"},
    )
    p = wf(one_node(node))
    res = run_wf(p, db, input={"user": "ada", "page": 3, "token": "s3cret", "tags": ["a", "b"]})
    assert res["status"] == "succeeded", res
    echoed = res["output"]["post"]["body"]
    assert echoed["method"] == "POST"
    assert echoed["query"] == {"user": ["ada"], "page": ["3"]}
    assert echoed["headers"]["x-token"] == "tok-s3cret"
    assert echoed["headers"]["x-plain"] == "fixed"
    assert echoed["headers"]["content-type"].startswith("application/json")
    # A whole-template string keeps the raw value (an int stays an int, a list a list).
    assert echoed["body"] == {"name": "ada", "n": 3, "tags": ["a", "b"]}


def test_url_templated_and_output_feeds_next_node(wf, db, server):
    doc = {
        "name": "http-chain",
        "nodes": [
            http("get", "http://127.0.0.1:{{input.port}}/json", query={"q": "x y"}),
            {"id": "pick", "type": "transform", "expression": "get.body.query.q[0] + '!'"},
        ],
        "edges": [{"source": "get", "target": "pick"}],
    }
    res = run_wf(wf(doc), db, input={"port": server.port})
    assert res["status"] == "succeeded", res
    assert res["output"] == {"pick": "x y!"}


def test_404_is_client_error_and_not_retried(wf, db, server):
    node = http("nf", server.url("/missing"), retry={"maxAttempts": 3, "initialDelay": 10})
    res = run_wf(wf(one_node(node)), db)
    assert res["status"] == "failed"
    assert res["error"]["code"] == "CLIENT_ERROR"
    assert server.count("/missing") == 1
    rec = node_record(db, res["id"], "nf")
    assert rec["status"] == "failed"
    assert rec["attempts"] == 1
    assert rec["error"]["code"] == "CLIENT_ERROR"
    assert "404" in rec["error"]["message"]


def test_500_retried_then_server_error(wf, db, server):
    node = http("b", server.url("/boom"), retry={"maxAttempts": 2, "initialDelay": 10})
    res = run_wf(wf(one_node(node)), db)
    assert res["status"] == "failed"
    assert server.count("/boom") == 2
    rec = node_record(db, res["id"], "b")
    assert rec["status"] == "failed"
    assert rec["attempts"] == 2
    assert rec["error"]["code"] == "SERVER_ERROR"
    assert res["error"]["code"] == "SERVER_ERROR"


def test_429_rate_limit_waits_for_retry_after(wf, db, server):
    node = http(
        "rl",
        server.url("/limited"),
        retry={"maxAttempts": 2, "initialDelay": 10, "backoff": "fixed"},
    )
    res = run_wf(wf(one_node(node)), db)
    assert res["status"] == "failed"
    rec = node_record(db, res["id"], "rl")
    assert rec["error"]["code"] == "RATE_LIMIT"
    assert rec["attempts"] == 2
    times = server.times("/limited")
    assert len(times) == 2
    # Retry-After: 1 is the least delay, although initialDelay is 10 ms.
    assert times[1] - times[0] >= 1.0, times


def test_connection_refused_is_network(wf, db, server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The socket is closed: nothing listens on that port now.
    node = http("down", f"http://127.0.0.1:{port}/x")
    res = run_wf(wf(one_node(node)), db)
    assert res["status"] == "failed"
    rec = node_record(db, res["id"], "down")
    assert rec["error"]["code"] == "NETWORK"
    assert res["error"]["code"] == "NETWORK"
    logs = query(db, "SELECT line FROM logs WHERE execution_id=?", (res["id"],))
    assert [r["line"] for r in logs] == [f"GET http://127.0.0.1:{port}/x -> ClientConnectorError"]


def test_a_url_that_is_not_http_fails_at_once_without_a_traceback(wf, db, server):
    """ftp://… or no url at all, known only at run time (fm validate refuses a
    literal one): VALIDATION_ERROR, not retried (a network error would be), and no
    traceback of the http client's internals."""
    for url in ("{{ 'ftp' }}://127.0.0.1/x", "{{ 'not a url' }}"):
        node = http("bad", url, retry={"maxAttempts": 3, "initialDelay": 10})
        res = run_wf(wf(one_node(node)), db)
        assert res["status"] == "failed"
        rec = node_record(db, res["id"], "bad")
        assert rec["error"]["code"] == "VALIDATION_ERROR", rec["error"]
        assert rec["attempts"] == 1
        assert "traceback" not in (rec["error"].get("details") or {}), rec["error"]
    # A network error has no traceback either; its message names the cause.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = run_wf(wf(one_node(http("down", f"http://127.0.0.1:{port}/x"))), db)
    rec = node_record(db, res["id"], "down")
    assert rec["error"]["code"] == "NETWORK"
    assert "traceback" not in (rec["error"].get("details") or {}), rec["error"]
    assert "ClientConnectorError" in rec["error"]["message"]


def test_node_timeout_on_slow_route(wf, db, server):
    # A worker opens its client session on its first request, which on a busy machine alone can
    # outlast a 500 ms timeout: a first request on the only worker warms it up, so
    # the slow request does reach the server within its timeout.
    doc = {
        "name": "http-slow",
        "nodes": [
            http("warm", server.url("/text")),
            http("slow", server.url("/slow"), timeout=500),
        ],
        "edges": [{"source": "warm", "target": "slow"}],
    }
    res = run_wf(wf(doc), db, workers=1)
    assert res["status"] == "failed"
    rec = node_record(db, res["id"], "slow")
    assert rec["status"] == "failed"
    assert rec["error"]["code"] == "TIMEOUT"
    assert server.count("/slow") == 1
    # Stopped at the timeout, not after the server's answer: the node's recorded end
    # comes before the moment the server would answer (whatever the machine's speed).
    assert rec["finishedAt"] < server.times("/slow")[0] + SLOW_ROUTE_SECONDS, rec
