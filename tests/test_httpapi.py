"""The daemon's loopback HTTP signal API (SPEC §8 "Signals"), end to end.

Every test runs the real ``fm daemon --http 127.0.0.1:<free port>`` in a subprocess
and talks to it with urllib: the bearer token (``fm token``, a 0600 file beside the
database), the status codes (401, 400, 404, 409, 200), the seed's own request bodies
(pause "Awaiting approval", resume with approval data, cancel), the one-line errors
of ``fm daemon --http`` (exit 2 for a bad address, 3 for a port in use), and that the
API listens only on the address it was given.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ROOT, fm, query, wait_until

from fm_local.lock import is_served

QUIET = 1.0  # seconds a negative check watches for something that must not happen

HTASKS = '''
"""Node functions for tests/test_httpapi.py (written beside each workflow)."""
import json
import os
import time


def gated(mark, tag, gate):
    """Marks its start, then runs until the file ``gate`` exists."""
    with open(mark, "a") as f:
        f.write(json.dumps({"tag": tag, "t": time.time()}) + "\\n")
    deadline = time.time() + 120
    while not os.path.exists(gate) and time.time() < deadline:
        time.sleep(0.02)
    return {"tag": tag}


def release(mark, approved, approver):
    with open(mark, "a") as f:
        f.write(json.dumps({"tag": "release", "t": time.time()}) + "\\n")
    return {"approved": approved, "approver": approver}
'''

# The request bodies of the seed page, verbatim.
PAUSE = {"type": "pause", "reason": "Awaiting approval"}
RESUME = {"type": "resume", "data": {"approved": True, "approver": "user@example.com"}}
CANCEL = {"type": "cancel", "reason": "User requested cancellation"}


# --- helpers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    raw: bytes | None = None,
    host: str = "127.0.0.1",
) -> tuple[int, Any]:
    """One HTTP request; (status, parsed JSON body or the raw text)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(f"http://{host}:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def reachable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect((host, port))
        except OSError:
            return False
        return True


def get_token(db: Path) -> str:
    out = fm(db, "token")
    assert out.returncode == 0, out.stderr
    tok = out.stdout.strip()
    assert tok and "\n" not in tok and " " not in tok, out.stdout
    return tok


class Api:
    """A daemon serving the HTTP API, and a client for it."""

    def __init__(self, db: Path, port: int, token: str) -> None:
        self.db, self.port, self.token = db, port, token

    def signal(self, eid: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return request(
            self.port, "POST", f"/api/executions/{eid}/signal", body, token=self.token, **kw
        )

    def get(self, eid: str) -> tuple[int, Any]:
        return request(self.port, "GET", f"/api/executions/{eid}", token=self.token)

    def status(self, eid: str) -> str:
        code, body = self.get(eid)
        assert code == 200, (code, body)
        return body["status"]


@pytest.fixture
def api(db: Path, daemon: Callable[..., Any]) -> Callable[..., Api]:
    def start(workers: int = 2) -> Api:
        port = free_port()
        daemon(workers=workers, extra=("--http", f"127.0.0.1:{port}"))
        wait_until(lambda: reachable("127.0.0.1", port), 20, "the HTTP API to listen")
        return Api(db, port, get_token(db))

    return start


@pytest.fixture
def hwf(wf: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    (tmp_path / "htasks.py").write_text(HTASKS)
    return wf


def tags(mark: Path) -> list[str]:
    if not mark.exists():
        return []
    return [json.loads(x)["tag"] for x in mark.read_text().splitlines() if x.strip()]


def submit(db: Path, path: Path) -> str:
    out = fm(db, "submit", str(path))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def approval_doc(mark: Path, gate: Path) -> dict[str, Any]:
    return {
        "name": "http-approval",
        "nodes": [
            {
                "id": "prepare",
                "type": "python",
                "call": "htasks:gated",
                "args": {"mark": str(mark), "tag": "prepare", "gate": str(gate)},
            },
            {
                "id": "release",
                "type": "python",
                "call": "htasks:release",
                "args": {
                    "mark": str(mark),
                    "approved": "{{signals.resume.data.approved}}",
                    "approver": "{{signals.resume.data.approver}}",
                },
            },
            {"id": "result", "type": "output", "outputName": "decision", "value": "{{release}}"},
        ],
        "edges": [
            {"source": "prepare", "target": "release"},
            {"source": "release", "target": "result"},
        ],
    }


def one_line(text: str) -> str:
    lines = [x for x in text.splitlines() if x.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# --- the token ----------------------------------------------------------------------------


def test_fm_token_prints_the_same_owner_only_token(db: Path) -> None:
    old = os.umask(0)  # even with a permissive umask the file is the owner's alone
    try:
        tok = get_token(db)
    finally:
        os.umask(old)
    assert len(tok) >= 20
    holders = [p for p in db.parent.iterdir() if p.is_file() and p.read_text().strip() == tok]
    assert len(holders) == 1, holders
    assert holders[0].parent == db.parent  # beside the database
    assert stat.S_IMODE(holders[0].stat().st_mode) == 0o600
    assert get_token(db) == tok


def test_token_made_by_the_daemon_is_the_one_fm_token_prints(
    db: Path, hwf: Callable[..., Path], tmp_path: Path, api: Callable[..., Api]
) -> None:
    a = api()  # the daemon made the token on first start; fm token reads it back
    eid = submit(db, hwf(approval_doc(tmp_path / "m", tmp_path / "gate")))
    code, body = a.get(eid)
    assert code == 200 and body["id"] == eid, (code, body)


# --- status codes -------------------------------------------------------------------------


def test_signal_requests_are_refused_with_the_right_status(
    db: Path, hwf: Callable[..., Path], tmp_path: Path, api: Callable[..., Api]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    a = api()
    eid = submit(db, hwf(approval_doc(mark, gate)))
    wait_until(lambda: "prepare" in tags(mark), 30, "prepare to start")
    path = f"/api/executions/{eid}/signal"

    # 401: no token, a wrong token, a token without the Bearer scheme.
    for tok in (None, "wrong", a.token + "x", ""):
        code, body = request(a.port, "POST", path, PAUSE, token=tok)
        assert code == 401, (tok, code, body)
        assert "token" in body["error"]
    code, _ = request(a.port, "GET", f"/api/executions/{eid}")
    assert code == 401
    req = urllib.request.Request(
        f"http://127.0.0.1:{a.port}{path}", data=json.dumps(PAUSE).encode(), method="POST"
    )
    req.add_header("Authorization", a.token)  # no "Bearer"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=15)
    assert info.value.code == 401

    # 400: malformed bodies, each with a reason.
    code, body = a.signal(eid, None, raw=b'{"type": "pause",')
    assert code == 400 and "not JSON" in body["error"], (code, body)
    for bad, word in [
        ([PAUSE], "object"),
        ("pause", "object"),
        (None, "object"),
        ({}, "type"),
        ({"reason": "x"}, "type"),
        ({"type": ""}, "type"),
        ({"type": 5}, "type"),
        ({"type": "pause", "reason": 3}, "reason"),
        ({"type": "pause", "extra": 1}, "extra"),
    ]:
        raw = b"" if bad is None else None
        code, body = a.signal(eid, bad, raw=raw)
        assert code == 400, (bad, code, body)
        assert word in body["error"], (bad, body)

    # 400: a type the workflow neither handles nor has built in, naming what it accepts.
    code, body = a.signal(eid, {"type": "priority_change", "data": {"priority": 5}})
    assert code == 400, (code, body)
    assert "priority_change" in body["error"]
    assert all(t in body["error"] for t in ("pause", "resume", "cancel")), body

    # 404: an unknown execution, an unknown route.
    code, body = a.signal("nosuchexec123", PAUSE)
    assert code == 404 and "nosuchexec123" in body["error"], (code, body)
    code, _ = a.get("nosuchexec123")
    assert code == 404
    code, _ = request(a.port, "POST", "/api/nothing", PAUSE, token=a.token)
    assert code == 404

    # None of that wrote a signal or changed the execution.
    assert query(db, "SELECT * FROM signals") == []
    assert a.status(eid) == "running"
    gate.touch()
    wait_until(lambda: a.status(eid) == "failed", 30, "the execution to end")  # no resume data

    # 409: the execution is finished.
    code, body = a.signal(eid, PAUSE)
    assert code == 409, (code, body)
    assert "failed" in body["error"]
    assert query(db, "SELECT * FROM signals") == []


# --- the seed's pause / resume / cancel ------------------------------------------------------


def test_pause_and_resume_with_data_over_http(
    db: Path, hwf: Callable[..., Path], tmp_path: Path, api: Callable[..., Api]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    a = api()
    eid = submit(db, hwf(approval_doc(mark, gate)))
    wait_until(lambda: "prepare" in tags(mark), 30, "prepare to start")

    code, body = a.signal(eid, PAUSE)
    assert code == 200, (code, body)
    assert body["status"] == "applied" and "paused" in body["outcome"], body
    assert body["execution"] == eid and body["type"] == "pause"
    assert a.status(eid) == "paused"
    row = query(db, "SELECT reason, status FROM signals WHERE id=?", (body["id"],))
    assert row == [{"reason": "Awaiting approval", "status": "applied"}]

    gate.touch()  # the running node finishes; nothing new starts while paused
    wait_until(
        lambda: (
            query(
                db, "SELECT status FROM node_runs WHERE execution_id=? AND path='prepare'", (eid,)
            )
            == [{"status": "succeeded"}]
        ),
        30,
        "prepare to finish",
    )
    end = time.monotonic() + QUIET
    while time.monotonic() < end:
        assert "release" not in tags(mark), "release started while paused"
        time.sleep(0.05)
    assert a.status(eid) == "paused"

    code, body = a.signal(eid, RESUME)
    assert code == 200, (code, body)
    assert body["status"] == "applied" and "resumed" in body["outcome"], body
    wait_until(lambda: a.status(eid) == "succeeded", 30, "the execution to succeed")
    code, final = a.get(eid)
    assert final["output"] == {"decision": {"approved": True, "approver": "user@example.com"}}

    code, body = a.signal(eid, PAUSE)
    assert code == 409 and "succeeded" in body["error"], (code, body)


def test_cancel_over_http(
    db: Path, hwf: Callable[..., Path], tmp_path: Path, api: Callable[..., Api]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    a = api()
    eid = submit(db, hwf(approval_doc(mark, gate)))
    wait_until(lambda: "prepare" in tags(mark), 30, "prepare to start")
    pid = query(
        db, "SELECT worker_pid FROM node_runs WHERE execution_id=? AND path='prepare'", (eid,)
    )
    code, body = a.signal(eid, CANCEL)
    assert code == 200, (code, body)
    assert body["status"] == "applied" and "cancel" in body["outcome"], body
    wait_until(lambda: a.status(eid) == "cancelled", 30, "the execution to be cancelled")
    code, final = a.get(eid)
    assert final["error"] is not None and "User requested cancellation" in json.dumps(
        final["error"]
    )
    # The node's process was stopped, not left waiting for its gate.
    worker = pid[0]["worker_pid"] if pid and pid[0]["worker_pid"] else None
    if worker is not None:
        wait_until(lambda: not psutil.pid_exists(worker) or _zombie(worker), 15, "worker gone")
    assert "release" not in tags(mark)
    code, body = a.signal(eid, CANCEL)
    assert code == 409 and "cancelled" in body["error"], (code, body)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- fm daemon --http errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "bind",
    [
        "nonsense",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:http",
        "127.0.0.1:80:80",
        "127.0.0.1:99999",
        "999.1.1.1:8080",
    ],
)
def test_daemon_http_bad_address_is_a_usage_error(db: Path, bind: str) -> None:
    out = fm(db, "daemon", "--workers", "1", "--http", bind, timeout=60)
    assert out.returncode == 2, (out.returncode, out.stderr)
    line = one_line(out.stderr)
    assert "--http" in line
    assert is_served(db) is None


def test_daemon_http_port_in_use_is_an_engine_error(db: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # exits by itself (fm's timeout=60 would fail the test if it hung)
        out = fm(db, "daemon", "--workers", "1", "--http", f"127.0.0.1:{port}", timeout=60)
    assert out.returncode == 3, (out.returncode, out.stderr)
    line = one_line(out.stderr)
    assert str(port) in line and "in use" in line.lower(), line
    assert is_served(db) is None  # the supervisor it opened was closed again


# --- where it listens -----------------------------------------------------------------------


def other_local_addresses() -> list[str]:
    """Local addresses other than 127.0.0.1: another loopback one, the interfaces'."""
    found = ["127.0.0.2"] if os.uname().sysname == "Linux" else []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and a.address != "127.0.0.1":
                found.append(a.address)
            elif a.family == socket.AF_INET6 and "%" not in a.address:
                found.append(a.address)
    return found


def test_api_listens_only_where_told(db: Path, api: Callable[..., Api]) -> None:
    others = other_local_addresses()
    if not others:
        pytest.skip("this machine has no local address but 127.0.0.1")
    a = api(workers=1)
    assert reachable("127.0.0.1", a.port)
    reached = [h for h in others if reachable(h, a.port)]
    assert reached == [], f"the API bound to 127.0.0.1 answers on {reached}"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_api_on_the_ipv6_loopback(db: Path) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, FM_DB=str(db), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "fm_local", "daemon", "--workers", "1", "--http", f"[::1]:{port}"]
    log = db.with_suffix(".v6.log")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: proc.poll() is not None or reachable("::1", port), 30, "the daemon to serve"
        )
        assert proc.poll() is None, f"daemon exited {proc.returncode}: {log.read_text()}"
        code, _ = request(
            port, "GET", "/api/executions/nosuchexec", token=get_token(db), host="[::1]"
        )
        assert code == 404
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(30)
