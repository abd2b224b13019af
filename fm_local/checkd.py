"""The supervisor checks documents for the clients of its database.

Validating a workflow document needs the pydantic model and, for an execution's
input, jsonschema: ~0.12–0.3 s of imports (and of building pydantic's validator for
a document that is not plainly valid) in a fresh ``fm`` process, paid by every first ``fm submit`` of a new or edited file. A supervisor
serving the database has both warm. So it answers checks on an abstract Unix
socket named after the database (a thread beside its loop), and ``fm submit`` /
``fm run`` ask it first (:func:`ask`):

- ``{"kind": "workflow", "what": <name for messages>, "text": <the file's text>}``
  → ``{"ok": true, "name", "warnings", "maxQueued", "nodes"}`` or
  ``{"ok": false, "errors", "warnings"}``, the same lines local validation gives;
- ``{"kind": "input", "schema": <inputs>, "input": <value>}`` →
  ``{"problems": [...]}``.

Every answer carries the rules stamp of the code that checked
(:func:`fm_local.prepare.rules_stamp` at the service's start); a client whose
rules differ (fm_local was edited since the daemon started) checks locally. So do
clients when no supervisor listens, when the answer is late or malformed, when the
document is large (it would hold the supervisor's interpreter lock for long), and
on any other doubt: the service only saves time, it never decides alone. Both ends
check that the other runs as the same user (``SO_PEERCRED``); the daemon parses
and compiles every document again when it loads it, whatever was answered here.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from typing import Any

from fm_local.wake import _key

MAX_DOCUMENT = 1 << 20  # larger documents are validated by the client itself
MAX_REQUEST = 4 * MAX_DOCUMENT  # text + an input, as JSON
ANSWER_TIMEOUT = 20.0  # seconds a client waits for an answer before checking locally
READ_TIMEOUT = 5.0  # seconds the service waits for a client's request


def address(db: str | os.PathLike[str]) -> str:
    return "\0fm_local-check-" + _key(os.fspath(db))


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _read_all(sock: socket.socket, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


# --- the supervisor's end ------------------------------------------------------------


class CheckService:
    """A thread that answers checks on :func:`address` until :meth:`close`."""

    def __init__(self, db: str | os.PathLike[str]) -> None:
        from fm_local.prepare import rules_stamp

        self.rules = rules_stamp()
        self.answered = 0  # requests answered (for tests and curious readers)
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(address(db))
            sock.listen(64)
        except OSError:
            if "sock" in locals():
                sock.close()
            return  # another supervisor's, or no abstract sockets: clients check locally
        self.sock = sock
        self.thread = threading.Thread(target=self._serve, name="fm-check", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        from fm_local.model import Workflow

        try:
            Workflow.model_rebuild()  # build the validator now, not on the first request
        except Exception:
            pass  # the first request builds it, or says why it cannot
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            try:
                self._handle(conn)
            except Exception:
                pass  # that client checks locally
            finally:
                conn.close()

    def _handle(self, conn: socket.socket) -> None:
        if _peer_uid(conn) != os.getuid():
            return
        conn.settimeout(READ_TIMEOUT)
        data = _read_all(conn, MAX_REQUEST)
        if data is None:
            return
        answer = self.answer(json.loads(data))
        conn.sendall(json.dumps(answer, separators=(",", ":")).encode())
        self.answered += 1

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        from pathlib import Path

        from fm_local.errors import WorkflowInvalid
        from fm_local.prepare import check_input
        from fm_local.validate import parse_workflow

        out: dict[str, Any] = {"rules": self.rules}
        kind = request.get("kind")
        if kind == "workflow":
            try:
                loaded = parse_workflow(str(request["text"]), path=Path(str(request["what"])))
            except WorkflowInvalid as e:
                out.update(ok=False, errors=list(e.problems), warnings=list(e.warnings))
                return out
            out.update(
                ok=True,
                name=loaded.workflow.name,
                warnings=[str(w) for w in loaded.warnings],
                maxQueued=loaded.workflow.settings.queue.max_size,
                nodes=len(loaded.workflow.nodes),
            )
        elif kind == "input":
            out["problems"] = check_input(request.get("schema"), request.get("input"))
        else:
            out["error"] = f"unknown kind {kind!r}"
        return out

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's accept()
            except OSError:
                pass
            sock.close()
        if self.thread is not None:
            self.thread.join(timeout=1.0)
            self.thread = None


# --- the client's end ---------------------------------------------------------------


def ask(
    db: str | os.PathLike[str], request: dict[str, Any], timeout: float = ANSWER_TIMEOUT
) -> dict[str, Any] | None:
    """The serving supervisor's answer to ``request``, or None: nobody listens, the
    listener is another user's, the answer is late or malformed, or it was checked
    under other rules than this process's. None means: check locally."""
    from fm_local.prepare import rules_stamp

    try:
        payload = json.dumps(request, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError):
        return None
    if len(payload) > MAX_REQUEST:
        return None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        sock.settimeout(timeout)
        sock.connect(address(db))
        if _peer_uid(sock) != os.getuid():
            return None
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = _read_all(sock, MAX_REQUEST)
        answer = json.loads(data) if data else None
    except (OSError, ValueError):
        return None
    finally:
        sock.close()
    if not isinstance(answer, dict) or answer.get("rules") != rules_stamp():
        return None
    return answer
