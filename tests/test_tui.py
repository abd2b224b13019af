"""The terminal UI (tui/), driven with ``App.run_test()`` and a ``Pilot``.

Databases come from real workflows: finished executions from ``api.run`` (an
embedded supervisor with real workers), live ones from a real ``fm daemon``
subprocess, which applies the signals the UI writes. Snapshot tests use a frozen
database (rows written directly, fixed times, frozen clock). The last test checks
that the engine never imports the UI.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HERE, ROOT, exec_status, query, wait_until
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Sparkline, Static

from fm_local import api
from fm_local.store import Store
from tui.app import FmApp, check_database
from tui.data import Reader
from tui.records import ItemPage
from tui.screens.detail import DetailScreen
from tui.screens.dialogs import ConfirmScreen, JsonPromptScreen
from tui.screens.executions import ExecutionsScreen
from tui.screens.help import HelpScreen
from tui.screens.queue import QueueScreen
from tui.screens.resources import ResourcesScreen
from tui.widgets.executions_table import ExecutionsTable
from tui.widgets.queue_panels import DepthTable, QueuedTable, Throughput
from tui.widgets.resource_panels import ProcessTable, StateLine
from tui.widgets.table_sync import cursor_key, row_keys
from tui.widgets.timeline import TimelineTable

SIZE = (140, 40)

# --- helpers ----------------------------------------------------------------------------


def drive(app: FmApp, script: Callable[[Pilot[None]], Awaitable[None]]) -> None:
    """Run ``script`` against ``app`` in a headless terminal."""

    async def go() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await script(pilot)

    asyncio.run(go())


async def until(pilot: Pilot[None], cond: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    """Poll ``cond`` while the app keeps running (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        await pilot.pause(0.05)


async def shown(pilot: Pilot[None], screen: type[Any]) -> Any:
    """Wait until ``screen`` is the current screen and has drawn a snapshot."""
    app = pilot.app
    await until(
        pilot,
        lambda: isinstance(app.screen, screen) and app.screen.loaded,
        f"{screen.__name__} loaded",
    )
    await settled(pilot)
    return app.screen


async def settled(pilot: Pilot[None]) -> None:
    """Wait until the screen's tables have measured their rows: a DataTable does
    it when it is next idle (a private flag of Textual's DataTable), which on a
    busy machine can come after the data arrived."""

    def measured() -> bool:
        tables = pilot.app.screen.query(DataTable)
        return not any(getattr(t, "_require_update_dimensions", False) for t in tables)

    await until(pilot, measured, "tables measured")
    await pilot.pause(0.05)


def screen_text(app: Any) -> str:
    """The screen as plain text (what export_screenshot draws, without the SVG);
    no-break spaces (which keep a figure on one line) read as spaces."""
    width, height = app.size
    console = Console(
        width=width, height=height, file=io.StringIO(), record=True, color_system=None
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text().replace("\u00a0", " ")


def panel_text(screen: DetailScreen) -> str:
    """Everything the node panel holds, scrolled into view or not."""
    console = Console(width=140, file=io.StringIO(), record=True, color_system=None)
    console.print(screen.query_one("#node-body", Static).content)
    return console.export_text()


def capture_notes(app: FmApp) -> list[tuple[str, str]]:
    notes: list[tuple[str, str]] = []
    notify = app.notify

    def recording(message: str, **kw: Any) -> None:
        notes.append((message, kw.get("severity", "information")))
        notify(message, **kw)

    app.notify = recording  # type: ignore[method-assign]
    return notes


def write_workflow(folder: Path, doc: dict[str, Any]) -> Path:
    for name in ("fmtasks.py", "sigtasks.py"):
        (folder / name).write_text((HERE / name).read_text())
    path = folder / f"{doc['name']}.json"
    path.write_text(json.dumps(doc))
    return path


NODES_DOC = {
    "name": "tui-nodes",
    "nodes": [
        {"id": "talk", "type": "python", "call": "fmtasks:prints", "args": {"n": 3}},
        {
            "id": "flaky",
            "type": "python",
            "call": "fmtasks:flaky",
            "args": {"counter": "COUNTER", "fail_times": 1},
            "retry": {"maxAttempts": 3, "initialDelay": 10},
        },
        {"id": "done", "type": "transform", "expression": "talk + flaky.calls"},
    ],
    "edges": [{"source": "talk", "target": "done"}, {"source": "flaky", "target": "done"}],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A database with three finished executions of real workflows."""
    folder = tmp_path_factory.mktemp("tui")
    db = folder / "fm.db"
    doc = json.loads(json.dumps(NODES_DOC).replace("COUNTER", str(folder / "counter")))
    ids = {
        "fan": api.run(ROOT / "examples" / "fan_out_fan_in.json", db=db, workers=2)["id"],
        "loop": api.run(ROOT / "examples" / "loop_collect.json", db=db, workers=2)["id"],
        "nodes": api.run(write_workflow(folder, doc), db=db, workers=2)["id"],
    }
    return {"db": db, **ids}


def app_for(db: Path, **kw: Any) -> FmApp:
    return FmApp(db, interval=0.1, **kw)


async def open_detail(pilot: Pilot[None], execution_id: str) -> DetailScreen:
    screen = await shown(pilot, ExecutionsScreen)
    table = screen.query_one(ExecutionsTable)
    table.move_cursor(row=row_keys(table).index(execution_id))
    await pilot.press("enter")
    detail: DetailScreen = await shown(pilot, DetailScreen)
    assert detail.execution_id == execution_id
    return detail


# --- executions screen --------------------------------------------------------------------


def test_executions_table_lists_executions_with_progress(finished: dict[str, Any]) -> None:
    app = app_for(finished["db"])

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        assert set(row_keys(table)) == {finished["fan"], finished["loop"], finished["nodes"]}
        fan = table.by_id[finished["fan"]]
        assert (fan.workflow, fan.status, fan.done, fan.total) == (
            "fan-out-fan-in",
            "succeeded",
            6,
            6,
        )
        text = screen_text(app)
        assert finished["fan"] in text and "fan-out-fan-in" in text and "6/6" in text
        assert "no daemon" in text  # offline inspection says so

    drive(app, script)


def test_filter_by_status(finished: dict[str, Any]) -> None:
    app = app_for(finished["db"])

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        await pilot.press("f")  # all -> active: nothing is active
        await until(pilot, lambda: screen.status_filter == "active", "filter active")
        await until(pilot, lambda: table.row_count == 0, "no active executions shown")
        for _ in range(4):  # active -> queued -> running -> paused -> succeeded
            await pilot.press("f")
        await until(pilot, lambda: screen.status_filter == "succeeded", "filter succeeded")
        await until(pilot, lambda: table.row_count == 3, "the succeeded ones")

    drive(app, script)


def test_enter_opens_the_detail_and_keys_switch_screens(finished: dict[str, Any]) -> None:
    app = app_for(finished["db"])

    async def script(pilot: Pilot[None]) -> None:
        await shown(pilot, ExecutionsScreen)
        await pilot.press("2")  # nothing chosen yet: stays, says why
        assert isinstance(app.screen, ExecutionsScreen)
        await open_detail(pilot, finished["fan"])
        await pilot.press("escape")
        await shown(pilot, ExecutionsScreen)
        await pilot.press("3")
        await shown(pilot, QueueScreen)
        await pilot.press("4")
        await shown(pilot, ResourcesScreen)
        await pilot.press("2")
        detail = await shown(pilot, DetailScreen)
        assert detail.execution_id == finished["fan"]
        await pilot.press("1")
        await shown(pilot, ExecutionsScreen)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        await until(pilot, lambda: "fm tui — keys" in screen_text(app), "help text")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, ExecutionsScreen), "help closed")
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "quit")

    drive(app, script)


def test_clicking_a_tab_switches_screen(finished: dict[str, Any]) -> None:
    app = app_for(finished["db"])

    async def script(pilot: Pilot[None]) -> None:
        await shown(pilot, ExecutionsScreen)
        await pilot.click("#queue")
        await shown(pilot, QueueScreen)
        await pilot.click("#resources")
        await shown(pilot, ResourcesScreen)

    drive(app, script)


# --- detail screen ----------------------------------------------------------------------


def test_timeline_has_one_bar_per_node(finished: dict[str, Any]) -> None:
    app = app_for(finished["db"])
    eid = finished["fan"]
    paths = {
        r["path"]
        for r in query(finished["db"], "SELECT path FROM node_runs WHERE execution_id=?", (eid,))
    }

    async def script(pilot: Pilot[None]) -> None:
        detail = await open_detail(pilot, eid)
        table = detail.query_one(TimelineTable)
        assert set(row_keys(table)) == paths and len(paths) == 6
        for key in paths:
            bar = table.get_cell(key, "bar")
            assert "█" in bar.plain, key
        # Branches that ran in parallel overlap on the shared axis.
        starts = {k: table.get_cell(k, "bar").plain.index("█") for k in paths}
        assert starts["get_users"] <= starts["branch_a"] < starts["merge"]
        text = screen_text(app)
        assert "branch_a" in text and "one column =" in text

    drive(app, script)


def test_selected_node_shows_input_output_attempts_and_log(finished: dict[str, Any]) -> None:
    app = app_for(finished["db"])

    async def script(pilot: Pilot[None]) -> None:
        detail = await open_detail(pilot, finished["nodes"])
        table = detail.query_one(TimelineTable)
        keys = row_keys(table)
        assert set(keys) == {"talk", "flaky", "done"}
        table.move_cursor(row=keys.index("talk"))
        await until(pilot, lambda: "line 2" in panel_text(detail), "talk's log lines")
        text = panel_text(detail)
        assert '"n": 3' in text  # the input, from the node's definition
        assert "from ctx.log" in text and "a warning" in text
        table.move_cursor(row=keys.index("flaky"))
        await until(pilot, lambda: "flaky failure 1" in panel_text(detail), "flaky's attempts")
        text = panel_text(detail)
        assert '"calls": 2' in text  # its output
        assert "TRANSIENT" in text  # the failed first attempt
        assert "×2" in screen_text(app)  # two attempts, on its timeline row

    drive(app, script)


def test_enter_on_a_loop_expands_its_items(finished: dict[str, Any]) -> None:
    app = app_for(finished["db"])

    async def script(pilot: Pilot[None]) -> None:
        detail = await open_detail(pilot, finished["loop"])
        table = detail.query_one(TimelineTable)
        # It opens on the first failed node: its loop and item are expanded.
        await until(pilot, lambda: cursor_key(table) == "process_all[6].process", "on the failure")
        await until(pilot, lambda: "record 7 is corrupt" in panel_text(detail), "its error")
        table.move_cursor(row=row_keys(table).index("process_all"))
        await pilot.press("enter")
        await until(pilot, lambda: not any("[" in k for k in row_keys(table)), "collapsed")
        keys = row_keys(table)
        assert "14/14" in table.get_cell("process_all", "status").plain
        table.move_cursor(row=keys.index("process_all"))
        await pilot.press("enter")
        await until(pilot, lambda: "process_all[13]" in row_keys(table), "items listed")
        items = [k for k in row_keys(table) if k.startswith("process_all[")]
        assert len(items) == 14
        # An item expands into its body; a failed one shows its error.
        table.move_cursor(row=row_keys(table).index("process_all[6]"))
        await pilot.press("enter")
        await until(pilot, lambda: "process_all[6].process" in row_keys(table), "item body")
        table.move_cursor(row=row_keys(table).index("process_all[6].process"))
        await until(pilot, lambda: "record 7 is corrupt" in panel_text(detail), "the error")
        # Collapsing the loop hides items and bodies again.
        table.move_cursor(row=row_keys(table).index("process_all"))
        await pilot.press("enter")
        await until(pilot, lambda: not any("[" in k for k in row_keys(table)), "collapsed")

    drive(app, script)


def test_big_loop_is_aggregated_and_expansion_is_bounded(tmp_path: Path) -> None:
    from tui.data import ITEMS_LIMIT

    db = tmp_path / "fm.db"
    doc = {
        "name": "tui-big-loop",
        "nodes": [
            {
                "id": "each",
                "type": "loop",
                "loopType": "forEach",
                "arrayPath": "{{ list(range(400)) }}",
                "parallel": True,
                "body": {"nodes": [{"id": "t", "type": "transform", "expression": "item * 2"}]},
            }
        ],
    }
    eid = api.run(write_workflow(tmp_path, doc), db=db, workers=2)["id"]
    with Reader(db) as reader:
        snap = reader.detail(eid, expanded=frozenset(), selected=None, width=50, now=time.time())
        assert [r.key for r in snap.rows] == ["each"]
        assert snap.rows[0].loop is not None and snap.rows[0].loop.total == 400
        assert len(snap.rows[0].loop.density) == 50 and max(snap.rows[0].loop.density) > 0
        snap = reader.detail(
            eid, expanded=frozenset({"each"}), selected=None, width=50, now=time.time()
        )
        # One page of items, under a line that says which.
        assert len(snap.rows) == 1 + 1 + ITEMS_LIMIT
        assert snap.rows[1].page == ItemPage(0, ITEMS_LIMIT - 1, 400, ITEMS_LIMIT, 0)
        assert snap.rows[2].key == "each[0]" and snap.rows[-1].key == f"each[{ITEMS_LIMIT - 1}]"
        snap = reader.detail(
            eid,
            expanded=frozenset({"each"}),
            selected=None,
            width=50,
            now=time.time(),
            pages={"each": ITEMS_LIMIT},
        )
        assert snap.rows[1].page == ItemPage(ITEMS_LIMIT, 399, 400, 400 - ITEMS_LIMIT, 0)
        assert [r.key for r in snap.rows[2:]] == [f"each[{i}]" for i in range(ITEMS_LIMIT, 400)]


# --- signals ------------------------------------------------------------------------------


def test_signals_to_a_finished_execution_are_refused_at_once(finished: dict[str, Any]) -> None:
    app = app_for(finished["db"])
    notes = capture_notes(app)
    before = query(finished["db"], "SELECT count(*) AS n FROM signals")[0]["n"]

    async def script(pilot: Pilot[None]) -> None:
        await shown(pilot, ExecutionsScreen)
        for key in ("p", "r", "c"):
            await pilot.press(key)
        await until(pilot, lambda: len(notes) == 3, "three refusals")

    drive(app, script)
    assert all("already succeeded" in m and sev == "error" for m, sev in notes), notes
    assert query(finished["db"], "SELECT count(*) AS n FROM signals")[0]["n"] == before


def test_without_a_daemon_a_signal_waits_in_the_table(tmp_path: Path) -> None:
    db = tmp_path / "fm.db"
    eid = api.submit(ROOT / "examples" / "fan_out_fan_in.json", db=db)
    app = app_for(db)
    notes = capture_notes(app)

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        assert screen.query_one(ExecutionsTable).by_id[eid].status == "queued"
        await pilot.press("p")
        await until(pilot, lambda: notes, "the outcome")

    drive(app, script)
    ((message, severity),) = notes
    assert "waits in the signals table" in message and "no daemon" in message
    assert severity == "warning"
    (row,) = query(db, "SELECT * FROM signals WHERE execution_id=?", (eid,))
    assert (row["type"], row["status"]) == ("pause", "pending")


def test_resume_prompt_validates_json_and_cancel_asks(tmp_path: Path) -> None:
    db = tmp_path / "fm.db"
    eid = api.submit(ROOT / "examples" / "fan_out_fan_in.json", db=db)
    app = app_for(db)
    capture_notes(app)

    async def script(pilot: Pilot[None]) -> None:
        await shown(pilot, ExecutionsScreen)
        await pilot.press("r")
        prompt = await until(
            pilot, lambda: isinstance(app.screen, JsonPromptScreen) and app.screen, "prompt"
        )
        await pilot.press("q")  # typed into the field: does not quit
        assert app.is_running and prompt.query_one(Input).value == "q"
        prompt.query_one(Input).value = "{not json"
        await pilot.press("enter")
        await until(pilot, lambda: "not JSON" in screen_text(app), "the JSON error")
        assert app.screen is prompt
        await pilot.press("escape")  # cancelled: nothing sent
        await until(pilot, lambda: isinstance(app.screen, ExecutionsScreen), "prompt closed")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirmation")
        assert eid in screen_text(app)
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, ExecutionsScreen), "declined")
        await pilot.pause(0.2)

    drive(app, script)
    assert query(db, "SELECT * FROM signals") == []


@pytest.fixture
def live(tmp_path: Path, db: Path, daemon: Callable[..., Any]) -> Iterator[dict[str, Any]]:
    """A running execution on a real daemon: ``hold`` runs until the gate opens."""
    gate = tmp_path / "gate"
    doc = {
        "name": "tui-live",
        "nodes": [
            {
                "id": "hold",
                "type": "python",
                "call": "sigtasks:gated",
                "args": {"mark": str(tmp_path / "marks"), "tag": "hold", "gate": str(gate)},
            },
            {
                "id": "after",
                "type": "python",
                "call": "sigtasks:work",
                "args": {"mark": str(tmp_path / "marks"), "tag": "after"},
            },
        ],
        "edges": [{"source": "hold", "target": "after"}],
    }
    path = write_workflow(tmp_path, doc)
    d = daemon()
    eid = api.submit(path, db=db)
    wait_until(
        lambda: query(
            db,
            "SELECT 1 FROM node_runs WHERE execution_id=? AND path='hold' AND status='running'",
            (eid,),
        ),
        20,
        "hold running",
    )
    yield {"db": db, "id": eid, "gate": gate, "daemon": d, "path": path}
    gate.touch()


status_of = exec_status


async def in_thread(cond: Callable[[], Any], what: str, timeout: float = 15) -> None:
    """conftest.wait_until, off the app's event loop."""
    await asyncio.to_thread(wait_until, cond, timeout, what)


def test_pause_and_resume_with_data_reach_the_daemon(live: dict[str, Any]) -> None:
    db, eid = live["db"], live["id"]
    app = app_for(db)
    notes = capture_notes(app)

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        await until(pilot, lambda: app.daemon_pid is not None, "daemon seen")
        await pilot.press("p")
        await in_thread(lambda: status_of(db, eid) == "paused", "paused by the daemon")
        await until(pilot, lambda: notes, "pause outcome")
        assert notes[-1][1] == "information" and "paused" in notes[-1][0]
        await until(
            pilot,
            lambda: screen.query_one(ExecutionsTable).by_id[eid].status == "paused",
            "table shows paused",
        )
        await pilot.press("r")
        prompt = await until(
            pilot, lambda: isinstance(app.screen, JsonPromptScreen) and app.screen, "prompt"
        )
        prompt.query_one(Input).value = '{"approved": true, "by": "tui"}'
        await pilot.press("enter")
        await in_thread(lambda: status_of(db, eid) == "running", "resumed by the daemon")
        await until(pilot, lambda: len(notes) == 2, "resume outcome")

    drive(app, script)
    signals = query(
        db,
        "SELECT type, status, data, reason FROM signals WHERE execution_id=? ORDER BY id",
        (eid,),
    )
    assert [(s["type"], s["status"]) for s in signals] == [
        ("pause", "applied"),
        ("resume", "applied"),
    ]
    assert json.loads(signals[1]["data"]) == {"approved": True, "by": "tui"}
    assert signals[0]["reason"] == "sent from fm tui"


def test_cancel_after_confirmation_from_the_detail_screen(live: dict[str, Any]) -> None:
    db, eid = live["db"], live["id"]
    app = app_for(db)
    notes = capture_notes(app)

    async def script(pilot: Pilot[None]) -> None:
        detail = await open_detail(pilot, eid)
        table = detail.query_one(TimelineTable)
        await until(pilot, lambda: "hold" in row_keys(table), "hold on the timeline")
        assert "running" in table.get_cell("hold", "status").plain
        # Live: the running node's duration grows with each refresh.
        took = table.get_cell("hold", "took")
        await until(pilot, lambda: table.get_cell("hold", "took") != took, "a live refresh")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirmation")
        await pilot.press("y")
        await in_thread(lambda: status_of(db, eid) == "cancelled", "cancelled by the daemon")
        await until(pilot, lambda: notes, "cancel outcome")
        # The timeline follows: the header and the node show the end.
        await until(pilot, lambda: "cancelled" in screen_text(app), "cancelled shown")

    drive(app, script)
    assert query(db, "SELECT type, status FROM signals WHERE execution_id=?", (eid,)) == [
        {"type": "cancel", "status": "applied"}
    ]


def test_queue_and_resources_of_a_live_daemon(live: dict[str, Any]) -> None:
    app = app_for(live["db"])

    async def script(pilot: Pilot[None]) -> None:
        await shown(pilot, ExecutionsScreen)
        await pilot.press("3")
        queue = await shown(pilot, QueueScreen)
        depth = queue.query_one(DepthTable)
        await until(
            pilot, lambda: any(k.startswith("running:") for k in row_keys(depth)), "running task"
        )
        await pilot.press("4")
        res = await shown(pilot, ResourcesScreen)
        procs = res.query_one(ProcessTable)
        await until(
            pilot,
            lambda: any(k.startswith("supervisor:") for k in row_keys(procs)),
            "supervisor sampled",
            15,
        )
        await until(
            pilot, lambda: sum(k.startswith("worker:") for k in row_keys(procs)) == 2, "two workers"
        )
        assert "sampled at" in str(res.query_one(StateLine).render())
        await until(
            pilot,
            lambda: any(
                procs.get_cell(k, "node") == "hold" for k in row_keys(procs) if "worker" in k
            ),
            "a worker's current node",
        )

    drive(app, script)


# --- queue and resources without data ---------------------------------------------------


def test_queue_and_resources_render_on_an_empty_database(tmp_path: Path) -> None:
    db = tmp_path / "fm.db"
    Store(db).close()
    app = app_for(db)

    async def script(pilot: Pilot[None]) -> None:
        await shown(pilot, ExecutionsScreen)
        await pilot.press("3")
        queue = await shown(pilot, QueueScreen)
        assert queue.query_one(DepthTable).row_count == 0
        assert queue.query_one(QueuedTable).row_count == 0
        text = screen_text(app)
        assert "queued 0" in text and "dead letters 0" in text
        assert "nothing waits" in text
        await pilot.press("4")
        res = await shown(pilot, ResourcesScreen)
        assert res.query_one(ProcessTable).row_count == 0
        assert "no daemon running" in screen_text(app)

    drive(app, script)


def test_a_missing_or_foreign_file_is_refused(tmp_path: Path) -> None:
    from fm_local.errors import StorageError

    with pytest.raises(StorageError, match="no database at"):
        check_database(tmp_path / "nope.db")
    (tmp_path / "junk.db").write_text("not sqlite" * 100)
    with pytest.raises(StorageError, match="not an fm_local database"):
        check_database(tmp_path / "junk.db")


# --- frozen database: snapshots and deterministic content ---------------------------------

T0 = 1_790_000_000.0  # fixed epoch seconds
NOW = T0 + 100


def frozen_db(path: Path) -> Path:
    """Rows written directly, with fixed times: a finished execution with a loop,
    a running one, queued ones, a dead letter and resource samples."""
    Store(path).close()
    con = sqlite3.connect(str(path))
    doc = json.dumps({"name": "frozen", "nodes": [{"id": "load", "type": "python"}]})
    con.execute(
        "INSERT INTO workflows(id, name, hash, document, folder, created_at) "
        "VALUES(1, 'frozen', 'h', ?, '/tmp', ?)",
        (doc, T0),
    )

    def execution(
        eid: str,
        status: str,
        start: float | None,
        end: float | None,
        prio: int = 0,
        created: float = 0,
    ) -> None:
        con.execute(
            "INSERT INTO executions(id, workflow_id, workflow, status, input, trace_id, priority, "
            "created_at, started_at, finished_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
            (
                eid,
                1,
                "frozen",
                status,
                "{}",
                "trace-x",
                prio,
                created or (start or T0) - 1,
                start,
                end,
                T0,
            ),
        )

    def node(
        eid: str,
        path: str,
        typ: str,
        status: str,
        start: float | None,
        end: float | None,
        idx: int | None = None,
    ) -> None:
        con.execute(
            "INSERT INTO node_runs(execution_id, path, node_id, node_type, status, attempts, "
            "queued_at, started_at, finished_at, item_index, output) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
            (
                eid,
                path,
                path.rsplit(".", 1)[-1].split("[")[0],
                typ,
                status,
                1,
                start,
                start,
                end,
                idx,
                '{"ok": true}' if status == "succeeded" else None,
            ),
        )

    execution("aaaa00000001", "succeeded", T0, T0 + 10)
    node("aaaa00000001", "load", "python", "succeeded", T0, T0 + 2)
    node("aaaa00000001", "each", "loop", "succeeded", T0 + 2, T0 + 9)
    for i in range(8):
        s = T0 + 2 + (i // 4) * 3
        node("aaaa00000001", f"each[{i}]", "item", "failed" if i == 5 else "succeeded", s, s + 3, i)
        node(
            "aaaa00000001",
            f"each[{i}].work",
            "python",
            "failed" if i == 5 else "succeeded",
            s,
            s + 3,
        )
    node("aaaa00000001", "report", "output", "succeeded", T0 + 9, T0 + 10)
    execution("bbbb00000002", "running", T0 + 80, None, 2)
    node("bbbb00000002", "prep", "python", "succeeded", T0 + 93, T0 + 94.2)
    node("bbbb00000002", "check", "python", "succeeded", T0 + 93, T0 + 94.7)
    node("bbbb00000002", "more", "python", "succeeded", T0 + 95, T0 + 97.5)
    node("bbbb00000002", "load", "python", "running", T0 + 97.5, None)
    execution("cccc00000003", "queued", None, None, 5, created=T0 + 90)
    execution("dddd00000004", "queued", None, None, 1, created=T0 + 91)
    con.execute(
        "INSERT INTO queue(execution_id, path, node_id, status, priority, enqueued_at, worker_pid) "
        "VALUES('bbbb00000002', 'load', 'load', 'running', 2, ?, 4242)",
        (T0 + 80,),
    )
    con.execute(
        "INSERT INTO dead_letters(execution_id, path, node_id, error, attempts, created_at) "
        "VALUES('aaaa00000001', 'each[5].work', 'work', '{}', 1, ?)",
        (T0 + 8,),
    )
    for k in range(30):
        ts = NOW - 30 + k + 0.5
        con.execute(
            "INSERT INTO resource_samples(ts, pid, role, cpu_percent, rss_bytes) VALUES(?,?,?,?,?)",
            (ts, 4000, "supervisor", 5.0 + k % 5, 50 * 2**20 + k * 2**18),
        )
        con.execute(
            "INSERT INTO resource_samples(ts, pid, role, cpu_percent, rss_bytes, execution_id, "
            "node_path) VALUES(?,?,?,?,?,?,?)",
            (ts, 4242, "worker", 90.0 if k % 2 else 60.0, 30 * 2**20, "bbbb00000002", "load"),
        )
        con.execute(
            "INSERT INTO resource_samples(ts, pid, role, cpu_percent, rss_bytes) VALUES(?,?,?,?,?)",
            (ts, None, "machine", 40.0 + k, 3 * 2**30),
        )
    con.commit()
    con.close()
    return path


@pytest.fixture
def frozen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FmApp]:
    """An app on the frozen database: fixed clock, UTC, a short relative path."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    frozen_db(tmp_path / "frozen.db")
    yield FmApp(Path("frozen.db"), interval=0.1, clock=lambda: NOW, watch_daemon=False)
    monkeypatch.undo()
    time.tzset()  # the process's own time zone again


def test_frozen_queue_and_resources_content(frozen: FmApp) -> None:
    async def script(pilot: Pilot[None]) -> None:
        await shown(pilot, ExecutionsScreen)
        await pilot.press("3")
        queue = await shown(pilot, QueueScreen)
        assert row_keys(queue.query_one(DepthTable)) == ["running:2"]
        assert row_keys(queue.query_one(QueuedTable)) == ["cccc00000003", "dddd00000004"]
        text = screen_text(frozen)
        assert "running 1" in text and "dead letters 1" in text
        throughput = queue.query_one(Throughput)
        assert "3 in all" in text  # nodes finished in the last minute
        assert throughput.query_one(Sparkline).data == [0.0] * 53 + [2.0, 0.0, 0.0, 1.0] + [0.0] * 3
        await pilot.press("4")
        res = await shown(pilot, ResourcesScreen)
        assert row_keys(res.query_one(ProcessTable)) == ["supervisor:4000", "worker:4242"]
        text = screen_text(frozen)
        assert "machine: CPU 69.0 %" in text and "3.0 GiB" in text
        assert "load" in text and "bbbb00000002" in text

    drive(frozen, script)


def wait_loaded(screen: type[Any], *keys: str) -> Callable[[Pilot[None]], Awaitable[None]]:
    async def run_before(pilot: Pilot[None]) -> None:
        await shown(pilot, ExecutionsScreen)
        for key in keys:
            await pilot.press(key)
        await shown(pilot, screen)
        await pilot.pause(0.2)

    return run_before


SNAP_SIZE = (120, 34)


def test_snapshot_executions(frozen: FmApp, snap_compare: Any) -> None:
    assert snap_compare(frozen, terminal_size=SNAP_SIZE, run_before=wait_loaded(ExecutionsScreen))


def test_snapshot_detail_with_loop_expanded(frozen: FmApp, snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        table.move_cursor(row=row_keys(table).index("aaaa00000001"))
        await pilot.press("enter")
        detail = await shown(pilot, DetailScreen)
        timeline = detail.query_one(TimelineTable)
        # It opens on the failed node: the loop and that item expanded.
        await until(pilot, lambda: cursor_key(timeline) == "each[5].work", "on the failure")
        await until(pilot, lambda: "each[7]" in row_keys(timeline), "items")
        await settled(pilot)
        await pilot.pause(0.2)

    assert snap_compare(frozen, terminal_size=SNAP_SIZE, run_before=run_before)


def test_snapshot_queue(frozen: FmApp, snap_compare: Any) -> None:
    assert snap_compare(frozen, terminal_size=SNAP_SIZE, run_before=wait_loaded(QueueScreen, "3"))


def test_snapshot_resources(frozen: FmApp, snap_compare: Any) -> None:
    assert snap_compare(
        frozen, terminal_size=SNAP_SIZE, run_before=wait_loaded(ResourcesScreen, "4")
    )


# --- the engine never imports the UI ------------------------------------------------------


def test_no_fm_local_module_names_tui_or_textual_in_any_import() -> None:
    """The direction holds in the source too, imports inside functions included:
    ``fm tui`` comes from the tui package's entry point, not from fm_local."""
    import ast

    offenders = []
    for path in sorted((ROOT / "fm_local").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in ("tui", "textual"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert offenders == []


def test_fm_tui_is_contributed_by_the_tui_package() -> None:
    from click.testing import CliRunner

    from fm_local.cli import cli, plugin_commands

    assert plugin_commands()["tui"] == "tui.command:tui"
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0 and "  tui " in res.output
    res = CliRunner().invoke(cli, ["tui", "--help"])
    assert res.exit_code == 0 and "The terminal UI" in res.output


def test_fm_local_never_imports_textual_or_tui() -> None:
    code = """
import importlib, pkgutil, sys
import fm_local
for mod in pkgutil.walk_packages(fm_local.__path__, "fm_local."):
    if mod.name != "fm_local.__main__":
        importlib.import_module(mod.name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "tui"))
assert not bad, bad
print(len([m for m in sys.modules if m.startswith("fm_local")]))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 10  # it really imported the modules
