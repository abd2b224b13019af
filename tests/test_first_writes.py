"""Issue 15: what the supervisor writes per node and item, and on which thread.

First writes (docs/schema.md, "What is written when"): a worker node or a loop item
under no rate limit gets no row while it is queued nor for its first
``defer_first_write`` seconds of running; one that ends sooner is written once.
Group commits run in a commit process of their own; what must be committed first
waits for it; the process dies with the supervisor, and the supervisor stops in
one line if it dies alone.
The set of ended executions the supervisor keeps is bounded.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import python_node, query, wait_until

from fm_local import api, store
from fm_local.store import Batch
from fm_local.store.writer import Writer, merge
from fm_local.supervisor import Supervisor
from fm_local.supervisor.scope import RecentIds

py = partial(python_node, "fmtasks")


def loop(n: int, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    node = {"id": "each", "type": "loop", "loopType": "count", "count": n, "parallel": True}
    node.update(kw)
    node["body"] = {"nodes": [body]}
    return {"name": "loop", "nodes": [node]}


def count_row_writes(db: Path) -> None:
    """Triggers that count each row inserted, updated or deleted in node_runs,
    attempts and queue (SQLite's own view of the writes, whatever the statements)."""
    store.Store(db).close()
    con = sqlite3.connect(db)
    try:
        con.execute("CREATE TABLE test_writes (tbl TEXT, op TEXT)")
        for t in ("node_runs", "attempts", "queue"):
            for op in ("INSERT", "UPDATE", "DELETE"):
                con.execute(
                    f"CREATE TRIGGER test_{t}_{op} AFTER {op} ON {t} "
                    f"BEGIN INSERT INTO test_writes VALUES ('{t}', '{op}'); END"
                )
        con.commit()
    finally:
        con.close()


def row_writes(db: Path) -> Counter[tuple[str, str]]:
    return Counter((r["tbl"], r["op"]) for r in query(db, "SELECT tbl, op FROM test_writes"))


def run_counted(
    db: Path, path: Path, defer: float, workers: int = 2
) -> tuple[str, Counter[tuple[str, str]]]:
    count_row_writes(db)
    sup = Supervisor(db, workers=workers)
    sup.defer_first_write = defer
    eid = api.submit(path, None, db=db)
    sup.open()
    try:
        sup.serve(until=lambda: eid in sup.finished)
    finally:
        sup.close()
    return eid, row_writes(db)


def test_quick_items_are_written_once_each(db: Path, wf: Callable[..., Path]) -> None:
    """With a deferral longer than any item takes, an item and its body node cost
    one node_runs insert each and one attempts insert, nothing else: no queued or
    running row, no queue row. The output is whole."""
    n = 300
    eid, counts = run_counted(db, wf(loop(n, py("double", "echo", {"i": "{{index}}"}))), 600)
    row = query(db, "SELECT status, output FROM executions WHERE id=?", (eid,))[0]
    assert row["status"] == "succeeded"
    assert (
        query(db, "SELECT count(*) AS n FROM node_runs WHERE execution_id=?", (eid,))[0]["n"]
        == 2 * n + 1
    )
    # Each item and its body: one row each, inserted once. The loop's own row: a
    # few writes (when it starts, its item count, when it ends), as before.
    assert counts["node_runs", "INSERT"] == 2 * n + 1
    assert counts["node_runs", "UPDATE"] <= 2
    assert counts["attempts", "INSERT"] == n + 1
    assert counts["attempts", "UPDATE"] <= 1
    assert counts["queue", "INSERT"] == counts["queue", "UPDATE"] == 0
    assert counts["queue", "DELETE"] == 0
    items = query(
        db,
        "SELECT item_index, status, started_at, finished_at FROM node_runs "
        "WHERE execution_id=? AND node_type='item' ORDER BY item_index",
        (eid,),
    )
    assert [r["item_index"] for r in items] == list(range(n))
    assert all(r["status"] == "succeeded" and r["started_at"] for r in items)
    bodies = query(
        db,
        "SELECT status, attempts, recoveries, input FROM node_runs "
        "WHERE execution_id=? AND path GLOB 'each*.double'",
        (eid,),
    )
    assert len(bodies) == n
    assert {(b["status"], b["attempts"], b["recoveries"]) for b in bodies} == {("succeeded", 1, 0)}
    assert all(b["input"] for b in bodies)  # the resolved input is still recorded
    tries = query(db, "SELECT status, kind FROM attempts WHERE execution_id=?", (eid,))
    assert sorted({(t["status"], t["kind"]) for t in tries}) == [("succeeded", "attempt")]


def test_a_node_running_longer_than_the_deferral_shows_as_running(
    db: Path, wf: Callable[..., Path], daemon: Callable[..., Any]
) -> None:
    """A node that runs past the deferral gets its running row (and its attempts
    row, and its queue row) while it runs: fm show, the TUI and a restart see it."""
    daemon()
    eid = api.submit(wf({"name": "slow", "nodes": [py("s", "sleep", {"seconds": 5})]}), db=db)
    run = wait_until(
        lambda: query(db, "SELECT status FROM node_runs WHERE execution_id=? AND path='s'", (eid,)),
        60,
        "the running row",
    )
    assert run[0]["status"] == "running"
    assert query(db, "SELECT status FROM attempts WHERE execution_id=?", (eid,)) == [
        {"status": "running"}
    ]
    assert query(db, "SELECT status FROM queue WHERE execution_id=?", (eid,)) == [
        {"status": "running"}
    ]


def test_rate_limited_items_are_written_when_they_start(db: Path, wf: Callable[..., Path]) -> None:
    """A restart rebuilds a rate limiter from the start times of its items, so
    rate-limited items are not deferred: each is written when it starts too."""
    n = 20
    eid, counts = run_counted(
        db, wf(loop(n, py("e", "echo", {"i": "{{index}}"}), rateLimit=200)), 600
    )
    assert query(db, "SELECT status FROM executions WHERE id=?", (eid,))[0]["status"] == (
        "succeeded"
    )
    # Each item: its row when it starts (running), and again when it ends.
    assert counts["node_runs", "UPDATE"] >= n


def test_a_crash_before_the_first_write_reruns_the_item_as_an_attempt(
    db: Path, wf: Callable[..., Path], daemon: Callable[..., Any], tmp_path: Path
) -> None:
    """kill -9 while items run that have no row yet: the restarted daemon runs them
    from the start; every item ends once, with its own output, and the file passes
    fm verify."""
    marks = tmp_path / "marks.jsonl"
    n = 40
    doc = loop(
        n,
        py("s", "sleep", {"seconds": 0.05, "mark": str(marks), "tag": "{{index}}"}),
        maxConcurrency=4,
    )
    d = daemon()
    eid = api.submit(wf(doc), db=db)
    wait_until(lambda: len(marks.read_text().splitlines()) >= 8 if marks.exists() else 0, 60)
    d.kill9()
    daemon()
    assert api.wait(eid, db=db, timeout=120)["status"] == "succeeded"
    items = query(
        db,
        "SELECT item_index, status FROM node_runs WHERE execution_id=? AND node_type='item'",
        (eid,),
    )
    assert sorted(r["item_index"] for r in items) == list(range(n))
    assert {r["status"] for r in items} == {"succeeded"}
    out = api.wait(eid, db=db)["output"]
    assert [str(o["tag"]) for o in out["each"]] == [str(i) for i in range(n)]
    from fm_local.store.verify import verify_connection

    con = sqlite3.connect(db)
    try:
        assert verify_connection(con) == []
    finally:
        con.close()


def test_the_writer_commits_in_order_and_merges_what_waited(tmp_path: Path) -> None:
    """Batches that wait behind a commit are merged, a row's later value winning;
    wait() returns once everything submitted is committed."""
    db = tmp_path / "fm.db"
    w = Writer(db)
    try:
        for i in range(50):
            b = Batch()
            b.samples.append((float(i), i, "supervisor", 0.0, 0, None, None))
            w.submit(b)
        w.wait()
        assert w.committed == w.submitted == 50
        rows = query(db, "SELECT pid FROM resource_samples ORDER BY id")
        assert [r["pid"] for r in rows] == list(range(50))
    finally:
        w.close()
    a, b = Batch(), Batch()
    a.queue[("e", "p")] = ("e", "p", "n", "queued", 0, None, 1.0, None)
    b.queue[("e", "p")] = None
    a.events.append(("e", None, 1.0, "x", None))
    b.events.append(("e", None, 2.0, "y", None))
    a.queue_counts = [("queued", 0, 5)]
    b.queue_counts = []
    m = merge([a, b])
    assert m.queue == {("e", "p"): None}
    assert [e[3] for e in m.events] == ["x", "y"]
    assert m.queue_counts == []  # the later count replaces the earlier one
    assert merge([a, Batch()]).queue_counts == [("queued", 0, 5)]


def test_a_failed_commit_on_the_writer_stops_the_supervisor(
    db: Path, wf: Callable[..., Path]
) -> None:
    """A storage failure met by the writer thread is raised by the supervisor at
    its next turn: it stops serving instead of going on unrecorded."""
    from fm_local import errors

    sup = Supervisor(db, workers=1)
    sup.open()
    try:
        assert sup.writer is not None
        sup.writer.error = sqlite3.OperationalError("disk I/O error")
        with pytest.raises(errors.StorageError, match="disk I/O error"):
            sup.tick()
        assert sup.storage_failed
    finally:
        sup.writer.error = None  # type: ignore[union-attr]
        sup.close()


def _commit_process(pid: int) -> psutil.Process:
    def found() -> list[psutil.Process]:
        return [
            k
            for k in psutil.Process(pid).children()
            if "fm_local.store.writer" in " ".join(k.cmdline())
        ]

    # The daemon takes the lock file before it starts its commit process.
    kids = wait_until(lambda: found() or None, 20, "the daemon's commit process")
    assert len(kids) == 1, kids
    return kids[0]


def _gone(p: psutil.Process) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_commit_process_dies_with_the_daemon_and_frees_the_file(
    db: Path, wf: Callable[..., Path], daemon: Callable[..., Any]
) -> None:
    """kill -9 of the daemon ends its commit process too (it holds the lock file
    while it lives, so no new daemon could take the file under a late commit); a
    new daemon then takes over and runs work."""
    from fm_local.lock import is_served

    d = daemon(workers=1)
    writer = _commit_process(d.proc.pid)
    d.kill9()
    wait_until(lambda: _gone(writer), 10, "the commit process outlived the daemon")
    wait_until(lambda: is_served(db) is None, 10, "the lock file stayed held")
    daemon(workers=1)
    eid = api.submit(wf(loop(20, py("n", "noop"))), None, db=db)
    assert api.wait(eid, db=db, timeout=60)["status"] == "succeeded"


def test_a_commit_process_that_dies_alone_stops_the_supervisor_in_one_line(
    db: Path, wf: Callable[..., Path]
) -> None:
    """If the commit process dies (killed, out of memory), the supervisor stops at
    its next turn with one line naming the file and what to do; what was committed
    stays, and a new supervisor finishes the work."""
    from fm_local import errors

    eid = api.submit(wf(loop(50, py("n", "noop"))), None, db=db)
    sup = Supervisor(db, workers=1)
    sup.open()
    try:
        assert sup.writer is not None
        os.kill(sup.writer.pid, signal.SIGKILL)
        sup.writer.proc.wait(10)
        with pytest.raises(errors.StorageError, match="commit process .* ended unexpectedly"):
            for _ in range(1000):
                sup.tick()
        assert sup.storage_failed
    finally:
        sup.close()
    sup = Supervisor(db, workers=1)
    sup.open()
    try:
        sup.run_execution(eid)
    finally:
        sup.close()
    assert query(db, "SELECT status FROM executions WHERE id=?", (eid,))[0]["status"] == "succeeded"


def test_ctrl_c_in_the_terminal_does_not_reach_the_commit_process(db: Path) -> None:
    """The commit process ignores SIGINT and has a process group of its own: a
    Ctrl-C is the supervisor's to handle, and the last commits still land."""
    w = Writer(db)
    try:
        assert os.getpgid(w.pid) != os.getpgid(0)
        for pid in (6, 7):
            b = Batch()
            b.samples.append((1.0, pid, "supervisor", 0.0, 0, None, None))
            w.submit(b)
            w.wait()  # the first: it is up and serving before the signal
            if pid == 6:
                os.kill(w.pid, signal.SIGINT)
        assert w.proc.poll() is None
    finally:
        w.close()
    assert w.proc.returncode == 0
    assert [r["pid"] for r in query(db, "SELECT pid FROM resource_samples ORDER BY id")] == [6, 7]


def test_the_ended_executions_kept_are_bounded() -> None:
    ids = RecentIds(10)
    for i in range(25):
        ids.add(f"e{i}")
        ids.add(f"e{i}")
    assert len(ids) == 10 and len(ids.order) == 10
    assert {f"e{i}" for i in range(15, 25)} == set(ids)
    assert {"e24", "e20"} <= ids
    assert "e3" not in ids


def test_a_daemon_finds_new_executions_without_the_ended_ones(
    db: Path, wf: Callable[..., Path]
) -> None:
    """New executions are found by their committed status; those that ended are
    not passed to that query, however many there were."""
    path = wf({"name": "one", "nodes": [py("a", "noop")]})
    sup = Supervisor(db, workers=1)
    seen: list[int] = []
    ids = {api.submit(path, db=db) for _ in range(3)}
    sup.open()
    assert sup.store is not None
    real = sup.store.new_executions

    def spy(known: Any) -> list[dict[str, Any]]:
        seen.append(len(known))
        return real(known)

    sup.store.new_executions = spy  # type: ignore[method-assign]
    try:
        sup.serve(until=lambda: ids <= sup.finished)
        more = {api.submit(path, db=db) for _ in range(3)}
        sup.stopping = False
        sup.serve(until=lambda: more <= sup.finished)
    finally:
        sup.close()
    assert seen and max(seen) <= 3  # only what runs, never the ended ones
    assert {r["status"] for r in query(db, "SELECT status FROM executions")} == {"succeeded"}


def test_a_version_6_file_shows_its_queue_and_is_upgraded_by_a_writer(
    db: Path, wf: Callable[..., Path]
) -> None:
    """Read commands read a version 6 file (no queue_counts) as it is; a writer
    adds the table and the view that sums both."""
    import json

    from conftest import fm_cli, undo_version_7

    from fm_local import store

    api.submit(wf({"name": "one", "nodes": [py("a", "noop")]}), db=db)
    with sqlite3.connect(db) as con:
        undo_version_7(con)
        con.execute("UPDATE meta SET value='6' WHERE key='schema_version'")
    out = fm_cli(db, "queue", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["queuedExecutions"] == 1
    assert query(db, "SELECT value FROM meta WHERE key='schema_version'") == [{"value": "6"}]
    store.Store(db).close()  # a writer migrates
    assert query(db, "SELECT * FROM queue_counts") == []
    assert query(db, "SELECT value FROM meta WHERE key='schema_version'") == [
        {"value": str(store.SCHEMA_VERSION)}
    ]


def test_multi_row_inserts_commit_every_row_and_refuse_only_the_bad_one(tmp_path: Path) -> None:
    """Inserts go as multi-row statements (MULTI_ROWS rows each): every row of a
    long batch lands; one bad row among them is refused alone (row by row)."""
    from fm_local.store.batch import MULTI_ROWS

    db = tmp_path / "fm.db"
    st = store.Store(db)
    try:
        n = 2 * MULTI_ROWS + 51
        b = Batch()
        for i in range(n):
            b.events.append((None, f"p{i}", float(i), "x", None))
        assert st.commit_batch(b) == []
        rows = query(db, "SELECT path, ts FROM events ORDER BY id")
        assert [r["path"] for r in rows] == [f"p{i}" for i in range(n)]
        b = Batch()
        for i in range(300):
            b.samples.append((float(i), i, "supervisor", 0.0, 0, None, None))
        b.samples[123] = (1.0, 2**70, "supervisor", 0.0, 0, None, None)  # too big
        rejected = st.commit_batch(b)
        assert len(rejected) == 1 and isinstance(rejected[0].error, OverflowError)
        assert query(db, "SELECT count(*) AS n FROM resource_samples")[0]["n"] == 299
    finally:
        st.close()
