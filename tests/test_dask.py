"""The Dask executor (SPEC §11, docs/scale-out.md) against a real ``LocalCluster``
of worker processes on loopback, started here: the same workflow gives the same
output as on the local executor; each node runs in a child process of a Dask
worker, recorded as ``dask@HOST:PORT``; stopping a node (cancel, timeout) kills
that process; a Dask worker killed under a node makes it a recovery, not an attempt
and not a silent re-run by Dask."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import HERE, Daemon, exited, fm_cli, holds, python_node, query, run_wf, wait_until

from fm_local import api

distributed = pytest.importorskip("distributed")

py = partial(python_node, "dasktasks")


@pytest.fixture
def cluster() -> Iterator[Any]:
    """Two Dask worker processes (each with two threads, under a nanny that restarts
    a killed one), scheduler on loopback."""
    from distributed import LocalCluster

    c = LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
    )
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def dwf(wf: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    (tmp_path / "dasktasks.py").write_text((HERE / "dasktasks.py").read_text())
    return wf


@pytest.fixture
def dask_daemon(daemon: Callable[..., Daemon]) -> Callable[[Any], Daemon]:
    """``fm daemon --executor dask`` against ``cluster`` (killed at teardown)."""

    def start(cluster: Any) -> Daemon:
        return daemon(2, ("--executor", "dask", "--scheduler", cluster.scheduler_address))

    return start


def worker_pids(cluster: Any) -> set[int]:
    from distributed import Client

    with Client(cluster.scheduler_address, set_as_default=False) as c:
        return set(c.run(os.getpid).values())


def loop_doc(n: int, body: dict[str, Any] | None = None, **loop: Any) -> dict[str, Any]:
    """A parallel loop over range(n): by default of ``square``, at most 8 at once,
    then the sum of its squares; with another ``body``, the loop alone."""
    if body is not None:
        doc = loop_doc(n, **loop)
        doc["nodes"] = doc["nodes"][:2]
        doc["nodes"][1]["body"] = {"nodes": [body]}
        doc["nodes"][1].pop("maxConcurrency", None)
        doc["edges"] = doc["edges"][:1]
        return doc
    return {
        "name": "squares",
        "nodes": [
            {"id": "items", "type": "transform", "expression": f"range({n})"},
            {
                "id": "each",
                "type": "loop",
                "arrayPath": "{{items}}",
                "parallel": True,
                "maxConcurrency": 8,
                **loop,
                "body": {"nodes": [py("sq", "square", {"i": "{{item}}"})]},
            },
            {"id": "total", "type": "transform", "expression": "sum(x.sq for x in each)"},
        ],
        "edges": [
            {"source": "items", "target": "each"},
            {"source": "each", "target": "total"},
        ],
    }


def test_a_loop_on_dask_gives_the_output_of_the_local_executor(
    dwf, db, tmp_path, cluster, dask_daemon
):
    """The same workflow on both executors: the same output; on Dask every node ran
    in a child process of a Dask worker (not of the daemon), recorded with the Dask
    worker's address as its lane, and at most maxConcurrency at once."""
    path = dwf(loop_doc(60))
    local = run_wf(path, tmp_path / "local.db")
    assert local["status"] == "succeeded"
    d = dask_daemon(cluster)
    eid = api.submit(path, db=db)
    res = api.wait(eid, db=db, timeout=120)
    assert res["status"] == "succeeded", res
    assert res["output"] == local["output"]
    assert res["output"]["total"] == sum(i * i for i in range(60))
    rows = query(
        db,
        "SELECT path, lane, worker_pid, started_at, finished_at FROM node_runs "
        "WHERE execution_id=? AND path LIKE 'each[%].sq'",
        (eid,),
    )
    assert len(rows) == 60
    addresses = {w.removeprefix("tcp://") for w in cluster.scheduler_info["workers"]}
    assert {r["lane"] for r in rows} <= {f"dask@{a}" for a in addresses}, rows[:3]
    dask_pids = worker_pids(cluster)
    daemon_tree = {d.proc.pid, *(p.pid for p in psutil.Process(d.proc.pid).children(True))}
    for r in rows:
        assert r["worker_pid"] not in daemon_tree
    # maxConcurrency from the records: never more than 8 at once.
    marks = sorted([(r["started_at"], 1) for r in rows] + [(r["finished_at"], -1) for r in rows])
    level = peak = 0
    for _, step in marks:
        level += step
        peak = max(peak, level)
    assert peak <= 8
    show = fm_cli(db, "show", eid, "--all").stdout
    assert "dask@" in show, show
    # The TUI's node panel says where it ran.
    from tui.data import Reader
    from tui.widgets.node_panel import node_view

    reader = Reader(db)
    snap = reader.detail(
        eid, expanded=frozenset({"each"}), selected="each[3].sq", width=120, now=0.0
    )
    reader.close()
    assert snap.node is not None
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(node_view(snap.node, 0.0))
    assert f"lane {snap.node.lane}" in console.export_text()
    assert snap.node.lane.startswith("dask@")
    # fm workers and the TUI's resources screen show the cluster.
    assert "connected, 4 worker threads" in fm_cli(db, "workers").stdout

    def cluster_sample() -> Any:
        reader = Reader(db)
        try:
            latest = reader.resources(time.time()).latest
        finally:
            reader.close()
        return [s for s in latest if s.role == "dask"]

    (sample,) = wait_until(cluster_sample, 10, "a sample of the cluster's state")
    assert sample.node_path.endswith("connected, 4 worker threads")
    assert d.stop() == 0
    # The children ran below the Dask workers, and are gone with the daemon's stop.
    assert dask_pids


def sleepers(tmp_path: Path) -> list[dict[str, Any]]:
    p = tmp_path / "sleepers.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def test_cancel_kills_the_nodes_running_on_dask(dwf, db, tmp_path, cluster, dask_daemon):
    """Dask cannot stop a running task; fm runs the node in a child process of the
    Dask worker and kills it: after a cancel, the sleeping processes are gone (not
    left to sleep their minute out) and the execution is cancelled."""
    doc = {
        "name": "sleepy",
        "nodes": [
            {"id": "items", "type": "transform", "expression": "range(3)"},
            {
                "id": "each",
                "type": "loop",
                "arrayPath": "{{items}}",
                "parallel": True,
                "body": {"nodes": [py("nap", "sleeper", {"folder": str(tmp_path), "seconds": 60})]},
            },
        ],
        "edges": [{"source": "items", "target": "each"}],
    }
    d = dask_daemon(cluster)
    eid = api.submit(dwf(doc), db=db)
    wait_until(lambda: len(sleepers(tmp_path)) == 3, 60, "three nodes sleeping on Dask")
    procs = [psutil.Process(s["pid"]) for s in sleepers(tmp_path)]
    assert {s["parent"] for s in sleepers(tmp_path)} <= worker_pids(cluster)
    assert fm_cli(db, "cancel", eid).exit_code == 0
    res = api.wait(eid, db=db, timeout=60)
    assert res["status"] == "cancelled"
    wait_until(
        lambda: all(exited(p) for p in procs),
        30,
        "the sleeping processes killed",
    )
    d.stop()


def test_a_timeout_kills_the_node_on_dask(dwf, db, tmp_path, cluster, dask_daemon):
    doc = {
        "name": "late",
        "nodes": [
            py("nap", "sleeper", {"folder": str(tmp_path), "seconds": 60}, timeout=1500),
        ],
    }
    d = dask_daemon(cluster)
    eid = api.submit(dwf(doc), db=db)
    res = api.wait(eid, db=db, timeout=60)
    assert res["status"] == "failed", res
    assert (res["error"]["code"], res["error"]["nodePath"]) == ("TIMEOUT", "nap")
    (s,) = sleepers(tmp_path)
    p = psutil.Process(s["pid"]) if psutil.pid_exists(s["pid"]) else None
    wait_until(
        lambda: p is None or exited(p),
        30,
        "the timed-out process killed",
    )
    d.stop()


def test_a_node_stopped_while_its_process_starts_never_runs(
    dwf, db, tmp_path, cluster, dask_daemon
):
    """A fresh cluster: the Dask worker starts fm's process for the first task, which
    takes a while. The node's timeout (100 ms) passes in that window: it is recorded
    TIMEOUT and must not run afterwards (the stop once only noted the id, and the
    node then ran to its end)."""
    doc = {
        "name": "early",
        "nodes": [py("nap", "counted_nap", {"folder": str(tmp_path), "seconds": 2}, timeout=100)],
    }
    dask_daemon(cluster)
    eid = api.submit(dwf(doc), db=db)
    res = api.wait(eid, db=db, timeout=60)
    assert (res["status"], res["error"]["code"]) == ("failed", "TIMEOUT"), res
    holds(lambda: not (tmp_path / "ended").exists(), 4.0, "the stopped node never ran")


def test_a_timeout_counts_from_the_start_on_the_dask_worker(dwf, db, tmp_path, daemon):
    """One Dask thread, five 1 s nodes with a 2.5 s timeout, all ready at once: they
    wait for the thread one after another, and each one's timeout counts from when it
    started there (the worker says so), not from its hand-over — all succeed, as on
    the local executor with one worker."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
    ) as one:
        doc = {
            "name": "queued-timeouts",
            "nodes": [
                py(f"n{i}", "counted_nap", {"folder": str(tmp_path), "seconds": 1}, timeout=2500)
                for i in range(5)
            ],
        }
        d = daemon(2, ("--executor", "dask", "--scheduler", one.scheduler_address))
        eid = api.submit(dwf(doc), db=db)
        res = api.wait(eid, db=db, timeout=120)
        d.stop()
    assert res["status"] == "succeeded", res
    assert len((tmp_path / "calls.jsonl").read_text().splitlines()) == 5


def sleeping_once(
    name: str, dwf: Any, db: Path, tmp_path: Path, cluster: Any, dask_daemon: Any
) -> tuple[Daemon, str, dict[str, Any]]:
    """A daemon on ``cluster`` and an execution of one ``sleep_once`` node (60 s the
    first time), once the node sleeps on a Dask worker: (the daemon, the execution
    id, the node's {"pid", "parent"})."""
    doc = {
        "name": name,
        "nodes": [py("once", "sleep_once", {"folder": str(tmp_path), "seconds": 60})],
    }
    d = dask_daemon(cluster)
    eid = api.submit(dwf(doc), db=db)
    mark = tmp_path / "slept"
    wait_until(mark.exists, 60, "the node running on Dask")
    info = json.loads(wait_until(lambda: mark.read_text(), 10, "the mark written"))
    return d, eid, info


def test_a_dask_worker_killed_under_a_node_makes_it_a_recovery(
    dwf, db, tmp_path, cluster, dask_daemon
):
    """SIGKILL of the Dask worker process that runs a node: the node runs again as a
    recovery (WORKER_CRASH), not as an attempt, and not silently by Dask — one
    recorded result, recoveries 1."""
    d, eid, info = sleeping_once("crashy", dwf, db, tmp_path, cluster, dask_daemon)
    assert info["parent"] in worker_pids(cluster)
    os.kill(info["parent"], signal.SIGKILL)
    res = api.wait(eid, db=db, timeout=120)
    assert res["status"] == "succeeded", res
    (row,) = query(
        db, "SELECT status, attempts, recoveries FROM node_runs WHERE execution_id=?", (eid,)
    )
    assert (row["status"], row["attempts"], row["recoveries"]) == ("succeeded", 1, 1)
    d.stop()


def test_dask_executor_usage_errors(db, monkeypatch):
    res = fm_cli(db, "daemon", "--executor", "dask")
    assert res.exit_code == 2
    assert "--scheduler" in res.stderr
    res = fm_cli(db, "daemon", "--scheduler", "tcp://127.0.0.1:1")
    assert res.exit_code == 2
    assert "--executor dask" in res.stderr
    # Not a scheduler's address (the dashboard's url, a bare name): one line, at once.
    for bad in ("http://127.0.0.1:8787/status", "foo"):
        res = fm_cli(db, "daemon", "--executor", "dask", "--scheduler", bad)
        assert res.exit_code != 0
        (line,) = res.stderr.strip().splitlines()
        assert "not a Dask scheduler address" in line and "tcp://HOST:PORT" in line, line
        assert "Traceback" not in res.stderr
    # Nothing listens there: one line after the connect timeout.
    res = fm_cli(db, "daemon", "--executor", "dask", "--scheduler", "tcp://127.0.0.1:1")
    assert res.exit_code != 0
    (line,) = res.stderr.strip().splitlines()
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in line, line


def test_fm_run_says_fm_executor_dask_is_for_the_daemon(dwf, db, monkeypatch):
    """FM_EXECUTOR=dask with no daemon: fm run runs locally, and says so."""
    monkeypatch.setenv("FM_EXECUTOR", "dask")
    res = fm_cli(db, "run", str(dwf({"name": "one", "nodes": [py("sq", "square", {"i": 3})]})))
    assert res.exit_code == 0, res.stderr
    assert "FM_EXECUTOR=dask is for fm daemon" in res.stderr


def test_two_daemons_share_a_cluster_without_touching_each_others_nodes(
    dwf, tmp_path, cluster, daemon
):
    """Two daemons (two databases) on one cluster: their task ids are their own (both
    start at 1), so B stopping its node (a timeout) and then stopping altogether
    leaves A's node running to its end — no recovery."""
    a_db, b_db = tmp_path / "a.db", tmp_path / "b.db"
    args = ("--executor", "dask", "--scheduler", cluster.scheduler_address)
    a = Daemon(a_db, 2, args).start()
    b = Daemon(b_db, 2, args).start()
    try:
        long_a = {
            "name": "a",
            "nodes": [py("nap", "counted_nap", {"folder": str(tmp_path), "seconds": 6})],
        }
        eid_a = api.submit(dwf(long_a), db=a_db)
        wait_until((tmp_path / "calls.jsonl").exists, 60, "A's node running on Dask")
        late_b = {
            "name": "b",
            "nodes": [py("nap", "sleeper", {"folder": str(tmp_path), "seconds": 60}, timeout=500)],
        }
        eid_b = api.submit(dwf(late_b), db=b_db)
        assert api.wait(eid_b, db=b_db, timeout=60)["status"] == "failed"
        assert b.stop() == 0
        res = api.wait(eid_a, db=a_db, timeout=60)
        assert res["status"] == "succeeded", res
        (row,) = query(a_db, "SELECT attempts, recoveries FROM node_runs WHERE path='nap'")
        assert (row["attempts"], row["recoveries"]) == (1, 0)
        assert len((tmp_path / "calls.jsonl").read_text().splitlines()) == 1
    finally:
        for d in (a, b):
            if d.proc is not None and d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()


@pytest.mark.crash
def test_a_node_that_forks_and_dies_on_dask_is_a_worker_crash(
    hwf, db, tmp_path, cluster, dask_daemon
):
    """The node's process forks a child that keeps its pipe open, then dies: the death
    is seen all the same (no EOF comes on the pipe), the node is a WORKER_CRASH
    recovery, and the forked children are killed with their process group."""
    from test_isolation import all_dead, pids_in

    (tmp_path / "dasktasks.py").write_text((HERE / "dasktasks.py").read_text())
    pidfile = tmp_path / "forked.txt"
    doc = {
        "name": "fork",
        "settings": {"recoveryAttempts": 1},
        "nodes": [
            {
                "id": "a",
                "type": "python",
                "call": "hostiletasks:fork_and_die",
                "args": {"pidfile": str(pidfile)},
            }
        ],
    }
    dask_daemon(cluster)
    eid = api.submit(hwf(doc), db=db)
    res = api.wait(eid, db=db, timeout=120)
    assert res["status"] == "failed", res
    assert res["error"]["details"]["code"] == "WORKER_CRASH"
    pids = pids_in(pidfile)
    assert len(pids) == 2  # a first run and one recovery
    wait_until(lambda: all_dead(pids), 30, "the forked children killed")


def test_kill9_of_the_daemon_with_a_node_on_dask_loses_nothing_and_leaves_nothing(
    dwf, db, tmp_path, cluster, dask_daemon
):
    """The daemon is killed (-9) while its node sleeps on a Dask worker. The node's
    process is not left to run: the next daemon of the same database stops it when it
    connects, re-runs the node as a recovery, and the node has one recorded result."""
    d, eid, info = sleeping_once("orphan", dwf, db, tmp_path, cluster, dask_daemon)
    orphan = psutil.Process(info["pid"])
    d.kill9()
    assert orphan.is_running()  # Dask does not stop a task when its client dies
    dask_daemon(cluster)
    res = api.wait(eid, db=db, timeout=120)
    assert res["status"] == "succeeded", res
    wait_until(
        lambda: exited(orphan),
        30,
        "the orphaned node's process stopped",
    )
    (row,) = query(
        db, "SELECT status, attempts, recoveries FROM node_runs WHERE execution_id=?", (eid,)
    )
    assert (row["status"], row["attempts"], row["recoveries"]) == ("succeeded", 1, 1)


def test_a_result_computed_while_the_daemon_was_down_is_adopted(
    dwf, db, tmp_path, cluster, dask_daemon
):
    """The daemon is killed (-9) while its node runs on Dask; the node finishes while
    no daemon runs. The next daemon of the same database adopts that result — it is
    this very attempt's (execution, path, seq) — instead of running the node again:
    one call, one recorded result, no recovery."""
    doc = {
        "name": "adopt",
        "nodes": [
            py("nap", "counted_nap", {"folder": str(tmp_path), "seconds": 2}),
            {"id": "after", "type": "transform", "expression": "nap.slept * 10"},
        ],
        "edges": [{"source": "nap", "target": "after"}],
    }
    d = dask_daemon(cluster)
    eid = api.submit(dwf(doc), db=db)
    calls = tmp_path / "calls.jsonl"
    wait_until(calls.exists, 60, "the node running on Dask")
    # Its attempt is committed as running before the daemon dies.
    wait_until(
        lambda: (
            query(db, "SELECT status FROM node_runs WHERE path='nap'")[0]["status"] == "running"
        ),
        30,
        "the attempt recorded as running",
    )
    d.kill9()
    wait_until((tmp_path / "ended").exists, 60, "the node ended with no daemon")
    dask_daemon(cluster)
    res = api.wait(eid, db=db, timeout=120)
    assert res["status"] == "succeeded", res
    assert res["output"] == {"after": 20}
    assert len(calls.read_text().splitlines()) == 1  # not run again
    (row,) = query(
        db,
        "SELECT status, attempts, recoveries, lane FROM node_runs WHERE execution_id=? "
        "AND path='nap'",
        (eid,),
    )
    assert (row["status"], row["attempts"], row["recoveries"]) == ("succeeded", 1, 0)
    assert row["lane"].startswith("dask@")
    tries = query(
        db, "SELECT kind, status FROM attempts WHERE execution_id=? AND path='nap'", (eid,)
    )
    assert [(t["kind"], t["status"]) for t in tries] == [("attempt", "succeeded")]


class DaskCLI:
    """A scheduler and a worker as ``dask scheduler`` / ``dask worker`` processes, so
    the scheduler can be killed and started again on the same port."""

    def __init__(self, tmp: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.log = open(tmp / "dask.log", "a")
        self.dask = str(Path(sys.executable).parent / "dask")
        self.procs: list[subprocess.Popen[bytes]] = []

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([self.dask, *args], stdout=self.log, stderr=self.log)
        self.procs.append(p)
        return p

    def scheduler(self) -> subprocess.Popen[bytes]:
        p = self._start(
            "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"
        )
        wait_until(lambda: self._reachable(), 60, "the dask scheduler listening")
        return p

    def _reachable(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def worker(self) -> subprocess.Popen[bytes]:
        return self._start("worker", self.address, "--nthreads", "2", "--no-dashboard")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.log.close()


@pytest.mark.crash
def test_a_scheduler_restart_recovers_the_nodes_in_flight(dwf, db, tmp_path, daemon):
    """The Dask scheduler is killed (-9) while a node runs, then started again with a
    worker: the daemon keeps serving, says the scheduler is unreachable in ``fm
    workers``, and once it is back re-runs the node as a recovery; one recorded
    result."""
    cli = DaskCLI(tmp_path)
    try:
        sched = cli.scheduler()
        cli.worker()
        d = daemon(2, ("--executor", "dask", "--scheduler", cli.address))
        doc = {
            "name": "restart",
            "nodes": [py("once", "sleep_once", {"folder": str(tmp_path), "seconds": 60})],
        }
        eid = api.submit(dwf(doc), db=db)
        wait_until((tmp_path / "slept").exists, 90, "the node running on Dask")
        sched.kill()
        sched.wait()
        wait_until(lambda: "unreachable" in fm_cli(db, "workers").stdout, 30, "fm workers says so")
        assert d.proc is not None and d.proc.poll() is None
        cli.scheduler()
        cli.worker()
        res = api.wait(eid, db=db, timeout=120)
        assert res["status"] == "succeeded", res
        (row,) = query(
            db, "SELECT status, attempts, recoveries FROM node_runs WHERE execution_id=?", (eid,)
        )
        assert (row["status"], row["attempts"], row["recoveries"]) == ("succeeded", 1, 1)
        wait_until(
            lambda: "connected" in fm_cli(db, "workers").stdout.split("cluster", 1)[-1],
            30,
            "fm workers says the cluster is back",
        )
        d.stop()
    finally:
        cli.close()


EXAMPLES = Path(__file__).parent.parent / "examples"
DECLINED = {
    "order": {
        "id": "A-1002",
        "items": [{"sku": "book", "qty": 2}],
        "payment": {"amount": 42.5, "declined": True},
        "address": {"country": "FR"},
    }
}


@pytest.mark.slow
def test_the_examples_give_the_same_results_on_both_executors(db, tmp_path, cluster, daemon):
    """The examples of the parallel-execution page, on a local daemon and on a Dask
    daemon: the same status, the same output (fail-fast stops the slow checks on
    both; the first success wins on both; collect keeps every item; the batch gate
    and maxConcurrency hold — checked by the examples' own outputs)."""
    order = json.loads((EXAMPLES / "order.json").read_text())
    cases = [
        ("fan_out_fan_in.json", {"count": 8}),
        ("parallel_validation.json", order),
        ("fail_fast_validation.json", order),
        ("fail_fast_validation.json", DECLINED),
        ("parallel_with_fallback.json", {}),
        ("parallel_with_fallback.json", {"primaryFails": True}),
        ("loop_collect.json", {"failEvery": 3}),
        ("batch_processing.json", None),
        ("parallel_api_calls.json", {}),
    ]
    results: dict[str, list[Any]] = {"local": [], "dask": []}
    for name, extra in (
        ("local", ()),
        ("dask", ("--executor", "dask", "--scheduler", cluster.scheduler_address)),
    ):
        where = tmp_path / f"{name}.db"
        d = Daemon(where, 4, extra).start()
        try:
            for wf, inp in cases:
                eid = api.submit(EXAMPLES / wf, inp, db=where)
                res = api.wait(eid, db=where, timeout=180)
                out = res["output"]
                if wf == "parallel_api_calls.json":
                    # The local API server's own pid; and how many calls it saw at
                    # once: up to maxConcurrency (10) on both, but on Dask a node
                    # takes a worker thread (4 here), where the I/O lane runs all 10.
                    server = out["enriched"]["server"]
                    del server["pid"]
                    assert 1 <= server.pop("maxConcurrency") <= 10
                results[name].append((wf, res["status"], out))
        finally:
            d.stop()
    for local, dask in zip(results["local"], results["dask"], strict=True):
        assert local == dask
    # Every worker node ran on Dask: where it ended, its Dask worker; a node stopped
    # there (fail-fast, a first success's loser) is "dask" (it did not say where).
    lanes = {r["lane"] for r in query(tmp_path / "dask.db", "SELECT lane FROM node_runs")}
    assert any(lane and lane.startswith("dask@") for lane in lanes), lanes
    assert all(lane is None or lane.startswith("dask") for lane in lanes), lanes


@pytest.mark.crash
def test_a_hung_scheduler_does_not_hold_the_daemon(wf, db, tmp_path, daemon):
    """The scheduler is frozen (SIGSTOP): the daemon still runs what needs no Dask
    worker (a transform-only execution) and stops on SIGTERM — nothing the executor
    asks the scheduler blocks the supervisor's loop or its exit."""
    cli = DaskCLI(tmp_path)
    sched = None
    try:
        sched = cli.scheduler()
        cli.worker()
        d = daemon(2, ("--executor", "dask", "--scheduler", cli.address))
        wait_until(lambda: "connected" in fm_cli(db, "workers").stdout, 30, "the daemon connected")
        sched.send_signal(signal.SIGSTOP)
        doc = {
            "name": "local-only",
            "nodes": [{"id": "t", "type": "transform", "expression": "6 * 7"}],
        }
        eid = api.submit(wf(doc), db=db)
        res = api.wait(eid, db=db, timeout=60)
        assert (res["status"], res["output"]) == ("succeeded", {"t": 42})
        assert d.stop() == 0
    finally:
        if sched is not None and sched.poll() is None:
            sched.send_signal(signal.SIGCONT)
        cli.close()


def square_loop(n: int, folder: Path) -> dict[str, Any]:
    """A loop of ``slow_square`` (50 ms, each call noted in ``folder``), no limit."""
    return loop_doc(n, py("sq", "slow_square", {"i": "{{item}}", "folder": str(folder)}))


def calls(folder: Path) -> list[dict[str, Any]]:
    p = folder / "calls.jsonl"
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def once_each(db: Path, eid: str, n: int) -> None:
    """Every item recorded once, succeeded, with one succeeded attempt."""
    rows = query(
        db,
        "SELECT path, status FROM node_runs WHERE execution_id=? AND path LIKE 'each[%].sq'",
        (eid,),
    )
    assert len(rows) == n and {r["status"] for r in rows} == {"succeeded"}
    won = query(
        db,
        "SELECT path, count(*) AS n FROM attempts WHERE execution_id=? AND status='succeeded' "
        "AND path LIKE 'each[%].sq' GROUP BY path",
        (eid,),
    )
    assert len(won) == n and {r["n"] for r in won} == {1}


@pytest.mark.crash
def test_kill9_of_the_daemon_mid_loop_on_dask(dwf, db, tmp_path, cluster, dask_daemon):
    """kill -9 of the daemon with a loop's batches on the cluster, then a new daemon:
    every item recorded once, the output whole and in order, nothing left running."""
    n = 200
    d = dask_daemon(cluster)
    eid = api.submit(dwf(square_loop(n, tmp_path)), db=db)
    wait_until(lambda: len(calls(tmp_path)) >= 40, 60, "the loop under way")
    d.kill9()
    dask_daemon(cluster)
    res = api.wait(eid, db=db, timeout=180)
    assert res["status"] == "succeeded", res
    assert res["output"]["each"] == [i * i for i in range(n)]
    once_each(db, eid, n)
    assert {c["i"] for c in calls(tmp_path)} == set(range(n))
    # Nothing left running: the calls stop growing.
    seen = len(calls(tmp_path))
    holds(lambda: len(calls(tmp_path)) == seen, 1.0, "no call after the end")


@pytest.mark.crash
def test_a_dask_worker_killed_mid_loop_loses_nothing(dwf, db, tmp_path, cluster, dask_daemon):
    """SIGKILL of one Dask worker process while a loop's batches run on it: its
    items run again as recoveries (on the other worker, or on the one its nanny
    starts), every item is recorded once, the output is whole and in order."""
    n = 200
    dask_daemon(cluster)
    eid = api.submit(dwf(square_loop(n, tmp_path)), db=db)
    wait_until(lambda: len(calls(tmp_path)) >= 40, 60, "the loop under way")
    victim = calls(tmp_path)[-1]["parent"]
    assert victim in worker_pids(cluster)
    os.kill(victim, signal.SIGKILL)
    res = api.wait(eid, db=db, timeout=180)
    assert res["status"] == "succeeded", res
    assert res["output"]["each"] == [i * i for i in range(n)]
    once_each(db, eid, n)
    recovered = query(
        db,
        "SELECT count(*) AS n FROM node_runs WHERE execution_id=? AND recoveries > 0",
        (eid,),
    )[0]["n"]
    assert recovered >= 1


def test_lines_a_node_prints_while_it_runs_on_dask_are_recorded_once(
    dwf, db, tmp_path, cluster, dask_daemon
):
    """fm's worker process streams a long try's lines; on a Dask worker they come
    back with the result, each line once, in order."""
    d = dask_daemon(cluster)
    eid = api.submit(
        dwf({"name": "chatty", "nodes": [py("talk", "chatty", {"seconds": 1.5})]}), db=db
    )
    assert api.wait(eid, db=db, timeout=60)["status"] == "succeeded"
    lines = query(db, "SELECT line FROM logs WHERE execution_id=? ORDER BY id", (eid,))
    assert [r["line"] for r in lines] == ["before", "after"]
    d.stop()


def test_room_is_offered_a_batch_at_a_time_when_the_threads_have_work() -> None:
    """Offered as soon as a few tasks end, room would go out in ever smaller batches
    (each split across the threads) until Dask's per-task cost is all there is:
    with every thread holding a batch's worth, room waits for a batch's worth."""
    from fm_local.executors.daskexec import BATCHES_PER_THREAD, MAX_BATCH, DaskExecutor

    ex = DaskExecutor(scheduler="tcp://127.0.0.1:1")
    ex.state = "connected"
    ex.threads = 2
    full = ex.threads * MAX_BATCH * BATCHES_PER_THREAD

    def offered(inflight: int) -> list[int]:
        ex.inflight = {i: ({"id": i}, None, "k") for i in range(inflight)}
        return [o._room for o in ex.offers(lambda: 10_000)]  # type: ignore[attr-defined]

    assert offered(0) == [full]
    assert offered(3) == [full - 3]  # threads short of work: offered at once
    assert offered(full - 5) == []  # 5 ended, the threads busy: wait for more
    assert offered(full - MAX_BATCH) == [MAX_BATCH]
    assert offered(full) == []
