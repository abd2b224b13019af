"""Crash tests: real daemons, real worker processes, real ``kill -9``.

What they check (DESIGN.md "Guarantees", SPEC §6 "Infrastructure interruptions"):
a node interrupted by the death of its worker or of the supervisor is re-run
without spending an attempt, at most ``settings.recoveryAttempts`` times; a node
recorded as finished is never re-run; timers keep their due times; workers die
with the supervisor; a restarted daemon dispatches again (how quickly is a figure of
``make bench``, not a test: a busy machine is slow, not wrong).

Node functions live in tests/crashtasks.py (copied beside each workflow); they
append ``{path, pid, t}`` lines to a mark file, the tests' view of what really ran.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import HERE, exec_status, query, read_marks, wait_until

from fm_local import api
from fm_local.store.verify import verify

pytestmark = pytest.mark.crash


# --- helpers ----------------------------------------------------------------------------


@pytest.fixture
def cwf(wf: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    """Like ``wf``, with crashtasks.py beside the workflow as well as fmtasks.py."""
    (tmp_path / "crashtasks.py").write_text((HERE / "crashtasks.py").read_text())
    return wf


def py(nid: str, call: str, **kw: Any) -> dict[str, Any]:
    node: dict[str, Any] = {"id": nid, "type": "python", "call": call}
    node.update(kw)
    return node


marks = read_marks  # one reader for every mark file (tests/conftest.py)


def node_run(db: Path, eid: str, path: str) -> dict[str, Any] | None:
    rows = query(db, "SELECT * FROM node_runs WHERE execution_id=? AND path=?", (eid, path))
    return rows[0] if rows else None


def attempt_rows(db: Path, eid: str, path: str) -> list[dict[str, Any]]:
    return query(
        db, "SELECT * FROM attempts WHERE execution_id=? AND path=? ORDER BY seq", (eid, path)
    )


def assert_verified(db: Path) -> None:
    """The store's invariants hold after the crashes (fm verify: docs/maintenance.md)."""
    found = verify(db)
    assert not found, "fm verify: " + "; ".join(v.line() for v in found)


def code_of(error_json: str | None) -> str | None:
    return None if error_json is None else json.loads(error_json).get("code")


def worker_procs(daemon_pid: int, mark_pids: Iterable[int] = ()) -> list[psutil.Process]:
    """The daemon's worker processes now: its children, plus the pids seen in marks
    (which must be among them). psutil.Process objects remember their create time,
    so a recycled pid is not mistaken for a survivor."""
    children = {p.pid: p for p in psutil.Process(daemon_pid).children(recursive=True)}
    stray = set(mark_pids) - set(children)
    assert not stray, f"mark pids {stray} are not children of daemon {daemon_pid}"
    return list(children.values())


def is_gone(p: psutil.Process) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_all_die(procs: list[psutil.Process], timeout: float = 20.0) -> None:
    """Workers die with their supervisor: poll until every one is gone.

    PR_SET_PDEATHSIG stops them at once; the deadline is only a hang guard, wide
    enough for a machine at load 10 on 2 cores. "At once, not at the end of the
    node" is shown by nodes far longer than it (see _supervisor_killed_mid_node)."""
    try:
        wait_until(lambda: all(is_gone(p) for p in procs), timeout, "workers to die")
    except AssertionError:
        alive = [p.pid for p in procs if not is_gone(p)]
        raise AssertionError(f"worker processes {alive} outlived their killed daemon") from None


def kill_daemon(d: Any) -> tuple[float, list[psutil.Process]]:
    """``kill -9`` the daemon; returns the time it was dead and its workers then."""
    procs = worker_procs(d.proc.pid)
    d.kill9()
    return time.time(), procs


# --- 1. a worker killed mid-node ---------------------------------------------------------


def test_worker_killed_mid_node_is_rerun_as_a_recovery(cwf, db, daemon, tmp_path):
    mark = tmp_path / "marks"
    doc = {
        "name": "worker-kill",
        "nodes": [
            py("a", "crashtasks:start_sleep", args={"mark": str(mark), "first": 30, "then": 0.1})
        ],
    }
    d = daemon(workers=2)
    eid = api.submit(cwf(doc), db=db)
    first = wait_until(lambda: marks(mark), 20, "node a to start")[0]
    assert first["path"] == "a"
    # The mark's pid is the worker process that runs the node, a child of the daemon.
    assert first["pid"] in {p.pid for p in worker_procs(d.proc.pid)}

    os.kill(first["pid"], signal.SIGKILL)
    res = api.wait(eid, db=db, timeout=30)

    assert res["status"] == "succeeded", res
    runs = marks(mark)
    assert [m["run"] for m in runs] == [1, 2]
    assert runs[1]["pid"] != first["pid"]
    assert res["output"] == {"a": {"pid": runs[1]["pid"], "run": 2}}

    nr = node_run(db, eid, "a")
    assert nr is not None
    assert nr["status"] == "succeeded"
    assert nr["recoveries"] == 1
    assert nr["attempts"] == 1  # a crash does not spend an attempt

    rows = attempt_rows(db, eid, "a")
    summary = [(r["seq"], r["attempt"], r["kind"], r["status"]) for r in rows]
    assert summary == [(1, 1, "attempt", "failed"), (2, 1, "recovery", "succeeded")], rows
    assert code_of(rows[0]["error"]) == "WORKER_CRASH"
    assert rows[0]["worker_pid"] == first["pid"]
    assert rows[0]["finished_at"] is not None
    assert rows[1]["worker_pid"] == runs[1]["pid"]
    assert rows[1]["error"] is None
    assert d.proc.poll() is None, "the daemon must survive its worker's death"
    assert_verified(db)


# --- 2. the daemon killed several times during a wide execution -------------------------

BRANCHES = 5
CHAIN = 12
KILLS = 4
SEED = 20240611


def chaos_doc(mark: Path, rng: random.Random) -> dict[str, Any]:
    """start → BRANCHES chains of CHAIN sleeping nodes → merge."""
    m = str(mark)
    nodes = [py("start", "crashtasks:step", args={"mark": m, "seconds": 0.05})]
    edges = []
    for b in range(BRANCHES):
        prev = "start"
        for i in range(CHAIN):
            nid = f"b{b}_{i}"
            secs = round(rng.uniform(0.05, 0.1), 3)
            nodes.append(py(nid, "crashtasks:step", args={"mark": m, "seconds": secs}))
            edges.append({"source": prev, "target": nid})
            prev = nid
        edges.append({"source": prev, "target": "merge"})
    nodes.append({"id": "merge", "type": "merge"})
    # A node unlucky enough to be running at every kill must not exhaust its
    # recoveries (default 3): this test is about re-running, not about the limit.
    return {"name": "chaos", "settings": {"recoveryAttempts": 10}, "nodes": nodes, "edges": edges}


def test_daemon_killed_repeatedly_finished_nodes_never_rerun(cwf, db, daemon, tmp_path):
    rng = random.Random(SEED)
    mark = tmp_path / "marks"
    doc = chaos_doc(mark, rng)
    worker_paths = {n["id"] for n in doc["nodes"] if n["type"] == "python"}
    all_paths = {n["id"] for n in doc["nodes"]}
    assert len(worker_paths) >= 50

    d = daemon(workers=2)
    eid = api.submit(cwf(doc), db=db)
    kills: list[tuple[float, set[str]]] = []
    life_start = 0.0
    for _ in range(KILLS):
        # Let this daemon make some progress, then kill it at a random moment.
        seen = len([x for x in marks(mark) if x["t"] > life_start])
        wait_until(
            lambda s=seen, t=life_start: len([x for x in marks(mark) if x["t"] > t]) > s,
            20,
            "progress after a restart",
        )
        time.sleep(rng.uniform(0.02, 0.3))
        assert exec_status(db, eid) == "running", "the execution ended before the kill"
        mark_pids = {x["pid"] for x in marks(mark) if x["t"] > life_start}
        procs = worker_procs(d.proc.pid, mark_pids)
        d.kill9()
        t_kill = time.time()
        done = {
            r["path"]
            for r in query(
                db,
                "SELECT path FROM node_runs WHERE execution_id=? AND status='succeeded'",
                (eid,),
            )
        }
        kills.append((t_kill, done))
        assert_all_die(procs)
        life_start = time.time()
        d = daemon(workers=2)

    res = api.wait(eid, db=db, timeout=60)
    assert res["status"] == "succeeded", res
    assert set(res["output"]["merge"]) == {f"b{b}_{CHAIN - 1}" for b in range(BRANCHES)}

    rows = query(db, "SELECT path, status FROM node_runs WHERE execution_id=?", (eid,))
    assert sorted(r["path"] for r in rows) == sorted(all_paths), "one row per node instance"
    assert {r["status"] for r in rows} == {"succeeded"}
    assert query(db, "SELECT count(*) AS n FROM queue WHERE execution_id=?", (eid,))[0]["n"] == 0
    assert query(db, "PRAGMA integrity_check")[0]["integrity_check"] == "ok"

    final = marks(mark)
    finished = [x for x in final if x["phase"] == "done"]
    started = [x for x in final if x["phase"] == "start"]
    assert {x["path"] for x in finished} == worker_paths, "every node ran to its end"
    assert any(done for _, done in kills), "no kill came after a committed result"
    for t_kill, done in kills:
        rerun = sorted({x["path"] for x in final if x["path"] in done and x["t"] > t_kill})
        assert not rerun, f"finished nodes were re-run after the kill at {t_kill}: {rerun}"

    recoveries = query(
        db, "SELECT sum(recoveries) AS n FROM node_runs WHERE execution_id=?", (eid,)
    )[0]["n"]
    print(
        f"\nchaos: {len(worker_paths)} worker nodes, {KILLS} kills, {len(started)} starts, "
        f"{len(finished)} completions ({len(finished) - len(worker_paths)} completed twice), "
        f"recoveries recorded: {recoveries}, committed succeeded at each kill: "
        f"{[len(done) for _, done in kills]}"
    )
    assert_verified(db)


# --- 3. a node that kills its worker every time -----------------------------------------


def test_node_crashing_every_time_fails_after_recovery_attempts(cwf, db, daemon, tmp_path):
    counter = tmp_path / "crash.count"
    mark = tmp_path / "marks"
    crasher = {
        "name": "crasher",
        "settings": {"recoveryAttempts": 2},
        "nodes": [py("boom", "fmtasks:crash", args={"counter": str(counter)})],
    }
    bystander = {
        "name": "bystander",
        "nodes": [
            py(f"s{i}", "crashtasks:step", args={"mark": str(mark), "seconds": 0.2})
            for i in range(4)
        ],
        "edges": [{"source": f"s{i}", "target": f"s{i + 1}"} for i in range(3)],
    }
    d = daemon(workers=2)
    pa, pb = cwf(crasher), cwf(bystander)
    ea = api.submit(pa, db=db)
    eb = api.submit(pb, db=db)

    ra = api.wait(ea, db=db, timeout=40)
    rb = api.wait(eb, db=db, timeout=40)

    assert ra["status"] == "failed", ra
    assert ra["error"]["code"] == "WORKER_CRASH", ra["error"]
    assert counter.read_text() == "3", "1 run + recoveryAttempts (2) re-runs, no more"
    nr = node_run(db, ea, "boom")
    assert nr is not None
    assert nr["status"] == "failed"
    assert code_of(nr["error"]) == "WORKER_CRASH"
    assert nr["attempts"] == 1
    rows = attempt_rows(db, ea, "boom")
    assert [(r["kind"], r["status"]) for r in rows] == [
        ("attempt", "failed"),
        ("recovery", "failed"),
        ("recovery", "failed"),
    ], rows
    assert {code_of(r["error"]) for r in rows} == {"WORKER_CRASH"}
    assert len({r["worker_pid"] for r in rows}) == 3, "each run died in its own worker"

    assert rb["status"] == "succeeded", rb
    assert [x["path"] for x in marks(mark) if x["phase"] == "done"] == ["s0", "s1", "s2", "s3"]
    assert d.proc.poll() is None, "the daemon keeps serving"
    # ...and still serves new work afterwards.
    rc = api.wait(api.submit(pb, db=db), db=db, timeout=20)
    assert rc["status"] == "succeeded", rc
    assert_verified(db)


# --- 4. supervisor death counts as a recovery --------------------------------------------


def _supervisor_killed_mid_node(cwf, db, daemon, mark: Path) -> tuple[str, float, dict]:
    """Run a node (60 s on its first run, longer than any deadline here, so a worker
    that outlived the daemon until the node's end would fail assert_all_die), kill -9
    the daemon while it runs, restart, wait for the re-run (3 s) to end."""
    doc = {
        "name": "sup-kill",
        "nodes": [
            py("a", "crashtasks:start_sleep", args={"mark": str(mark), "first": 60, "then": 3})
        ],
    }
    d = daemon(workers=2)
    eid = api.submit(cwf(doc), db=db)
    wait_until(
        lambda: (node_run(db, eid, "a") or {}).get("status") == "running",
        20,
        "node_runs to say running",
    )
    wait_until(lambda: marks(mark), 20, "the node to start in its worker")
    t_kill, procs = kill_daemon(d)
    assert exec_status(db, eid) == "running"
    assert_all_die(procs)
    daemon(workers=2)
    res = api.wait(eid, db=db, timeout=30)
    return eid, t_kill, res


def test_supervisor_killed_mid_node_counts_as_a_recovery(cwf, db, daemon, tmp_path):
    mark = tmp_path / "marks"
    eid, t_kill, res = _supervisor_killed_mid_node(cwf, db, daemon, mark)

    assert res["status"] == "succeeded", res
    runs = marks(mark)
    assert [m["run"] for m in runs] == [1, 2], runs
    assert runs[0]["t"] < t_kill < runs[1]["t"]
    assert res["output"] == {"a": {"pid": runs[1]["pid"], "run": 2}}
    nr = node_run(db, eid, "a")
    assert nr is not None
    assert nr["status"] == "succeeded"
    assert nr["recoveries"] == 1
    assert nr["attempts"] == 1
    rows = attempt_rows(db, eid, "a")
    assert rows[-1]["kind"] == "recovery" and rows[-1]["status"] == "succeeded", rows
    assert rows[-1]["attempt"] == 1
    assert_verified(db)


def test_supervisor_crash_closes_the_interrupted_attempt_row(cwf, db, daemon, tmp_path):
    """Every attempt is recorded (SPEC §6): the run the supervisor's death interrupted
    must end up failed with SUPERVISOR_CRASH, as a worker's death gives WORKER_CRASH."""
    mark = tmp_path / "marks"
    eid, _, res = _supervisor_killed_mid_node(cwf, db, daemon, mark)
    assert res["status"] == "succeeded", res
    rows = attempt_rows(db, eid, "a")
    assert [(r["kind"], r["status"]) for r in rows] == [
        ("attempt", "failed"),
        ("recovery", "succeeded"),
    ], rows
    assert code_of(rows[0]["error"]) == "SUPERVISOR_CRASH"
    assert rows[0]["finished_at"] is not None
    assert not query(
        db, "SELECT id FROM attempts WHERE execution_id=? AND status='running'", (eid,)
    )
    assert_verified(db)


# --- 5. a retry timer survives a restart -------------------------------------------------


def test_retry_timer_keeps_its_due_time_across_a_restart(cwf, db, daemon, tmp_path):
    counter = tmp_path / "flaky.count"
    doc = {
        "name": "timer",
        "nodes": [
            py(
                "f",
                "fmtasks:flaky",
                args={"counter": str(counter), "fail_times": 1},
                retry={"maxAttempts": 2, "initialDelay": 3000},
            )
        ],
    }
    d = daemon(workers=2)
    eid = api.submit(cwf(doc), db=db)
    row = wait_until(
        lambda: (r := node_run(db, eid, "f")) and r["status"] == "retry_wait" and r,
        20,
        "node_runs to say retry_wait",
    )
    seen = time.time()
    due = row["next_attempt_at"]
    assert due is not None
    first_call = float(Path(str(counter) + ".times").read_text().split()[0])
    # The supervisor set the due time 3 s after it handled the failure, a moment
    # between the call and our reading of the row: bracketed by causality, not speed.
    assert first_call + 2.9 <= due <= seen + 3.0, "initialDelay 3000 ms"

    d.kill9()
    t_restart = time.time()
    assert t_restart < due - 0.5, "the kill must fall inside the back-off"
    daemon(workers=2)
    t_up = time.time()
    res = api.wait(eid, db=db, timeout=30)

    assert res["status"] == "succeeded", res
    calls = [float(x) for x in Path(str(counter) + ".times").read_text().split()]
    assert len(calls) == 2, calls
    assert calls[1] >= due, f"retried {due - calls[1]:.3f} s before its due time"
    # Not held back far too long once it fell due with a daemon up. The 10 s margin
    # covers the restarted daemon's worker start-up and first dispatch at load 10 on
    # 2 cores; how fast a restarted daemon dispatches is measured by make bench.
    ready = max(due, t_up)
    assert calls[1] <= ready + 10.0, f"retried {calls[1] - ready:.3f} s after it could be"
    nr = node_run(db, eid, "f")
    assert nr is not None
    assert (nr["status"], nr["attempts"], nr["recoveries"]) == ("succeeded", 2, 0)
    rows = attempt_rows(db, eid, "f")
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "failed"), (2, "succeeded")]
    assert code_of(rows[0]["error"]) == "TRANSIENT"
    assert_verified(db)


# --- 6. restart after kill -9: dispatching again --------------------------------------------


def test_restart_after_kill9_dispatches_again(cwf, db, daemon, tmp_path):
    """Three kill -9 and restarts mid-execution: each restarted daemon starts nodes
    again, and the execution ends succeeded. The time from the restart to the first
    dispatch (budget, DESIGN.md: within 1 s) is printed here but asserted nowhere: it
    is a speed, measured by ``make bench`` ("restart after kill -9: first dispatch")."""
    mark = tmp_path / "marks"
    doc = {
        "name": "restart",
        "settings": {"recoveryAttempts": 10},
        "nodes": [
            py(f"n{i}", "crashtasks:start_sleep", args={"mark": str(mark), "first": 0.3})
            for i in range(40)
        ],
    }
    d = daemon(workers=2)
    eid = api.submit(cwf(doc), db=db)
    wait_until(lambda: marks(mark), 20, "a first node start")
    # A worker may mark its start before the group commit that records the execution
    # running (the supervisor is woken at the submit): wait for that commit too.
    wait_until(lambda: exec_status(db, eid) == "running", 20, "the execution to be running")
    figures = []
    for _ in range(3):
        t_kill, procs = kill_daemon(d)
        assert_all_die(procs)  # no old worker can write a mark after this
        assert exec_status(db, eid) == "running"
        t0 = time.time()
        d = daemon(workers=2)
        first = wait_until(
            lambda t0=t0: min((x["t"] for x in marks(mark) if x["t"] > t0), default=None),
            20,
            "a node start after the restart",
        )
        figures.append(first - t0)
    res = api.wait(eid, db=db, timeout=60)
    assert res["status"] == "succeeded", res
    print(
        "\nrestart -> first dispatch (s): "
        + ", ".join(f"{f:.3f}" for f in figures)
        + f"; median {statistics.median(figures):.3f}"
    )
    assert_verified(db)


# --- beyond the brief: edges of recovery accounting ----------------------------------------


def test_prefetched_tasks_not_started_are_not_charged_a_recovery(cwf, db, daemon, tmp_path):
    """SPEC §6 charges a recovery when "the supervisor died while the node ran". With
    one worker and a deep queue the supervisor sends a worker several tasks at once;
    those still waiting behind the running one had not started when it died, so they
    must be charged neither a recovery nor an attempt."""
    mark = tmp_path / "marks"
    doc = {
        "name": "prefetch",
        "nodes": [
            py(f"n{i}", "crashtasks:start_sleep", args={"mark": str(mark), "first": 0.3})
            for i in range(8)
        ],
    }
    d = daemon(workers=1)
    eid = api.submit(cwf(doc), db=db)
    wait_until(lambda: marks(mark), 20, "a first node start")
    t_kill, procs = kill_daemon(d)
    assert_all_die(procs)
    started = {x["path"] for x in marks(mark) if x["t"] < t_kill}
    daemon(workers=1)
    res = api.wait(eid, db=db, timeout=30)
    assert res["status"] == "succeeded", res
    charged = {
        r["path"]: r["recoveries"]
        for r in query(db, "SELECT path, recoveries FROM node_runs WHERE execution_id=?", (eid,))
    }
    wrongly = sorted(p for p, n in charged.items() if n and p not in started)
    assert not wrongly, f"charged a recovery but never started before the kill: {wrongly}"
    spent = {
        r["path"]: r["attempts"]
        for r in query(db, "SELECT path, attempts FROM node_runs WHERE execution_id=?", (eid,))
    }
    assert spent == {f"n{i}": 1 for i in range(8)}, "no node failed: one attempt each"
    stale = query(
        db, "SELECT path, seq FROM attempts WHERE execution_id=? AND status='running'", (eid,)
    )
    assert not stale, f"attempt rows left 'running' after the execution ended: {stale}"
    assert_verified(db)


def test_fail_fast_holds_when_recovery_attempts_run_out_at_restart(cwf, db, daemon, tmp_path):
    """recoveryAttempts 0: the nodes the supervisor's death interrupted fail at restart
    with SUPERVISOR_CRASH, and fail-fast (the execution default) starts nothing new:
    a node that was only queued is cancelled, and nothing of the execution is left in
    the queue once it is reported failed."""
    mark = tmp_path / "marks"
    long = {"mark": str(mark), "first": 5}
    doc = {
        "name": "fail-fast-restart",
        "settings": {"recoveryAttempts": 0},
        "nodes": [
            py("a", "crashtasks:start_sleep", args=long),
            py("z", "crashtasks:step", args={"mark": str(mark), "seconds": 0.05}),
            py("c", "crashtasks:start_sleep", args=long),
            py("d", "crashtasks:start_sleep", args=long),
        ],
        "edges": [{"source": "z", "target": "c"}, {"source": "z", "target": "d"}],
    }
    d = daemon(workers=2)
    eid = api.submit(cwf(doc), db=db)

    def settled() -> dict[str, str] | None:
        st = {
            r["path"]: r["status"]
            for r in query(db, "SELECT path, status FROM node_runs WHERE execution_id=?", (eid,))
        }
        started = {x["path"] for x in marks(mark) if x["phase"] == "start"}
        if st.get("z") == "succeeded" and len(started & {"a", "c", "d"}) == 2:
            # The queued one has no row yet (first writes wait), or a queued one.
            if sorted(st.get(p) or "queued" for p in "acd") == ["queued", "running", "running"]:
                return st
        return None

    before = wait_until(settled, 20, "two long nodes running and one queued")
    waiting = next(p for p in "cd" if before.get(p, "queued") == "queued")
    t_kill, procs = kill_daemon(d)
    assert_all_die(procs)
    daemon(workers=2)
    res = api.wait(eid, db=db, timeout=30)

    assert res["status"] == "failed", res
    assert res["error"]["code"] == "SUPERVISOR_CRASH", res["error"]
    assert not [x for x in marks(mark) if x["t"] > t_kill], "nothing may start after restart"
    after = {
        r["path"]: (r["status"], code_of(r["error"]))
        for r in query(db, "SELECT * FROM node_runs WHERE execution_id=?", (eid,))
    }
    for p in "acd":
        if p != waiting:
            assert after[p] == ("failed", "SUPERVISOR_CRASH"), after
    # Cancelled, or never recorded: a restart does not make a node it never heard of.
    assert waiting not in after or after[waiting][0] == "cancelled", after
    assert not query(db, "SELECT * FROM queue WHERE execution_id=?", (eid,))
    assert_verified(db)
