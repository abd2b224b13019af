"""``fm verify``: a store made by a real daemon verifies clean, finished and live
(a retry waiting, a delay timer running, the daemon killed); each deliberate
corruption, made by SQL on a copy, is reported by its check with exit 1; a file
that cannot be read is exit 3; a daemon's normal work is never reported."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HERE, Daemon, fm_cli, query, wait_until

from fm_local import api
from fm_local.store.verify import CHECKS, verify


def py(nid: str, fn: str, **kw: Any) -> dict[str, Any]:
    return {"id": nid, "type": "python", "call": f"fmtasks:{fn}", **kw}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A database a real daemon wrote: a succeeded execution (retries, a loop,
    logs), a failed one (a dead letter), and a live one with a retry waiting and a
    delay timer, its daemon killed -9 mid-wait."""
    d = tmp_path_factory.mktemp("verify")
    (d / "fmtasks.py").write_text((HERE / "fmtasks.py").read_text())
    db = d / "base.db"

    def write(name: str, doc: dict[str, Any]) -> Path:
        p = d / f"{name}.json"
        p.write_text(json.dumps(doc))
        return p

    done = write(
        "done",
        {
            "name": "done",
            "nodes": [
                py("p", "prints", args={"n": 2}),
                py(
                    "f",
                    "flaky",
                    args={"counter": str(d / "c1"), "fail_times": 1},
                    retry={"maxAttempts": 2, "initialDelay": 10},
                ),
                {
                    "id": "l",
                    "type": "loop",
                    "loopType": "count",
                    "count": 3,
                    "body": {"nodes": [py("e", "echo", args={"i": "{{ index }}"})]},
                },
            ],
        },
    )
    failing = write("fail", {"name": "fail", "nodes": [py("bad", "always_fail")]})
    live = write(
        "live",
        {
            "name": "live",
            "nodes": [
                py(
                    "r",
                    "flaky",
                    args={"counter": str(d / "c2"), "fail_times": 5},
                    retry={"maxAttempts": 3, "initialDelay": 600000},
                ),
                {"id": "z", "type": "delay", "duration": 600000},
            ],
        },
    )
    daemon = Daemon(db).start()
    try:
        ids = {
            "done": api.submit(done, db=db),
            "fail": api.submit(failing, db=db),
            "live": api.submit(live, db=db),
        }
        assert api.wait(ids["done"], db=db, timeout=60)["status"] == "succeeded"
        assert api.wait(ids["fail"], db=db, timeout=60)["status"] == "failed"

        def waiting() -> bool:
            st = {
                r["path"]: r["status"]
                for r in query(
                    db, "SELECT path, status FROM node_runs WHERE execution_id=?", (ids["live"],)
                )
            }
            return st == {"r": "retry_wait", "z": "running"}

        wait_until(waiting, 30, "a retry waiting and a delay running")
        daemon.kill9()
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
    yield {"db": db, **ids}


@pytest.fixture
def store(base: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A copy of the base database for one test to damage."""
    copy = tmp_path / "fm.db"
    src = sqlite3.connect(str(base["db"]))
    dst = sqlite3.connect(str(copy))
    src.backup(dst)
    src.close()
    dst.close()
    return {**base, "db": copy}


def damage(db: Path, *sql: str, fk: bool = False, triggers: bool = True) -> None:
    """Run ``sql`` on ``db`` as someone bypassing fm would (foreign keys off unless
    ``fk``; ``triggers=False`` drops the terminal-is-final triggers first)."""
    c = sqlite3.connect(str(db), isolation_level=None)
    try:
        c.execute(f"PRAGMA foreign_keys={'ON' if fk else 'OFF'}")
        if not triggers:
            c.execute("DROP TRIGGER node_run_terminal_is_final")
            c.execute("DROP TRIGGER execution_terminal_is_final")
        for s in sql:
            c.execute(s)
    finally:
        c.close()


def only(db: Path, check: str) -> list[Any]:
    """The violations, all of which must come from ``check``."""
    found = verify(db)
    assert found, f"no violation found; expected one from {check}"
    assert {v.check for v in found} == {check}, [v.line() for v in found]
    return found


def cli_reports(db: Path, check: str) -> list[dict[str, Any]]:
    res = fm_cli(db, "verify", "--json")
    assert res.exit_code == 1, (res.stdout, res.stderr)
    rows = json.loads(res.stdout)
    assert rows and {r["check"] for r in rows} == {check}, rows
    assert set(rows[0]) == {"check", "execution", "path", "message"}
    return rows


# --- clean -------------------------------------------------------------------------------


def test_a_daemons_store_verifies_clean_finished_and_live(store):
    db = store["db"]
    assert verify(db) == []
    res = fm_cli(db, "verify")
    assert res.exit_code == 0, res.stderr
    assert f"{db}: ok ({len(CHECKS)} checks)" in res.stdout
    res = fm_cli(db, "verify", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == []
    # What the live execution left is what the timer checks look at.
    q = query(db, "SELECT path, status, not_before FROM queue ORDER BY path")
    assert [(r["path"], r["status"]) for r in q] == [("r", "retry_wait"), ("z", "timer")]
    assert all(r["not_before"] for r in q)


# --- one deliberate corruption per check ----------------------------------------------------


def test_integrity_a_damaged_index_page(store):
    db = store["db"]
    root = query(db, "SELECT rootpage FROM sqlite_schema WHERE name='node_runs_status'")[0]
    page = query(db, "PRAGMA page_size")[0]["page_size"]
    c = sqlite3.connect(str(db))
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    with open(db, "r+b") as f:
        f.seek((root["rootpage"] - 1) * page + 8)
        f.write(b"\x00" * 64)
    found = verify(db)
    assert found and found[0].check == "integrity", [v.line() for v in found]
    assert "integrity_check" in found[0].message
    # The checks that meet the damaged page say they could not run; none is silent.
    others = [v for v in found if v.check != "integrity"]
    assert all(v.message.startswith("could not run: ") for v in others), others
    res = fm_cli(db, "verify")
    assert res.exit_code == 1
    assert res.stdout.startswith("integrity: PRAGMA integrity_check:")


def test_foreign_keys_a_node_run_of_no_execution(store):
    db = store["db"]
    damage(
        db,
        "INSERT INTO node_runs(execution_id, path, node_id, node_type, status) "
        "VALUES ('ghost0000000', 'x', 'x', 'python', 'succeeded')",
    )
    v = only(db, "foreign_keys")
    assert v[0].execution == "ghost0000000" and "node_runs row" in v[0].message
    cli_reports(db, "foreign_keys")


def test_final_results_two_successful_tries_of_one_node(store):
    db, eid = store["db"], store["done"]
    damage(
        db,
        "INSERT INTO attempts(execution_id, path, seq, attempt, kind, status, started_at, "
        "finished_at) SELECT execution_id, path, seq + 1, attempt, kind, 'succeeded', "
        f"started_at, started_at FROM attempts WHERE execution_id='{eid}' AND path='p'",
    )
    v = only(db, "final_results")
    assert (v[0].execution, v[0].path) == (eid, "p")
    assert "2 tries succeeded" in v[0].message
    cli_reports(db, "final_results")


def test_terminal_final_a_finished_node_with_a_try_running(store):
    db, eid = store["db"], store["done"]
    damage(db, f"UPDATE attempts SET status='running' WHERE execution_id='{eid}' AND path='p'")
    v = only(db, "terminal_final")
    assert (v[0].execution, v[0].path) == (eid, "p")
    assert "still running" in v[0].message
    cli_reports(db, "terminal_final")


def test_terminal_final_a_finished_execution_moved_back(store):
    db, eid = store["db"], store["done"]
    damage(db, f"UPDATE executions SET status='running' WHERE id='{eid}'", triggers=False)
    v = only(db, "terminal_final")
    assert v[0].execution == eid and "moved back" in v[0].message


def test_queue_a_queue_row_for_a_finished_execution(store):
    db, eid = store["db"], store["done"]
    damage(
        db,
        "INSERT INTO queue(execution_id, path, node_id, status, enqueued_at) "
        f"VALUES ('{eid}', 'p', 'p', 'queued', 1)",
    )
    v = only(db, "queue")
    assert (v[0].execution, v[0].path) == (eid, "p")
    assert "for an execution that is succeeded" in v[0].message
    assert "DELETE FROM queue WHERE id=" in v[0].message
    cli_reports(db, "queue")


def test_queue_a_waiting_node_without_its_queue_row(store):
    db, eid = store["db"], store["live"]
    damage(db, f"DELETE FROM queue WHERE execution_id='{eid}' AND path='z'")
    v = only(db, "queue")
    assert (v[0].execution, v[0].path) == (eid, "z") and "no queue row" in v[0].message


def test_timers_a_waiting_retry_with_no_due_time(store):
    db, eid = store["db"], store["live"]
    damage(db, f"UPDATE node_runs SET next_attempt_at=NULL WHERE execution_id='{eid}' AND path='r'")
    v = only(db, "timers")
    assert (v[0].execution, v[0].path) == (eid, "r")
    assert "waits for a retry with no due time" in v[0].message
    cli_reports(db, "timers")


def test_timers_a_delay_whose_queue_row_disagrees(store):
    db, eid = store["db"], store["live"]
    damage(db, f"UPDATE queue SET not_before=not_before+5 WHERE execution_id='{eid}' AND path='z'")
    v = only(db, "timers")
    assert (v[0].execution, v[0].path) == (eid, "z") and "its delay" in v[0].message


def test_counts_a_loop_with_more_item_rows_than_items(store):
    db, eid = store["db"], store["done"]
    damage(db, f"UPDATE node_runs SET items=2 WHERE execution_id='{eid}' AND path='l'")
    v = only(db, "counts")
    assert (v[0].execution, v[0].path) == (eid, "l")
    assert "loop of 2 items has 3 item rows" in v[0].message
    cli_reports(db, "counts")


def test_counts_recoveries_fewer_than_the_recovery_tries(store):
    db, eid = store["db"], store["done"]
    damage(
        db,
        f"UPDATE attempts SET kind='recovery' WHERE execution_id='{eid}' AND path='p'",
    )
    v = only(db, "counts")
    assert (v[0].execution, v[0].path) == (eid, "p") and "recoveries is 0" in v[0].message


def test_orphans_logs_of_a_deleted_execution(store):
    db, eid = store["db"], store["done"]
    assert query(db, "SELECT count(*) AS n FROM logs WHERE execution_id=?", (eid,))[0]["n"] > 0
    # Deleted the way a careless script would: the execution and its cascade, not
    # the tables without a foreign key.
    damage(db, f"DELETE FROM executions WHERE id='{eid}'", fk=True)
    found = only(db, "orphans")
    assert {v.execution for v in found} == {eid}
    assert any(v.message.startswith(f"{n} logs rows") for v in found for n in range(1, 99))
    cli_reports(db, "orphans")


# --- the command ----------------------------------------------------------------------------


def test_verify_only_named_checks_and_exit_3_when_unreadable(store, tmp_path):
    db = store["db"]
    damage(db, "UPDATE node_runs SET next_attempt_at=NULL WHERE status='retry_wait'")
    res = fm_cli(db, "verify", "--check", "queue", "--check", "counts")
    assert res.exit_code == 0 and "ok (2 checks)" in res.stdout
    res = fm_cli(db, "verify", "--check", "timers")
    assert res.exit_code == 1
    assert res.stdout.startswith(f"timers: execution {store['live']} node r: waits for a retry")
    assert "1 violation (1 checks)" in res.stderr

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    res = fm_cli(junk, "verify")
    assert res.exit_code == 3 and res.stderr.startswith("error: cannot read"), res.stderr
    res = fm_cli(tmp_path / "missing.db", "verify")
    assert res.exit_code == 3 and "no database at" in res.stderr


def test_verify_during_a_daemons_work_reports_nothing(wf, db, daemon, tmp_path):
    """Verify, again and again, while a daemon runs a loop with retries and delays:
    every snapshot is a commit boundary, and no check mistakes normal work for a
    violation."""
    mark = tmp_path / "n"
    doc = {
        "name": "busy",
        "nodes": [
            {
                "id": "each",
                "type": "loop",
                "loopType": "count",
                "count": 40,
                "parallel": True,
                "maxConcurrency": 6,
                "body": {
                    "nodes": [
                        py(
                            "f",
                            "flaky",
                            args={"counter": str(mark) + "{{ index }}", "fail_times": 1},
                            retry={"maxAttempts": 2, "initialDelay": 50},
                        ),
                        {"id": "d", "type": "delay", "duration": 30},
                        py("s", "sleep", args={"seconds": 0.02}),
                    ],
                    "edges": [{"source": "f", "target": "d"}, {"source": "d", "target": "s"}],
                },
            }
        ],
    }
    daemon(workers=2)
    eid = api.submit(wf(doc), db=db)
    rounds = 0
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = query(db, "SELECT status FROM executions WHERE id=?", (eid,))[0]["status"]
        statuses = {r["status"] for r in query(db, "SELECT status FROM node_runs")}
        seen |= statuses
        found = verify(db, quick=True)
        assert found == [], [v.line() for v in found]
        rounds += 1
        if status == "succeeded":
            break
        assert status in ("queued", "running"), status
    else:
        raise AssertionError("the execution did not end within 120 s")
    assert rounds >= 3, "the execution ended before verify looked at it working"
    assert "retry_wait" in seen or "running" in seen
    assert verify(db) == []
