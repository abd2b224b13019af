"""Chained successors (Dispatch._chain, docs/architecture.md): a worker node whose one
dependency is a plain edge from the node before it, and whose task does not depend on
that node's output, is sent to that node's worker while it runs, and starts there only
once it has succeeded. Real worker processes, a real supervisor, a real SQLite file."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from conftest import HERE, python_node, read_marks, run_wf, show

from fm_local import api, graph
from fm_local.client import send_signal
from fm_local.executors import Finished
from fm_local.executors.process import ProcessExecutor
from fm_local.store import Store
from fm_local.supervisor import Supervisor
from fm_local.validate import check_parsed

py = partial(python_node, "fmtasks")


def chain(mark: Path, n: int, **first: Any) -> dict[str, Any]:
    """n0 -> n1 -> ... each recording its start in ``mark``; ``first`` replaces n0."""
    nodes = [py(f"n{i}", "record", {"mark": str(mark), "tag": f"n{i}"}) for i in range(n)]
    if first:
        nodes[0] = py("n0", **first)
    edges = [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(n - 1)]
    return {"name": "chain", "nodes": nodes, "edges": edges}


# --- which successors are chained (graph.chained) -------------------------------------


def chained_of(doc: dict[str, Any]) -> dict[str, str]:
    w = check_parsed(doc).workflow
    return graph.compile_graph(w.nodes, w.edges).chained


def test_only_a_successor_whose_task_is_known_before_its_predecessor_ends_is_chained():
    doc = {
        "name": "which",
        "nodes": [
            py("a", "noop"),
            py("b", "echo", {"x": "{{input.x}}", "e": "{{execution.id}}"}),  # known now
            py("c", "echo", {"x": "{{b.x}}"}),  # reads b's output
            py("d", "echo", {"t": "{{now()}}"}),  # a function: its value is of its start
            py("e", "echo", {"s": "{{signals}}"}),  # signals may arrive meanwhile
            py("f", "noop"),
            {"id": "g", "type": "transform", "expression": "1"},  # not a worker node
            py("h", "noop"),
            py("i", "noop"),
            py("j", "noop"),
        ],
        "edges": [
            {"source": "a", "target": "b"},
            {"source": "b", "target": "c"},
            {"source": "c", "target": "d"},
            {"source": "d", "target": "e"},
            {"source": "e", "target": "f"},
            {"source": "f", "target": "g"},
            {"source": "g", "target": "h"},
            # i has two dependencies: it runs when both end, not behind one of them.
            {"source": "h", "target": "i"},
            {"source": "a", "target": "i"},
            {"source": "i", "target": "j"},
        ],
    }
    assert chained_of(doc) == {"a": "b", "e": "f", "i": "j"}


def test_an_edge_on_the_error_port_is_not_chained():
    doc = {
        "name": "err",
        "nodes": [py("a", "always_fail"), py("b", "noop")],
        "edges": [{"source": "a", "target": "b", "sourceHandle": "error"}],
    }
    assert chained_of(doc) == {}


# --- the worker's side (a real worker process) ----------------------------------------


def task(folder: Path, tid: int, fn: str, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": tid,
        "seq": 1,
        "type": "python",
        "spec": {"call": f"fmtasks:{fn}", "args": args},
        "folder": str(folder),
        "ctx": {
            "executionId": "e1",
            "nodePath": f"t{tid}",
            "attempt": 1,
            "traceId": "trace",
            "idempotencyKey": f"e1:t{tid}",
            "parallel": None,
            "branch": None,
        },
    }


def results_of(ex: ProcessExecutor, ids: set[int]) -> dict[int, tuple[Any, ...]]:
    got: dict[int, tuple[Any, ...]] = {}
    deadline = time.monotonic() + 60
    while not ids <= set(got):
        assert time.monotonic() < deadline, f"results of {ids - set(got)} never came"
        for event in ex.poll(0.05):
            if isinstance(event, Finished):
                got.update((t["id"], r) for t, r in event.results)
    return got


def test_the_worker_runs_a_chained_task_only_after_the_one_before_succeeds(tmp_path: Path):
    (tmp_path / "fmtasks.py").write_text((HERE / "fmtasks.py").read_text())
    mark = tmp_path / "marks"
    ex = ProcessExecutor(1)
    ex.start()
    try:
        ex.wait_ready(30)
        offer = next(iter(ex.offers(lambda: 1)))
        offer.charge(None)
        offer.add(task(tmp_path, 1, "sleep", {"seconds": 0.3, "mark": str(mark), "tag": "a"}))
        assert ex.submit(offer) == []
        assert not ex.can_follow(99)  # no worker holds it
        assert ex.can_follow(1)
        assert ex.follow(1, task(tmp_path, 2, "record", {"mark": str(mark), "tag": "b"}))
        assert not ex.can_follow(1)  # 2 is behind it now: only the last one can be followed
        got = results_of(ex, {1, 2})
        assert got[1][1] is True and got[2][1] is True
        a, b = read_marks(mark)
        assert (a["tag"], b["tag"]) == ("a", "b")
        assert b["t"] >= a["end"]  # it started after a ended, on the same worker
        assert b["pid"] == a["pid"]

        # The one before fails: the chained one comes back unstarted (ok is None),
        # and so does one chained behind it.
        offer = next(iter(ex.offers(lambda: 1)))
        offer.charge(None)
        offer.add(task(tmp_path, 3, "always_fail", {}))
        assert ex.submit(offer) == []
        assert ex.follow(3, task(tmp_path, 4, "record", {"mark": str(mark), "tag": "c"}))
        assert ex.follow(4, task(tmp_path, 5, "record", {"mark": str(mark), "tag": "d"}))
        got = results_of(ex, {3, 4, 5})
        assert got[3][1] is False
        assert got[4][1] is None and got[5][1] is None
        assert [m["tag"] for m in read_marks(mark)] == ["a", "b"]
    finally:
        ex.shutdown()


# --- the engine ------------------------------------------------------------------------


def test_a_chain_runs_in_order_each_node_after_the_one_before(wf, db, tmp_path):
    """The second node is on a worker before the first ends (seen from the
    supervisor's turn); every node starts after the one before it ended, once."""
    mark = tmp_path / "marks"
    n = 30
    doc = chain(mark, n, fn="sleep", args={"seconds": 0.5, "mark": str(mark), "tag": "n0"})
    sup = Supervisor(db, workers=2)
    seen: list[bool] = []

    def look() -> None:
        assert sup.executor is not None
        for slot in getattr(sup.executor, "slots", []):
            if any("after" in t for t in slot.inflight):
                seen.append(True)

    sup.on_tick = look
    eid = api.submit(wf(doc), None, db=db)
    sup.open()
    try:
        sup.serve(until=lambda: eid in sup.finished)
    finally:
        sup.close()
    assert seen, "no successor was sent ahead of its predecessor's end"
    doc_ = show(db, eid)
    assert doc_["status"] == "succeeded", doc_
    marks = read_marks(mark)
    assert [m["tag"] for m in marks] == [f"n{i}" for i in range(n)]
    con = sqlite3.connect(db)
    rows = {
        path: (q, s, f)
        for path, q, s, f in con.execute(
            "SELECT path, queued_at, started_at, finished_at FROM node_runs WHERE execution_id=?",
            (eid,),
        )
    }
    con.close()
    for i in range(1, n):
        queued, started, _ = rows[f"n{i}"]
        ended = rows[f"n{i - 1}"][2]
        assert started >= ended, (i, rows[f"n{i}"], rows[f"n{i - 1}"])
        # Ready (queued) when the one before it ended, as if it had not been chained.
        assert queued >= ended, (i, rows[f"n{i}"], rows[f"n{i - 1}"])


def test_a_failure_mid_chain_starts_nothing_after_it(wf, db, tmp_path):
    mark = tmp_path / "marks"
    doc = chain(mark, 6)
    doc["nodes"][2] = py("n2", "always_fail")
    res = run_wf(wf(doc), db)
    assert res["status"] == "failed", res
    assert [m["tag"] for m in read_marks(mark)] == ["n0", "n1"]
    nodes = {n["path"]: n["status"] for n in show(db, res["id"])["nodes"]}
    assert nodes == {"n0": "succeeded", "n1": "succeeded", "n2": "failed"}


def test_a_retried_node_is_followed_once_by_its_successor(wf, db, tmp_path):
    mark, counter = tmp_path / "marks", tmp_path / "count"
    doc = chain(
        mark,
        4,
        fn="flaky",
        args={"counter": str(counter), "fail_times": 2},
        retry={"maxAttempts": 3, "initialDelay": 50},
    )
    res = run_wf(wf(doc), db)
    assert res["status"] == "succeeded", res
    assert counter.read_text() == "3"
    assert [m["tag"] for m in read_marks(mark)] == ["n1", "n2", "n3"]
    last_try = max(float(t) for t in (tmp_path / "count.times").read_text().split())
    assert read_marks(mark)[0]["t"] >= last_try


def test_an_error_handler_edge_still_runs_on_failure(wf, db, tmp_path):
    mark = tmp_path / "marks"
    doc = {
        "name": "handled",
        "nodes": [
            py("a", "always_fail"),
            py("ok", "record", {"mark": str(mark), "tag": "ok"}),
            py("handler", "record", {"mark": str(mark), "tag": "handler"}),
        ],
        "edges": [
            {"source": "a", "target": "ok"},
            {"source": "a", "target": "handler", "sourceHandle": "error"},
        ],
    }
    res = run_wf(wf(doc), db)
    assert [m["tag"] for m in read_marks(mark)] == ["handler"]
    nodes = {n["path"]: n["status"] for n in show(db, res["id"])["nodes"]}
    assert nodes["a"] == "failed" and nodes["handler"] == "succeeded"
    assert nodes.get("ok") in (None, "skipped")


def test_cancel_while_the_first_runs_starts_none_of_the_chain(
    wf: Callable[..., Path], db: Path, tmp_path: Path
) -> None:
    mark = tmp_path / "marks"
    doc = chain(mark, 5, fn="sleep", args={"seconds": 1.0, "mark": str(mark), "tag": "n0"})
    sup = Supervisor(db, workers=2)
    eid = api.submit(wf(doc), None, db=db)
    cancelled: list[bool] = []

    def cancel_once_chained() -> None:
        assert sup.executor is not None
        held = [t for s in getattr(sup.executor, "slots", []) for t in s.inflight]
        if not cancelled and any("after" in t for t in held):
            cancelled.append(True)
            send_signal(Store(db), eid, "cancel", "test", None, wait=False)

    sup.on_tick = cancel_once_chained
    sup.open()
    try:
        sup.serve(until=lambda: eid in sup.finished)
    finally:
        sup.close()
    assert cancelled
    doc_ = show(db, eid)
    assert doc_["status"] == "cancelled", doc_
    assert [m["tag"] for m in read_marks(mark)] == []  # n0 was stopped before it marked
    assert {n["path"] for n in doc_["nodes"]} == {"n0"}


def test_a_fallback_run_is_not_followed_by_the_graph_node_after_its_target(wf, db, tmp_path):
    """a -> f -> g, a falls back to f: the fallback run of f ("a->f") is not f,
    so g waits for f itself (it runs last)."""
    mark = tmp_path / "marks"
    doc = {
        "name": "fallback",
        "nodes": [
            py("a", "always_fail", errorStrategy="fallback", fallbackNodeId="f"),
            py("f", "record", {"mark": str(mark), "tag": "f"}),
            py("g", "record", {"mark": str(mark), "tag": "g"}),
        ],
        "edges": [{"source": "a", "target": "f"}, {"source": "f", "target": "g"}],
    }
    res = run_wf(wf(doc), db)
    assert res["status"] == "succeeded", res
    assert [m["path"] for m in read_marks(mark)] == ["a->f", "f", "g"]


def test_a_chain_does_not_keep_its_worker_from_another_workflow(wf, db, tmp_path):
    """One worker: a one-node workflow submitted while a chain runs starts after the
    chain's running node, not after the nodes queued behind it (fair sharing)."""
    mark = tmp_path / "marks"
    n = 10
    long = chain(mark, n)
    for node in long["nodes"]:
        node["call"] = "fmtasks:sleep"
        node["args"] = {"seconds": 0.2, "mark": node["args"]["mark"], "tag": node["id"]}
    small = {"name": "small", "nodes": [py("x", "record", {"mark": str(mark), "tag": "SMALL"})]}
    sup = Supervisor(db, workers=1)
    e1 = api.submit(wf(long), None, db=db)
    small_path = wf(small)
    sent: dict[str, Any] = {}

    def submit_small() -> None:
        if not sent and len(read_marks(mark)) >= 2:
            sent["at"] = len(read_marks(mark))
            sent["id"] = api.submit(small_path, None, db=db)

    sup.on_tick = submit_small
    sup.open()
    try:
        sup.serve(until=lambda: e1 in sup.finished and sent.get("id") in sup.finished)
    finally:
        sup.close()
    tags = [m["tag"] for m in read_marks(mark)]
    assert sorted(tags) == sorted([f"n{i}" for i in range(n)] + ["SMALL"])
    # Marked then: at most the node running at the time, and one more if the new
    # execution was read just as it ended, come before it.
    assert tags.index("SMALL") <= sent["at"] + 2, tags


def test_a_graceful_stop_starts_no_chained_node(wf, db, tmp_path):
    mark = tmp_path / "marks"
    doc = chain(mark, 2, fn="sleep", args={"seconds": 0.5, "mark": str(mark), "tag": "n0"})
    sup = Supervisor(db, workers=1)
    eid = api.submit(wf(doc), None, db=db)

    def stop_once_chained() -> None:
        assert sup.executor is not None
        held = [t for s in getattr(sup.executor, "slots", []) for t in s.inflight]
        if not sup.stopping and any("after" in t for t in held):
            sup.request_stop("test")

    sup.on_tick = stop_once_chained
    sup.open()
    try:
        sup.serve()
    finally:
        sup.close()
    assert sup.stopping
    assert [m["tag"] for m in read_marks(mark)] == ["n0"]  # n1 never started
    nodes = {n["path"]: n["status"] for n in show(db, eid)["nodes"]}
    assert nodes == {"n0": "succeeded"}


def test_a_worker_that_dies_under_a_chain_reruns_the_node_then_its_successors_once(
    wf, db, tmp_path
):
    """n0 kills its worker once (a recovery); the nodes sent behind it come back
    unstarted with the worker's death and run once each, after n0's second try."""
    mark, counter = tmp_path / "marks", tmp_path / "count"
    doc = chain(mark, 4, fn="crash", args={"counter": str(counter), "times": 1})
    res = run_wf(wf(doc), db)
    assert res["status"] == "succeeded", res
    assert counter.read_text() == "2"
    assert [m["tag"] for m in read_marks(mark)] == ["n1", "n2", "n3"]
    nodes = {n["path"]: n for n in show(db, res["id"])["nodes"]}
    assert nodes["n0"]["recoveries"] == 1
    assert all(nodes[f"n{i}"]["recoveries"] == 0 for i in (1, 2, 3))
    assert all(nodes[f"n{i}"]["attempts"] == 1 for i in (1, 2, 3))
