"""``fm prune`` and ``fm daemon --retain``: old finished executions go with every
row they own, in every table, while a daemon runs other work to its correct end;
what is kept is intact; the file gives its space back; ``fm verify`` is clean after.

The big databases are made by SQL: copies of a real execution's rows under new
ids (tests/bigdb.py), so what must go and what must stay is known table by table.
No test here asserts a time: the write-lock figure is measured by hand
(benchmarks/prune_lock.py, docs/maintenance.md)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from bigdb import clone_execution, rows_of
from conftest import fm_cli, query, run_wf, wait_until

from fm_local import api
from fm_local.store.prune import PruneResult, parse_age, parse_statuses, prune_db
from fm_local.store.verify import verify

DAY = 86400.0


def py(nid: str, fn: str, **kw: Any) -> dict[str, Any]:
    return {"id": nid, "type": "python", "call": f"fmtasks:{fn}", **kw}


def rich_doc(counter: Path) -> dict[str, Any]:
    """Logs, a retry, a loop: rows in node_runs, attempts, logs and events."""
    return {
        "name": "rich",
        "nodes": [
            py("p", "prints", args={"n": 5}),
            py(
                "f",
                "flaky",
                args={"counter": str(counter), "fail_times": 1},
                retry={"maxAttempts": 2, "initialDelay": 10},
            ),
            {
                "id": "l",
                "type": "loop",
                "loopType": "count",
                "count": 4,
                "body": {"nodes": [py("e", "echo", args={"i": "{{ index }}"})]},
            },
        ],
    }


FAIL_DOC = {"name": "failing", "nodes": [py("bad", "always_fail")]}


def pragma(db: Path, name: str) -> int:
    c = sqlite3.connect(str(db))
    try:
        return int(c.execute(f"PRAGMA {name}").fetchone()[0])
    finally:
        c.close()


def sql(db: Path, statement: str) -> None:
    c = sqlite3.connect(str(db), timeout=30, isolation_level=None)
    try:
        c.execute(statement)
    finally:
        c.close()


def nothing_left(db: Path, ids: list[str]) -> None:
    left = {t: n for t, n in rows_of(db, ids).items() if n}
    assert not left, f"rows of pruned executions left behind: {left}"


def statuses(db: Path, ids: list[str]) -> set[str]:
    marks = ",".join("?" * len(ids))
    return {
        r["status"]
        for r in query(db, f"SELECT status FROM executions WHERE id IN ({marks})", tuple(ids))
    }


# --- pure parts ------------------------------------------------------------------------------


def test_ages_and_statuses():
    assert parse_age("7d") == 7 * DAY
    assert parse_age("90s") == parse_age("90") == 90
    assert parse_age("1.5h") == 5400
    assert parse_age("2w") == 14 * DAY and parse_age("30m") == 1800
    for bad in ("", "7x", "-1d", "d", "7 days"):
        with pytest.raises(Exception, match="expected a number and a unit"):
            parse_age(bad)
    assert parse_statuses(()) == ("succeeded", "failed", "cancelled", "timed_out")
    assert parse_statuses(("failed,cancelled", "failed")) == ("failed", "cancelled")
    for bad in ("running", "queued", "paused", "nope"):
        with pytest.raises(Exception, match="finished executions only"):
            parse_statuses((bad,))


# --- with a daemon at work -------------------------------------------------------------------


def test_prune_while_a_daemon_runs_other_work(wf, db, daemon, tmp_path):
    d = daemon(workers=2)
    rich = api.submit(wf(rich_doc(tmp_path / "c")), db=db)
    failed = api.submit(wf(FAIL_DOC), db=db)
    assert api.wait(rich, db=db, timeout=60)["status"] == "succeeded"
    assert api.wait(failed, db=db, timeout=60)["status"] == "failed"
    assert pragma(db, "auto_vacuum") == 2, "a new file is auto_vacuum=INCREMENTAL"

    now = time.time()
    old = clone_execution(db, rich, 400, prefix="o", finished_at=now - 10 * DAY)
    old += clone_execution(db, failed, 100, prefix="f", finished_at=now - 9 * DAY)
    recent = clone_execution(db, rich, 50, prefix="r", finished_at=now - DAY)
    paused = clone_execution(db, rich, 20, prefix="p", status="paused")
    sql(db, f"UPDATE executions SET created_at = {now - 30 * DAY} WHERE id GLOB 'p*'")
    kept = [rich, failed, *recent, *paused]
    before_old, before_kept = rows_of(db, old), rows_of(db, kept)
    assert before_old["logs"] >= 400 * 5 and before_old["dead_letters"] == 100
    assert verify(db) == []
    pages_before = pragma(db, "page_count")

    # Work for the daemon while the prune runs: 40 items of 0.1 s on 2 workers.
    work = api.submit(
        wf(
            {
                "name": "work",
                "nodes": [
                    {
                        "id": "each",
                        "type": "loop",
                        "loopType": "count",
                        "count": 40,
                        "parallel": True,
                        "body": {
                            "nodes": [py("s", "sleep", args={"seconds": 0.1, "tag": "{{ index }}"})]
                        },
                    }
                ],
            }
        ),
        db=db,
    )
    wait_until(lambda: statuses(db, [work]) == {"running"}, 30, "the work to start")
    r = prune_db(db, 7 * DAY)

    res = api.wait(work, db=db, timeout=120)
    assert res["status"] == "succeeded", res
    assert [x["tag"] for x in res["output"]["each"]] == list(range(40))
    assert d.proc.poll() is None

    nothing_left(db, old)
    assert rows_of(db, kept) == before_kept, "a kept execution lost rows"
    assert statuses(db, paused) == {"paused"}
    assert r.executions == 500
    assert {t: n for t, n in r.rows.items() if n} == {t: n for t, n in before_old.items() if n}
    assert r.workflows == 0, "the workflows are still used by kept executions"
    assert r.vacuum == "incremental" and r.reclaimed_bytes > 0
    assert r.transactions > 1, "deleted in several short transactions"
    assert pragma(db, "freelist_count") == 0
    assert pragma(db, "page_count") < pages_before
    assert verify(db) == []


# --- without a daemon ------------------------------------------------------------------------


def test_prune_offline_vacuums_an_old_file_and_never_touches_live_executions(wf, db, tmp_path):
    rich = run_wf(wf(rich_doc(tmp_path / "c")), db)["id"]
    # An old file: made before new files were auto_vacuum=INCREMENTAL.
    c = sqlite3.connect(str(db), isolation_level=None)
    c.execute("PRAGMA auto_vacuum=NONE")
    c.execute("VACUUM")
    c.close()
    assert pragma(db, "auto_vacuum") == 0
    long_ago = time.time() - 30 * DAY
    old = clone_execution(db, rich, 300, prefix="o", finished_at=long_ago)
    live = []
    for status in ("queued", "running", "paused"):
        live += clone_execution(db, rich, 5, prefix=status[0], status=status)
    sql(
        db,
        f"UPDATE executions SET created_at = {long_ago} WHERE id IN "
        f"({','.join(repr(e) for e in live)})",
    )
    before_live = rows_of(db, live)
    size_before, pages_before = db.stat().st_size, pragma(db, "page_count")

    res = fm_cli(db, "prune", "--older-than", "1d", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["executions"] == 300 and out["dryRun"] is False
    assert out["vacuum"].startswith("full"), out
    assert out["reclaimedBytes"] > 0
    nothing_left(db, old)
    assert rows_of(db, live) == before_live
    assert statuses(db, live) == {"queued", "running", "paused"}
    assert pragma(db, "auto_vacuum") == 2, "the VACUUM turned the file incremental"
    assert pragma(db, "page_count") < pages_before
    assert db.stat().st_size < size_before
    assert verify(db) == []


def test_prune_status_filter_dry_run_and_text(wf, db, tmp_path):
    # The failing workflow first: prune keeps the highest workflow id, always.
    failed = run_wf(wf(FAIL_DOC), db)["id"]
    rich = run_wf(wf(rich_doc(tmp_path / "c")), db)["id"]
    long_ago = time.time() - 3 * DAY
    ok = clone_execution(db, rich, 30, prefix="o", finished_at=long_ago)
    bad = clone_execution(db, failed, 20, prefix="f", finished_at=long_ago)
    sql(db, f"UPDATE executions SET finished_at = {long_ago} WHERE id IN ('{rich}', '{failed}')")
    want_bad = rows_of(db, [*bad, failed])

    res = fm_cli(db, "prune", "--older-than", "2d", "--status", "failed", "--dry-run", "--json")
    assert res.exit_code == 0, res.stderr
    dry = json.loads(res.stdout)
    assert dry["dryRun"] is True and dry["executions"] == 21
    assert {t: n for t, n in dry["rows"].items() if n} == {t: n for t, n in want_bad.items() if n}
    assert dry["workflows"] == 1, "the failing workflow is used by nothing else"
    assert rows_of(db, [*bad, failed]) == want_bad, "a dry run deletes nothing"

    res = fm_cli(db, "prune", "--older-than", "2d", "--status", "failed")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith("deleted 21 executions (")
    assert "and 1 workflow no execution uses" in res.stdout
    assert "space: " in res.stdout
    nothing_left(db, [*bad, failed])
    assert statuses(db, [rich, *ok]) == {"succeeded"}
    assert query(db, "SELECT count(*) AS n FROM workflows WHERE name='failing'")[0]["n"] == 0
    assert query(db, "SELECT count(*) AS n FROM workflows WHERE name='rich'")[0]["n"] == 1

    res = fm_cli(db, "prune", "--older-than", "2d", "--status", "running")
    assert res.exit_code == 2 and "finished executions only" in res.stderr
    assert verify(db) == []


def test_prune_result_json_shape():
    out = PruneResult().as_json()
    assert set(out) >= {"executions", "rows", "workflows", "dryRun", "vacuum", "reclaimedBytes"}


# --- the daemon's retention --------------------------------------------------------------------


def test_daemon_retain_prunes_in_the_background(wf, db, daemon, tmp_path, monkeypatch):
    rich = run_wf(wf(rich_doc(tmp_path / "c")), db)["id"]
    old = clone_execution(db, rich, 200, prefix="o", finished_at=time.time() - 3 * DAY)
    recent = clone_execution(db, rich, 10, prefix="r", finished_at=time.time() - 3600)
    before_recent = rows_of(db, [rich, *recent])
    monkeypatch.setenv("FM_RETAIN", "2d")  # the env twin of --retain
    d = daemon(workers=1)
    wait_until(
        lambda: rows_of(db, old)["executions"] == 0, 60, "the retention to prune the old ones"
    )
    wait_until(lambda: not any(rows_of(db, old).values()), 30, "every row of them gone")
    # New work runs meanwhile and afterwards.
    again = api.submit(wf(rich_doc(tmp_path / "c2")), db=db)
    assert api.wait(again, db=db, timeout=60)["status"] == "succeeded"
    assert rows_of(db, [rich, *recent]) == before_recent
    log = wait_until(
        lambda: (
            "retention: pruned 200 executions" in d.log_path.read_text() and d.log_path.read_text()
        ),
        30,
        "the daemon to say what it pruned",
    )
    assert "keeping finished executions for 2d" in log
    assert verify(db) == []


def test_daemon_retain_refuses_a_bad_age(db):
    res = fm_cli(db, "daemon", "--retain", "a week")
    assert res.exit_code == 2 and "--retain 'a week'" in res.stderr, res.stderr


def test_a_submit_racing_the_prune_of_its_workflow_gets_one_clear_line(wf, db, tmp_path):
    """A client saves the workflow, then creates the execution in a second
    transaction; a prune that deletes the workflow in between (no execution used it)
    makes that submit fail with one line that says to submit again."""
    from fm_local.errors import FmError
    from fm_local.store import Store

    eid = run_wf(wf(FAIL_DOC), db)["id"]
    wid = query(db, "SELECT workflow_id FROM executions WHERE id=?", (eid,))[0]["workflow_id"]
    # Another workflow stored since: the failing one is not the highest id, which
    # prune always keeps (a new workflow must never get a pruned one's id).
    later = run_wf(wf(rich_doc(tmp_path / "c")), db)["id"]
    sql(db, f"UPDATE executions SET finished_at = {time.time() + DAY} WHERE id = '{later}'")
    r = prune_db(db, 0.0)
    assert (r.executions, r.workflows) == (1, 1)
    store = Store(db)
    try:
        with pytest.raises(FmError, match="was deleted from .* submit it again"):
            store.create_execution(wid, "failing", {})
    finally:
        store.close()
    # Submitting again stores the workflow again.
    assert run_wf(wf(FAIL_DOC), db)["status"] == "failed"


def test_an_execution_an_unfinished_retry_reuses_is_kept(wf, db, tmp_path):
    """The retry reads its original's signals when it starts: prune keeps the
    original until the retry ends; a retry asked for after a prune says so."""
    failed = run_wf(wf(FAIL_DOC), db)["id"]
    res = fm_cli(db, "retry", failed, "--detach")
    assert res.exit_code == 0, res.stderr
    retry = res.stdout.strip()
    assert statuses(db, [retry]) == {"queued"}  # no supervisor runs it
    long_ago = time.time() - 3 * DAY
    sql(db, f"UPDATE executions SET finished_at = {long_ago} WHERE id = '{failed}'")
    res = fm_cli(db, "prune", "--older-than", "2d", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["executions"] == 0
    assert statuses(db, [failed]) == {"failed"}
    sql(
        db,
        f"UPDATE executions SET status='cancelled', finished_at={time.time()} WHERE id='{retry}'",
    )
    res = fm_cli(db, "prune", "--older-than", "2d", "--json")
    assert json.loads(res.stdout)["executions"] == 1, "its retry ended: now it goes"
    nothing_left(db, [failed])


def test_a_workflow_submitted_after_a_prune_runs_its_own_document(wf, db, daemon, tmp_path):
    """The daemon keeps the workflows it loaded by id: a pruned workflow's id must
    never be given to a new one (it would run the old document)."""
    daemon(workers=2)
    a = {"name": "wf-a", "nodes": [{"id": "a", "type": "transform", "expression": "'I am A'"}]}
    c = {"name": "wf-c", "nodes": [{"id": "c", "type": "transform", "expression": "1 / 0"}]}
    first = fm_cli(db, "run", str(wf(a)), "--json")
    assert first.exit_code == 0 and json.loads(first.stdout)["output"] == {"a": "I am A"}
    sql(db, f"UPDATE executions SET finished_at = {time.time() - 3 * DAY}")
    res = fm_cli(db, "prune", "--older-than", "2d", "--json")
    assert json.loads(res.stdout)["executions"] == 1
    second = fm_cli(db, "run", str(wf(c)), "--json")
    got = json.loads(second.stdout)
    assert second.exit_code == 1 and got["status"] == "failed", got
    paths = query(db, "SELECT path FROM node_runs WHERE execution_id=?", (got["id"],))
    assert [r["path"] for r in paths] == ["c"]
    names = [r["name"] for r in query(db, "SELECT name FROM workflows ORDER BY id")]
    assert names == ["wf-a", "wf-c"], "wf-a's row stays: it had the highest id"
