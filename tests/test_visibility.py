"""Visibility: honest loop progress (``fm ls``/``show``/``queue``), the user's
traceback of a failed python node (``fm run``/``show``/``logs``), executions that no
supervisor runs, and ``fm run`` options a daemon ignores.

The pure parts (fm_local.progress, the traceback filter) are unit-tested; the rest
runs the real supervisor and workers and reads through the CLI in-process.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import HERE, exec_status, fm_cli, query, wait_until

from fm_local import progress as pg
from fm_local.runners import MAX_TRACEBACK, exception_error, user_traceback

NO_SUPERVISOR = "(no supervisor — start `fm daemon`)"


@pytest.fixture
def vwf(wf: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    """Like ``wf``, with vistasks.py beside the workflow."""
    (tmp_path / "vistasks.py").write_text((HERE / "vistasks.py").read_text())
    return wf


def vpy(nid: str, fn: str, **args: Any) -> dict[str, Any]:
    return {"id": nid, "type": "python", "call": f"vistasks:{fn}", "args": args}


def loop_doc(count: int, step: dict[str, Any], concurrency: int = 4) -> dict[str, Any]:
    return {
        "name": "vis-loop",
        "nodes": [
            {
                "id": "each",
                "type": "loop",
                "loopType": "count",
                "count": count,
                "parallel": True,
                "maxConcurrency": concurrency,
                "body": {"nodes": [step]},
            }
        ],
    }


FAILING = {
    "name": "vis-fail",
    "nodes": [vpy("a", "nap", ms=1), vpy("bad", "explode", value="zz")],
    "edges": [{"source": "a", "target": "bad"}],
}


def cli_json(db: Path, *args: str) -> Any:
    res = fm_cli(db, *args, "--json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def ls_row(db: Path, eid: str) -> dict[str, Any]:
    return next(r for r in cli_json(db, "ls") if r["id"] == eid)


def submit(db: Path, path: Path) -> str:
    res = fm_cli(db, "submit", str(path))
    assert res.exit_code == 0, res.stderr
    return res.stdout.strip()


def item_rows(db: Path, eid: str) -> int:
    return query(
        db,
        "SELECT count(*) AS n FROM node_runs WHERE execution_id=? AND node_type='item'",
        (eid,),
    )[0]["n"]


status_of = exec_status


# --- fm_local.progress: pure ---------------------------------------------------------


def test_progress_numbers_rate_and_eta():
    p = pg.progress(10_000, 4_120, 3, 4, first_start=100.0, now=105.0)
    assert (p.total, p.done, p.failed, p.running) == (10_000, 4_120, 3, 4)
    assert p.percent == 41.2
    assert p.rate_per_second == 824.0
    assert p.eta_seconds == pytest.approx((10_000 - 4_120) / 824.0, abs=0.1)
    assert p.text() == "4,120/10,000 41% 3 failed 824/s ETA 8s"
    assert p.as_json() == {
        "total": 10_000,
        "done": 4_120,
        "failed": 3,
        "running": 4,
        "percent": 41.2,
        "ratePerSecond": 824.0,
        "etaSeconds": p.eta_seconds,
    }


def test_progress_edges():
    # Almost done is not 100%.
    assert pg.progress(10_000, 9_999, now=1.0, first_start=0.0).text().split()[1] == "99%"
    # Nothing done yet: a rate of 0, no ETA.
    none_yet = pg.progress(200, 0, running=4, first_start=10.0, now=11.0)
    assert none_yet.rate_per_second == 0 and none_yet.eta_seconds is None
    assert none_yet.text() == "0/200 0% 0/s"
    # No item started yet: no rate.
    assert pg.progress(200, 0, now=5.0).rate_per_second is None
    # Paused (or no supervisor): no ETA, though there is a rate.
    paused = pg.progress(100, 50, first_start=0.0, now=10.0, paused=True)
    assert paused.rate_per_second == 5 and paused.eta_seconds is None
    # Finished: the rate over the items' own span, ETA 0.
    done = pg.progress(100, 100, first_start=0.0, now=1000.0, last_end=4.0, finished=True)
    assert done.rate_per_second == 25 and done.eta_seconds == 0 and done.percent == 100
    assert done.text() == "100/100 100% 25/s"
    # Unknown total, empty loop.
    assert pg.progress(None, 3, now=1.0).text() == "3/?"
    assert pg.progress(0, 0, now=1.0, finished=True).percent == 100


def row(loop: str, status: str, total: int | None, done: int, **kw: Any) -> dict[str, Any]:
    return {
        "loop": loop,
        "status": status,
        "total": total,
        "materialised": kw.get("materialised", done),
        "done": done,
        "failed": kw.get("failed", 0),
        "running": kw.get("running", 0),
        "first_start": kw.get("first_start"),
        "last_end": kw.get("last_end"),
    }


def test_headline_combined_and_not_started():
    rows = [
        row("a", "running", 100, 10, materialised=14, running=4, first_start=0.0),
        row("b", "running", 50, 5, materialised=7, running=2, first_start=1.0),
        row("c", "succeeded", 20, 20, first_start=0.0, last_end=1.0),
        row("a[3].inner", "running", 9, 1, materialised=2),
    ]
    head = pg.headline(rows, now=10.0)
    assert head is not None
    assert (head.total, head.done, head.running) == (150, 15, 6)
    assert head.rate_per_second == 1.5
    # Finished loops and items' own loops are not waiting work of the headline...
    assert pg.headline([rows[2]], now=10.0) is None
    # ...but every running loop's items without a row wait.
    assert pg.not_started(rows) == (100 - 14) + (50 - 7) + (9 - 2)
    assert pg.combined([row("x", "running", None, 1)], now=1.0).total is None  # type: ignore[union-attr]
    assert pg.format_seconds(7.2) == "8s"
    assert pg.format_seconds(185) == "3m05s"
    assert pg.format_seconds(2 * 3600 + 240) == "2h04m"
    assert pg.format_rate(0.05) == "0.05" and pg.format_rate(3.21) == "3.2"


# --- tracebacks: the user's frames only ------------------------------------------------


def test_user_traceback_is_bounded_and_keeps_the_newest_frames():
    import vistasks

    try:
        vistasks.deep(300)
    except KeyError as exc:
        tb = user_traceback(exc)
        err = exception_error(exc)
    assert len(tb) <= MAX_TRACEBACK
    assert tb.rstrip().endswith("KeyError: 'bottom of the recursion'")
    assert "in deep" in tb and "earlier frames cut" in tb
    assert err["details"]["traceback"] == tb


def test_failed_node_traceback_in_show_and_logs(vwf, db):
    from fm_local import api

    res = api.run(vwf(FAILING), db=db, workers=2)
    assert res["status"] == "failed"
    eid = res["id"]

    data = cli_json(db, "show", eid)
    nodes = {n["path"]: n for n in data["nodes"]}
    tb = nodes["bad"]["error"]["details"]["traceback"]
    assert "/fm_local/" not in tb and "vistasks.py" in tb
    assert tb.startswith("Traceback (most recent call last):")
    assert "in explode" in tb and "in _check_value" in tb
    # The code each python node ran: its module file and content hash.
    assert nodes["bad"]["code"].startswith("vistasks.py@")
    assert nodes["a"]["code"] == nodes["bad"]["code"]

    text = fm_cli(db, "show", eid)
    assert text.exit_code == 0, text.stderr
    out = text.stdout
    lines = out.splitlines()
    assert lines[0].startswith("execution") and "CODE" in out and "vistasks.py@" in out
    # The whole message (its useful end too), then the user's frames, indented.
    full = [ln for ln in lines if ln.strip().startswith("bad: NODE_ERROR: ValueError: bad value")]
    assert full and full[0].rstrip().endswith("END"), out
    at = lines.index(full[0])
    tb_lines = lines[at + 1 :]
    assert tb_lines[0].strip() == "Traceback (most recent call last):"
    assert tb_lines[0].startswith("    ")
    assert any('vistasks.py", line' in ln and "in explode" in ln for ln in tb_lines)
    assert "/fm_local/" not in out
    # The table stays narrow: the long message is cut there.
    table = next(ln for ln in lines if ln.startswith("bad "))
    assert "END" not in table and table.endswith("…")

    logs = fm_cli(db, "logs", eid)
    assert logs.exit_code == 0, logs.stderr
    llines = logs.stdout.splitlines()
    failed_at = next(i for i, ln in enumerate(llines) if " bad#1 failed: NODE_ERROR:" in ln)
    assert llines[failed_at].rstrip().endswith("END")
    assert llines[failed_at + 1].strip() == "Traceback (most recent call last):"
    assert any("in _check_value" in ln for ln in llines[failed_at:])
    assert "/fm_local/" not in logs.stdout
    # Only the failed node's attempt, under --node.
    assert "bad#1" not in fm_cli(db, "logs", eid, "--node", "a").stdout


def test_show_status_filter(vwf, db):
    from fm_local import api

    eid = api.run(vwf(FAILING), db=db, workers=2)["id"]
    failed = fm_cli(db, "show", eid, "--status", "failed")
    assert failed.exit_code == 0, failed.stderr
    paths = [ln.split()[0] for ln in failed.stdout.splitlines() if ln.startswith(("a ", "bad "))]
    assert paths == ["bad"]
    ok = fm_cli(db, "show", eid, "--status", "succeeded").stdout.splitlines()
    assert [ln.split()[0] for ln in ok if ln.startswith(("a ", "bad "))] == ["a"]
    both = cli_json(db, "show", eid, "--status", "failed", "--status", "succeeded")
    assert sorted(n["path"] for n in both["nodes"]) == ["a", "bad"]
    assert [n["path"] for n in cli_json(db, "show", eid, "--status", "failed")["nodes"]] == ["bad"]
    none = fm_cli(db, "show", eid, "--status", "skipped")
    assert none.exit_code == 0 and "no node instances with status skipped" in none.stdout
    assert fm_cli(db, "show", eid, "--status", "nope").exit_code == 2


def test_show_summarizes_a_loop_of_a_screen_or_more(vwf, db):
    """More node instances than a screen (the tour's loop, part done): a summary
    per loop, not a row per item; --all lists every one."""
    from fm_local import api

    eid = api.run(vwf(loop_doc(60, vpy("w", "nap", ms=1))), db=db, workers=2)["id"]
    out = fm_cli(db, "show", eid)
    assert out.exit_code == 0, out.stderr
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("each[")]
    assert rows == []  # no row per item
    assert any(ln.startswith("each ") and "60" in ln for ln in out.stdout.splitlines())
    assert "node instances; this is a summary" in out.stdout
    every = fm_cli(db, "show", eid, "--all").stdout.splitlines()
    assert len([ln for ln in every if ln.startswith("each[") and ".w " in ln]) == 60


def test_show_summarizes_a_big_loop_from_its_start(vwf, db, daemon, tmp_path):
    """A 200-item loop with a few items started: already the summary."""
    from fm_local import api

    gate = tmp_path / "gate"
    eid = api.submit(vwf(loop_doc(200, vpy("w", "wait_for", gate=str(gate)), 2)), db=db)
    daemon()
    started = "SELECT count(*) AS n FROM node_runs WHERE execution_id=? AND node_type='item'"
    wait_until(lambda: query(db, started, (eid,))[0]["n"] >= 2, 60, "two items to start")
    out = fm_cli(db, "show", eid)
    gate.touch()
    assert out.exit_code == 0, out.stderr
    assert [ln for ln in out.stdout.splitlines() if ln.startswith("each[")] == []
    assert "this is a summary" in out.stdout
    # the loop's line: all its items, those not started yet said so
    (line,) = [ln for ln in out.stdout.splitlines() if ln.startswith("each ") and "/200" in ln]
    assert line.split()[1] == "200" and "not started" in line, line
    assert fm_cli(db, "wait", eid).exit_code == 0


def test_fm_run_on_a_daemon_warns_and_prints_the_traceback(vwf, db, daemon):
    daemon()
    path = str(vwf(FAILING))
    res = fm_cli(db, "run", path, "--workers", "3", "--durability", "normal")
    assert res.exit_code == 1
    err = res.stderr
    warning = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1, err
    assert "--workers and --durability ignored" in warning[0]
    assert "the daemon's own settings apply" in warning[0]
    failed = [ln for ln in err.splitlines() if "failed in" in ln]
    assert failed and failed[0].rstrip().endswith("END"), err
    assert "    Traceback (most recent call last):" in err
    assert 'vistasks.py", line' in err and "in explode" in err
    assert "/fm_local/" not in err
    # Nothing given: nothing to warn about. --json: no traceback on stdout.
    quiet = fm_cli(db, "run", path, "--json")
    assert quiet.exit_code == 1 and "warning:" not in quiet.stderr
    assert json.loads(quiet.stdout)["status"] == "failed"


def test_fm_run_prints_a_loop_items_traceback(vwf, db, daemon):
    daemon()
    doc = loop_doc(6, vpy("step", "fail_odd", item="{{index}}"))
    doc["nodes"][0]["policy"] = {"onPartialFailure": "fail", "failFast": False}
    res = fm_cli(db, "run", str(vwf(doc)))
    assert res.exit_code == 1
    err = res.stderr.splitlines()
    # The loop's error names the first failed item; its traceback follows.
    assert any("of 6 items of loop 'each' failed" in ln for ln in err), res.stderr
    i = next(i for i, ln in enumerate(err) if ln.strip().startswith("each["))
    assert err[i].strip().endswith(".step:")
    assert err[i + 1].strip() == "Traceback (most recent call last):"
    assert any("in fail_odd" in ln for ln in err[i:])


# --- progress of a running loop ----------------------------------------------------------


def test_running_loop_progress_in_ls_and_show(vwf, db, daemon):
    daemon(workers=2)
    eid = submit(db, vwf(loop_doc(200, vpy("step", "nap", ms=20, item="{{index}}"))))

    def live_progress() -> Any:
        p = ls_row(db, eid)["progress"]
        if p is None:
            assert status_of(db, eid) in ("queued", "running"), "ended before a look"
        return p

    first = wait_until(live_progress, 30, "progress in fm ls --json")
    assert first["total"] == 200  # known from the first look, not the items seen so far
    for key in ("done", "failed", "running", "percent", "ratePerSecond", "etaSeconds"):
        assert key in first
    assert first["failed"] == 0 and first["running"] <= 4

    later = wait_until(
        lambda: (p := live_progress()) and p["done"] > first["done"] and p["done"] > 0 and p,
        30,
        "done to grow",
    )
    assert later["total"] == 200
    assert later["percent"] == pytest.approx(later["done"] / 2, abs=0.01)
    assert later["ratePerSecond"] > 0

    shown = cli_json(db, "show", eid)
    if shown["status"] == "running":
        assert shown["progress"]["total"] == 200
        assert shown["progress"]["etaSeconds"] is not None or shown["progress"]["done"] == 200
        text = fm_cli(db, "show", eid).stdout
        assert any(ln.startswith("loop       each  ") and "/200 " in ln for ln in text.splitlines())
        ls_text = fm_cli(db, "ls").stdout.splitlines()
        assert "PROGRESS" in ls_text[0]
    [loop] = shown["loops"]
    assert loop["path"] == "each" and loop["progress"]["total"] == 200
    assert next(n for n in shown["nodes"] if n["path"] == "each")["items"] == 200

    wait_until(lambda: status_of(db, eid) == "succeeded", 60, "the loop to finish")
    final = cli_json(db, "show", eid)
    assert final["progress"] is None
    fp = final["loops"][0]["progress"]
    assert (fp["total"], fp["done"], fp["percent"], fp["etaSeconds"]) == (200, 200, 100, 0)
    assert fp["ratePerSecond"] > 0
    assert ls_row(db, eid)["progress"] is None


def test_nested_loop_progress(vwf, db):
    from fm_local import api

    inner = {
        "id": "inner",
        "type": "loop",
        "loopType": "count",
        "count": 4,
        "body": {"nodes": [vpy("step", "nap", ms=1)]},
    }
    doc = {
        "name": "nested",
        "nodes": [
            {
                "id": "outer",
                "type": "loop",
                "loopType": "count",
                "count": 3,
                "body": {"nodes": [inner]},
            }
        ],
    }
    res = api.run(vwf(doc), db=db, workers=2)
    assert res["status"] == "succeeded"
    loops = {lp["path"]: lp["progress"] for lp in cli_json(db, "show", res["id"])["loops"]}
    assert set(loops) == {"outer", "outer[0].inner", "outer[1].inner", "outer[2].inner"}
    assert (loops["outer"]["total"], loops["outer"]["done"]) == (3, 3)
    assert all((loops[f"outer[{i}].inner"]["done"]) == 4 for i in range(3))


# --- fm queue, and executions no supervisor runs ----------------------------------------


def test_queue_counts_unstarted_items_and_no_supervisor_marks(vwf, db, daemon, tmp_path):
    gate = tmp_path / "gate"
    d = daemon(workers=2)
    doc = loop_doc(50, vpy("step", "wait_for", gate=str(gate), item="{{index}}"), concurrency=2)
    eid = submit(db, vwf(doc))
    wait_until(lambda: item_rows(db, eid) == 2, 30, "two items open")

    q = cli_json(db, "queue")
    waiting = [r for r in q["tasks"] if r["status"] == "waiting"]
    assert waiting == [{"status": "waiting", "priority": 0, "tasks": 48}], q
    text = fm_cli(db, "queue").stdout
    assert "items not yet started: 48" in text
    assert any(ln.split() == ["waiting", "0", "48"] for ln in text.splitlines()), text
    p = ls_row(db, eid)["progress"]
    assert (p["total"], p["done"]) == (50, 0)

    # The supervisor dies: the execution stays running, and says nobody runs it.
    d.kill9()
    ls_text = fm_cli(db, "ls").stdout.splitlines()
    mine = next(ln for ln in ls_text if ln.startswith(eid))
    assert "running*" in mine and "ETA" not in mine
    assert ls_text[-1] == f"* waiting {NO_SUPERVISOR}"
    show_text = fm_cli(db, "show", eid).stdout.splitlines()
    assert f"status     running  {NO_SUPERVISOR}" in show_text
    assert cli_json(db, "show", eid)["progress"]["etaSeconds"] is None

    cancel = fm_cli(db, "cancel", eid)
    assert cancel.exit_code == 0, cancel.stderr
    assert "queued until a supervisor starts" in cancel.stdout
    assert f"execution {eid} is not cancelled yet" in cancel.stdout
    assert "fm daemon" in cancel.stdout
    gate.touch()  # let the orphaned workers' items end
    # The next supervisor applies the queued cancel.
    daemon(workers=2)
    wait_until(lambda: status_of(db, eid) == "cancelled", 30, "the queued cancel")
    assert "items not yet started" not in fm_cli(db, "queue").stdout


def test_queued_execution_without_supervisor(vwf, db):
    eid = submit(db, vwf(FAILING))
    ls_text = fm_cli(db, "ls").stdout.splitlines()
    assert next(ln for ln in ls_text if ln.startswith(eid)).split()[2] == "queued*"
    assert ls_text[-1] == f"* waiting {NO_SUPERVISOR}"
    assert f"status     queued  {NO_SUPERVISOR}" in fm_cli(db, "show", eid).stdout
    paused = fm_cli(db, "pause", eid)
    assert paused.exit_code == 0
    assert "queued until a supervisor starts" in paused.stdout
    assert "is not paused yet" in paused.stdout
    assert json.loads(fm_cli(db, "cancel", eid, "--json").stdout)["status"] == "pending"
