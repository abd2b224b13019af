"""``fm daemon`` as a real subprocess: the CLI talks to it through the database
(SPEC §10), one supervisor per database, graceful SIGTERM, concurrent writers."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ROOT, fm, python_node, read_marks, show, wait_until

# A task module written beside the workflows at test time: it marks the start and
# the end of each run, so a test sees how many times a node really started.
DTASKS = """
import json, os, time

def slow(mark, seconds=1.0, tag="", ctx=None):
    def put(kind):
        with open(mark, "a") as f:
            f.write(json.dumps({"kind": kind, "tag": tag, "pid": os.getpid(),
                                "t": time.time(), "attempt": ctx.attempt}) + "\\n")
    put("start")
    time.sleep(seconds)
    put("end")
    return {"tag": tag, "pid": os.getpid()}


def gated(gate):
    # Runs until the file ``gate`` exists (the test opens it).
    while not os.path.exists(gate):
        time.sleep(0.02)
    return True
"""


py = partial(python_node, "fmtasks")


GOOD = {"name": "good", "nodes": [py("a", "add", args={"a": 1, "b": 2})]}

# A few quick nodes with a fan-out: enough writes to keep the daemon busy.
BUSY = {
    "name": "busy",
    "nodes": [
        py("a", "add", args={"a": 1, "b": 2}),
        py("b", "add", args={"a": "{{a}}", "b": 1}),
        py("c", "add", args={"a": "{{a}}", "b": 2}),
        {"id": "d", "type": "transform", "expression": "b + c"},
    ],
    "edges": [{"source": "a", "target": "b"}, {"source": "a", "target": "c"}],
}


def executions(db: Path) -> list[dict[str, Any]]:
    res = fm(db, "ls", "--json", "--limit", "1000")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def daemon_log(db: Path) -> str:
    p = db.with_suffix(".daemon.log")
    return p.read_text() if p.exists() else ""


def test_run_uses_the_running_daemon(wf, db, daemon):
    d = daemon(workers=2)
    res = fm(db, "run", str(wf(GOOD)), timeout=30)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"a": 3}
    assert "submitted to the running daemon" in res.stderr
    eid = re.search(r"execution ([0-9a-f]{12}) submitted", res.stderr).group(1)
    node = show(db, eid)["nodes"][0]
    # The node ran in a worker process of the daemon, not of the fm run process.
    assert node["workerPid"] is not None
    parent = psutil.Process(node["workerPid"]).ppid()
    assert parent == d.proc.pid
    # --json through the daemon too.
    rj = fm(db, "run", str(wf(GOOD)), "--json", timeout=30)
    assert rj.returncode == 0
    assert json.loads(rj.stdout)["output"] == {"a": 3}


def test_run_through_daemon_failing_exits_1(wf, db, daemon):
    daemon()
    doc = {"name": "bad", "nodes": [py("oops", "always_fail", args={"message": "nope"})]}
    res = fm(db, "run", str(wf(doc)), timeout=30)
    assert res.returncode == 1
    assert "submitted to the running daemon" in res.stderr
    assert "oops" in res.stderr


def test_second_daemon_refuses_naming_the_holder(db, daemon):
    d = daemon()
    # Refused, not blocked on the lock: a second daemon that waited for the first
    # would not return while the first runs (the subprocess timeout is a hang guard).
    # How fast it answers is CLI start-up time, a figure of make bench.
    res = fm(db, "daemon", timeout=60)
    assert res.returncode == 3, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err) == 1, res.stderr
    assert f"pid {d.proc.pid}" in err[0]
    # The first one is untouched and still serves.
    assert d.proc.poll() is None
    from fm_local.lock import is_served

    assert is_served(db)["pid"] == d.proc.pid


def test_sigterm_graceful_stop_then_restart(wf, db, daemon, tmp_path):
    (tmp_path / "dtasks.py").write_text(DTASKS)
    mark = tmp_path / "marks"
    doc = {
        "name": "graceful",
        "nodes": [
            {
                "id": "nap",
                "type": "python",
                "call": "dtasks:slow",
                "args": {"mark": str(mark), "seconds": 1.0, "tag": "nap"},
            },
            py("after", "add", args={"a": 1, "b": 1}),
        ],
        "edges": [{"source": "nap", "target": "after"}],
    }
    d = daemon()
    eid = fm(db, "submit", str(wf(doc))).stdout.strip()
    wait_until(lambda: any(m["kind"] == "start" for m in read_marks(mark)), 15, "nap to start")
    d.proc.send_signal(signal.SIGTERM)
    code = d.proc.wait(60)  # a hang guard: how long the stop takes is not the point
    assert code == 0, daemon_log(db)
    assert "stopped (SIGTERM)" in daemon_log(db)

    nodes = {n["path"]: n for n in show(db, eid)["nodes"]}
    nap = nodes["nap"]
    # Either it finished and was recorded, or it is left to run again: never lost.
    assert nap["status"] in ("succeeded", "queued"), nap
    if nap["status"] == "succeeded":
        assert [m["kind"] for m in read_marks(mark)] == ["start", "end"]

    daemon()
    assert fm(db, "wait", eid, "--timeout", "15", timeout=30).returncode == 0
    data = show(db, eid)
    assert data["status"] == "succeeded"
    assert data["output"] == {"after": 2}
    starts = [m for m in read_marks(mark) if m["kind"] == "start"]
    assert 1 <= len(starts) <= 2, starts
    nodes = {n["path"]: n for n in data["nodes"]}
    assert nodes["nap"]["status"] == "succeeded"
    assert nodes["nap"]["attempts"] == 1  # a graceful stop spends no attempt


def _submit_many(db: Path, path: Path, n: int, ids: list[str], errors: list[str]) -> None:
    for _ in range(n):
        res = fm(db, "submit", str(path), timeout=60)
        if res.returncode != 0 or "locked" in res.stderr:
            errors.append(f"rc={res.returncode}: {res.stderr.strip()}")
        else:
            ids.append(res.stdout.strip())


# 40 ``fm submit`` processes: about 1.5 min at load 10 on 2 cores, past the default
# per-test timeout. The timeouts here are hang guards, not speed requirements.
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_concurrent_cli_writers_against_busy_daemon(wf, db, daemon):
    path = wf(BUSY)
    daemon(workers=2)
    ids: list[str] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=_submit_many, args=(db, path, 5, ids, errors)) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(400)
    assert errors == []
    assert len(ids) == 40
    assert len(set(ids)) == 40

    def all_done() -> Any:
        # Read with plain sqlite3 (cheap) rather than 40 more CLI processes.
        conn = sqlite3.connect(str(db), timeout=10)
        try:
            rows = dict(conn.execute("SELECT id, status FROM executions").fetchall())
        finally:
            conn.close()
        return all(rows.get(i) in ("succeeded", "failed", "cancelled") for i in ids) and rows

    rows = wait_until(all_done, 120, "40 executions to finish")
    statuses = [rows[i] for i in ids]
    assert statuses == ["succeeded"] * 40
    assert "database is locked" not in daemon_log(db)
    # Every one computed its result.
    out = fm(db, "output", ids[-1])
    assert json.loads(out.stdout) == {"d": 9}


def test_queued_while_no_daemon_are_picked_up(wf, db, daemon):
    path = wf(BUSY)
    ids = [fm(db, "submit", str(path)).stdout.strip() for _ in range(3)]
    assert all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids)
    assert {r["status"] for r in executions(db)} == {"queued"}
    daemon()
    for i in ids:
        res = fm(db, "wait", i, "--timeout", "15", timeout=30)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == {"d": 9}


def test_integrity_check_while_daemon_runs(wf, db, daemon, tmp_path):
    (tmp_path / "dtasks.py").write_text(DTASKS)
    gate = tmp_path / "gate"
    daemon(workers=2)
    # ``s`` holds the execution running until the test opens the gate: a fixed sleep
    # could end before a slow machine's ``fm show`` ever saw it running.
    doc = {
        "name": "longish",
        "nodes": [
            {"id": "s", "type": "python", "call": "dtasks:gated", "args": {"gate": str(gate)}}
        ]
        + [py(f"n{i}", "add", args={"a": i, "b": 1}) for i in range(5)],
    }
    eid = fm(db, "submit", str(wf(doc))).stdout.strip()
    wait_until(lambda: show(db, eid)["status"] == "running", 30, "execution to run")
    conn = sqlite3.connect(str(db), timeout=10)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        row = conn.execute("SELECT status FROM executions WHERE id=?", (eid,)).fetchone()
        assert row[0] == "running"
    finally:
        conn.close()
    gate.touch()
    assert fm(db, "wait", eid, "--timeout", "15", timeout=30).returncode == 0
    conn = sqlite3.connect(str(db), timeout=10)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


def test_daemon_via_python_dash_m_announces_itself(db, tmp_path):
    """The daemon's start line names the database and its pid; SIGINT stops it too."""
    env = dict(os.environ, FM_DB=str(db), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fm_local", "daemon", "--workers", "1"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        first = proc.stderr.readline()
        assert str(db) in first
        assert f"pid {proc.pid}" in first
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert "stopped (SIGINT)" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
