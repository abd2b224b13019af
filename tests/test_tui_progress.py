"""Loop progress in the TUI: done / total with the total known when a loop starts
(``node_runs.items``), a percentage, a rate and an ETA, on the executions list,
the detail screen (header and loop rows) and the queue screen (loops in
progress; items not started count as waiting); and the node panel's ``code``.

The pure arithmetic (``tui.format.pace``) is unit-tested; the screens are driven
with a ``Pilot`` against a real daemon running a real loop (gated, so the test
reads it mid-run), an execution run to the end through ``fm_local.api``, and a
database with fixed times for exact texts.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from test_tui import (
    app_for,
    drive,
    open_detail,
    panel_text,
    query,
    screen_text,
    settled,
    shown,
    until,
    write_workflow,
)
from textual.pilot import Pilot

from fm_local import api
from fm_local.store import Store
from tui import format as fmt
from tui.app import FmApp
from tui.data import Reader
from tui.screens.executions import ExecutionsScreen
from tui.screens.queue import QueueScreen
from tui.widgets.executions_table import ExecutionsTable
from tui.widgets.queue_panels import DepthTable, LoopsTable
from tui.widgets.table_sync import row_keys
from tui.widgets.timeline import TimelineTable

# "12.3/s ETA 4m05s": a rate, and a duration as tui.format.duration writes it.
RATE_ETA = re.compile(r"\d+(\.\d+)?/s ETA (\d+ ms|\d+\.\d s|\d+m\d\ds|\d+h\d\dm)")

# --- the arithmetic ---------------------------------------------------------------------


def test_pace_is_the_average_rate_since_the_first_start() -> None:
    p = fmt.pace(total=10_000, done=2_500, first_start=100.0, now=150.0)
    assert p.percent == 25.0
    assert p.rate == 50.0  # items per second
    assert p.eta == 150.0  # 7,500 items left at 50/s


def test_pace_before_anything_is_done_has_no_rate_nor_eta() -> None:
    p = fmt.pace(total=10_000, done=0, first_start=100.0, now=160.0)
    assert (p.percent, p.rate, p.eta) == (0.0, None, None)
    # Not started, or no time passed: no division by zero either.
    assert fmt.pace(10, 3, None, 160.0).rate is None
    assert fmt.pace(10, 3, 160.0, 160.0).rate is None
    assert fmt.pace(10, 3, 160.0, 150.0).rate is None  # a clock that went back


def test_pace_when_done_and_without_a_total() -> None:
    done = fmt.pace(total=8, done=8, first_start=0.0, now=4.0)
    assert (done.percent, done.rate, done.eta) == (100.0, 2.0, 0.0)
    empty = fmt.pace(total=0, done=0, first_start=0.0, now=4.0)
    assert (empty.percent, empty.rate, empty.eta) == (None, None, None)


def test_progress_texts() -> None:
    assert fmt.percent(9_522, 10_000) == "95%"
    assert fmt.percent(9_999, 10_000) == "99%"  # 100% only when all are done
    assert fmt.percent(10_000, 10_000) == "100%"
    assert fmt.percent(0, 0) == "-"
    assert [fmt.rate(r) for r in (1234.4, 12.34, 0.456, None)] == [
        "1234/s",
        "12.3/s",
        "0.46/s",
        "-/s",
    ]
    p = fmt.pace(10_000, 2_500, 100.0, 150.0)
    assert fmt.pace_text(p, going=True) == "50.0/s ETA 2m30s"
    assert fmt.pace_text(p, going=False) == "50.0/s"
    assert fmt.pace_text(fmt.pace(10, 0, 1.0, 2.0), going=True) == "-/s ETA -"
    assert fmt.progress(9_522, 10_000).plain == "████░ 9522/10000 95%"
    assert fmt.progress(0, 0).plain == "░░░░░ 0/0"


# --- a real loop on a real daemon, read while it runs -----------------------------------

ITEMS = 50
FIRST = 5  # items 0..4 wait on gate A, the others on gate B


@pytest.fixture
def gated_loop(tmp_path: Path, db: Path, daemon: Callable[..., Any]) -> dict[str, Any]:
    """A running 50-item loop (2 at a time) whose items wait on two gate files:
    nothing is done until the test opens the first one."""
    gate_a, gate_b = tmp_path / "gate_a", tmp_path / "gate_b"
    doc = {
        "name": "tui-progress",
        "nodes": [
            {
                "id": "each",
                "type": "loop",
                "loopType": "forEach",
                "arrayPath": f"{{{{ list(range({ITEMS})) }}}}",
                "parallel": True,
                "maxConcurrency": 2,
                "body": {
                    "nodes": [
                        {
                            "id": "work",
                            "type": "python",
                            "call": "sigtasks:gated",
                            "args": {
                                "mark": str(tmp_path / "marks"),
                                "tag": "{{item}}",
                                "gate": f"{{{{ {json.dumps(str(gate_a))} if item < {FIRST} "
                                f"else {json.dumps(str(gate_b))} }}}}",
                            },
                        }
                    ]
                },
            }
        ],
    }
    daemon()
    eid = api.submit(write_workflow(tmp_path, doc), db=db)
    wait_until(
        lambda: query(
            db,
            "SELECT 1 FROM node_runs WHERE execution_id=? AND path='each' AND items=?",
            (eid, ITEMS),
        ),
        30,
        "the loop started",
    )
    return {"db": db, "id": eid, "a": gate_a, "b": gate_b}


def item_rows(db: Path, eid: str) -> int:
    rows = query(
        db, "SELECT count(*) AS n FROM node_runs WHERE execution_id=? AND node_type='item'", (eid,)
    )
    return int(rows[0]["n"])


def test_a_running_loop_shows_its_total_from_the_start(gated_loop: dict[str, Any]) -> None:
    db, eid = gated_loop["db"], gated_loop["id"]
    app = app_for(db)
    seen: list[tuple[str, int, int]] = []

    def row_of(screen: ExecutionsScreen) -> Any:
        row = screen.query_one(ExecutionsTable).by_id.get(eid)
        if row is not None:
            seen.append((row.progress.unit, row.done, row.total))
        return row

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        # Nothing done yet, two items open: the total is already all 50 items.
        await until(pilot, lambda: row_of(screen), "the execution listed")
        assert item_rows(db, eid) < ITEMS
        assert (row_of(screen).done, row_of(screen).total) == (0, ITEMS)
        assert "0/50 0%" in table.get_cell(eid, "progress").plain
        assert table.get_cell(eid, "rate") == "-/s ETA -"
        # The first five items finish; the next two wait on gate B.
        gated_loop["a"].touch()
        await until(pilot, lambda: (r := row_of(screen)) and r.done == FIRST, "5 items done")
        await settled(pilot)
        assert "5/50 10%" in table.get_cell(eid, "progress").plain
        assert RATE_ETA.fullmatch(table.get_cell(eid, "rate")), table.get_cell(eid, "rate")
        # The detail: the header and the loop row say the same, with rate and ETA.
        detail = await open_detail(pilot, eid)
        timeline = detail.query_one(TimelineTable)
        await until(pilot, lambda: "each" in row_keys(timeline), "the loop row")
        status = timeline.get_cell("each", "status").plain
        assert status.startswith("running 5/50\n10% ") and RATE_ETA.search(status), status
        text = screen_text(app)
        assert "items █░░░░░░░░░ 5/50 10%" in text and "items/s  ETA" in text
        # The queue: the loop in progress, and its 43 items not started wait.
        await pilot.press("3")
        queue = await shown(pilot, QueueScreen)
        loops = queue.query_one(LoopsTable)
        key = f"{eid}:each"
        await until(pilot, lambda: key in row_keys(loops), "the loop on the queue screen")
        assert "5/50 10%" in loops.get_cell(key, "progress").plain
        assert RATE_ETA.fullmatch(loops.get_cell(key, "rate"))
        # Items 5 and 6 are open (waiting on gate B): 43 have no row yet.
        await until(
            pilot, lambda: loops.get_cell(key, "waiting") == str(ITEMS - FIRST - 2), "43 wait"
        )
        assert "waiting:0" in row_keys(queue.query_one(DepthTable))
        assert "waiting 43 (loop items not started)" in screen_text(app)
        # The rest finishes: 100%, the average rate, no ETA.
        gated_loop["b"].touch()
        await pilot.press("1")
        screen = await shown(pilot, ExecutionsScreen)
        await until(pilot, lambda: (r := row_of(screen)) and r.status == "succeeded", "the end", 60)
        await settled(pilot)
        cell = screen.query_one(ExecutionsTable).get_cell(eid, "rate")
        assert "50/50 100%" in screen.query_one(ExecutionsTable).get_cell(eid, "progress").plain
        assert re.fullmatch(r"\d+(\.\d+)?/s", cell), cell

    drive(app, script)
    # Every reading of the loop's progress had the whole total.
    assert seen and all(total == ITEMS for unit, _, total in seen if unit == "items"), seen


# --- a finished loop through fm_local.api -----------------------------------------------


def test_a_finished_loop_and_the_code_a_node_ran(tmp_path: Path) -> None:
    db = tmp_path / "fm.db"
    doc = {
        "name": "tui-progress-done",
        "nodes": [
            {
                "id": "each",
                "type": "loop",
                "loopType": "forEach",
                "arrayPath": "{{ list(range(30)) }}",
                "parallel": True,
                "maxConcurrency": 4,
                "body": {
                    "nodes": [
                        {
                            "id": "add",
                            "type": "python",
                            "call": "fmtasks:add",
                            "args": {"a": "{{item}}", "b": 1},
                        }
                    ]
                },
            }
        ],
    }
    eid = api.run(write_workflow(tmp_path, doc), db=db, workers=2)["id"]
    app = app_for(db)

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        row = table.by_id[eid]
        assert (row.progress.unit, row.done, row.total) == ("items", 30, 30)
        assert "30/30 100%" in table.get_cell(eid, "progress").plain
        assert re.fullmatch(r"\d+(\.\d+)?/s", table.get_cell(eid, "rate"))
        detail = await open_detail(pilot, eid)
        timeline = detail.query_one(TimelineTable)
        status = timeline.get_cell("each", "status").plain
        assert re.fullmatch(r"succeeded 30/30\n100% \d+(\.\d+)?/s", status), status
        timeline.move_cursor(row=row_keys(timeline).index("each"))
        await until(pilot, lambda: "items 30" in panel_text(detail), "the loop's item count")
        await pilot.press("enter")
        await until(pilot, lambda: "each[0]" in row_keys(timeline), "items listed")
        timeline.move_cursor(row=row_keys(timeline).index("each[0]"))
        await pilot.press("enter")
        await until(pilot, lambda: "each[0].add" in row_keys(timeline), "item body")
        timeline.move_cursor(row=row_keys(timeline).index("each[0].add"))
        await until(pilot, lambda: "code fmtasks.py@" in panel_text(detail), "the code")
        (code,) = {
            r["code"] for r in query(db, "SELECT code FROM node_runs WHERE path='each[0].add'")
        }
        assert f"code {code}" in panel_text(detail)

    drive(app, script)


# --- fixed times: exact texts -----------------------------------------------------------

T0 = 1_790_000_000.0
NOW = T0 + 10


def fixed_db(path: Path, items: int | None = 10) -> Path:
    """A running execution whose loop (``items`` items, started at T0) has four
    items open, three of them done, at NOW = T0 + 10 s."""
    Store(path).close()
    con = sqlite3.connect(str(path))
    con.execute(
        "INSERT INTO workflows(id, name, hash, document, folder, created_at) "
        "VALUES(1, 'fixed', 'h', '{\"name\": \"fixed\", \"nodes\": []}', '/tmp', ?)",
        (T0,),
    )
    con.execute(
        "INSERT INTO executions(id, workflow_id, workflow, status, input, trace_id, priority, "
        "created_at, started_at, updated_at) VALUES('eeee00000001', 1, 'fixed', 'running', "
        "'{}', 'trace-x', 3, ?, ?, ?)",
        (T0 - 1, T0, T0),
    )

    def node(path: str, typ: str, status: str, **extra: Any) -> None:
        cols = {
            "execution_id": "eeee00000001",
            "path": path,
            "node_id": path.rsplit(".", 1)[-1].split("[")[0],
            "node_type": typ,
            "status": status,
            "attempts": 1,
            "started_at": T0,
            "finished_at": T0 + 2 if status == "succeeded" else None,
            **extra,
        }
        con.execute(
            f"INSERT INTO node_runs({', '.join(cols)}) VALUES({', '.join('?' * len(cols))})",
            tuple(cols.values()),
        )

    node("each", "loop", "running", items=items)
    for i in range(4):
        status = "succeeded" if i < 3 else "running"
        node(f"each[{i}]", "item", status, item_index=i)
        node(f"each[{i}].work", "python", status, code="tasks.py@0123456789ab")
    con.commit()
    con.close()
    return path


def fixed_app(path: Path) -> FmApp:
    return FmApp(path, interval=0.1, clock=lambda: NOW, watch_daemon=False)


def test_exact_progress_texts_on_every_screen(tmp_path: Path) -> None:
    app = fixed_app(fixed_db(tmp_path / "fixed.db"))
    eid = "eeee00000001"

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        # 3 of 10 items in 10 s: 0.3/s, 7 left: 23.3 s.
        assert table.get_cell(eid, "progress").plain == "█░░░░ 3/10 30%"
        assert table.get_cell(eid, "rate") == "0.30/s ETA 23.3 s"
        detail = await open_detail(pilot, eid)
        timeline = detail.query_one(TimelineTable)
        assert timeline.get_cell("each", "status").plain == "running 3/10\n30% 0.30/s ETA 23.3 s"
        assert "items ███░░░░░░░ 3/10 30%  0.30 items/s  ETA 23.3 s" in screen_text(app)
        timeline.move_cursor(row=row_keys(timeline).index("each"))
        await pilot.press("enter")
        await until(pilot, lambda: "each[3]" in row_keys(timeline), "items listed")
        timeline.move_cursor(row=row_keys(timeline).index("each[3]"))
        await pilot.press("enter")
        await until(pilot, lambda: "each[3].work" in row_keys(timeline), "item body")
        timeline.move_cursor(row=row_keys(timeline).index("each[3].work"))
        await until(pilot, lambda: "code tasks.py@0123456789ab" in panel_text(detail), "code")
        await pilot.press("3")
        queue = await shown(pilot, QueueScreen)
        loops = queue.query_one(LoopsTable)
        assert row_keys(loops) == [f"{eid}:each"]
        assert loops.get_cell(f"{eid}:each", "waiting") == "6"  # 10 items, 4 opened
        assert ("waiting", 3, 6) in depth_rows(queue)  # at the execution's priority
        assert "waiting 6 (loop items not started)" in screen_text(app)

    drive(app, script)


def depth_rows(queue: QueueScreen) -> list[tuple[str, int, int]]:
    table = queue.query_one(DepthTable)
    return [
        (
            str(table.get_cell(k, "state")),
            int(table.get_cell(k, "priority")),
            int(table.get_cell(k, "tasks")),
        )
        for k in row_keys(table)
    ]


def test_a_file_without_item_counts_counts_the_item_rows(tmp_path: Path) -> None:
    """Loops recorded before schema version 2 have no ``items``: the item rows are
    the total there (and in the queue, nothing is known to wait)."""
    db = fixed_db(tmp_path / "old.db", items=None)
    with Reader(db) as reader:
        (row,) = reader.executions(None, NOW).rows
        assert (row.progress.unit, row.done, row.total) == ("items", 3, 4)
        snap = reader.detail("eeee00000001", expanded=frozenset(), selected=None, width=40, now=NOW)
        loop = snap.rows[0].loop
        assert loop is not None and (loop.done, loop.total, loop.items) == (3, 4, None)
        queue = reader.queue(NOW)
        assert [(lp.total, lp.waiting) for lp in queue.loops] == [(4, 0)]
        assert queue.by_state()["waiting"] == 0


def test_an_execution_without_loops_counts_node_instances(tmp_path: Path) -> None:
    db = fixed_db(tmp_path / "fm.db")
    con = sqlite3.connect(str(db))
    con.execute("DELETE FROM node_runs WHERE path GLOB 'each*' AND path != 'each[0].work'")
    con.commit()
    con.close()
    with Reader(db) as reader:
        (row,) = reader.executions(None, NOW).rows
        assert (row.progress.unit, row.done, row.total) == ("nodes", 1, 1)
        assert reader.queue(NOW).loops == []
    app = fixed_app(db)

    async def script(pilot: Pilot[None]) -> None:
        screen = await shown(pilot, ExecutionsScreen)
        table = screen.query_one(ExecutionsTable)
        assert table.get_cell("eeee00000001", "progress").plain == "█████ 1/1 100%"
        assert table.get_cell("eeee00000001", "rate") == ""  # no total known ahead: no ETA

    drive(app, script)
