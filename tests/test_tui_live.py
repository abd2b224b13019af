"""The TUI as a place to live: search and sort the executions, follow an
execution's logs, page through a 10,000-item loop and jump between its failed
items, the command palette, j/k and focus, and an 80×24 terminal.

Driven with ``App.run_test()`` and a ``Pilot`` against databases made by real
workflows: finished ones through ``api.run`` (an embedded supervisor with real
workers), built once per module; a live one on a real ``fm daemon`` for the
logs that follow. Tests assert what is shown, never how fast.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, query, wait_until
from test_tui import (
    app_for,
    capture_notes,
    frozen_db,
    screen_text,
    settled,
    shown,
    until,
    write_workflow,
)
from textual.command import CommandPalette
from textual.pilot import Pilot
from textual.widgets import Input

from fm_local import api
from tui.app import FmApp
from tui.data import ITEMS_LIMIT, Reader
from tui.records import ItemPage
from tui.screens import base as screens_base
from tui.screens.detail import DetailScreen
from tui.screens.dialogs import ConfirmScreen
from tui.screens.executions import ExecutionsScreen
from tui.screens.help import HelpScreen
from tui.screens.logs import LogsScreen, LogView
from tui.screens.queue import QueueScreen
from tui.screens.resources import ResourcesScreen
from tui.widgets.executions_table import ExecutionsTable
from tui.widgets.table_sync import cursor_key, row_keys
from tui.widgets.timeline import TimelineTable

ITEMS = 10_000
EVERY = 997  # item i fails when i % EVERY == 0: 0, 997, …, 9970
FAILED_ITEMS = [i for i in range(ITEMS) if i % EVERY == 0]

BIG_DOC = {
    "name": "tui-big",
    "nodes": [
        {
            "id": "each",
            "type": "loop",
            "loopType": "forEach",
            "arrayPath": f"{{{{ list(range({ITEMS})) }}}}",
            "parallel": True,
            "maxConcurrency": 1000,
            "policy": {"onPartialFailure": "continue", "failFast": False},
            "body": {
                "nodes": [
                    {"id": "t", "type": "transform", "expression": f"100 // (item % {EVERY})"}
                ]
            },
        }
    ],
}
BOOM_DOC = {
    "name": "tui-boom",
    "nodes": [
        {"id": "talk", "type": "python", "call": "fmtasks:prints", "args": {"n": 3}},
        {
            "id": "explode",
            "type": "python",
            "call": "fmtasks:always_fail",
            "args": {"message": "kaboom-xyz"},
        },
    ],
    "edges": [{"source": "talk", "target": "explode"}],
}


def drive(
    app: FmApp, script: Callable[[Pilot[None]], Awaitable[None]], size: tuple[int, int] = (140, 40)
) -> None:
    async def go() -> None:
        async with app.run_test(size=size) as pilot:
            await script(pilot)

    asyncio.run(go())


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One database: a 10,000-item loop with 11 failed items (succeeded: its
    policy continues), a failed execution whose error says kaboom-xyz, and
    fan-out-fan-in; all run by real supervisors and workers."""
    folder = tmp_path_factory.mktemp("tui-live")
    db = folder / "fm.db"
    ids = {
        "fan": api.run(ROOT / "examples" / "fan_out_fan_in.json", db=db, workers=2)["id"],
        "boom": api.run(write_workflow(folder, BOOM_DOC), db=db, workers=2)["id"],
        "big": api.run(write_workflow(folder, BIG_DOC), db=db, workers=1)["id"],
    }
    assert query(db, "SELECT status FROM executions WHERE id=?", (ids["boom"],))[0]["status"] == (
        "failed"
    )
    return {"db": db, **ids}


class FetchCounter:
    """Counts the executions screen's reads, to see a search or sort survive
    refreshes."""

    def __init__(self, screen: ExecutionsScreen) -> None:
        self.n = 0
        fetch = screen.fetch

        def counting(reader: Reader, now: float) -> Any:
            self.n += 1
            return fetch(reader, now)

        screen.fetch = counting  # type: ignore[method-assign]


async def refreshed(pilot: Pilot[None], counter: FetchCounter, times: int = 3) -> None:
    """Wait for ``times`` more reads (and their display). A screen re-reads a database
    where nothing was committed every ``STALE`` seconds (2 s): while this waits, as
    often as the app's interval lets it (the same reads, sooner)."""
    stale = screens_base.STALE
    screens_base.STALE = 0.0
    try:
        target = counter.n + times
        await until(pilot, lambda: counter.n >= target, f"{times} more reads")
    finally:
        screens_base.STALE = stale
    await pilot.pause(0.2)


async def type_text(pilot: Pilot[None], text: str) -> None:
    await pilot.press(*[{" ": "space", ":": "colon", "-": "minus"}.get(c, c) for c in text])


# --- search -------------------------------------------------------------------------------


def test_search_by_text_by_field_and_escape_clears(dbs: dict[str, Any]) -> None:
    app = app_for(dbs["db"])
    everything = {dbs["fan"], dbs["boom"], dbs["big"]}

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        counter = FetchCounter(screen)
        assert set(row_keys(table)) == everything

        def rows() -> set[str]:
            return set(row_keys(table))

        # Error text: the failed try's message is in the execution's error.
        await pilot.press("slash")
        search = screen.query_one("#search", Input)
        assert search.has_focus
        await type_text(pilot, "kaboom")
        await until(pilot, lambda: rows() == {dbs["boom"]}, "only the kaboom one")
        await pilot.press("enter")  # back to the table, the search kept
        assert table.has_focus and search.value == "kaboom"
        await refreshed(pilot, counter)
        assert rows() == {dbs["boom"]}  # the filter survives the refreshes
        assert "1 found" in screen_text(app)
        # Escape clears it, from the table too.
        await pilot.press("escape")
        await until(pilot, lambda: rows() == everything, "all again")
        assert search.value == "" and table.has_focus

        async def search_for(text: str, expected: set[str]) -> None:
            await pilot.press("slash")
            search.value = ""
            await type_text(pilot, text)
            await until(pilot, lambda: rows() == expected, f"{text!r} finds {expected}")
            await pilot.press("escape")  # in the field: clears it, back to the table
            await until(pilot, lambda: rows() == everything and table.has_focus, "cleared")

        await search_for("status:failed", {dbs["boom"]})
        await search_for("wf:fan", {dbs["fan"]})
        await search_for(f"id:{dbs['big'][:6]}", {dbs["big"]})
        await search_for("tui-", {dbs["boom"], dbs["big"]})  # workflow names
        await search_for("tui- status:succeeded", {dbs["big"]})  # words AND
        await search_for("error:kaboom-xyz", {dbs["boom"]})
        await search_for("error:fan", set())  # fan has no error
        await search_for("nothing-like-this", set())

    drive(app, script)


# --- sort ---------------------------------------------------------------------------------


def test_sort_by_key_and_by_header_click_survives_refresh(dbs: dict[str, Any]) -> None:
    app = app_for(dbs["db"])

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        counter = FetchCounter(screen)
        by_id = table.by_id
        # Newest first by default, marked on the started column.
        assert row_keys(table) == [dbs["big"], dbs["boom"], dbs["fan"]]
        assert "started ▼" in screen_text(app)

        await pilot.press("s")  # started -> duration (the next column), longest first
        assert table.sort_column == "duration" and table.sort_descending
        await pilot.press("s")  # -> id (wraps round), ascending
        assert table.sort_column == "id" and not table.sort_descending
        await until(pilot, lambda: row_keys(table) == sorted(by_id), "ids ascending")
        assert "id ▲" in screen_text(app) and "started ▼" not in screen_text(app)
        await pilot.press("S")
        await until(pilot, lambda: row_keys(table) == sorted(by_id, reverse=True), "descending")
        assert "id ▼" in screen_text(app)
        await refreshed(pilot, counter)
        assert row_keys(table) == sorted(by_id, reverse=True)  # still sorted after reads

        # Click the status header: queued … succeeded, failed (the statuses' order).
        await pilot.click(ExecutionsTable, offset=(40, 0))
        await until(pilot, lambda: table.sort_column == "status", "sorted by status")
        order = [table.by_id[k].status for k in row_keys(table)]
        assert order == ["succeeded", "succeeded", "failed"]
        await pilot.click(ExecutionsTable, offset=(40, 0))  # again: reversed
        await until(pilot, lambda: table.by_id[row_keys(table)[0]].status == "failed", "rev")
        await refreshed(pilot, counter)
        assert table.by_id[row_keys(table)[0]].status == "failed"
        assert "status ▼" in screen_text(app)

    drive(app, script)


# --- a 10,000-item loop -------------------------------------------------------------------


def page_row(table: TimelineTable) -> ItemPage:
    page = table.rows_by_key["page:each"].page
    assert page is not None
    return page


def test_detail_opens_on_the_first_failure_and_pages_through_ten_thousand_items(
    dbs: dict[str, Any],
) -> None:
    app = app_for(dbs["db"])
    notes = capture_notes(app)

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        table.move_cursor(row=row_keys(table).index(dbs["big"]))
        await pilot.press("enter")
        detail = await shown(pilot, DetailScreen)
        timeline = detail.query_one(TimelineTable)

        def at() -> str | None:
            return cursor_key(timeline)

        # The first failed node: item 0's transform, its loop and item opened.
        await until(pilot, lambda: at() == "each[0].t", "on the first failed node")
        assert page_row(timeline) == ItemPage(0, ITEMS_LIMIT - 1, ITEMS, ITEMS_LIMIT, 11)
        items = [k for k in row_keys(timeline) if timeline.rows_by_key[k].kind == "item"]
        assert len(items) == ITEMS_LIMIT  # one page, not 10,000 rows
        assert "items [0]–[299] of 10,000" in screen_text(app)

        # n / N: next / previous failed item, across pages.
        for i in FAILED_ITEMS[1:4]:
            await pilot.press("n")
            await until(pilot, lambda i=i: at() == f"each[{i}]", f"on failed item {i}")
            first = i // ITEMS_LIMIT * ITEMS_LIMIT
            assert page_row(timeline).first == first
            assert f"items [{first}]–[{first + ITEMS_LIMIT - 1}] of 10,000" in screen_text(app)
            assert timeline.rows_by_key[f"each[{i}]"].status == "failed"
        await pilot.press("N")
        await until(pilot, lambda: at() == f"each[{FAILED_ITEMS[2]}]", "back one")

        # ] / [: the next / previous page; the cursor goes to the page line.
        first = page_row(timeline).first
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: page_row(timeline).first == first + ITEMS_LIMIT, "next page")
        await until(pilot, lambda: at() == "page:each", "cursor on the page line")
        keys = [k for k in row_keys(timeline) if timeline.rows_by_key[k].kind == "item"]
        assert keys[0] == f"each[{first + ITEMS_LIMIT}]" and len(keys) == ITEMS_LIMIT
        await pilot.press("left_square_bracket", "left_square_bracket")
        await until(pilot, lambda: page_row(timeline).first == first - ITEMS_LIMIT, "back two")

        # From the loop row, N goes to the last failed item: the last page.
        timeline.move_cursor(row=row_keys(timeline).index("each"))
        await pilot.press("N")
        await until(pilot, lambda: at() == f"each[{FAILED_ITEMS[-1]}]", "the last failed item")
        assert page_row(timeline) == ItemPage(9900, 9999, ITEMS, 100, 11)
        assert "items [9900]–[9999] of 10,000" in screen_text(app)
        # n past the last one wraps round to the first, and says so.
        await pilot.press("n")
        await until(pilot, lambda: at() == "each[0]", "wrapped to the first")
        assert any("back to the first" in m for m, _ in notes)
        # ] from the first page to the last (34 pages), and no further.
        timeline.move_cursor(row=row_keys(timeline).index("each"))
        await pilot.press(*["right_square_bracket"] * 34)
        await until(pilot, lambda: page_row(timeline).first == 9900, "the last page")
        await until(pilot, lambda: any("last page" in m for m, _ in notes), "said so")
        assert page_row(timeline) == ItemPage(9900, 9999, ITEMS, 100, 11)

    drive(app, script)


def test_a_page_of_items_is_read_by_item_index(dbs: dict[str, Any]) -> None:
    """The reader asks for the page's items only: the statement names them."""
    statements: list[str] = []
    with Reader(dbs["db"]) as reader:
        reader.conn.set_trace_callback(statements.append)
        snap = reader.detail(
            dbs["big"],
            expanded=frozenset({"each"}),
            selected=None,
            width=40,
            now=time.time(),
            pages={"each": 4500},
        )
    assert snap.rows[1].page == ItemPage(4500, 4799, ITEMS, ITEMS_LIMIT, 11)
    assert [r.key for r in snap.rows[2:]] == [f"each[{i}]" for i in range(4500, 4800)]
    reads = [s for s in statements if "item_index FROM node_runs" in s]
    assert reads and all("path IN (" in s for s in reads)
    assert not any("'each[4499]'" in s or "'each[4800]'" in s for s in reads)


def test_a_loop_without_failures_says_so_on_n(tmp_path: Path) -> None:
    db = tmp_path / "fm.db"
    doc = json.loads(json.dumps(BIG_DOC).replace(str(ITEMS), "40"))
    doc["nodes"][0]["body"]["nodes"][0]["expression"] = "item * 2"
    eid = api.run(write_workflow(tmp_path, doc), db=db, workers=1)["id"]
    app = app_for(db)
    notes = capture_notes(app)

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        assert row_keys(screen.query_one(ExecutionsTable)) == [eid]
        await pilot.press("enter")
        detail = await shown(pilot, DetailScreen)
        timeline = detail.query_one(TimelineTable)
        assert cursor_key(timeline) == "each"  # nothing failed: the first row
        await pilot.press("n")
        await until(pilot, lambda: notes, "a note")
        assert notes[0][0] == "no failed item in loop each"
        assert "each" in detail.expanded or cursor_key(timeline) == "each"

    drive(app, script)


# --- logs ---------------------------------------------------------------------------------

LIVETASKS = """
import os, time

def chatter(n):
    for i in range(n):
        print(f"early {i}")
    return n

def late(gate):
    while not os.path.exists(gate):
        time.sleep(0.02)
    print("late line")
    raise ValueError("late failure")
"""


async def logs_shown(pilot: Pilot[None]) -> LogsScreen:
    app = pilot.app
    screen: LogsScreen = await until(
        pilot,
        lambda: isinstance(app.screen, LogsScreen) and app.screen.loaded and app.screen,
        "the logs screen",
    )
    return screen


def log_text(view: LogView) -> str:
    return "\n".join(strip.text for strip in view.lines)


def test_logs_screen_follows_a_running_execution(
    tmp_path: Path, db: Path, daemon: Callable[..., Any]
) -> None:
    gate = tmp_path / "gate"
    (tmp_path / "livetasks.py").write_text(LIVETASKS)
    doc = {
        "name": "tui-logs",
        "nodes": [
            {"id": "chat", "type": "python", "call": "livetasks:chatter", "args": {"n": 80}},
            {"id": "wait", "type": "python", "call": "livetasks:late", "args": {"gate": str(gate)}},
        ],
        "edges": [{"source": "chat", "target": "wait"}],
    }
    daemon()
    eid = api.submit(write_workflow(tmp_path, doc), db=db)
    wait_until(
        lambda: query(
            db,
            "SELECT 1 FROM node_runs WHERE execution_id=? AND path='wait' AND status='running'",
            (eid,),
        ),
        30,
        "wait running",
    )
    app = app_for(db)

    async def script(pilot: Pilot[None]) -> None:
        await shown(pilot, ExecutionsScreen)
        await pilot.press("l")
        logs = await logs_shown(pilot)
        view = logs.query_one(LogView)
        await until(pilot, lambda: "chat#1 stdout: early 79" in log_text(view), "the lines")
        assert "early 0" in log_text(view) and logs.following
        await until(pilot, lambda: view.scroll_y == view.max_scroll_y > 0, "at the bottom")
        assert "following" in screen_text(app) and "running" in screen_text(app)

        # Scrolling up pauses following; new lines do not move the view.
        await pilot.press("pageup")
        await until(pilot, lambda: not logs.following, "paused")
        assert "paused" in screen_text(app)
        where = view.scroll_y
        lines = logs.lines
        gate.touch()
        await until(pilot, lambda: "late failure" in log_text(view), "the failure", timeout=30)
        assert logs.lines > lines and view.scroll_y == where < view.max_scroll_y
        # The failed try: its line, then its error with the traceback, as fm logs prints.
        text = log_text(view)
        assert text.index("wait#1 stdout: late line") < text.index("wait#1 failed:")
        assert "ValueError: late failure" in text and "Traceback" in text
        # G: back to the bottom, following again.
        await pilot.press("G")
        await until(pilot, lambda: logs.following and view.scroll_y == view.max_scroll_y, "end")
        await until(pilot, lambda: "failed" in screen_text(app).splitlines()[0], "it failed")
        # f toggles.
        await pilot.press("f")
        assert not logs.following
        await pilot.press("f")
        assert logs.following
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, ExecutionsScreen), "back")

    drive(app, script, size=(80, 24))


def test_logs_of_one_node_from_the_detail(dbs: dict[str, Any]) -> None:
    app = app_for(dbs["db"])

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        table.move_cursor(row=row_keys(table).index(dbs["boom"]))
        await pilot.press("enter")
        detail = await shown(pilot, DetailScreen)
        timeline = detail.query_one(TimelineTable)
        # It opened on the failed node; the logs of talk only:
        await until(pilot, lambda: cursor_key(timeline) == "explode", "on the failure")
        timeline.move_cursor(row=row_keys(timeline).index("talk"))
        await pilot.press("l")
        logs = await logs_shown(pilot)
        assert logs.path == "talk"
        text = log_text(logs.query_one(LogView))
        assert "talk#1 stdout: line 0" in text and "a warning" in text
        assert "explode" not in text
        await pilot.press("escape")
        await shown(pilot, DetailScreen)
        # With the failed node: its error and traceback.
        timeline.move_cursor(row=row_keys(timeline).index("explode"))
        await pilot.press("l")
        logs = await logs_shown(pilot)
        text = log_text(logs.query_one(LogView))
        assert "explode#1 failed:" in text and "kaboom-xyz" in text and "talk#1" not in text
        # 1-4 leave the logs for that screen.
        await pilot.press("1")
        await shown(pilot, ExecutionsScreen)

    drive(app, script)


# --- command palette, j/k, focus ----------------------------------------------------------


async def palette(pilot: Pilot[None], text: str) -> None:
    app = pilot.app
    await pilot.press("ctrl+p")
    await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the palette")
    await type_text(pilot, text)
    await pilot.pause(0.5)  # the palette searches its providers in the background
    await pilot.press("enter")
    await until(pilot, lambda: not isinstance(app.screen, CommandPalette), "palette closed")


def test_command_palette_runs_the_screens_actions(dbs: dict[str, Any]) -> None:
    app = app_for(dbs["db"])

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        await palette(pilot, "Sort by the next")
        assert table.sort_column == "duration"
        await palette(pilot, "Reverse the sort")
        assert table.sort_column == "duration" and not table.sort_descending
        table.move_cursor(row=row_keys(table).index(dbs["boom"]))
        await palette(pilot, "Logs of execution")
        logs = await logs_shown(pilot)
        assert logs.execution_id == dbs["boom"]
        await palette(pilot, "Show queue")
        await until(pilot, lambda: app.current_mode == "queue", "the queue")
        await palette(pilot, "Show executions")
        await until(pilot, lambda: app.current_mode == "executions", "back")
        await palette(pilot, "Search executions")
        await until(pilot, lambda: app.screen.query_one("#search", Input).has_focus, "search")

    drive(app, script)


def test_j_k_move_and_focus_comes_back_to_the_table(tmp_path: Path, dbs: dict[str, Any]) -> None:
    # A queued execution (no daemon), so that cancel asks for a confirmation.
    db = tmp_path / "fm.db"
    queued = [api.submit(ROOT / "examples" / "fan_out_fan_in.json", db=db) for _ in range(3)]
    app = app_for(db)

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        assert set(row_keys(table)) == set(queued) and table.cursor_row == 0
        await pilot.press("j", "j")
        assert table.cursor_row == 2
        await pilot.press("home")
        assert table.cursor_row == 0
        await pilot.press("end")
        assert table.cursor_row == 2
        await pilot.press("k")
        assert table.cursor_row == 1
        chosen = cursor_key(table)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "asks")
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, ExecutionsScreen), "declined")
        assert app.focused is table and cursor_key(table) == chosen
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        await pilot.press("escape")
        await until(pilot, lambda: app.focused is table, "focus back after help")
        await pilot.press("slash")
        await pilot.press("enter")
        assert app.focused is table
        await pilot.press("j")
        assert table.cursor_row == 2

    drive(app, script)
    assert query(db, "SELECT * FROM signals") == []

    # j / k in the timeline too.
    app = app_for(dbs["db"])
    notes = capture_notes(app)

    async def timeline(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        table.move_cursor(row=row_keys(table).index(dbs["fan"]))
        await pilot.press("enter")
        detail = await shown(pilot, DetailScreen)
        tl = detail.query_one(TimelineTable)
        assert tl.cursor_row == 0  # nothing failed: the first row
        await pilot.press("j", "j", "j", "k")
        assert tl.cursor_row == 2
        await until(pilot, lambda: detail.selected == row_keys(tl)[2], "that node selected")
        await pilot.press("n")  # no loop to look in
        await until(pilot, lambda: notes, "a note")
        assert notes == [("this execution has no loop", "warning")]

    drive(app, timeline)


# --- 80 × 24 ------------------------------------------------------------------------------


def test_every_screen_fits_80_by_24(dbs: dict[str, Any]) -> None:
    app = app_for(dbs["db"])

    def lines() -> list[str]:
        return screen_text(app).splitlines()

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        await until(pilot, lambda: "Quit" in screen_text(app), "the footer drawn")
        text = screen_text(app)
        head = next(line for line in lines() if line.lstrip().startswith("id "))
        # The essential columns, whole; the least essential dropped.
        for title in ("id", "workflow", "status", "progress", "duration"):
            assert title in head.split(), head
        assert "started" not in head and "rate" not in head
        for eid in (dbs["fan"], dbs["boom"], dbs["big"]):
            assert eid in text
        assert "10000/10000 100%" in text and "succeeded" in text and "failed" in text
        footer = lines()[-1]
        for key in ("p Pause", "r Resume", "c Cancel", "/ Search", "l Logs", "? Help", "q Quit"):
            assert key in footer, footer
        assert "^p palette" in footer and "/ search" in text
        assert "no daemon" in text
        assert all(len(line) <= 80 for line in lines())

        table = screen.query_one(ExecutionsTable)
        table.move_cursor(row=row_keys(table).index(dbs["big"]))
        await pilot.press("enter")
        detail = await shown(pilot, DetailScreen)
        await until(
            pilot, lambda: cursor_key(detail.query_one(TimelineTable)) == "each[0].t", "opened"
        )
        await settled(pilot)
        text = screen_text(app)
        assert dbs["big"] in text and "10000/10000" in text and "✗11" in text
        assert "items [0]–[299] of 10,000" in text and "page 1/34" in text
        assert "each[0].t" in text  # the node panel's first line
        assert "Failed" in text and "Logs" in text

        await pilot.press("l")
        await logs_shown(pilot)
        await pilot.pause(0.2)
        text = screen_text(app)
        assert f"logs of {dbs['big']}" in text and "each[0].t" in text and "following" in text
        await pilot.press("escape")
        await shown(pilot, DetailScreen)
        await pilot.press("3")
        await shown(pilot, QueueScreen)
        text = screen_text(app)
        assert "dead letters" in text and "queued executions" in text
        await pilot.press("4")
        await shown(pilot, ResourcesScreen)
        assert "no daemon" in screen_text(app)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        await pilot.pause(0.3)
        assert "fm tui — keys" in screen_text(app)

    drive(app, script, size=(80, 24))


# --- snapshots at 80 × 24 (frozen database, frozen clock) ------------------------------------


@pytest.fixture
def frozen_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FmApp:
    from test_tui import NOW

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    frozen_db(tmp_path / "frozen.db")
    monkeypatch.chdir(tmp_path)
    return FmApp(Path("frozen.db"), interval=0.1, clock=lambda: NOW, watch_daemon=False)


SMALL = (80, 24)


def test_snapshot_executions_80x24(frozen_app: FmApp, snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        await shown(pilot, ExecutionsScreen)
        await pilot.press("S")  # oldest first: the arrow turns
        await settled(pilot)

    assert snap_compare(frozen_app, terminal_size=SMALL, run_before=run_before)


def test_snapshot_detail_80x24(frozen_app: FmApp, snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        table.move_cursor(row=row_keys(table).index("aaaa00000001"))
        await pilot.press("enter")
        detail = await shown(pilot, DetailScreen)
        timeline = detail.query_one(TimelineTable)
        await until(pilot, lambda: cursor_key(timeline) == "each[5].work", "on the failure")
        await settled(pilot)
        await pilot.pause(0.2)

    assert snap_compare(frozen_app, terminal_size=SMALL, run_before=run_before)
