"""The engine stepped through time: ``Supervisor(clock=StepClock(), executor=
InlineExecutor)`` and ``tick(now)`` move through delays, retry backoff, execution
timeouts and rate limits without waiting for them, and without worker processes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import exec_status, python_node, query

from fm_local import api
from fm_local.executors.inline import InlineExecutor
from fm_local.supervisor import Supervisor
from fm_local.supervisor.clock import StepClock

py = partial(python_node, "fmtasks")


@contextmanager
def stepped(db: Path, start: float | None = None) -> Iterator[tuple[Supervisor, StepClock]]:
    clock = StepClock(start)
    sup = Supervisor(db, workers=2, executor=InlineExecutor, clock=clock)
    sup.open()
    try:
        yield sup, clock
    finally:
        sup.close()


def step(sup: Supervisor, clock: StepClock, until: float, by: float = 0.05) -> None:
    """Tick at every ``by`` seconds up to ``until`` (inclusive), then commit."""
    t = clock.now
    while t + by <= until + 1e-9:
        t += by
        sup.tick(t)
    sup.flush()


def rows(db: Path, eid: str, path: str) -> list[dict[str, Any]]:
    return query(db, "SELECT * FROM node_runs WHERE execution_id=? AND path=?", (eid, path))


def node(db: Path, eid: str, path: str) -> dict[str, Any]:
    return rows(db, eid, path)[0]


def test_a_ten_second_delay_ends_at_ten_seconds_of_engine_time(wf, db):
    eid = api.submit(
        wf({"name": "delay", "nodes": [{"id": "d", "type": "delay", "duration": 10000}]}), db=db
    )
    with stepped(db) as (sup, clock):
        t0 = clock.now
        sup.tick(t0)
        step(sup, clock, t0 + 9.9)
        assert exec_status(db, eid) == "running"
        assert node(db, eid, "d")["status"] == "running"
        step(sup, clock, t0 + 10.1)
        assert exec_status(db, eid) == "succeeded"


def test_retry_backoff_waits_exactly_its_delay(wf, db, tmp_path):
    counter = str(tmp_path / "count")
    doc = {
        "name": "backoff",
        "nodes": [
            py(
                "f",
                "flaky",
                {"counter": counter, "fail_times": 1},
                retry={"maxAttempts": 2, "initialDelay": 5000, "backoff": "fixed"},
            )
        ],
    }
    eid = api.submit(wf(doc), db=db)
    with stepped(db) as (sup, clock):
        t0 = clock.now
        sup.tick(t0)
        step(sup, clock, t0 + 1.0)
        assert node(db, eid, "f")["status"] == "retry_wait"
        step(sup, clock, t0 + 4.9)
        assert node(db, eid, "f")["status"] == "retry_wait"
        assert Path(counter).read_text() == "1"
        step(sup, clock, t0 + 5.5)
        assert Path(counter).read_text() == "2"
        assert exec_status(db, eid) == "succeeded"


def test_an_execution_timeout_fires_at_its_time(wf, db):
    doc = {
        "name": "slow-approval",
        "settings": {"timeout": 60000},
        "nodes": [{"id": "w", "type": "wait", "signal": "approve"}],
    }
    eid = api.submit(wf(doc), db=db)
    with stepped(db) as (sup, clock):
        t0 = clock.now
        sup.tick(t0)
        step(sup, clock, t0 + 59.5, by=0.5)
        assert exec_status(db, eid) == "running"
        step(sup, clock, t0 + 60.5, by=0.5)
        assert exec_status(db, eid) == "timed_out"
        err = query(db, "SELECT error FROM executions WHERE id=?", (eid,))[0]["error"]
        assert "TIMEOUT" in err


@pytest.mark.parametrize("rate", [2, 5])
def test_a_rate_limit_starts_at_most_rate_per_second_of_engine_time(wf, db, rate):
    doc = {
        "name": "limited",
        "nodes": [
            {
                "id": "l",
                "type": "loop",
                "arrayPath": list(range(12)),
                "parallel": True,
                "rateLimit": {"rate": rate, "per": 1000},
                "body": {"nodes": [py("n", "noop")]},
            }
        ],
    }
    eid = api.submit(wf(doc), db=db)
    starts: list[float] = []
    with stepped(db) as (sup, clock):
        executor = sup.executor
        assert isinstance(executor, InlineExecutor)
        t0 = clock.now
        sup.tick(t0)
        ran = executor.ran
        t = t0
        while exec_status(db, eid) != "succeeded" and t < t0 + 60:
            t += 0.01
            sup.tick(t)
            starts += [t] * (executor.ran - ran)
            ran = executor.ran
            sup.flush()
    assert len(starts) == 12
    for s in starts:
        in_window = [x for x in starts if s <= x < s + 1.0]
        assert len(in_window) <= rate, (s, in_window)
    # ... and not slower than the limit: 12 starts take about 12 / rate seconds.
    assert starts[-1] - t0 <= 12 / rate + 0.5


def test_a_node_timeout_on_worker_processes_follows_the_stepped_clock(wf, db):
    """The executor reports running tasks in the scheduler's clock: a node whose
    5 s timeout passes in engine time is stopped, though it ran about a second."""
    from fm_local.executors.process import ProcessExecutor

    doc = {"name": "slow", "nodes": [py("h", "sleep", {"seconds": 60}, timeout=5000)]}
    eid = api.submit(wf(doc), db=db)
    clock = StepClock()
    sup = Supervisor(db, workers=1, executor=ProcessExecutor, clock=clock)
    sup.open()
    try:
        t0 = clock.now
        sup.tick(t0)
        wait_until_running = t0
        # Its row is written once it has run DEFER_FIRST_WRITE (engine time).
        while (rows(db, eid, "h") or [{}])[0].get("status") != "running":
            wait_until_running += 0.01
            sup.tick(wait_until_running)
            sup.flush()
        step(sup, clock, t0 + 4.9, by=0.1)
        assert node(db, eid, "h")["status"] == "running"
        step(sup, clock, t0 + 5.3, by=0.1)
        row = node(db, eid, "h")
        assert row["status"] == "failed", row
        assert json.loads(row["error"])["code"] == "TIMEOUT", row["error"]
    finally:
        sup.close()


def test_engine_time_alone_paces_a_rate_limit_whatever_the_worlds_time(wf, db):
    """Task results carry the world's times; a stepped engine an hour behind it
    still starts 6 items at 5/s within about a second of its own time."""
    doc = {
        "name": "behind",
        "nodes": [
            {
                "id": "l",
                "type": "loop",
                "arrayPath": list(range(6)),
                "parallel": True,
                "rateLimit": {"rate": 5, "per": 1000},
                "body": {"nodes": [py("n", "noop")]},
            }
        ],
    }
    eid = api.submit(wf(doc), db=db)
    with stepped(db, start=time.time() - 3600) as (sup, clock):
        t0 = clock.now
        sup.tick(t0)
        step(sup, clock, t0 + 3.0)
        assert exec_status(db, eid) == "succeeded"


class OneWorker(InlineExecutor):
    """Every task on one worker, the first one running: stopping any task stops
    them all (the head as started), as a worker process does; tasks run only when
    ``go`` is set."""

    go = False

    def poll(self, timeout: float, extra: Any = None) -> list[Any]:
        return super().poll(timeout, extra) if self.go else []

    def stop(self, task_ids: Any) -> list[tuple[dict[str, Any], bool]]:
        ids = set(task_ids)
        if not any(task["id"] in ids for task, _ in self.queue):
            return []
        held = [(task, i == 0) for i, (task, _) in enumerate(self.queue)]
        self.queue.clear()
        return held


def test_a_run_stopped_only_for_sharing_a_worker_ends_its_attempt_interrupted(wf, db):
    """Cancelling B stops the worker that also runs A's node: A's attempt ends
    `interrupted` (not left `running`), and A's node runs again and succeeds."""
    from fm_local.store import Store

    a = api.submit(wf({"name": "a", "nodes": [py("n", "noop")]}), db=db)
    b = api.submit(wf({"name": "b", "nodes": [py("n", "noop")]}), db=db)
    clock = StepClock()
    executor = OneWorker(2)
    sup = Supervisor(db, workers=2, executor=lambda *a, **k: executor, clock=clock)
    sup.open()
    try:
        t0 = clock.now
        sup.tick(t0)
        assert [task["ctx"]["executionId"] for task, _ in executor.queue] == [a, b]
        store = Store(db)
        try:
            store.add_signal(b, "cancel", "test", None)
        finally:
            store.close()
        step(sup, clock, t0 + 0.2)
        assert exec_status(db, b) == "cancelled"
        executor.go = True
        step(sup, clock, t0 + 0.5)
        assert exec_status(db, a) == "succeeded"
    finally:
        sup.close()
    rows = query(db, "SELECT seq, attempt, status FROM attempts WHERE execution_id=?", (a,))
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "interrupted"), (1, "succeeded")]
