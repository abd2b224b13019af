"""Workflow signals (SPEC §8 "Signals", §7 ``signals`` scope), end to end.

Every test runs the real ``fm daemon`` in a subprocess with real worker processes
and drives it with the real CLI (``fm submit/pause/resume/cancel/signal/show/wait``).
Node functions live in tests/sigtasks.py (copied beside each workflow); they append
``{event, tag, pid, t, path, attempt}`` lines to a mark file, which is the tests'
view of what really ran. Committed state is read with a fresh sqlite3 connection.

Negative checks ("nothing starts while paused") poll the marks and the database
for a bounded time and fail at the first thing that started.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import (
    HERE,
    ROOT,
    exec_status,
    fm,
    fm_cli,
    holds,
    python_node,
    query,
    read_marks,
    show,
    wait_until,
)

# --- helpers ----------------------------------------------------------------------------

QUIET = 1.5  # seconds a negative check watches for something that must not happen


@pytest.fixture
def swf(wf: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    """Like ``wf``, with sigtasks.py beside the workflow."""
    (tmp_path / "sigtasks.py").write_text((HERE / "sigtasks.py").read_text())
    return wf


py = partial(python_node, "sigtasks")


def edges(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"source": s, "target": t} for s, t in pairs]


marks = read_marks  # one reader for every mark file (tests/conftest.py)


def events(mark: Path, event: str, tag: str | None = None) -> list[dict[str, Any]]:
    return [m for m in marks(mark) if m["event"] == event and (tag is None or m["tag"] == tag)]


def node_row(db: Path, eid: str, path: str) -> dict[str, Any] | None:
    rows = query(db, "SELECT * FROM node_runs WHERE execution_id=? AND path=?", (eid, path))
    return rows[0] if rows else None


def node_status(db: Path, eid: str, path: str) -> str | None:
    r = node_row(db, eid, path)
    return None if r is None else r["status"]


def signal_rows(db: Path, eid: str) -> list[dict[str, Any]]:
    return query(db, "SELECT * FROM signals WHERE execution_id=? ORDER BY id", (eid,))


def signal_events(db: Path, eid: str, sid: int) -> list[dict[str, Any]]:
    """The supervisor's record of applying signal ``sid`` (one per application)."""
    rows = query(
        db,
        "SELECT * FROM events WHERE execution_id=? AND kind LIKE 'signal:%' ORDER BY id",
        (eid,),
    )
    return [r for r in rows if json.loads(r["detail"] or "{}").get("signal") == sid]


def submit(db: Path, path: Path, *extra: str) -> str:
    out = fm(db, "submit", str(path), *extra)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def ok(db: Path, *args: str) -> str:
    """Run ``fm ARGS``; it must succeed; its stdout."""
    out = fm(db, *args)
    assert out.returncode == 0, f"fm {' '.join(args)}: rc={out.returncode} {out.stderr}"
    return out.stdout


def finish(db: Path, eid: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """``fm wait`` (exit code) and the final ``fm show --json``."""
    out = fm(db, "wait", eid, "--timeout", str(timeout), timeout=timeout + 30)
    return out.returncode, show(db, eid)


def by_path(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["path"]: n for n in doc["nodes"]}


def is_gone(pid: int, create_time: float) -> bool:
    try:
        p = psutil.Process(pid)
        if p.create_time() != create_time:
            return True  # the pid was recycled
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def proc_of(pid: int) -> tuple[int, float]:
    return pid, psutil.Process(pid).create_time()


def gated_chain(mark: Path, gate: Path, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """a (runs until ``gate`` exists) -> b."""
    doc: dict[str, Any] = {
        "name": "gated-chain",
        "nodes": [
            py("a", "gated", {"mark": str(mark), "tag": "a", "gate": str(gate)}),
            py("b", "work", {"mark": str(mark), "tag": "b"}),
        ],
        "edges": edges(("a", "b")),
    }
    if settings:
        doc["settings"] = settings
    return doc


# --- pause / resume ---------------------------------------------------------------------


def test_pause_keeps_the_running_result_and_starts_nothing_until_resume(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    eid = submit(db, swf(gated_chain(mark, gate)))
    daemon()
    wait_until(lambda: events(mark, "start", "a"), 30, "a to start")

    out = fm(db, "pause", eid, "--reason", "maintenance")
    assert out.returncode == 0, out.stderr
    assert "paused" in out.stdout
    assert show(db, eid)["status"] == "paused"

    # The running node finishes and its result is kept.
    gate.touch()
    wait_until(lambda: node_status(db, eid, "a") == "succeeded", 30, "a to succeed")
    a = by_path(show(db, eid))["a"]
    assert a["output"]["tag"] == "a" and a["attempts"] == 1
    # Nothing new starts while paused.
    holds(
        lambda: not events(mark, "start", "b") and node_status(db, eid, "b") in (None, "pending"),
        QUIET,
        "b must not start while the execution is paused",
    )
    assert show(db, eid)["status"] == "paused"

    out = fm(db, "resume", eid)
    assert out.returncode == 0, out.stderr
    assert "resumed" in out.stdout
    rc, doc = finish(db, eid)
    assert rc == 0 and doc["status"] == "succeeded", doc
    assert len(events(mark, "start", "a")) == 1
    assert len(events(mark, "start", "b")) == 1
    assert by_path(doc)["a"]["output"] == a["output"]  # the result from before the pause
    rows = signal_rows(db, eid)
    assert [(r["type"], r["status"]) for r in rows] == [
        ("pause", "applied"),
        ("resume", "applied"),
    ]
    assert rows[0]["reason"] == "maintenance"


@pytest.mark.slow
def test_timers_falling_due_while_paused_start_nothing_until_resume(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """A retry back-off and a delay node both fall due during the pause: the timers
    keep their due times, but nothing starts before the resume."""
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    m = str(mark)
    doc = {
        "name": "timers",
        "nodes": [
            py(
                "r",
                "fail_first",
                {"mark": m, "tag": "r"},
                # 6 s: the pause must come before both fall due, on a machine at load
                # 10 too (where noticing the retry wait and pausing take seconds).
                retry={"maxAttempts": 2, "initialDelay": 6000, "backoff": "fixed"},
            ),
            {"id": "d", "type": "delay", "duration": 6000},
            py("after_d", "work", {"mark": m, "tag": "after_d"}),
            # Keeps a worker busy through the pause (a running node at pause time).
            py("g", "gated", {"mark": m, "tag": "g", "gate": str(gate)}),
        ],
        "edges": edges(("d", "after_d")),
    }
    eid = submit(db, swf(doc))
    daemon()
    wait_until(lambda: node_status(db, eid, "r") == "retry_wait", 30, "r to wait for its retry")
    wait_until(lambda: node_status(db, eid, "d") == "running", 30, "the delay to run")
    paused = fm_cli(db, "pause", eid)  # in this process: no interpreter start-up
    assert paused.returncode == 0, paused.stderr
    paused_at = time.time()
    r_due = node_row(db, eid, "r")["next_attempt_at"]
    d_due = node_row(db, eid, "d")["next_attempt_at"]
    assert r_due is not None and r_due > paused_at, "the pause came too late to test this"
    assert d_due is not None and d_due > paused_at, "the pause came too late to test this"

    # Watch past both due times (and a margin): nothing may start.
    watch = max(r_due, d_due) - time.time() + QUIET
    holds(
        lambda: len(events(mark, "start", "r")) == 1 and not events(mark, "start", "after_d"),
        watch,
        "a timer that fell due during the pause started a node",
    )
    assert exec_status(db, eid) == "paused"
    # The due times were kept, not pushed back.
    assert node_row(db, eid, "r")["next_attempt_at"] in (None, r_due)

    gate.touch()
    resumed_at = time.time()
    ok(db, "resume", eid)
    rc, final = finish(db, eid)
    assert rc == 0 and final["status"] == "succeeded", final
    second = events(mark, "start", "r")[1]
    assert second["attempt"] == 2 and second["t"] >= resumed_at
    assert events(mark, "start", "after_d")[0]["t"] >= resumed_at
    assert by_path(final)["r"]["attempts"] == 2


def test_tasks_already_handed_to_a_worker_do_not_start_while_paused(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """One worker, six ready nodes: the supervisor may queue several on that worker
    ahead of time (prefetch). A pause must still stop the ones not yet begun."""
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    nodes = [
        py(f"n{i}", "gated", {"mark": str(mark), "tag": f"n{i}", "gate": str(gate)})
        for i in range(6)
    ]
    eid = submit(db, swf({"name": "fan", "nodes": nodes, "edges": []}))
    daemon(workers=1)
    first = wait_until(lambda: events(mark, "start"), 30, "a node to start")[0]["tag"]
    ok(db, "pause", eid)
    gate.touch()
    wait_until(lambda: node_status(db, eid, first) == "succeeded", 30, "the running node to end")
    holds(
        lambda: len(events(mark, "start")) == 1,
        QUIET,
        "a node started while the execution was paused",
    )
    ok(db, "resume", eid)
    rc, doc = finish(db, eid)
    assert rc == 0 and doc["status"] == "succeeded", doc
    assert sorted(m["tag"] for m in events(mark, "start")) == [f"n{i}" for i in range(6)]


def test_pause_with_cleanup_stops_the_running_node_and_reruns_it_on_resume(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    settings = {"signalHandlers": {"pause": {"action": "pause", "cleanup": True}}}
    eid = submit(db, swf(gated_chain(mark, gate, settings)))
    daemon()
    first = wait_until(lambda: events(mark, "start", "a"), 30, "a to start")[0]
    proc = proc_of(first["pid"])

    out = fm(db, "pause", eid)
    assert out.returncode == 0, out.stderr
    assert "stopped" in out.stdout, out.stdout
    # Stopped now: its process is gone, although its gate never opened.
    wait_until(lambda: is_gone(*proc), 10, "the paused node's process to be stopped")
    assert show(db, eid)["status"] == "paused"
    holds(
        lambda: len(events(mark, "start", "a")) == 1 and not events(mark, "start", "b"),
        QUIET,
        "nothing runs again before the resume",
    )
    assert not events(mark, "end", "a")

    gate.touch()
    ok(db, "resume", eid)
    rc, doc = finish(db, eid)
    assert rc == 0 and doc["status"] == "succeeded", doc
    starts = events(mark, "start", "a")
    assert len(starts) == 2 and starts[1]["pid"] != first["pid"]
    assert starts[1]["attempt"] == 1  # the stopped run was not an attempt
    assert by_path(doc)["a"]["attempts"] == 1
    assert len(events(mark, "start", "b")) == 1


def test_resume_data_is_readable_by_later_nodes(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    doc = {
        "name": "resume-data",
        "nodes": [
            py("a", "gated", {"mark": str(mark), "tag": "a", "gate": str(gate)}),
            py(
                "b",
                "record",
                {"mark": str(mark), "tag": "b", "value": "{{signals.resume.data.approved}}"},
            ),
            {
                "id": "c",
                "type": "transform",
                "expression": "{'approved': signals.resume.data.approved, "
                "'approver': signals.resume.data.approver, "
                "'reason': signals.resume.reason, 'receivedAt': signals.resume.receivedAt}",
            },
            {"id": "out", "type": "output", "outputName": "decision", "value": "{{c}}"},
        ],
        "edges": edges(("a", "b"), ("b", "c"), ("c", "out")),
    }
    eid = submit(db, swf(doc))
    daemon()
    wait_until(lambda: events(mark, "start", "a"), 30, "a to start")
    ok(db, "pause", eid)
    gate.touch()
    wait_until(lambda: node_status(db, eid, "a") == "succeeded", 30, "a to succeed")
    before = time.time()
    ok(
        db,
        "resume",
        eid,
        "--reason",
        "looks good",
        "--data",
        '{"approved": true, "approver": "a@b"}',
    )
    after = time.time()
    rc, final = finish(db, eid)
    assert rc == 0 and final["status"] == "succeeded", final
    assert events(mark, "record", "b")[0]["value"] is True
    decision = final["output"]["decision"]
    assert decision["approved"] is True
    assert decision["approver"] == "a@b"
    assert decision["reason"] == "looks good"
    assert isinstance(decision["receivedAt"], int)
    assert int(before * 1000) - 1000 <= decision["receivedAt"] <= int(after * 1000) + 1000
    out = fm(db, "output", eid)
    assert json.loads(out.stdout)["decision"]["approver"] == "a@b"


@pytest.mark.parametrize(
    "decision",
    [
        "approve",
        "reject",
    ],
)
def test_approval_example_waits_for_the_approver(
    db: Path, tmp_path: Path, daemon: Callable[..., Any], decision: str
) -> None:
    """examples/approval.json: a wait node on the built-in ``resume`` type."""
    for name in ("approval.json", "tasks.py"):
        (tmp_path / name).write_text((ROOT / "examples" / name).read_text())
    eid = submit(db, tmp_path / "approval.json", "--input", '{"version": "2.1.0"}')
    daemon()
    wait_until(lambda: node_status(db, eid, "approval") == "running", 30, "the wait to start")
    holds(lambda: exec_status(db, eid) == "running", 0.3, "the execution waits")
    data = (
        '{"approved": true, "approver": "boss@example.com"}'
        if decision == "approve"
        else '{"approved": false}'
    )
    ok(db, "resume", eid, "--data", data, "--reason", "reviewed")
    rc, doc = finish(db, eid)
    assert rc == 0 and doc["status"] == "succeeded", doc
    if decision == "approve":
        assert doc["output"]["decision"] == {
            "released": True,
            "version": "2.1.0",
            "approvedBy": "boss@example.com",
        }
    else:
        assert doc["output"]["decision"] == {"released": False, "reason": "reviewed"}


@pytest.mark.crash
@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_paused_state_survives_a_daemon_restart(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any], how: str
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    eid = submit(db, swf(gated_chain(mark, gate)))
    d = daemon()
    wait_until(lambda: events(mark, "start", "a"), 30, "a to start")
    ok(db, "pause", eid)
    gate.touch()
    wait_until(lambda: node_status(db, eid, "a") == "succeeded", 30, "a to succeed")
    if how == "kill9":
        d.kill9()
    else:
        assert d.stop() == 0

    daemon()
    assert show(db, eid)["status"] == "paused"
    holds(
        lambda: exec_status(db, eid) == "paused" and not events(mark, "start", "b"),
        QUIET,
        "a paused execution stays paused after a restart",
    )
    ok(db, "resume", eid)
    rc, doc = finish(db, eid)
    assert rc == 0 and doc["status"] == "succeeded", doc
    assert len(events(mark, "start", "a")) == 1
    assert len(events(mark, "start", "b")) == 1


# --- cancel -------------------------------------------------------------------------------


def test_cancel_stops_running_nodes(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    m = str(mark)
    doc = {
        "name": "cancel-me",
        "nodes": [
            py("x", "gated", {"mark": m, "tag": "x", "gate": str(gate)}),
            py("y", "gated", {"mark": m, "tag": "y", "gate": str(gate)}),
            py("z", "work", {"mark": m, "tag": "z"}),
        ],
        "edges": edges(("x", "z"), ("y", "z")),
    }
    eid = submit(db, swf(doc))
    daemon()
    started = wait_until(
        lambda: (s := events(mark, "start")) and len(s) == 2 and s, 30, "x and y to start"
    )
    procs = [proc_of(s["pid"]) for s in started]
    out = fm(db, "cancel", eid, "--reason", "not needed")
    assert out.returncode == 0, out.stderr
    assert "cancelled" in out.stdout
    wait_until(lambda: all(is_gone(*p) for p in procs), 10, "the running nodes' processes to stop")
    rc, final = finish(db, eid)
    assert rc == 1
    assert final["status"] == "cancelled"
    assert "not needed" in final["error"]["message"]
    nodes = by_path(final)
    assert nodes["x"]["status"] == nodes["y"]["status"] == "cancelled"
    assert nodes.get("z", {"status": None})["status"] in (None, "skipped", "cancelled")
    gate.touch()
    holds(lambda: not events(mark, "end") and not events(mark, "start", "z"), 0.5, "no node ran on")


def _rollback_workflow(tmp_path: Path, mark: Path, gate: Path) -> dict[str, Any]:
    m = str(mark)

    def undo(tag: str) -> dict[str, Any]:
        return py(
            f"undo_{tag}",
            "compensate",
            {"mark": m, "tag": tag, "compensated": "{{compensated}}"},
        )

    return {
        "name": "rollback",
        "settings": {
            "signalHandlers": {
                "cancel": {"action": "cancel", "rollback": True, "notify": ["admin@company.com"]}
            },
            "notifyCommand": f'echo "$FM_RECIPIENT $FM_MESSAGE" >> {tmp_path / "notified.txt"}',
        },
        "nodes": [
            # Listed first, finishes last: finish order is not document order.
            py(
                "first",
                "work",
                {"mark": m, "tag": "first", "seconds": 0.6},
                compensate=undo("first"),
            ),
            py("second", "work", {"mark": m, "tag": "second"}, compensate=undo("second")),
            py("plain", "work", {"mark": m, "tag": "plain"}),
            py("hold", "gated", {"mark": m, "tag": "hold", "gate": str(gate)}),
            py("never", "work", {"mark": m, "tag": "never"}),
        ],
        "edges": edges(("first", "hold"), ("second", "hold"), ("plain", "hold"), ("hold", "never")),
    }


def test_cancel_with_rollback_compensates_newest_first_and_notifies(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    eid = submit(db, swf(_rollback_workflow(tmp_path, mark, gate)))
    daemon(workers=3)
    wait_until(lambda: events(mark, "start", "hold"), 30, "hold to start")
    finished = [m["tag"] for m in sorted(events(mark, "end"), key=lambda m: m["t"])]
    assert set(finished) == {"first", "second", "plain"}
    compensable = [t for t in finished if t != "plain"]
    assert compensable == ["second", "first"]  # the 0.6 s sleep makes "first" last

    out = fm(db, "cancel", eid)
    assert out.returncode == 0, out.stderr
    rc, final = finish(db, eid)
    assert rc == 1 and final["status"] == "cancelled", final
    done = wait_until(
        lambda: (c := events(mark, "compensate")) and len(c) >= 2 and c, 30, "compensations"
    )
    assert [c["tag"] for c in done] == list(reversed(compensable))  # newest first
    assert [c["compensated"]["nodeId"] for c in done] == list(reversed(compensable))
    assert done[0]["compensated"]["output"]["tag"] == "first"
    holds(lambda: len(events(mark, "compensate")) == 2, 0.3, "each compensation runs once")
    assert not events(mark, "start", "never")

    notes = query(db, "SELECT * FROM notifications WHERE execution_id=?", (eid,))
    assert [n["recipient"] for n in notes] == ["admin@company.com"]
    sig = signal_rows(db, eid)[0]
    assert notes[0]["signal_id"] == sig["id"]
    assert sig["status"] == "applied" and "compensating 2" in sig["outcome"]
    notified = tmp_path / "notified.txt"
    line = wait_until(
        lambda: notified.exists() and notified.read_text().strip(), 10, "notifyCommand to run"
    )
    assert line.splitlines() == [f"admin@company.com {notes[0]['message']}"]
    assert "cancelled" in line


@pytest.mark.crash
def test_cancel_with_rollback_survives_a_daemon_kill_during_compensation(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """The cancel was applied and committed; the daemon dies while a compensation
    runs. After the restart the execution must still end ``cancelled`` (never run
    on to ``succeeded``), and the compensations must be done."""
    mark, gate, slow = tmp_path / "marks", tmp_path / "gate", tmp_path / "slow"
    doc = _rollback_workflow(tmp_path, mark, gate)
    # The first compensation waits for the file ``slow``: the daemon is killed then.
    doc["nodes"][0]["compensate"] = py(
        "undo_first", "gated", {"mark": str(mark), "tag": "undo_first", "gate": str(slow)}
    )
    eid = submit(db, swf(doc))
    d = daemon(workers=3)
    wait_until(lambda: events(mark, "start", "hold"), 30, "hold to start")
    ok(db, "cancel", eid)
    wait_until(lambda: events(mark, "start", "undo_first"), 30, "the first compensation")
    d.kill9()
    gate.touch()
    slow.touch()
    daemon(workers=3)
    rc, final = finish(db, eid, timeout=30)
    states = {n["path"]: n["status"] for n in final["nodes"]}
    assert final["status"] == "cancelled", (final["status"], states)
    assert rc == 1
    assert not events(mark, "start", "never")
    assert not events(mark, "end", "hold")


# --- custom signals and set_priority -----------------------------------------------------


def _custom_workflow(mark: Path, gate: Path) -> dict[str, Any]:
    return {
        "name": "custom",
        "settings": {
            "signalHandlers": {
                "priority_change": {"action": "custom", "handler": "update_priority_node"}
            }
        },
        "nodes": [
            py("a", "gated", {"mark": str(mark), "tag": "a", "gate": str(gate)}),
            {
                "id": "b",
                "type": "transform",
                "expression": "{'result': signals.priority_change.result, "
                "'data': signals.priority_change.data}",
            },
        ],
        "edges": edges(("a", "b")),
        "handlers": [
            {
                "id": "update_priority_node",
                "type": "transform",
                "expression": "{'newPriority': signal.data.priority * 10, 'type': signal.type}",
            }
        ],
    }


def test_custom_signal_runs_its_handler_and_keeps_the_result_in_scope(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    eid = submit(db, swf(_custom_workflow(mark, gate)))
    daemon()
    wait_until(lambda: events(mark, "start", "a"), 30, "a to start")
    out = fm(db, "signal", eid, "priority_change", "--data", '{"priority": 5}')
    assert out.returncode == 0, out.stderr
    assert "update_priority_node" in out.stdout
    sig = signal_rows(db, eid)[0]
    assert sig["status"] == "applied" and "update_priority_node" in sig["outcome"]
    gate.touch()
    rc, final = finish(db, eid)
    assert rc == 0 and final["status"] == "succeeded", final
    assert by_path(final)["b"]["output"] == {
        "result": {"newPriority": 50, "type": "priority_change"},
        "data": {"priority": 5},
    }
    assert len(signal_events(db, eid, sig["id"])) == 1


@pytest.mark.crash
def test_custom_signal_result_survives_a_daemon_restart(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    doc = _custom_workflow(mark, gate)
    eid = submit(db, swf(doc))
    d = daemon()
    wait_until(lambda: events(mark, "start", "a"), 30, "a to start")
    ok(db, "signal", eid, "priority_change", "--data", '{"priority": 5}')
    d.kill9()
    gate.touch()
    daemon()
    rc, final = finish(db, eid)
    assert rc == 0 and final["status"] == "succeeded", final
    assert by_path(final)["b"]["output"]["result"] == {
        "newPriority": 50,
        "type": "priority_change",
    }, "signals.priority_change.result was lost across the restart"
    sig = signal_rows(db, eid)[0]
    assert json.loads(sig["result"]) == {"newPriority": 50, "type": "priority_change"}


def test_set_priority_signal_changes_the_execution_priority(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    doc = gated_chain(mark, gate, {"signalHandlers": {"bump": {"action": "set_priority"}}})
    eid = submit(db, swf(doc), "--priority", "1")
    daemon()
    wait_until(lambda: events(mark, "start", "a"), 30, "a to start")
    assert show(db, eid)["priority"] == 1
    ok(db, "signal", eid, "bump", "--data", '{"priority": 7}')
    assert show(db, eid)["priority"] == 7
    # Bad data is refused with a clear error, and the priority stays.
    out = fm(db, "signal", eid, "bump", "--data", '{"priority": "high"}')
    assert out.returncode == 1
    assert "priority" in out.stderr and "Traceback" not in out.stderr
    assert show(db, eid)["priority"] == 7
    gate.touch()
    rc, final = finish(db, eid)
    assert rc == 0 and final["priority"] == 7


# --- wait nodes ---------------------------------------------------------------------------


def _wait_doc(mark: Path, wait: dict[str, Any], before: dict[str, Any] | None = None) -> dict:
    nodes: list[dict[str, Any]] = []
    pairs: list[tuple[str, str]] = []
    if before is not None:
        nodes.append(before)
        pairs.append((before["id"], "w"))
    nodes += [
        {"id": "w", "type": "wait", "signal": "approval", **wait},
        py("after", "record", {"mark": str(mark), "tag": "after", "value": "{{w}}"}),
        {"id": "out", "type": "output", "outputName": "got", "value": "{{after}}"},
    ]
    pairs += [("w", "after"), ("after", "out")]
    return {"name": "waiter", "nodes": nodes, "edges": edges(*pairs)}


def test_wait_node_completes_with_the_signal_data(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark = tmp_path / "marks"
    eid = submit(db, swf(_wait_doc(mark, {})))
    daemon()
    wait_until(lambda: node_status(db, eid, "w") == "running", 30, "the wait to start")
    holds(lambda: not events(mark, "record"), 0.3, "nothing runs past the wait")
    out = fm(db, "signal", eid, "approval", "--data", '{"ok": 1, "by": "x"}')
    assert out.returncode == 0, out.stderr
    assert "completed wait node 'w'" in out.stdout
    rc, final = finish(db, eid)
    assert rc == 0 and final["status"] == "succeeded", final
    assert by_path(final)["w"]["output"] == {"ok": 1, "by": "x"}
    assert final["output"] == {"got": {"ok": 1, "by": "x"}}


def test_a_signal_sent_before_the_wait_starts_is_kept_for_it(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    before = py("a", "gated", {"mark": str(mark), "tag": "a", "gate": str(gate)})
    eid = submit(db, swf(_wait_doc(mark, {"timeout": 60000}, before)))
    daemon()
    wait_until(lambda: events(mark, "start", "a"), 30, "a to start")
    assert node_status(db, eid, "w") is None
    out = fm(db, "signal", eid, "approval", "--data", '{"early": true}')
    assert out.returncode == 0, out.stderr
    assert "kept" in out.stdout
    gate.touch()
    rc, final = finish(db, eid)
    assert rc == 0 and final["status"] == "succeeded", final
    assert final["output"] == {"got": {"early": True}}


@pytest.mark.parametrize("on_timeout", ["error", "continue", "cancel"])
def test_wait_node_timeout(
    swf: Callable[..., Path],
    db: Path,
    tmp_path: Path,
    daemon: Callable[..., Any],
    on_timeout: str,
) -> None:
    mark = tmp_path / "marks"
    wait = {"timeout": 700, "onTimeout": on_timeout, "outputOnError": {"default": True}}
    eid = submit(db, swf(_wait_doc(mark, wait)))
    daemon()
    t0 = time.time()
    rc, final = finish(db, eid, timeout=30)
    took = time.time() - t0
    w = by_path(final)["w"]
    assert took >= 0.6, "the wait ended before its timeout"
    if on_timeout == "error":
        assert rc == 1 and final["status"] == "failed"
        assert w["status"] == "failed" and w["error"]["code"] == "TIMEOUT"
        assert final["error"]["code"] == "TIMEOUT"
        assert not events(mark, "record")
    elif on_timeout == "continue":
        assert rc == 0 and final["status"] == "succeeded", final
        assert w["status"] == "succeeded" and w["output"] == {"default": True}
        assert final["output"] == {"got": {"default": True}}
    else:
        assert rc == 0 and final["status"] == "succeeded", final
        assert w["status"] == "cancelled"
        assert by_path(final)["after"]["status"] == "skipped"
        assert not events(mark, "record")
    # A signal after the end is refused (the execution is finished).
    out = fm(db, "signal", eid, "approval")
    assert out.returncode == 1 and f"already {final['status']}" in out.stderr


# --- refusals -----------------------------------------------------------------------------


def test_refusals(swf: Callable[..., Path], db: Path, tmp_path: Path) -> None:
    mark = tmp_path / "marks"
    doc = {
        "name": "refuse",
        "settings": {"signalHandlers": {"priority_change": {"action": "custom", "handler": "h"}}},
        "nodes": [
            {"id": "w", "type": "wait", "signal": "approval", "timeout": 1},
            py("a", "work", {"mark": str(mark), "tag": "a"}),
        ],
        "edges": [],
        "handlers": [{"id": "h", "type": "transform", "expression": "1"}],
    }
    path = swf(doc)
    queued = submit(db, path)

    out = fm(db, "signal", queued, "bogus")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for accepted in ("pause", "resume", "cancel", "priority_change", "approval"):
        assert accepted in lines[0]
    assert "bogus" in lines[0]
    assert not signal_rows(db, queued), "a refused signal must not be stored"

    out = fm(db, "signal", "no-such-execution", "pause")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "no-such-execution" in out.stderr

    out = fm(db, "signal", queued, "pause", "--data", "{not json")
    assert out.returncode == 2 and "Traceback" not in out.stderr

    done = tmp_path / "done.json"
    done.write_text(
        json.dumps({"name": "done", "nodes": [{"id": "t", "type": "transform", "expression": "1"}]})
    )
    run = fm(db, "run", str(done), "--json")
    assert run.returncode == 0, run.stderr
    finished = json.loads(run.stdout)["id"]
    for cmd in (("pause", finished), ("cancel", finished), ("signal", finished, "resume")):
        out = fm(db, *cmd)
        assert out.returncode == 1, (cmd, out.stderr)
        assert "already succeeded" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert not signal_rows(db, finished)


# --- signals sent while no daemon runs ----------------------------------------------------


def test_signals_sent_without_a_daemon_are_queued_then_applied_in_order(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    eid = submit(db, swf(gated_chain(mark, gate)))
    out = fm(db, "pause", eid)
    assert out.returncode == 0, out.stderr
    assert "queued" in out.stdout
    out = fm(db, "--json", "resume", eid, "--data", '{"approved": true}')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "pending"
    rows = signal_rows(db, eid)
    assert [(r["type"], r["status"]) for r in rows] == [("pause", "pending"), ("resume", "pending")]

    daemon()
    wait_until(
        lambda: all(r["status"] != "pending" for r in signal_rows(db, eid)), 30, "both applied"
    )
    gate.touch()
    rc, final = finish(db, eid)
    assert rc == 0 and final["status"] == "succeeded", final
    rows = signal_rows(db, eid)
    assert [r["status"] for r in rows] == ["applied", "applied"]
    assert all(r["applied_at"] and r["outcome"] for r in rows)
    assert rows[0]["applied_at"] <= rows[1]["applied_at"]
    assert rows[0]["outcome"].startswith("paused")
    assert rows[1]["outcome"] == "resumed"
    for r in rows:
        assert len(signal_events(db, eid, r["id"])) == 1


def test_a_pause_queued_before_the_daemon_starts_holds_the_execution(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """The pause was committed before any supervisor saw the execution: when one
    starts, the execution is paused and nothing runs until the resume."""
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    eid = submit(db, swf(gated_chain(mark, gate)))
    out = fm(db, "pause", eid)
    assert out.returncode == 0 and "queued" in out.stdout, out.stdout + out.stderr
    daemon()
    sig = wait_until(
        lambda: (r := signal_rows(db, eid)[0])["status"] != "pending" and r, 30, "the pause"
    )
    assert sig["status"] == "applied", sig
    assert show(db, eid)["status"] == "paused"
    holds(lambda: not events(mark, "start"), QUIET, "nothing runs in a paused execution")
    gate.touch()
    ok(db, "resume", eid)
    rc, final = finish(db, eid)
    assert rc == 0 and final["status"] == "succeeded", final


# --- exactly once, across kills -----------------------------------------------------------


@pytest.mark.crash
@pytest.mark.parametrize("kill_when", ["at_once", "after_applied"])
def test_a_pause_is_applied_exactly_once_across_a_daemon_kill(
    swf: Callable[..., Path],
    db: Path,
    tmp_path: Path,
    daemon: Callable[..., Any],
    kill_when: str,
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    eid = submit(db, swf(gated_chain(mark, gate)))
    d = daemon()
    wait_until(lambda: events(mark, "start", "a"), 30, "a to start")
    if kill_when == "at_once":
        out = fm(db, "pause", eid, "--wait", "0")
        assert out.returncode == 0, out.stderr
        d.kill9()
    else:
        ok(db, "pause", eid)
        assert signal_rows(db, eid)[0]["status"] == "applied"
        d.kill9()
    applied_before = signal_rows(db, eid)[0]

    daemon()
    sig = wait_until(
        lambda: (r := signal_rows(db, eid)[0])["status"] == "applied" and r,
        30,
        "the pause to be applied",
    )
    if applied_before["status"] == "applied":
        # Committed before the kill: not applied a second time.
        assert sig["applied_at"] == applied_before["applied_at"]
        assert sig["outcome"] == applied_before["outcome"]
    assert sig["outcome"].startswith("paused")
    assert len(signal_events(db, eid, sig["id"])) == 1
    assert show(db, eid)["status"] == "paused"
    holds(
        lambda: exec_status(db, eid) == "paused" and not events(mark, "start", "b"),
        QUIET,
        "the execution stays paused",
    )

    gate.touch()
    ok(db, "resume", eid)
    rc, final = finish(db, eid)
    assert rc == 0 and final["status"] == "succeeded", final
    assert len(events(mark, "start", "b")) == 1
    assert by_path(final)["a"]["attempts"] == 1
    rows = signal_rows(db, eid)
    assert [(r["type"], r["status"]) for r in rows] == [
        ("pause", "applied"),
        ("resume", "applied"),
    ]
    for r in rows:
        assert len(signal_events(db, eid, r["id"])) == 1


def _bump_workflow(mark: Path, gate: Path) -> dict[str, Any]:
    return {
        "name": "bumps",
        "settings": {"signalHandlers": {"bump": {"action": "custom", "handler": "on_bump"}}},
        "nodes": [
            py("a", "gated", {"mark": str(mark), "tag": "a", "gate": str(gate)}),
            {"id": "b", "type": "transform", "expression": "signals.bump.result"},
        ],
        "edges": edges(("a", "b")),
        "handlers": [py("on_bump", "on_signal", {"mark": str(mark), "signal": "{{signal}}"})],
    }


def test_rapid_custom_signals_each_run_their_handler_and_the_latest_result_wins(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    eid = submit(db, swf(_bump_workflow(mark, gate)))
    daemon(workers=3)
    wait_until(lambda: events(mark, "start", "a"), 30, "a to start")
    for n in range(5):
        out = fm(db, "signal", eid, "bump", "--data", json.dumps({"n": n}), "--wait", "0")
        assert out.returncode == 0, out.stderr
    rows = signal_rows(db, eid)
    assert len(rows) == 5
    wait_until(
        lambda: all(r["result"] is not None for r in signal_rows(db, eid)),
        30,
        "every handler to finish",
    )
    gate.touch()
    rc, final = finish(db, eid)
    assert rc == 0 and final["status"] == "succeeded", final

    rows = signal_rows(db, eid)
    assert [r["status"] for r in rows] == ["applied"] * 5
    ran = [int(m["tag"]) for m in events(mark, "handler")]
    assert sorted(ran) == [r["id"] for r in rows], "each handler runs exactly once"
    for n, r in enumerate(rows):
        assert json.loads(r["result"]) == {"n": n, "signal": r["id"]}
        assert len(signal_events(db, eid, r["id"])) == 1
    assert by_path(final)["b"]["output"] == {"n": 4, "signal": rows[-1]["id"]}


def test_the_latest_custom_signal_result_wins_when_handlers_finish_out_of_order(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """``signals.<type>`` is the *latest signal's* entry (SPEC §8): a slow handler of
    an older signal that finishes last must not overwrite the newest one's result."""
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    doc = _bump_workflow(mark, gate)
    doc["handlers"] = [
        py(
            "on_bump",
            "gated",
            {"mark": str(mark), "tag": "{{signal.data.n}}", "gate": "{{signal.data.gate}}"},
        )
    ]
    eid = submit(db, swf(doc))
    daemon(workers=3)
    wait_until(lambda: events(mark, "start", "a"), 30, "a to start")
    g_old, g_new = tmp_path / "old", tmp_path / "new"
    ok(db, "signal", eid, "bump", "--data", json.dumps({"n": 1, "gate": str(g_old)}), "--wait", "0")
    ok(db, "signal", eid, "bump", "--data", json.dumps({"n": 2, "gate": str(g_new)}), "--wait", "0")
    wait_until(lambda: len(events(mark, "start")) == 3, 30, "both handlers to run")
    g_new.touch()  # the newer handler finishes first ...
    wait_until(lambda: signal_rows(db, eid)[1]["result"] is not None, 30, "the newer result")
    g_old.touch()  # ... the older one last
    wait_until(lambda: signal_rows(db, eid)[0]["result"] is not None, 30, "the older result")
    gate.touch()
    rc, final = finish(db, eid)
    assert rc == 0, final
    assert by_path(final)["b"]["output"]["tag"] == 2, by_path(final)["b"]["output"]


@pytest.mark.crash
def test_custom_signals_survive_a_daemon_kill_between_them(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """Five signals, the daemon killed -9 right after the third was sent. Every
    signal row ends applied exactly once; every handler ran at least once (a
    handler interrupted by the kill may run again); the scope holds the latest."""
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    eid = submit(db, swf(_bump_workflow(mark, gate)))
    d = daemon(workers=3)
    wait_until(lambda: events(mark, "start", "a"), 30, "a to start")
    for n in range(5):
        out = fm(db, "signal", eid, "bump", "--data", json.dumps({"n": n}), "--wait", "0")
        assert out.returncode == 0, out.stderr
        if n == 2:
            d.kill9()
            d = daemon(workers=3)
    wait_until(
        lambda: all(r["status"] == "applied" for r in signal_rows(db, eid)),
        30,
        "every signal to be applied",
    )
    rows = signal_rows(db, eid)
    assert len(rows) == 5
    wait_until(
        lambda: {int(m["tag"]) for m in events(mark, "handler")} >= {r["id"] for r in rows},
        30,
        "every signal's handler to run at least once",
    )
    wait_until(
        lambda: all(r["result"] is not None for r in signal_rows(db, eid)),
        30,
        "every signal's handler result to be recorded",
    )
    gate.touch()
    rc, final = finish(db, eid)
    assert rc == 0 and final["status"] == "succeeded", final
    rows = signal_rows(db, eid)
    for n, r in enumerate(rows):
        assert r["status"] == "applied" and r["applied_at"] is not None
        assert json.loads(r["result"]) == {"n": n, "signal": r["id"]}
        assert len(signal_events(db, eid, r["id"])) == 1, f"signal {r['id']} applied twice"
    assert by_path(final)["b"]["output"] == {"n": 4, "signal": rows[-1]["id"]}


@pytest.mark.crash
def test_a_handler_interrupted_by_a_daemon_kill_runs_again(
    swf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate, hgate = tmp_path / "marks", tmp_path / "gate", tmp_path / "hgate"
    doc = _bump_workflow(mark, gate)
    doc["handlers"] = [py("on_bump", "gated", {"mark": str(mark), "tag": "h", "gate": str(hgate)})]
    eid = submit(db, swf(doc))
    d = daemon()
    wait_until(lambda: events(mark, "start", "a"), 30, "a to start")
    ok(db, "signal", eid, "bump", "--data", '{"n": 1}', "--wait", "0")
    wait_until(lambda: events(mark, "start", "h"), 30, "the handler to start")
    d.kill9()
    hgate.touch()
    daemon()
    # b reads the handler's result: let a (and so b) go only once the re-run ended.
    wait_until(lambda: events(mark, "end", "h"), 30, "the handler to run again")
    gate.touch()
    rc, final = finish(db, eid)
    assert rc == 0 and final["status"] == "succeeded", final
    assert len(events(mark, "end", "h")) == 1, "the interrupted handler did not run again"
    sig = signal_rows(db, eid)[0]
    assert sig["status"] == "applied"
    assert json.loads(sig["result"] or "null") is not None
    assert by_path(final)["b"]["output"]["tag"] == "h"


def test_signals_reach_an_execution_run_by_fm_run(
    swf: Callable[..., Path], db: Path, tmp_path: Path
) -> None:
    """`fm run` in one terminal, `fm pause` / `fm resume` / `fm cancel` in another:
    the embedded supervisor applies them as a daemon does."""
    import os
    import subprocess
    import sys

    mark, gate = tmp_path / "marks", tmp_path / "gate"
    env = dict(os.environ, FM_DB=str(db), PYTHONPATH=str(ROOT))
    run = subprocess.Popen(
        [sys.executable, "-m", "fm_local", "run", str(swf(gated_chain(mark, gate))), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_until(lambda: events(mark, "start", "a"), 60, "a to start")
        eid = query(db, "SELECT id FROM executions")[0]["id"]
        out = fm(db, "pause", eid)
        assert out.returncode == 0 and "paused" in out.stdout, (out.stdout, out.stderr)
        assert exec_status(db, eid) == "paused"
        gate.touch()
        wait_until(lambda: node_status(db, eid, "a") == "succeeded", 30, "a to succeed")
        holds(
            lambda: not events(mark, "start", "b") and run.poll() is None,
            QUIET,
            "b must not start while the execution is paused",
        )
        out = fm(db, "resume", eid)
        assert out.returncode == 0 and "resumed" in out.stdout, (out.stdout, out.stderr)
        stdout, stderr = run.communicate(timeout=60)
        assert run.returncode == 0, stderr
        assert json.loads(stdout)["status"] == "succeeded"
        assert len(events(mark, "start", "b")) == 1
        assert [(r["type"], r["status"]) for r in signal_rows(db, eid)] == [
            ("pause", "applied"),
            ("resume", "applied"),
        ]

        # And a cancel stops a second run's running node.
        gate.unlink()
        run = subprocess.Popen(
            [sys.executable, "-m", "fm_local", "run", str(swf(gated_chain(mark, gate))), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        wait_until(lambda: len(events(mark, "start", "a")) == 2, 60, "a to start again")
        eid2 = query(db, "SELECT id FROM executions WHERE id != ?", (eid,))[0]["id"]
        out = fm(db, "cancel", eid2)
        assert out.returncode == 0, (out.stdout, out.stderr)
        stdout, stderr = run.communicate(timeout=60)
        assert run.returncode == 1 and json.loads(stdout)["status"] == "cancelled", stderr
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
