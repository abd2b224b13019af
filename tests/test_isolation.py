"""One execution never waits behind another's long node, and stopping a node stops
everything it started.

Scheduling: a task is queued behind a running one on the same worker only when the
backlog is deep and only as much work as that worker will finish soon; a worker
whose running task takes much longer than expected hands back what it holds, at
once (a signal makes it answer while the node runs).

Process trees: workers are child subreapers, so a process a node starts stays below
its worker even in a new session; it is killed when the node ends, times out, is
cancelled, and when the daemon stops (SIGTERM) or dies (kill -9). A worker's death
is seen from its process even when a child forked by node code holds its pipe.

Everything runs for real: ``fm daemon`` subprocesses, worker processes, psutil for
what is still alive. Assertions are about order and counts, never wall-clock bounds.
"""

from __future__ import annotations

import json
import signal
from functools import partial
from pathlib import Path

import psutil
import pytest
from conftest import exec_status, fm, python_node, query, run_wf, wait_until

from fm_local import api, errors

py = partial(python_node, "hostiletasks")
status = exec_status


def pids_in(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def all_dead(pids: list[int]) -> bool:
    return bool(pids) and not any(alive(p) for p in pids)


# --- scheduling: no task waits behind another execution's long node ---------------------------


def test_a_long_node_does_not_stall_another_executions_loop(hwf, db, daemon):
    d = daemon(workers=2)
    long = api.submit(
        hwf({"name": "long", "nodes": [py("a", "sleep", args={"seconds": 60})]}), db=db
    )
    wait_until(
        lambda: query(
            db, "SELECT 1 FROM node_runs WHERE execution_id=? AND status='running'", (long,)
        ),
        30,
        "the long node running",
    )
    loop = {
        "name": "short-loop",
        "nodes": [
            {
                "id": "l",
                "type": "loop",
                "loopType": "count",
                "count": 200,
                "parallel": True,
                "body": {"nodes": [py("s", "sleep", args={"seconds": 0.01})], "edges": []},
            }
        ],
    }
    short = api.submit(hwf(loop), db=db)
    res = api.wait(short, db=db, timeout=120)
    assert res["status"] == "succeeded"
    # The loop finished while the long node still ran: nothing waited behind it.
    assert status(db, long) == "running"
    fm(db, "cancel", long)
    assert api.wait(long, db=db, timeout=60)["status"] == "cancelled"
    assert d.proc is not None and d.proc.poll() is None


def test_items_queued_behind_an_unexpectedly_long_item_are_taken_back(hwf, db, daemon):
    """Item 40 of a loop of quick items takes a minute; the items the scheduler had
    queued behind it on its worker run elsewhere instead of waiting for it."""
    daemon(workers=2)
    loop = {
        "name": "one-slow-item",
        "nodes": [
            {
                "id": "l",
                "type": "loop",
                "loopType": "count",
                "count": 400,
                "parallel": True,
                "body": {
                    "nodes": [
                        py("s", "sleep", args={"seconds": "{{ 60 if index == 40 else 0.002 }}"})
                    ],
                    "edges": [],
                },
            }
        ],
    }
    eid = api.submit(hwf(loop), db=db)

    def others_done() -> bool:
        rows = query(
            db,
            "SELECT count(*) AS n FROM node_runs WHERE execution_id=? AND "
            "node_type='item' AND status='succeeded'",
            (eid,),
        )
        return rows[0]["n"] == 399

    wait_until(others_done, 120, "the 399 quick items to finish")
    slow = query(db, "SELECT status FROM node_runs WHERE execution_id=? AND path='l[40]'", (eid,))
    assert slow[0]["status"] == "running"
    fm(db, "cancel", eid)
    api.wait(eid, db=db, timeout=60)


def test_a_one_node_execution_is_not_queued_behind_a_big_loop(hwf, db, daemon):
    daemon(workers=2)
    loop = {
        "name": "big-fifo-loop",
        "nodes": [
            {
                "id": "l",
                "type": "loop",
                "loopType": "count",
                "count": 3000,
                "parallel": True,
                "body": {"nodes": [py("s", "sleep", args={"seconds": 0.02})], "edges": []},
            }
        ],
    }
    big = api.submit(hwf(loop), db=db)
    wait_until(
        lambda: (
            query(
                db,
                "SELECT count(*) AS n FROM node_runs WHERE execution_id=? "
                "AND node_type='item' AND status='succeeded'",
                (big,),
            )[0]["n"]
            >= 20
        ),
        60,
        "the loop under way",
    )
    one = api.submit(hwf({"name": "one", "nodes": [py("a", "noop")]}), db=db)
    assert api.wait(one, db=db, timeout=120)["status"] == "succeeded"
    admitted = query(db, "SELECT started_at FROM executions WHERE id=?", (one,))[0]["started_at"]
    started = query(
        db, "SELECT started_at FROM node_runs WHERE execution_id=? AND path='a'", (one,)
    )[0]["started_at"]
    ahead = query(
        db,
        "SELECT count(*) AS n FROM node_runs WHERE execution_id=? AND path GLOB 'l[[]*].s' "
        "AND started_at > ? AND started_at < ?",
        (big, admitted, started),
    )[0]["n"]
    # Workflows share the workers in turn: at most one loop item per worker may start
    # between the single node becoming ready and its start (not a prefetched backlog).
    assert ahead <= 2, ahead
    fm(db, "cancel", big)
    api.wait(big, db=db, timeout=60)


# --- stopping a node stops everything it started ------------------------------------------------


def test_a_timed_out_node_takes_its_children_in_other_sessions_with_it(hwf, db, tmp_path):
    pidfile = tmp_path / "children.txt"
    doc = {
        "name": "timeout-tree",
        "nodes": [
            py("a", "spawn_and_sleep", args={"pidfile": str(pidfile), "seconds": 60}, timeout=1500)
        ],
    }
    res = run_wf(hwf(doc), db)
    assert res["status"] == "failed" and res["error"]["details"]["code"] == errors.TIMEOUT
    wait_until(lambda: all_dead(pids_in(pidfile)), 30, "the node's child killed")


def test_a_node_that_returns_leaves_no_process_behind(hwf, db, tmp_path):
    pidfile = tmp_path / "children.txt"
    doc = {
        "name": "leftover",
        "nodes": [
            py("a", "spawn_and_return", args={"pidfile": str(pidfile)}),
            {"id": "sh", "type": "shell", "command": f"sleep 300 & echo $! >> {pidfile}"},
        ],
    }
    res = run_wf(hwf(doc), db)
    assert res["status"] == "succeeded", res["error"]
    pids = pids_in(pidfile)
    assert len(pids) == 2
    wait_until(lambda: all_dead(pids), 30, "the processes the nodes left behind killed")


def test_cancel_kills_a_running_nodes_children(hwf, db, daemon, tmp_path):
    pidfile = tmp_path / "children.txt"
    daemon(workers=1)
    eid = api.submit(
        hwf(
            {
                "name": "cancel-tree",
                "nodes": [
                    py("a", "spawn_and_sleep", args={"pidfile": str(pidfile), "seconds": 120})
                ],
            }
        ),
        db=db,
    )
    wait_until(lambda: pids_in(pidfile), 30, "the child started")
    fm(db, "cancel", eid)
    assert api.wait(eid, db=db, timeout=60)["status"] == "cancelled"
    wait_until(lambda: all_dead(pids_in(pidfile)), 30, "the node's child killed")


@pytest.mark.crash
@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_stopping_the_daemon_kills_what_running_nodes_started(hwf, db, daemon, tmp_path, how):
    pidfile = tmp_path / "children.txt"
    d = daemon(workers=1)
    api.submit(
        hwf(
            {
                "name": "daemon-tree",
                "nodes": [
                    py("a", "spawn_and_sleep", args={"pidfile": str(pidfile), "seconds": 120})
                ],
            }
        ),
        db=db,
    )
    wait_until(lambda: pids_in(pidfile), 30, "the child started")
    assert d.proc is not None
    if how == "sigterm":
        d.proc.send_signal(signal.SIGTERM)
        d.proc.wait(60)
    else:
        d.kill9()
    wait_until(lambda: all_dead(pids_in(pidfile)), 30, "the node's child killed")


@pytest.mark.crash
def test_a_worker_death_is_seen_although_a_forked_child_holds_its_pipe(hwf, db, tmp_path):
    pidfile = tmp_path / "forked.txt"
    doc = {
        "name": "fork",
        "settings": {"recoveryAttempts": 1},
        "nodes": [py("a", "fork_and_die", args={"pidfile": str(pidfile)})],
    }
    res = run_wf(hwf(doc), db)
    assert res["status"] == "failed"
    assert res["error"]["details"]["code"] == errors.WORKER_CRASH
    pids = pids_in(pidfile)
    assert len(pids) == 2  # a first run and one recovery
    wait_until(lambda: all_dead(pids), 30, "the forked children killed")


def test_keyboard_interrupt_in_node_code_fails_the_node_with_its_message(hwf, db):
    res = run_wf(hwf({"name": "kbint", "nodes": [py("a", "keyboard_interrupt")]}), db)
    assert res["status"] == "failed"
    details = res["error"]["details"]
    assert details["code"] == errors.NODE_ERROR
    assert "KeyboardInterrupt: the node raised KeyboardInterrupt itself" in details["message"]
    run = query(
        db, "SELECT attempts, recoveries FROM node_runs WHERE execution_id=?", (res["id"],)
    )[0]
    assert run == {"attempts": 1, "recoveries": 0}


def test_a_worker_over_its_memory_limit_is_recycled_between_tasks(hwf, db, daemon):
    daemon(workers=1, extra=("--max-worker-memory", "200"))
    doc = {
        "name": "leak",
        "nodes": [py("a", "grow", args={"mb": 300}), py("b", "pid")],
        "edges": [{"source": "a", "target": "b"}],
    }
    res = api.wait(api.submit(hwf(doc), db=db), db=db, timeout=120)
    assert res["status"] == "succeeded", res["error"]
    runs = {
        r["path"]: r
        for r in query(
            db, "SELECT path, output, recoveries FROM node_runs WHERE execution_id=?", (res["id"],)
        )
    }
    assert json.loads(runs["a"]["output"]) != json.loads(runs["b"]["output"])  # a new worker
    assert runs["a"]["recoveries"] == 0 and runs["b"]["recoveries"] == 0


@pytest.mark.crash
def test_a_crashed_workers_children_in_other_sessions_are_killed(hwf, db, daemon, tmp_path):
    """The worker dies (os._exit) after starting a process in a new session: the
    daemon, a subreaper, inherits that process and kills it."""
    pidfile = tmp_path / "children.txt"
    daemon(workers=1)
    doc = {
        "name": "crash-tree",
        "settings": {"recoveryAttempts": 0},
        "nodes": [py("a", "spawn_and_die", args={"pidfile": str(pidfile)})],
    }
    res = api.wait(api.submit(hwf(doc), db=db), db=db, timeout=60)
    assert res["status"] == "failed"
    wait_until(lambda: all_dead(pids_in(pidfile)), 30, "the crashed worker's child killed")


def test_a_detached_process_outlives_its_node(hwf, db, daemon, tmp_path):
    """``ctx.detach(pid)`` is the one way a process may outlive its node (the
    examples' local API server uses it); the daemon's stop leaves it too."""
    pidfile = tmp_path / "detached.txt"
    d = daemon(workers=1)
    doc = {
        "name": "detach",
        "nodes": [py("a", "start_detached", args={"pidfile": str(pidfile)}), py("b", "noop")],
        "edges": [{"source": "a", "target": "b"}],
    }
    res = api.wait(api.submit(hwf(doc), db=db), db=db, timeout=60)
    assert res["status"] == "succeeded", res["error"]
    [pid] = pids_in(pidfile)
    assert alive(pid)
    d.stop()
    try:
        assert alive(pid)
    finally:
        psutil.Process(pid).kill()
