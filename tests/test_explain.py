"""``fm explain``: each reason, asked of a real ``fm daemon`` whose real workers
hold nodes in that state (a sleeping dependency, a full loop window, a pool held
by another execution, a rate limit, a batch pause, a retry back-off, a pause), then
with no supervisor serving the file, on a finished execution, and for bad input.
The node panel of the TUI shows the same reason, and a failed node's traceback."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import HERE, Daemon, fm_cli, python_node, query, wait_until

py = partial(python_node, "fmtasks")
LONG = 120  # seconds the holding nodes sleep (the tests end long before)


def explain(db: Path, eid: str, *args: str) -> list[dict[str, Any]]:
    out = fm_cli(db, "explain", eid, *args, "--json")
    assert out.exit_code == 0, out.stderr
    return json.loads(out.stdout)


def by_path(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["path"]: e for e in entries}


def status(db: Path, eid: str, path: str) -> str | None:
    rows = query(db, "SELECT status FROM node_runs WHERE execution_id=? AND path=?", (eid, path))
    return rows[0]["status"] if rows else None


def until_ts(e: dict[str, Any]) -> float:
    assert e["until"] is not None, e
    return datetime.fromisoformat(e["until"]).timestamp()


def submit(db: Path, path: Path) -> str:
    out = fm_cli(db, "submit", str(path))
    assert out.exit_code == 0, out.stderr
    return out.stdout.strip()


# --- one busy daemon: every gate at once ------------------------------------------------

BUSY = {
    "name": "explain-busy",
    "settings": {"concurrencyLimits": {"db": 1}},
    "nodes": [
        py("slow", "sleep", {"seconds": LONG}),
        py("after", "noop"),
        {
            "id": "items",
            "type": "loop",
            "loopType": "count",
            "count": 5,
            "parallel": True,
            "maxConcurrency": 2,
            "body": {"nodes": [py("s", "sleep", {"seconds": LONG})], "edges": []},
        },
        py(
            "flaky",
            "always_fail",
            {"message": "not yet"},
            retry={"maxAttempts": 3, "initialDelay": LONG * 1000, "backoff": "fixed"},
        ),
        {
            "id": "limited",
            "type": "loop",
            "loopType": "count",
            "count": 3,
            "parallel": True,
            "rateLimit": {"rate": 1, "per": LONG * 1000},
            "body": {"nodes": [py("n", "noop")], "edges": []},
        },
        {
            "id": "batched",
            "type": "loop",
            "loopType": "count",
            "count": 4,
            "parallel": True,
            "batchSize": 2,
            "delayBetweenBatches": LONG * 1000,
            "body": {"nodes": [py("n", "noop")], "edges": []},
        },
    ],
    "edges": [{"source": "slow", "target": "after"}],
}

POOL = {
    "name": "explain-pool",
    "settings": {"concurrencyLimits": {"db": 1}},
    "nodes": [py("hold", "sleep", {"seconds": LONG}, pool="db")],
}


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A daemon with 6 workers and three executions: one holding nodes in every
    gate, two of a workflow whose node joins a pool of one (the first holds it)."""
    folder = tmp_path_factory.mktemp("explain")
    (folder / "fmtasks.py").write_text((HERE / "fmtasks.py").read_text())
    db = folder / "fm.db"
    (folder / "busy.json").write_text(json.dumps(BUSY))
    (folder / "pool.json").write_text(json.dumps(POOL))
    d = Daemon(db, workers=6).start()
    try:
        eid = submit(db, folder / "busy.json")
        holder = submit(db, folder / "pool.json")
        wait_until(lambda: status(db, holder, "hold") == "running", 60, "the pool's holder runs")
        waiter = submit(db, folder / "pool.json")
        # A queued node has no row before it starts (first writes wait): it is
        # counted in queue_counts, which fm queue reads.
        wait_until(
            lambda: (
                query(db, "SELECT status FROM executions WHERE id=?", (waiter,))[0]["status"]
                == "running"
                and query(db, "SELECT sum(tasks) AS n FROM queue_counts WHERE status='queued'")[0][
                    "n"
                ]
            ),
            60,
            "the second one waits",
        )

        def reached() -> bool:
            return (
                status(db, eid, "slow") == "running"
                and status(db, eid, "items[0].s") == "running"
                and status(db, eid, "items[1].s") == "running"
                and status(db, eid, "flaky") == "retry_wait"
                and status(db, eid, "limited[0]") == "succeeded"
                and status(db, eid, "batched[1]") == "succeeded"
                and status(db, eid, "batched[0]") == "succeeded"
            )

        wait_until(reached, 60, "every node in its state")
        yield {"db": db, "eid": eid, "holder": holder, "waiter": waiter, "daemon": d}
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def test_a_node_waits_for_the_dependency_that_sleeps(busy: dict[str, Any]) -> None:
    e = by_path(explain(busy["db"], busy["eid"]))["after"]
    assert e["reason"] == "dependencies"
    assert e["blockers"] == ["slow"]
    assert "slow (running)" in e["detail"]
    assert e["source"] == "supervisor"
    assert "slow" not in by_path(explain(busy["db"], busy["eid"]))  # running: not listed


def test_items_held_by_max_concurrency_name_the_items_that_hold_it(busy: dict[str, Any]) -> None:
    entries = explain(busy["db"], busy["eid"], "items")
    waiting = {e["path"]: e for e in entries if e["reason"] == "max_concurrency"}
    assert set(waiting) == {"items[2]", "items[3]", "items[4]"}
    for e in waiting.values():
        assert sorted(e["blockers"]) == ["items[0]", "items[1]"]
        assert "maxConcurrency 2" in e["detail"]
    # One item asked for by its path.
    (only,) = [e for e in explain(busy["db"], busy["eid"], "items[3]") if e["path"] == "items[3]"]
    assert only["reason"] == "max_concurrency"


def test_a_pool_held_by_another_execution_names_its_holder(busy: dict[str, Any]) -> None:
    (e,) = explain(busy["db"], busy["waiter"])
    assert e["path"] == "hold" and e["reason"] == "pool"
    assert e["blockers"] == [f"{busy['holder']}:hold"]
    assert "pool 'db' is full: 1 of 1 held" in e["detail"]


def test_a_rate_limit_says_when_the_next_start_is(busy: dict[str, Any]) -> None:
    started = query(
        busy["db"],
        "SELECT started_at FROM node_runs WHERE execution_id=? AND path='limited[0].n'",
        (busy["eid"],),
    )[0]["started_at"]
    entries = by_path(explain(busy["db"], busy["eid"], "limited"))
    for path in ("limited[1].n", "limited[2].n"):
        e = entries[path]
        assert e["reason"] == "rate_limit", e
        assert "loop limited rateLimit" in e["detail"]
        # Evenly spaced: the next start is one window after the first, in the future.
        assert until_ts(e) > time.time()
        assert abs(until_ts(e) - (started + LONG)) < 5
    assert entries["limited[0].n"]["reason"] == "finished"


def test_a_batch_pause_says_until_when(busy: dict[str, Any]) -> None:
    entries = by_path(explain(busy["db"], busy["eid"], "batched"))
    for path in ("batched[2]", "batched[3]"):
        e = entries[path]
        assert e["reason"] == "batch"
        assert "delayBetweenBatches" in e["detail"]
        assert until_ts(e) > time.time() + LONG / 2
    assert entries["batched[1]"]["reason"] == "finished"


def test_retry_back_off_says_which_attempt_and_when(busy: dict[str, Any]) -> None:
    (e,) = explain(busy["db"], busy["eid"], "flaky")
    assert e["reason"] == "retry_backoff"
    assert e["status"] == "retry_wait"
    assert "attempt 2 of 3" in e["detail"]
    assert "ValueError" in e["detail"] or "not yet" in e["detail"]
    assert until_ts(e) > time.time() + LONG / 2


def test_human_output_is_one_aligned_line_per_instance(busy: dict[str, Any]) -> None:
    out = fm_cli(busy["db"], "explain", busy["eid"])
    assert out.exit_code == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "explained by the supervisor" in lines[0]
    head = next(i for i, line in enumerate(lines) if line.startswith("PATH"))
    col = lines[head].index("REASON")
    rows = lines[head + 1 :]
    after = next(line for line in rows if line.startswith("after "))
    assert after[col:].startswith("dependencies")
    assert any(line.startswith("flaky ") and "retry_backoff" in line for line in rows)
    # The closing lines: how many run, and (since --all) how many ended well.
    tail = [line for line in rows if line.startswith("(")]
    assert any("running" in line for line in tail), rows


# --- pause, then no supervisor ------------------------------------------------------------

CHAIN = {
    "name": "explain-chain",
    "nodes": [py("slow", "sleep", {"seconds": LONG}), py("after", "noop")],
    "edges": [{"source": "slow", "target": "after"}],
}


def test_paused_then_no_supervisor(
    db: Path, wf: Callable[..., Path], daemon: Callable[..., Daemon]
) -> None:
    d = daemon(workers=2)
    eid = submit(db, wf(CHAIN))
    wait_until(lambda: status(db, eid, "slow") == "running", 60, "slow runs")
    out = fm_cli(db, "pause", eid)
    assert out.exit_code == 0, out.stderr
    e = by_path(explain(db, eid))["after"]
    assert e["reason"] == "paused"
    assert f"fm resume {eid}" in e["detail"] and "waiting for slow" in e["detail"]
    d.kill9()
    from fm_local.lock import is_served

    # Its workers die with it (and with them the lock's last holders).
    wait_until(lambda: is_served(db) is None, 30, "nothing serves the file")
    entries = by_path(explain(db, eid))
    for path in ("slow", "after"):
        assert entries[path]["reason"] == "no_supervisor", entries[path]
        assert entries[path]["source"] == "database"
    assert "waiting for slow" in entries["after"]["detail"]
    assert "start `fm daemon`" in entries["after"]["detail"]
    text = fm_cli(db, "explain", eid)
    assert text.exit_code == 0
    assert "no supervisor serves" in text.stdout and "from the database alone" in text.stdout


def test_queued_behind_a_busy_worker(
    db: Path, wf: Callable[..., Path], daemon: Callable[..., Daemon]
) -> None:
    daemon(workers=1)
    doc = {"name": "explain-queue", "nodes": [py("a", "sleep", {"seconds": LONG}), py("b", "noop")]}
    eid = submit(db, wf(doc))
    wait_until(lambda: status(db, eid, "a") == "running", 60, "a runs")
    (e,) = explain(db, eid, "b")
    assert e["reason"] == "queued"
    assert "1 of 1 workers busy" in e["detail"]
    assert e["blockers"] == ["a"]


# --- finished, and bad input ----------------------------------------------------------------

FINISHED = {
    "name": "explain-finished",
    "nodes": [
        {"id": "check", "type": "condition", "expression": "1 > 2"},
        py("yes", "noop"),
        py("no", "noop"),
        py("bad", "always_fail", {"message": "it broke"}),
        py("slowish", "sleep", {"seconds": 1}),
        py("later", "noop"),
    ],
    "edges": [
        {"source": "check", "target": "yes", "sourceHandle": "true"},
        {"source": "check", "target": "no", "sourceHandle": "false"},
        {"source": "no", "target": "bad"},
        {"source": "slowish", "target": "later"},
    ],
}


def test_a_finished_execution_says_how_each_node_ended(db: Path, wf: Callable[..., Path]) -> None:
    out = fm_cli(db, "run", str(wf(FINISHED)), "--json")
    eid = json.loads(out.stdout)["id"]
    entries = by_path(explain(db, eid))
    assert entries["check"]["reason"] == "finished"
    assert entries["no"]["detail"] == "succeeded"
    assert entries["yes"]["detail"] == "skipped: condition 'check' was false"
    assert entries["bad"]["detail"].startswith("failed: ")
    assert "it broke" in entries["bad"]["detail"]
    assert entries["later"]["reason"] == "not_reached"
    assert "the execution failed" in entries["later"]["detail"]
    assert all(e["source"] == "database" for e in entries.values())
    (only,) = explain(db, eid, "bad")
    assert only["path"] == "bad"


def test_unknown_execution_or_path_is_exit_2_with_one_line(
    db: Path, wf: Callable[..., Path]
) -> None:
    eid = json.loads(
        fm_cli(
            db,
            "run",
            str(wf(CHAIN | {"nodes": [py("slow", "noop"), py("after", "noop")]})),
            "--json",
        ).stdout
    )["id"]
    out = fm_cli(db, "explain", "nosuchid")
    assert out.exit_code == 2
    assert out.stderr.strip().splitlines() == [
        f"error: no execution 'nosuchid' in {db} (see: fm ls)"
    ]
    out = fm_cli(db, "explain", eid, "nope")
    assert out.exit_code == 2
    (line,) = out.stderr.strip().splitlines()
    assert "no node 'nope'" in line and eid in line
    out = fm_cli(db, "explain", eid, "slow[3]")
    assert out.exit_code == 2 and "not a loop" in out.stderr


def test_a_bad_request_gets_an_error_answer_and_the_daemon_goes_on(busy: dict[str, Any]) -> None:
    import sqlite3

    from fm_local.explain.ask import ask
    from fm_local.store import Store

    db = busy["db"]
    store = Store(db, create=False)
    try:
        answer = ask(store, busy["eid"], None, 10.0)
        assert answer is not None and answer["ok"] and answer["active"]
        # Data that is not JSON, a path that is not a string, an unknown execution.
        con = sqlite3.connect(str(db), timeout=30)
        with con:
            con.execute(
                "INSERT INTO signals(execution_id, type, data, created_at) VALUES(?,?,?,?)",
                (busy["eid"], "__explain", "{not json", time.time()),
            )
        con.close()
        bad = store.add_signal(busy["eid"], "__explain", None, {"path": 123})
        gone = ask(store, "nosuchexecution", None, 10.0)
        assert gone == {
            "ok": True,
            "pid": busy["daemon"].proc.pid,
            "execution": "nosuchexecution",
            "active": False,
        }
        row = wait_until(
            lambda: (r := store.get_signal(bad)) and r["status"] != "pending" and r,
            10,
            "the bad request answered",
        )
        assert json.loads(row["result"])["ok"] is False
        answered = query(db, "SELECT result FROM signals WHERE data='{not json'")
        assert answered and json.loads(answered[0]["result"])["ok"] is False
    finally:
        store.close()
    assert busy["daemon"].proc.poll() is None
    assert by_path(explain(db, busy["eid"]))["after"]["reason"] == "dependencies"


def test_paths_cover_their_instances() -> None:
    from fm_local.explain.paths import covers, parse, relevant

    loop = parse("items")
    assert covers(loop, parse("items[3]")) and covers(loop, parse("items[3].s"))
    assert not covers(loop, parse("itemsx")) and not covers(parse("items[3]"), parse("items"))
    assert covers(parse("items.s"), parse("items[7].s"))
    assert relevant(parse("items[3].s"), parse("items")) and relevant(
        parse("a[1].b"), parse("a[1]")
    )
    assert not relevant(parse("items[3]"), parse("items[4].s"))
    assert parse("a[2].b->fallback") == [("a", 2), ("b", None), ("->fallback", None)]


# --- the TUI's node panel -------------------------------------------------------------------

PANEL = {
    "name": "explain-panel",
    "nodes": [
        py(
            "flaky",
            "always_fail",
            {"message": "not yet"},
            retry={"maxAttempts": 3, "initialDelay": LONG * 1000, "backoff": "fixed"},
        ),
        py("bad", "always_fail", {"message": "it broke"}),
        py("recover", "noop"),
    ],
    "edges": [{"source": "bad", "target": "recover", "sourceHandle": "error"}],
}


def test_the_node_panel_shows_the_reason_and_the_traceback_at_its_top(
    db: Path, wf: Callable[..., Path], daemon: Callable[..., Daemon]
) -> None:
    import asyncio

    from test_tui import SIZE, open_detail, panel_text, until

    from tui.app import FmApp
    from tui.widgets.table_sync import row_keys
    from tui.widgets.timeline import TimelineTable

    daemon(workers=2)
    eid = submit(db, wf(PANEL))
    wait_until(
        lambda: (
            status(db, eid, "flaky") == "retry_wait" and status(db, eid, "recover") == "succeeded"
        ),
        60,
        "flaky backs off, bad failed and was handled",
    )
    app = FmApp(db, interval=0.1)

    async def script() -> None:
        async with app.run_test(size=SIZE) as pilot:
            detail = await open_detail(pilot, eid)
            table = detail.query_one(TimelineTable)
            table.move_cursor(row=row_keys(table).index("flaky"))
            await until(pilot, lambda: "retry_backoff" in panel_text(detail), "flaky's reason")
            lines = panel_text(detail).splitlines()
            assert lines[0].startswith("why retry_backoff") and "attempt 2 of 3" in lines[0]
            table.move_cursor(row=row_keys(table).index("bad"))
            await until(pilot, lambda: "why finished" in panel_text(detail), "bad's reason")
            lines = panel_text(detail).splitlines()
            assert lines[0].startswith("why finished") and "it broke" in lines[0]
            assert lines[1].startswith("Traceback")  # the node's traceback, right below
            tb_end = next(i for i, line in enumerate(lines) if line.startswith("ValueError"))
            assert any("raise ValueError(message)" in line for line in lines[1:tb_end])
            assert lines[tb_end + 1].startswith("bad ")  # then the panel as before
            assert sum("Traceback" in line for line in lines) == 1  # not twice

    asyncio.run(script())


def test_the_human_listing_leaves_out_what_ended_well_unless_asked(
    db: Path, wf: Callable[..., Path]
) -> None:
    out = fm_cli(db, "run", str(wf(FINISHED)), "--json")
    eid = json.loads(out.stdout)["id"]
    text = fm_cli(db, "explain", eid).stdout
    paths = [line.split()[0] for line in text.splitlines()[2:] if not line.startswith("(")]
    assert "bad" in paths and "later" in paths
    assert "no" not in paths and "yes" not in paths, text
    assert "succeeded or skipped, not listed: --all" in text
    every = fm_cli(db, "explain", eid, "--all").stdout
    assert {"no", "yes", "bad", "later"} <= {line.split()[0] for line in every.splitlines()[2:]}
    assert "not listed" not in every
    assert "no " in fm_cli(db, "explain", eid, "no").stdout, "a PATH lists it whatever it is"


def test_an_answer_past_its_bound_counts_the_rest_and_the_client_lists_only_the_answer(
    db: Path, wf: Callable[..., Path], daemon: Callable[..., Daemon]
) -> None:
    """1,500 queued items: the supervisor explains 1,000 (positions 1..1,000) and
    counts the rest; the client does not fill those in from the rows."""
    d = daemon(workers=1)
    doc = {
        "name": "explain-many",
        "settings": {"queue": {"maxSize": 2000}},
        "nodes": [
            {"id": "items", "type": "transform", "expression": "list(range(1500))"},
            {
                "id": "each",
                "type": "loop",
                "loopType": "forEach",
                "arrayPath": "{{items}}",
                "itemVariable": "i",
                "parallel": True,
                "body": {"nodes": [py("call", "sleep", {"seconds": LONG})]},
            },
        ],
        "edges": [{"source": "items", "target": "each"}],
    }
    eid = submit(db, wf(doc))
    # Queued nodes have no rows (first writes wait): queue_counts counts them.
    wait_until(
        lambda: (
            (
                query(db, "SELECT sum(tasks) AS n FROM queue_counts WHERE status='queued'")[0]["n"]
                or 0
            )
            >= 1499
        ),
        60,
        "every item queued",
    )
    entries = explain(db, eid)
    queued = [e for e in entries if e["reason"] == "queued"]
    assert len(queued) == 1000 and all(e["source"] == "supervisor" for e in queued)
    assert "position 1 of " in queued[0]["detail"] and "position 1000 of " in queued[-1]["detail"]
    text = fm_cli(db, "explain", eid).stdout
    assert "more instances not listed (ask for a path)" in text
    assert "queue table" not in text, "no row-based lines for what the answer counted"
    (last,) = explain(db, eid, "each[1499].call")
    assert last["reason"] == "queued" and "position 149" in last["detail"], last
    fm_cli(db, "cancel", eid)
    d.stop()
