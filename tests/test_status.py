"""Statuses and their moves (fm_local.status): one table each for executions and
node runs, checked by the supervisor on every change and, for "terminal is final",
by the database itself."""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

import pytest
from conftest import query, run_wf, serve_until_done, undo_version_5

from fm_local import api, errors, status, store
from fm_local.status import (
    EXEC_MOVES,
    EXEC_TERMINAL,
    NODE_MOVES,
    NODE_TERMINAL,
    ExecStatus,
    IllegalMove,
    NodeStatus,
)

TRANSFORM = {"name": "t", "nodes": [{"id": "a", "type": "transform", "expression": "1"}]}


# --- the tables ---------------------------------------------------------------------------


def test_every_status_has_a_row_and_terminal_rows_are_empty():
    assert set(EXEC_MOVES) == set(ExecStatus)
    assert set(NODE_MOVES) == set(NodeStatus)
    for moves, terminal in ((EXEC_MOVES, EXEC_TERMINAL), (NODE_MOVES, NODE_TERMINAL)):
        for old, targets in moves.items():
            assert (not targets) == (old in terminal), old
            assert old not in targets  # staying is not a move
            assert targets <= set(moves)


def test_nothing_goes_back_to_pending_or_queued_execution():
    assert all(NodeStatus.PENDING not in t for t in NODE_MOVES.values())
    assert all(ExecStatus.QUEUED not in t for t in EXEC_MOVES.values())
    # only a run that never started may be skipped (a branch not taken)
    assert {s for s, t in NODE_MOVES.items() if NodeStatus.SKIPPED in t} == {
        NodeStatus.PENDING,
        NodeStatus.QUEUED,
    }


def test_checks_name_the_move_and_where():
    status.check_node("running", "succeeded", "x")
    status.check_node("succeeded", "succeeded", "x")  # no move
    with pytest.raises(IllegalMove, match=r"^e1, node a: succeeded -> running .*terminal is final"):
        status.check_node("succeeded", "running", "e1, node a")
    with pytest.raises(IllegalMove, match=r"execution e1: failed -> running"):
        status.check_exec("failed", "running", "execution e1")
    with pytest.raises(IllegalMove):
        status.check_node("running", "pending", "x")


def test_the_schema_knows_the_same_statuses():
    schema = store.MIGRATIONS[0]
    checks = re.findall(r"status TEXT NOT NULL CHECK \(status IN\s*\(([^)]*)\)\)", schema)
    executions, node_runs = ({s.strip().strip("'") for s in c.split(",")} for c in checks[:2])
    assert executions == set(ExecStatus)
    assert node_runs == set(NodeStatus)
    triggers = store.MIGRATIONS[2]
    lists = re.findall(r"OLD\.status IN \(([^)]*)\)", triggers)
    assert lists == [status.sql_list(NODE_TERMINAL), status.sql_list(EXEC_TERMINAL)]


# --- the supervisor refuses an illegal move ---------------------------------------------------


def test_an_illegal_move_fails_its_execution_and_nothing_else(wf, db):
    from fm_local.supervisor import Supervisor

    class Backwards(Supervisor):
        def _succeeded(self, run: Any) -> None:
            super()._succeeded(run)
            if run.node.id == "boom":
                run.status = "queued"  # a finished run started again: refused

    bad = api.submit(
        wf(
            {
                "name": "bad",
                "nodes": [
                    {"id": "boom", "type": "transform", "expression": "1"},
                    {"id": "after", "type": "transform", "expression": "boom + 1"},
                ],
                "edges": [{"source": "boom", "target": "after"}],
            }
        ),
        db=db,
    )
    good = api.submit(wf(TRANSFORM), db=db)
    serve_until_done(Backwards(db, workers=1), {bad, good})
    rows = {r["id"]: r for r in query(db, "SELECT id, status, error FROM executions")}
    assert rows[good]["status"] == "succeeded"
    assert rows[bad]["status"] == "failed"
    err = json.loads(rows[bad]["error"])
    assert err["code"] == errors.INTERNAL_ERROR
    assert f"execution {bad}, node boom: succeeded -> queued is not a legal move" in err["message"]
    boom = query(db, "SELECT status FROM node_runs WHERE execution_id=? AND path='boom'", (bad,))
    assert boom == [{"status": "succeeded"}]


# --- the database refuses what the supervisor would --------------------------------------------


def test_the_database_keeps_terminal_rows_final(wf, db):
    out = run_wf(wf(TRANSFORM), db)
    eid = out["id"]
    with sqlite3.connect(db) as con:
        for sql, what in (
            ("UPDATE node_runs SET status='running' WHERE execution_id=?", "node run"),
            ("UPDATE executions SET status='running' WHERE id=?", "execution"),
        ):
            with pytest.raises(sqlite3.IntegrityError, match=f"a finished {what} is final"):
                con.execute(sql, (eid,))
        # the same status again, and other columns, are no move
        con.execute("UPDATE executions SET status='succeeded', priority=3 WHERE id=?", (eid,))
        # the one correction: a success the database could not record whole is a failure
        con.execute("UPDATE executions SET status='failed' WHERE id=?", (eid,))
        with pytest.raises(sqlite3.IntegrityError, match="a finished execution is final"):
            con.execute("UPDATE executions SET status='succeeded' WHERE id=?", (eid,))
    # a row that has not ended moves freely
    queued = api.submit(wf(TRANSFORM), db=db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE executions SET status='cancelled' WHERE id=?", (queued,))
    assert query(db, "SELECT status FROM executions WHERE id=?", (queued,)) == [
        {"status": "cancelled"}
    ]


def test_a_version_2_file_gets_the_triggers(wf, db):
    run_wf(wf(TRANSFORM), db)
    with sqlite3.connect(db) as con:
        con.execute("DROP TRIGGER node_run_terminal_is_final")
        con.execute("DROP TRIGGER execution_terminal_is_final")
        con.execute("ALTER TABLE node_runs DROP COLUMN lane")  # version 4's
        undo_version_5(con)
        con.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    store.Store(db).close()  # a writer migrates
    names = {r["name"] for r in query(db, "SELECT name FROM sqlite_master WHERE type='trigger'")}
    assert {"node_run_terminal_is_final", "execution_terminal_is_final"} <= names
    assert query(db, "SELECT value FROM meta WHERE key='schema_version'") == [
        {"value": str(store.SCHEMA_VERSION)}
    ]


def test_a_version_3_file_gets_the_lane_column(wf, db):
    eid = run_wf(wf(TRANSFORM), db)["id"]
    with sqlite3.connect(db) as con:
        con.execute("ALTER TABLE node_runs DROP COLUMN lane")
        undo_version_5(con)
        con.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    store.Store(db).close()  # a writer migrates
    rows = query(db, "SELECT path, lane FROM node_runs WHERE execution_id=?", (eid,))
    assert rows and all(r["lane"] is None for r in rows), "the old rows, lane unknown"
    assert query(db, "SELECT value FROM meta WHERE key='schema_version'") == [
        {"value": str(store.SCHEMA_VERSION)}
    ]


def test_a_success_the_database_refused_part_of_is_recorded_failed(wf, db):
    eid = run_wf(wf(TRANSFORM), db)["id"]
    queued = api.submit(wf(TRANSFORM), db=db)
    err = {"code": errors.INTERNAL_ERROR, "message": "a row was refused"}
    s = store.Store(db)
    try:
        s.unmake_success(eid, err)
        s.unmake_success(queued, err)  # only a success is unmade
    finally:
        s.close()
    rows = {r["id"]: r for r in query(db, "SELECT id, status, error FROM executions")}
    assert rows[eid]["status"] == "failed" and json.loads(rows[eid]["error"]) == err
    assert rows[queued]["status"] == "queued" and rows[queued]["error"] is None
