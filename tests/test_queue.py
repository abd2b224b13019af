"""Queue management (SPEC §8 "The queue"), end to end with real worker processes.

Dispatch order is observed, never assumed: the node functions (``QTASKS`` below,
written beside each workflow as ``qtasks.py``) append one JSON line
``{"tag", "t", "pid", "path"}`` to a mark file when they *start*, so with one worker
the mark file's line order is the order the queue handed tasks out.

Covered: the fifo/lifo/priority policies inside one execution and between the
executions of one workflow, ``set_priority`` signals, fair sharing between
workflows, ``settings.queue.timeout`` (QUEUE_TIMEOUT + retries / error strategy),
``settings.queue.maxSize`` (``fm submit`` "queue full", ``--wait-for-room``, loop
back-pressure), the dead-letter queue (``fm dlq ls/show/replay/purge``), ``fm queue``,
and examples/long_loop.json driven with pause / resume / cancel.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ROOT, exec_status, fm, python_node, query, read_marks, run_wf, show, wait_until

QUIET = 1.5  # seconds a negative check watches for something that must not happen
TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")

QTASKS = '''
"""Node functions for tests/test_queue.py (written beside each workflow)."""
import json
import os
import time
from pathlib import Path

from fm_local import NodeError


def _mark(mark, tag, ctx=None, **fields):
    line = json.dumps({"tag": tag, "t": time.time(), "pid": os.getpid(),
                       "path": ctx.nodePath if ctx is not None else None, **fields})
    with open(mark, "a") as f:
        f.write(line + "\\n")
        f.flush()


def step(mark, tag, seconds=0.0, gate="", ctx=None):
    """Marks its start, then sleeps ``seconds`` or (``gate``) waits for that file."""
    _mark(mark, tag, ctx)
    if gate:
        deadline = time.time() + 120
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.02)
    else:
        time.sleep(seconds)
    return {"tag": tag}


def noop(i=None):
    return i


def flaky(counter, value=None, fail_times=2, ctx=None):
    """Fails the first ``fail_times`` calls (counted in a file), then succeeds."""
    p = Path(counter)
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    if n < fail_times:
        raise NodeError(f"flaky failure {n + 1}", "TRANSIENT")
    return {"calls": n + 1, "value": value, "path": ctx.nodePath if ctx is not None else None}
'''


# --- helpers ----------------------------------------------------------------------------


@pytest.fixture
def qwf(wf: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    """Like ``wf``, with qtasks.py beside the workflow."""
    (tmp_path / "qtasks.py").write_text(QTASKS)
    return wf


py = partial(python_node, "qtasks")


marks = read_marks  # one reader for every mark file (tests/conftest.py)


def tags(path: Path) -> list[str]:
    return [m["tag"] for m in marks(path)]


def submit(db: Path, path: Path, *args: str) -> str:
    out = fm(db, "submit", str(path), *args)
    assert out.returncode == 0, out.stderr
    eid = out.stdout.strip()
    assert eid and "\n" not in eid, out.stdout
    return eid


def finish(db: Path, eid: str, timeout: float = 60) -> dict[str, Any]:
    """Block until ``eid`` ends (``fm wait``); its ``fm show --json``."""
    fm(db, "wait", eid, "--timeout", str(timeout), timeout=timeout + 30)
    final = show(db, eid)
    assert final["status"] in TERMINAL, final["status"]
    return final


def nodes_by_path(final: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["path"]: n for n in final["nodes"]}


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- queue.priority inside one execution -------------------------------------------------

PRIOS = [1, 5, 3, 5, 0, 9]  # n0..n5
EXPECTED_INSIDE = {
    "fifo": ["n0", "n1", "n2", "n3", "n4", "n5"],
    "lifo": ["n5", "n4", "n3", "n2", "n1", "n0"],
    # higher priority first, document order among equals (n1 before n3)
    "priority": ["n5", "n1", "n3", "n2", "n0", "n4"],
}


@pytest.mark.parametrize("policy", ["fifo", "lifo", "priority"])
def test_policy_orders_ready_nodes_of_one_execution(
    qwf: Callable[..., Path], db: Path, tmp_path: Path, policy: str
) -> None:
    """One worker; ``first`` blocks briefly, then six independent nodes become ready
    at the same instant. The worker starts them in the policy's order."""
    mark = tmp_path / "marks"
    nodes = [py("first", "step", {"mark": str(mark), "tag": "first", "seconds": 0.3})]
    nodes += [
        py(f"n{i}", "step", {"mark": str(mark), "tag": f"n{i}"}, priority=p)
        for i, p in enumerate(PRIOS)
    ]
    doc = {
        "name": f"inside-{policy}",
        "settings": {"queue": {"priority": policy}},
        "nodes": nodes,
        "edges": [{"source": "first", "target": f"n{i}"} for i in range(len(PRIOS))],
    }
    res = run_wf(qwf(doc), db, workers=1)
    assert res["status"] == "succeeded", res
    order = tags(mark)
    assert order[0] == "first"
    assert order[1:] == EXPECTED_INSIDE[policy], f"{policy}: started {order[1:]}"


# --- queue.priority between executions of one workflow -----------------------------------

SUBMITS = [(0, "p0"), (5, "p5"), (1, "p1"), (9, "p9")]
EXPECTED_BETWEEN = {
    "fifo": ["p0", "p5", "p1", "p9"],
    "lifo": ["p9", "p1", "p5", "p0"],
    "priority": ["p9", "p5", "p1", "p0"],
}


def _one_step_workflow(mark: Path, policy: str, handlers: dict[str, Any] | None = None) -> dict:
    settings: dict[str, Any] = {"queue": {"priority": policy}}
    if handlers:
        settings["signalHandlers"] = handlers
    return {
        "name": f"between-{policy}",
        "settings": settings,
        "nodes": [
            py(
                "step",
                "step",
                {"mark": str(mark), "tag": "{{input.tag}}", "gate": "{{input.gate}}"},
            )
        ],
        "edges": [],
    }


def _blocked_daemon(
    db: Path, path: Path, mark: Path, gate: Path, daemon: Callable[..., Any]
) -> str:
    """A daemon with one worker, held by a first execution until ``gate`` exists."""
    daemon(workers=1)
    blocker = submit(db, path, "--input", json.dumps({"tag": "blocker", "gate": str(gate)}))
    wait_until(lambda: "blocker" in tags(mark), 30, "the blocking execution to start")
    return blocker


def _submit_admitted(db: Path, path: Path, prio: int, tag: str) -> str:
    """Submit one execution and wait until the daemon has taken it in (``running``),
    so each execution reaches the engine on its own, in submit order."""
    eid = submit(db, path, "--priority", str(prio), "--input", json.dumps({"tag": tag, "gate": ""}))
    wait_until(lambda: exec_status(db, eid) == "running", 20, f"{tag} to be admitted")
    return eid


@pytest.mark.parametrize(
    "policy",
    [
        "fifo",
        "lifo",
        "priority",
    ],
)
def test_policy_orders_executions_of_one_workflow(
    qwf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any], policy: str
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    path = qwf(_one_step_workflow(mark, policy))
    blocker = _blocked_daemon(db, path, mark, gate, daemon)
    eids = [_submit_admitted(db, path, prio, tag) for prio, tag in SUBMITS]
    assert "p0" not in tags(mark), "a queued execution started while the worker was busy"
    gate.touch()
    for eid in [blocker, *eids]:
        assert finish(db, eid)["status"] == "succeeded"
    order = [t for t in tags(mark) if t != "blocker"]
    assert order == EXPECTED_BETWEEN[policy], f"{policy}: started {order}"


def test_set_priority_signal_moves_a_queued_execution_ahead(
    qwf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    doc = _one_step_workflow(mark, "priority", {"priority_change": {"action": "set_priority"}})
    path = qwf(doc)
    blocker = _blocked_daemon(db, path, mark, gate, daemon)
    x = _submit_admitted(db, path, 5, "x")
    y = _submit_admitted(db, path, 1, "y")
    out = fm(db, "signal", y, "priority_change", "--data", '{"priority": 10}')
    assert out.returncode == 0, out.stderr
    assert show(db, y)["priority"] == 10
    gate.touch()
    for eid in (blocker, x, y):
        assert finish(db, eid)["status"] == "succeeded"
    order = [t for t in tags(mark) if t != "blocker"]
    assert order == ["y", "x"], f"y was raised to priority 10 but the order is {order}"


# --- fair sharing between workflows ------------------------------------------------------


def test_two_workflows_share_the_workers_fairly(
    qwf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark = tmp_path / "marks"

    def looped(name: str) -> dict[str, Any]:
        body = py("work", "step", {"mark": str(mark), "tag": name, "seconds": 0.05})
        return {
            "name": name,
            "nodes": [
                {
                    "id": "each",
                    "type": "loop",
                    "loopType": "count",
                    "count": 40,
                    "parallel": True,
                    "body": {"nodes": [body], "edges": []},
                }
            ],
            "edges": [],
        }

    a = submit(db, qwf(looped("wf_a")))
    b = submit(db, qwf(looped("wf_b")))
    daemon(workers=2)
    for eid in (a, b):
        assert finish(db, eid)["status"] == "succeeded"
    starts = sorted(marks(mark), key=lambda m: m["t"])
    assert len(starts) == 80
    first = [m["tag"] for m in starts[:20]]
    assert first.count("wf_a") >= 5 and first.count("wf_b") >= 5, first
    seq = [m["tag"] for m in starts]
    last_a, last_b = len(seq) - 1 - seq[::-1].index("wf_a"), len(seq) - 1 - seq[::-1].index("wf_b")
    assert seq.index("wf_b") < last_a and seq.index("wf_a") < last_b, seq


# --- settings.queue.timeout --------------------------------------------------------------


def _queue_timeout_doc(mark: Path, late: dict[str, Any], n_late: int = 1) -> dict[str, Any]:
    """``long`` holds the only worker for 2 s; the ``late`` nodes wait behind it with
    settings.queue.timeout 500 ms."""
    nodes = [py("long", "step", {"mark": str(mark), "tag": "long", "seconds": 2.0})]
    names = ["late"] if n_late == 1 else [f"late{i}" for i in range(n_late)]
    nodes += [py(n, "step", {"mark": str(mark), "tag": n}, **late) for n in names]
    return {
        "name": "queue-timeout",
        "settings": {"queue": {"timeout": 500}},
        "nodes": nodes,
        "edges": [],
    }


def test_queue_timeout_fails_the_waiting_node(
    qwf: Callable[..., Path], db: Path, tmp_path: Path
) -> None:
    mark = tmp_path / "marks"
    res = run_wf(qwf(_queue_timeout_doc(mark, {})), db, workers=1)
    assert res["status"] == "failed", res
    assert res["error"]["code"] == "QUEUE_TIMEOUT", res["error"]
    final = nodes_by_path(show(db, res["id"]))
    assert final["late"]["status"] == "failed"
    assert final["late"]["error"]["code"] == "QUEUE_TIMEOUT"
    assert final["long"]["status"] == "succeeded"  # running nodes finish
    assert "late" not in tags(mark), "the timed-out node ran anyway"
    # A queue timeout is a failure for good: it is a dead letter too (SPEC §8).
    dead = json.loads(fm(db, "dlq", "ls", "--json").stdout)
    assert [(d["path"], d["error"]["code"]) for d in dead] == [("late", "QUEUE_TIMEOUT")]


def test_queue_timeout_is_retried(qwf: Callable[..., Path], db: Path, tmp_path: Path) -> None:
    mark = tmp_path / "marks"
    retry = {"maxAttempts": 2, "initialDelay": 2500, "backoff": "fixed"}
    res = run_wf(qwf(_queue_timeout_doc(mark, {"retry": retry})), db, workers=1)
    assert res["status"] == "succeeded", res
    late = nodes_by_path(show(db, res["id"]))["late"]
    assert late["status"] == "succeeded" and late["attempts"] == 2, late
    rows = query(
        db,
        "SELECT attempt, status, error FROM attempts WHERE execution_id=? AND path='late' "
        "ORDER BY seq",
        (res["id"],),
    )
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "failed"), (2, "succeeded")]
    assert json.loads(rows[0]["error"])["code"] == "QUEUE_TIMEOUT"
    assert tags(mark).count("late") == 1


def test_queue_timeout_with_error_strategy_continue(
    qwf: Callable[..., Path], db: Path, tmp_path: Path
) -> None:
    mark = tmp_path / "marks"
    doc = _queue_timeout_doc(mark, {"errorStrategy": "continue", "outputOnError": "late!"})
    res = run_wf(qwf(doc), db, workers=1)
    assert res["status"] == "succeeded", res
    late = nodes_by_path(show(db, res["id"]))["late"]
    assert late["status"] == "succeeded" and late["output"] == "late!"
    assert late["error"]["code"] == "QUEUE_TIMEOUT"  # kept on the record


def test_queue_timeout_applies_to_a_deep_queue(
    qwf: Callable[..., Path], db: Path, tmp_path: Path
) -> None:
    """Four nodes wait 2 s behind ``long`` on one worker: every one of them waited in
    the queue past 500 ms, however the supervisor holds its backlog."""
    mark = tmp_path / "marks"
    doc = _queue_timeout_doc(mark, {"errorStrategy": "continue"}, n_late=4)
    res = run_wf(qwf(doc), db, workers=1)
    assert res["status"] == "succeeded", res
    final = nodes_by_path(show(db, res["id"]))
    codes = {p: (final[p]["error"] or {}).get("code") for p in final if p.startswith("late")}
    assert codes == {f"late{i}": "QUEUE_TIMEOUT" for i in range(4)}, codes


# --- settings.queue.maxSize --------------------------------------------------------------


def test_submit_beyond_max_size_fails_or_waits_for_room(
    qwf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark = tmp_path / "marks"
    doc = {
        "name": "small-queue",
        "settings": {"queue": {"maxSize": 2}},
        "nodes": [py("step", "step", {"mark": str(mark), "tag": "s"})],
        "edges": [],
    }
    path = qwf(doc)
    first = [submit(db, path), submit(db, path)]
    out = fm(db, "submit", str(path))
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert "queue full" in out.stderr and "Traceback" not in out.stderr
    assert out.stdout.strip() == ""
    assert len(query(db, "SELECT id FROM executions")) == 2

    t0 = time.monotonic()
    # It gives up (the subprocess timeout is only a hang guard) after waiting its 1 s.
    out = fm(db, "submit", str(path), "--wait-for-room", "--timeout", "1", timeout=60)
    took = time.monotonic() - t0
    assert out.returncode == 1 and "queue full" in out.stderr, out.stderr
    assert took >= 1.0, took
    assert len(query(db, "SELECT id FROM executions")) == 2

    # A daemon comes up 0.5 s later and takes the queued executions: room is made.
    starter = threading.Timer(0.5, lambda: daemon(workers=1))
    starter.start()
    try:
        t0 = time.monotonic()
        out = fm(db, "submit", str(path), "--wait-for-room", timeout=60)
        took = time.monotonic() - t0
    finally:
        starter.join()
    assert out.returncode == 0, out.stderr
    eid = out.stdout.strip()
    assert took >= 0.5, took
    for e in [*first, eid]:
        assert finish(db, e)["status"] == "succeeded"


def test_loop_back_pressure_bounds_open_items(
    qwf: Callable[..., Path], db: Path, daemon: Callable[..., Any]
) -> None:
    doc = {
        "name": "big-loop",
        "settings": {"queue": {"maxSize": 100}},
        "nodes": [
            {
                "id": "each",
                "type": "loop",
                "loopType": "count",
                "count": 5000,
                "parallel": True,
                "body": {"nodes": [py("work", "noop", {"i": "{{index}}"})], "edges": []},
            }
        ],
        "edges": [],
    }
    eid = submit(db, qwf(doc))
    daemon(workers=2)
    con = sqlite3.connect(str(db), timeout=30)
    samples: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            # Open items: their rows once written, and the body tasks counted in
            # queue_depth before (first writes wait; one task per open item).
            n = con.execute(
                "SELECT count(*) FROM node_runs WHERE execution_id=? AND node_type='item' "
                "AND status='running'",
                (eid,),
            ).fetchone()[0]
            held = con.execute("SELECT coalesce(sum(tasks), 0) FROM queue_depth").fetchone()[0]
            samples.append(max(n, held))
            st = con.execute("SELECT status FROM executions WHERE id=?", (eid,)).fetchone()[0]
            if st in TERMINAL:
                break
            time.sleep(0.02)  # the sampling period, not a wait for a condition
    finally:
        con.close()
    assert exec_status(db, eid) == "succeeded"
    assert max(samples) <= 100, f"up to {max(samples)} items open at once (maxSize 100)"
    assert max(samples) >= 20, f"sampling saw at most {max(samples)} open items"
    assert len([s for s in samples if s]) >= 5, "too few samples while the loop ran"
    done = query(
        db,
        "SELECT count(*) AS n FROM node_runs WHERE execution_id=? AND node_type='item' "
        "AND status='succeeded'",
        (eid,),
    )[0]["n"]
    assert done == 5000


# --- the dead-letter queue ---------------------------------------------------------------


def _dlq_doc(counter: Path, dlq: bool = True) -> dict[str, Any]:
    return {
        "name": "dead-letters",
        "settings": {"queue": {"deadLetterQueue": dlq}},
        "nodes": [
            {"id": "prep", "type": "transform", "expression": "{'x': input.n * 2}"},
            py(
                "charge",
                "flaky",
                {"counter": str(counter), "value": "{{prep.x}}", "fail_times": 2},
                retry={"maxAttempts": 2, "initialDelay": 10},
            ),
        ],
        "edges": [{"source": "prep", "target": "charge"}],
    }


def test_dead_letter_ls_show_replay_purge(
    qwf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    counter = tmp_path / "counter"
    res = run_wf(qwf(_dlq_doc(counter)), db, input={"n": 21}, workers=1)
    assert res["status"] == "failed", res
    assert counter.read_text() == "2"

    out = fm(db, "dlq", "ls")
    assert out.returncode == 0, out.stderr
    assert res["id"] in out.stdout and "charge" in out.stdout
    rows = json.loads(fm(db, "dlq", "ls", "--json").stdout)
    assert len(rows) == 1
    dl = rows[0]
    assert dl["executionId"] == res["id"] and dl["path"] == "charge"
    assert dl["replayedAs"] is None

    out = fm(db, "dlq", "show", str(dl["id"]))
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["input"]["args"] == {"counter": str(counter), "value": 42, "fail_times": 2}
    assert shown["error"]["code"] == "TRANSIENT" and "flaky failure 2" in shown["error"]["message"]
    assert shown["attempts"] == 2
    assert fm(db, "dlq", "show", "999").returncode == 2

    out = fm(db, "dlq", "replay", str(dl["id"]))
    assert out.returncode == 0, out.stderr
    new = out.stdout.strip()
    assert new and new != res["id"] and "\n" not in new
    daemon(workers=1)
    final = finish(db, new)
    assert final["status"] == "succeeded", final
    assert [n["path"] for n in final["nodes"]] == ["charge"], "the replay ran more than the node"
    assert final["nodes"][0]["output"]["value"] == 42  # the recorded input, not re-derived
    assert final["nodes"][0]["output"]["calls"] == 3
    assert counter.read_text() == "3"

    rows = json.loads(fm(db, "dlq", "ls", "--json").stdout)
    assert rows[0]["replayedAs"] == new
    assert new in fm(db, "dlq", "ls").stdout

    out = fm(db, "dlq", "purge", input="")  # no terminal, no --yes
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "--yes" in out.stderr and "Traceback" not in out.stderr
    assert len(json.loads(fm(db, "dlq", "ls", "--json").stdout)) == 1
    out = fm(db, "dlq", "purge", "--yes")
    assert out.returncode == 0, out.stderr
    assert json.loads(fm(db, "dlq", "ls", "--json").stdout) == []
    assert "no dead letters" in fm(db, "dlq", "ls").stdout


def test_no_dead_letter_when_the_queue_has_none(
    qwf: Callable[..., Path], db: Path, tmp_path: Path
) -> None:
    res = run_wf(qwf(_dlq_doc(tmp_path / "counter", dlq=False)), db, input={"n": 1}, workers=1)
    assert res["status"] == "failed", res
    assert query(db, "SELECT * FROM dead_letters") == []
    assert json.loads(fm(db, "dlq", "ls", "--json").stdout) == []


def test_dead_letter_replay_into_its_still_running_execution(
    qwf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate, counter = tmp_path / "marks", tmp_path / "gate", tmp_path / "counter"
    doc = {
        "name": "replay-running",
        "nodes": [
            py("hold", "step", {"mark": str(mark), "tag": "hold", "gate": str(gate)}),
            py(
                "charge",
                "flaky",
                {"counter": str(counter), "value": 7, "fail_times": 1},
                errorStrategy="continue",
            ),
        ],
        "edges": [],
    }
    eid = submit(db, qwf(doc))
    daemon(workers=2)
    wait_until(lambda: json.loads(fm(db, "dlq", "ls", "--json").stdout), 30, "a dead letter")
    assert exec_status(db, eid) == "running"
    dl = json.loads(fm(db, "dlq", "ls", "--json").stdout)[0]
    out = fm(db, "dlq", "replay", str(dl["id"]))
    assert out.returncode == 0, out.stderr
    wait_until(lambda: counter.exists() and counter.read_text() == "2", 30, "the replay to run")
    gate.touch()
    finish(db, eid)
    assert [r["id"] for r in query(db, "SELECT id FROM executions")] == [eid]


# --- fm queue ----------------------------------------------------------------------------


def test_fm_queue_reports_tasks_executions_and_dead_letters(
    qwf: Callable[..., Path], db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    mark, gate = tmp_path / "marks", tmp_path / "gate"
    failing = run_wf(qwf(_dlq_doc(tmp_path / "counter")), db, input={"n": 1}, workers=1)
    assert failing["status"] == "failed"
    doc = {
        "name": "queue-view",
        "settings": {"queue": {"priority": "priority"}},
        "nodes": [
            py("hold", "step", {"mark": str(mark), "tag": "hold", "gate": str(gate)}, priority=3),
            py("b", "step", {"mark": str(mark), "tag": "b"}, priority=1),
            py("c", "step", {"mark": str(mark), "tag": "c"}, priority=1),
        ],
        "edges": [],
    }
    eid = submit(db, qwf(doc))
    before = json.loads(fm(db, "queue", "--json").stdout)
    assert before == {"tasks": [], "queuedExecutions": 1, "deadLetters": 1}
    assert "executions waiting to start: 1; dead letters: 1" in fm(db, "queue").stdout
    daemon(workers=1)
    wait_until(lambda: "hold" in tags(mark), 30, "hold to start")
    want = [
        {"status": "queued", "priority": 1, "tasks": 2},
        {"status": "running", "priority": 3, "tasks": 1},
    ]
    wait_until(
        lambda: json.loads(fm(db, "queue", "--json").stdout)["tasks"] == want,
        15,
        "one running and two queued tasks in fm queue --json",
    )
    now = json.loads(fm(db, "queue", "--json").stdout)
    assert now == {"tasks": want, "queuedExecutions": 0, "deadLetters": 1}
    human = fm(db, "queue")
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert lines[0].split() == ["STATE", "PRIORITY", "TASKS"]
    assert lines[1].split() == ["queued", "1", "2"] and lines[2].split() == ["running", "3", "1"]
    gate.touch()
    assert finish(db, eid)["status"] == "succeeded"
    wait_until(lambda: json.loads(fm(db, "queue", "--json").stdout)["tasks"] == [], 10)


# --- examples/long_loop.json: pause, resume with data, cancel -----------------------------


def _started_items(db: Path, eid: str) -> int:
    return query(
        db,
        "SELECT count(*) AS n FROM node_runs WHERE execution_id=? AND node_id='process' "
        "AND started_at IS NOT NULL",
        (eid,),
    )[0]["n"]


def _running(db: Path, eid: str) -> list[dict[str, Any]]:
    return query(
        db,
        "SELECT path, worker_pid FROM node_runs WHERE execution_id=? AND node_id='process' "
        "AND status='running'",
        (eid,),
    )


def test_long_loop_example_runs_to_the_end_with_a_small_input(db: Path, tmp_path: Path) -> None:
    res = run_wf(ROOT / "examples" / "long_loop.json", db, {"count": 12, "seconds": 0.01}, 2)
    assert res["status"] == "succeeded", res
    assert res["output"] == {
        "summary": {"items": 12, "sumOfSquares": sum(i * i for i in range(12)), "note": None}
    }
    logs = fm(db, "logs", res["id"]).stdout
    assert sum("processing item-" in line for line in logs.splitlines()) == 12


def test_long_loop_example_pause_resume_cancel(
    db: Path, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    # A copy of the example (its tasks module beside it), run as the README tour runs it.
    for name in ("long_loop.json", "long_tasks.py"):
        shutil.copy(ROOT / "examples" / name, tmp_path / name)
    eid = submit(db, tmp_path / "long_loop.json")
    daemon(workers=4)
    wait_until(lambda: _started_items(db, eid) >= 8, 30, "some items to start")

    out = fm(db, "pause", eid, "--reason", "Awaiting approval")
    assert out.returncode == 0, out.stderr
    assert exec_status(db, eid) == "paused"
    # Running items finish (0.3 s each); then nothing new starts.
    wait_until(lambda: not _running(db, eid), 10, "the running items to finish")
    frozen = _started_items(db, eid)
    assert 8 <= frozen < 200
    end = time.monotonic() + QUIET
    while time.monotonic() < end:
        assert _started_items(db, eid) == frozen, "an item started while paused"
        assert exec_status(db, eid) == "paused"
        time.sleep(0.05)

    out = fm(db, "resume", eid, "--data", '{"approved": true, "note": "go on"}')
    assert out.returncode == 0, out.stderr
    assert exec_status(db, eid) == "running"
    wait_until(lambda: _started_items(db, eid) >= frozen + 4, 20, "items to start again")
    sig = query(
        db, "SELECT data, status FROM signals WHERE execution_id=? AND type='resume'", (eid,)
    )
    assert [(json.loads(r["data"]), r["status"]) for r in sig] == [
        ({"approved": True, "note": "go on"}, "applied")
    ]

    wait_until(lambda: _running(db, eid), 20, "items running")
    out = fm(db, "cancel", eid, "--reason", "User requested cancellation")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: exec_status(db, eid) == "cancelled", 20, "the execution to be cancelled")
    final = show(db, eid)
    assert final["status"] == "cancelled"
    assert not [n for n in final["nodes"] if n["status"] in ("running", "queued")]
    assert _started_items(db, eid) < 200
    # The processes that were running items when the cancel came were stopped.
    stopped = query(
        db,
        "SELECT path, worker_pid FROM node_runs WHERE execution_id=? AND node_id='process' "
        "AND status='cancelled' AND started_at IS NOT NULL AND worker_pid IS NOT NULL",
        (eid,),
    )
    assert stopped, "no running item was cancelled"
    pids = {r["worker_pid"] for r in stopped}
    wait_until(lambda: all(process_gone(p) for p in pids), 15, "the item processes to exit")
    assert "Traceback" not in db.with_suffix(".daemon.log").read_text()
    assert fm(db, "wait", eid).returncode == 1
