"""The daemon's loopback HTTP API (SPEC §8): a client like the CLI, nothing more.

``POST /api/executions/{id}/signal`` writes a signal row; ``GET /api/executions/{id}``
reads one execution. Every request needs ``Authorization: Bearer <token>``; the
token lives in ``<db>.token`` beside the database, readable only by its owner. The
server runs in a thread of the daemon but shares nothing with the supervisor: it
opens its own connection per request, so a slow client cannot slow the engine.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fm_local import signals as sigs
from fm_local.api import execution_record
from fm_local.model import Workflow
from fm_local.store import Store

MAX_BODY = 1024 * 1024
TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")
_SIGNAL = re.compile(r"^/api/executions/([A-Za-z0-9_-]+)/signal/?$")
_EXECUTION = re.compile(r"^/api/executions/([A-Za-z0-9_-]+)/?$")


def token_path(db: Path) -> Path:
    return db.with_name(db.name + ".token")


def ensure_token(db: Path) -> str:
    """The API token, created (mode 0600) on first use."""
    path = token_path(db)
    try:
        text = path.read_text().strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    os.chmod(path, 0o600)
    return token


def execution_json(store: Store, row: dict[str, Any]) -> dict[str, Any]:
    return {**execution_record(row), "nodeCounts": store.node_counts(row["id"])}


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # the daemon's stderr is for the daemon

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.server.token.encode()
        ):
            self._reply(401, {"error": "missing or wrong bearer token (see: fm token)"})
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if not self._authorized():
            return
        m = _EXECUTION.match(self.path.split("?")[0])
        if not m:
            self._reply(404, {"error": f"no route {self.path}"})
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

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if not self._authorized():
            return
        m = _SIGNAL.match(self.path.split("?")[0])
        if not m:
            self._reply(404, {"error": f"no route {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._reply(400, {"error": "bad Content-Length"})
            return
        if length > MAX_BODY:
            self._reply(413, {"error": f"body over {MAX_BODY} bytes"})
            return
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            self._reply(400, {"error": f"body is not JSON: {exc}"})
            return
        problem = _body_problem(body)
        if problem:
            self._reply(400, {"error": problem})
            return
        self._signal(m.group(1), body)

    def _signal(self, eid: str, body: dict[str, Any]) -> None:
        store = Store(self.server.db, create=False)
        try:
            row = store.get_execution(eid)
            if row is None:
                self._reply(404, {"error": f"no execution '{eid}'"})
                return
            if row["status"] in TERMINAL:
                self._reply(409, {"error": f"execution {eid} is already {row['status']}"})
                return
            wrow = store.get_workflow(row["workflow_id"])
            assert wrow is not None
            why = sigs.refusal(Workflow.model_validate(json.loads(wrow["document"])), body["type"])
            if why is not None:
                self._reply(400, {"error": why})
                return
            sid = store.add_signal(eid, body["type"], body.get("reason"), body.get("data"))
            deadline = time.monotonic() + 2.0
            sig = store.get_signal(sid)
            while sig is not None and sig["status"] == "pending" and time.monotonic() < deadline:
                time.sleep(0.02)
                sig = store.get_signal(sid)
            assert sig is not None
            result = {
                "id": sid,
                "execution": eid,
                "type": body["type"],
                "status": sig["status"],
                "outcome": sig["outcome"],
            }
            code = {"applied": 200, "refused": 409}.get(sig["status"], 202)
            self._reply(code, result)
        finally:
            store.close()


def _body_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return 'body must be a JSON object {"type", "reason"?, "data"?}'
    unknown = set(body) - {"type", "reason", "data"}
    if unknown:
        return f"unknown key(s) {sorted(unknown)}; allowed: type, reason, data"
    if not isinstance(body.get("type"), str) or not body["type"]:
        return "'type' is required and must be a non-empty string"
    if body.get("reason") is not None and not isinstance(body["reason"], str):
        return "'reason' must be a string"
    return None


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, db: Path, token: str) -> None:
        self.db = db
        self.token = token
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)


def start(db: Path, bind: str) -> ApiServer:
    """Start serving in a background thread; ``bind`` is ``HOST:PORT``."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    server = ApiServer(host, int(port), db, ensure_token(db))
    threading.Thread(target=server.serve_forever, name="fm-http", daemon=True).start()
    return server
