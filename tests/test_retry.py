"""``fm retry`` (docs/retry.md): a new execution of an ended one's workflow and
input that reuses the recorded results of what succeeded and runs the rest.

Real supervisors (embedded in ``fm run``/``fm retry``, or ``fm daemon``), real
worker processes. The node functions (tests/retrytasks.py, copied beside each
workflow) append their node path to ``calls.txt`` on every call, so each test
counts exactly which node instances were run; whether one fails is decided by
``bad.txt``, which a test edits between a run and its retry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import HERE, exec_status, fm_cli, query, undo_version_5, wait_until

from fm_local import api


@pytest.fixture
def rwf(wf: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    """Like ``wf``, with retrytasks.py beside the workflow."""
    (tmp_path / "retrytasks.py").write_text((HERE / "retrytasks.py").read_text())
    return wf


class Calls:
    """calls.txt, bad.txt and slow.txt beside the test's workflows."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def lines(self) -> list[str]:
        try:
            return (self.folder / "calls.txt").read_text().splitlines()
        except FileNotFoundError:
            return []

    def reset(self) -> None:
        (self.folder / "calls.txt").write_text("")

    def bad(self, *keys: Any) -> None:
        (self.folder / "bad.txt").write_text(" ".join(map(str, keys)))

    def slow(self, *keys: Any) -> None:
        (self.folder / "slow.txt").write_text(" ".join(map(str, keys)))


@pytest.fixture
def calls(tmp_path: Path) -> Calls:
    return Calls(tmp_path)


def step(nid: str, value: str | int = 0) -> dict[str, Any]:
    return {
        "id": nid,
        "type": "python",
        "call": "retrytasks:step",
        "args": {"name": nid, "value": value},
    }


def chain_doc(name: str = "chain") -> dict[str, Any]:
    return {
        "name": name,
        "nodes": [step("a"), step("b", "{{a.value}}"), step("c", "{{b.value}}")],
        "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "c"}],
    }


def loop_doc(n: int, name: str = "loop", body_prep: bool = False, **loop: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "nodes": [
            {"id": "work", "type": "python", "call": "retrytasks:work", "args": {"x": "{{index}}"}}
        ],
        "edges": [],
    }
    if body_prep:
        body = {
            "nodes": [
                {
                    "id": "prep",
                    "type": "python",
                    "call": "retrytasks:prep",
                    "args": {"x": "{{index}}"},
                },
                {
                    "id": "work",
                    "type": "python",
                    "call": "retrytasks:work",
                    "args": {"x": "{{prep.x}}"},
                },
            ],
            "edges": [{"source": "prep", "target": "work"}],
        }
    node = {
        "id": "each",
        "type": "loop",
        "loopType": "count",
        "count": n,
        "parallel": True,
        # Run every item even when some fail, then fail the loop (and the execution).
        "policy": {"onPartialFailure": "fail", "failFast": False},
        "body": body,
        **loop,
    }
    return {
        "name": name,
        "nodes": [node, {"id": "total", "type": "transform", "expression": "sum(each)"}],
        "edges": [{"source": "each", "target": "total"}],
    }


def run_json(db: Path, *args: str) -> tuple[int, dict[str, Any]]:
    res = fm_cli(db, "--json", *args)
    assert res.stdout.strip(), res.stderr
    return res.exit_code, json.loads(res.stdout)


# --- the 1,000-item loop ---------------------------------------------------------------


def test_loop_of_1000_with_7_failed_items_reruns_exactly_those_7(rwf, db, calls):
    path = rwf(loop_doc(1000))
    bad = [3, 141, 142, 500, 777, 998, 999]
    calls.bad(*bad)
    code, first = run_json(db, "run", str(path))
    assert code == 1 and first["status"] == "failed"
    assert len(calls.lines()) == 1000
    calls.bad()  # the data is fixed
    calls.reset()
    code, again = run_json(db, "retry", first["id"])
    assert code == 0, again
    assert again["status"] == "succeeded" and again["retryOf"] == first["id"]
    # Exactly the 7 failed items ran again: each once, no other node function.
    assert sorted(calls.lines()) == sorted(f"each[{i}].work" for i in bad)
    assert again["reused"] == 993 * 2  # each item row and its body node
    calls.reset()
    code, clean = run_json(db, "run", str(path))
    assert code == 0 and len(calls.lines()) == 1000
    assert again["output"] == clean["output"] == {"total": sum(2 * i for i in range(1000))}
    # The loop's output is assembled from reused and new items, in item order.
    loop_row = query(
        db, "SELECT output FROM node_runs WHERE execution_id=? AND path='each'", (again["id"],)
    )
    assert json.loads(loop_row[0]["output"]) == [2 * i for i in range(1000)]
    reused = query(
        db,
        "SELECT count(*) AS n FROM node_runs WHERE execution_id=? AND reused_from=? "
        "AND attempts=0 AND status='succeeded'",
        (again["id"], first["id"]),
    )
    assert reused[0]["n"] == 993 * 2


# --- chains and --node -------------------------------------------------------------------


def test_failed_middle_node_reruns_it_and_downstream_not_upstream(rwf, db, calls):
    path = rwf(chain_doc())
    calls.bad("b")
    code, first = run_json(db, "run", str(path))
    assert code == 1 and calls.lines() == ["a", "b"]
    calls.bad()
    calls.reset()
    code, again = run_json(db, "retry", first["id"], "--from-failure")
    assert code == 0 and again["output"] == {"c": {"name": "c", "value": 3}}
    assert calls.lines() == ["b", "c"]
    assert again["reused"] == 1


def test_retry_node_reruns_that_node_and_downstream(rwf, db, calls):
    path = rwf(chain_doc())
    code, first = run_json(db, "run", str(path))
    assert code == 0
    calls.reset()
    code, again = run_json(db, "retry", first["id"], "--node", "b")
    assert code == 0 and again["output"] == first["output"]
    assert calls.lines() == ["b", "c"]
    # Of a loop: every instance of the node (and what follows it in each item).
    path = rwf(loop_doc(5, name="small", body_prep=True))
    code, first = run_json(db, "run", str(path))
    assert code == 0
    calls.reset()
    code, again = run_json(db, "retry", first["id"], "--node", "each.work")
    assert code == 0 and again["output"] == first["output"]
    assert sorted(calls.lines()) == sorted(f"each[{i}].work" for i in range(5))
    # One item's instance only.
    calls.reset()
    code, again = run_json(db, "retry", first["id"], "--node", "each[2].prep")
    assert code == 0 and again["output"] == first["output"]
    assert calls.lines() == ["each[2].prep", "each[2].work"]
    # One item, whole.
    calls.reset()
    code, again = run_json(db, "retry", first["id"], "--node", "each[4]")
    assert code == 0 and again["output"] == first["output"]
    assert calls.lines() == ["each[4].prep", "each[4].work"]
    res = fm_cli(db, "retry", first["id"], "--node", "each.nope")
    assert res.exit_code == 2 and "no node 'nope' in each" in res.stderr
    # An item the loop did not have: refused, nothing created.
    before = len(query(db, "SELECT id FROM executions"))
    res = fm_cli(db, "retry", first["id"], "--node", "each[99]")
    assert res.exit_code == 2 and "loop each had 5 items (0..4)" in res.stderr, res.stderr
    assert len(query(db, "SELECT id FROM executions")) == before


# --- what changed since ---------------------------------------------------------------------


def test_changed_task_module_is_refused_and_force_reruns(rwf, db, calls, tmp_path):
    path = rwf(chain_doc())
    calls.bad("c")
    code, first = run_json(db, "run", str(path))
    assert code == 1
    calls.bad()
    module = tmp_path / "retrytasks.py"
    module.write_text(module.read_text() + "\n# a fix\n")
    calls.reset()
    res = fm_cli(db, "retry", first["id"])
    assert res.exit_code == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "retrytasks.py changed" in lines[0] and "--force" in lines[0]
    assert calls.lines() == []
    assert len(query(db, "SELECT id FROM executions")) == 1  # nothing was created
    code, again = run_json(db, "retry", first["id"], "--force")
    assert code == 0 and again["reused"] == 0
    assert calls.lines() == ["a", "b", "c"]
    # --reuse-changed keeps what the old code computed: only c runs.
    calls.reset()
    code, kept = run_json(db, "retry", first["id"], "--reuse-changed")
    assert code == 0 and calls.lines() == ["c"]


def test_changed_workflow_file_runs_the_recorded_document(rwf, db, calls):
    path = rwf(chain_doc())
    calls.bad("b")
    code, first = run_json(db, "run", str(path))
    assert code == 1
    calls.bad()
    doc = chain_doc()
    doc["nodes"][2]["args"]["name"] = "renamed"
    path.write_text(json.dumps(doc))
    res = fm_cli(db, "--json", "retry", first["id"])
    assert res.exit_code == 0, res.stderr
    assert f"note: {path} changed since execution {first['id']}" in res.stderr
    assert json.loads(res.stdout)["output"] == {"c": {"name": "c", "value": 3}}


# --- engine semantics: branches, first success, nested loops ---------------------------------


def test_untaken_branch_stays_skipped_and_join_reruns_alone(rwf, db, calls):
    doc = {
        "name": "branches",
        "nodes": [
            {"id": "cond", "type": "condition", "expression": "True"},
            step("yes"),
            step("no"),
            step("join"),
        ],
        "edges": [
            {"source": "cond", "target": "yes", "sourceHandle": "true"},
            {"source": "cond", "target": "no", "sourceHandle": "false"},
            {"source": "yes", "target": "join"},
            {"source": "no", "target": "join"},
        ],
    }
    path = rwf(doc)
    calls.bad("join")
    code, first = run_json(db, "run", str(path))
    assert code == 1 and calls.lines() == ["yes", "join"]
    calls.bad()
    calls.reset()
    code, again = run_json(db, "retry", first["id"])
    assert code == 0 and calls.lines() == ["join"]
    rows = {
        r["path"]: r
        for r in query(db, "SELECT * FROM node_runs WHERE execution_id=?", (again["id"],))
    }
    assert rows["cond"]["reused_from"] == first["id"] and rows["cond"]["port"] == "true"
    assert rows["no"]["status"] == "skipped" and rows["no"]["reused_from"] is None


def test_first_success_merge_is_reused_with_its_losers(rwf, db, calls):
    race = {"type": "python", "call": "retrytasks:race"}
    doc = {
        "name": "race",
        "nodes": [
            step("start"),
            {"id": "fast", **race, "args": {"delay": 0.05}},
            {"id": "slow", **race, "args": {"delay": 20}},
            {"id": "first", "type": "merge", "mode": "first_success"},
            step("after"),
        ],
        "edges": [
            {"source": "start", "target": "fast"},
            {"source": "start", "target": "slow"},
            {"source": "fast", "target": "first"},
            {"source": "slow", "target": "first"},
            {"source": "first", "target": "after"},
        ],
    }
    path = rwf(doc)
    calls.bad("after")
    code, first = run_json(db, "run", str(path))
    assert code == 1
    assert sorted(calls.lines()) == ["after", "fast", "slow", "start"]
    calls.bad()
    calls.reset()
    code, again = run_json(db, "retry", first["id"])
    assert code == 0 and calls.lines() == ["after"]  # the loser is not run again
    slow = query(
        db,
        "SELECT status, reused_from FROM node_runs WHERE execution_id=? AND path='slow'",
        (again["id"],),
    )
    assert slow == [{"status": "cancelled", "reused_from": first["id"]}]


def test_nested_loops_rerun_only_the_failed_inner_item(rwf, db, calls):
    inner = {
        "id": "inner",
        "type": "loop",
        "loopType": "count",
        "count": 4,
        "parallel": True,
        "policy": {"onPartialFailure": "fail", "failFast": False},
        "body": {
            "nodes": [
                {
                    "id": "work",
                    "type": "python",
                    "call": "retrytasks:work",
                    "args": {"x": "{{ outer_i * 10 + index }}"},
                }
            ],
            "edges": [],
        },
    }
    doc = {
        "name": "nested",
        "nodes": [
            {
                "id": "outer",
                "type": "loop",
                "loopType": "count",
                "count": 3,
                "indexVariable": "outer_i",
                "parallel": True,
                "policy": {"onPartialFailure": "fail", "failFast": False},
                "body": {
                    "nodes": [step("head"), inner],
                    "edges": [{"source": "head", "target": "inner"}],
                },
            }
        ],
    }
    path = rwf(doc)
    calls.bad(12)
    code, first = run_json(db, "run", str(path))
    assert code == 1 and len(calls.lines()) == 3 + 12
    calls.bad()
    calls.reset()
    code, again = run_json(db, "retry", first["id"])
    assert code == 0, again
    assert calls.lines() == ["outer[1].inner[2].work"]
    assert again["output"] == {"outer": [[2 * (10 * o + i) for i in range(4)] for o in range(3)]}
    calls.reset()
    code, clean = run_json(db, "run", str(path))
    assert again["output"] == clean["output"]


# --- what fm show says --------------------------------------------------------------------------


def test_show_marks_reused_instances_and_the_retry(rwf, db, calls):
    path = rwf(chain_doc())
    calls.bad("b")
    code, first = run_json(db, "run", str(path))
    calls.bad()
    code, again = run_json(db, "retry", first["id"])
    assert code == 0
    shown = json.loads(fm_cli(db, "show", again["id"], "--json").stdout)
    assert shown["retryOf"] == first["id"]
    assert shown["retry"]["from"] == "failure" and shown["retry"]["reused"] == 1
    nodes = {n["path"]: n for n in shown["nodes"]}
    assert nodes["a"]["reusedFrom"] == first["id"] and nodes["a"]["attempts"] == 0
    assert nodes["a"]["status"] == "succeeded" and nodes["a"]["output"] == {"name": "a", "value": 1}
    assert nodes["b"]["reusedFrom"] is None and nodes["b"]["attempts"] == 1
    text = fm_cli(db, "show", again["id"]).stdout
    assert f"retry of   {first['id']}" in text
    line_a = next(line for line in text.splitlines() if line.startswith("a "))
    assert f"reused from {first['id']}" in line_a
    old = json.loads(fm_cli(db, "show", first["id"], "--json").stdout)
    assert old["retriedBy"] == [again["id"]]


# --- on a daemon: refusals, a reused signal, kill -9 mid-retry --------------------------------


def test_unended_execution_is_refused_and_a_received_signal_is_reused(rwf, db, calls, daemon):
    doc = {
        "name": "signalled",
        "nodes": [
            {"id": "approval", "type": "wait", "signal": "approve"},
            # The wait node's output, and the signal as the scope keeps it.
            step("after", "{{ approval.level + signals.approve.data.level }}"),
        ],
        "edges": [{"source": "approval", "target": "after"}],
    }
    path = rwf(doc)
    calls.bad("after")
    eid = fm_cli(db, "submit", str(path)).stdout.strip()
    res = fm_cli(db, "retry", eid)
    assert res.exit_code == 2 and f"execution {eid} is queued" in res.stderr
    daemon()
    wait_until(
        lambda: query(
            db,
            "SELECT 1 FROM node_runs WHERE execution_id=? AND path='approval' AND status='running'",
            (eid,),
        ),
        30,
        "the wait node waits",
    )
    res = fm_cli(db, "retry", eid)
    assert res.exit_code == 2 and f"execution {eid} is running" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert fm_cli(db, "pause", eid).exit_code == 0
    res = fm_cli(db, "retry", eid)
    assert res.exit_code == 2 and f"execution {eid} is paused" in res.stderr
    assert f"fm resume {eid}, then fm wait {eid}" in res.stderr
    assert fm_cli(db, "resume", eid).exit_code == 0
    assert fm_cli(db, "signal", eid, "approve", "--data", '{"level": 4}').exit_code == 0
    assert api.wait(eid, db=db, timeout=60)["status"] == "failed"
    calls.bad()
    calls.reset()
    code, again = run_json(db, "retry", eid)
    # Not waiting again: the signal the wait node received is its recorded output,
    # and signals.approve is what the old execution received.
    assert code == 0 and again["output"] == {"after": {"name": "after", "value": 9}}
    assert calls.lines() == ["after"]


@pytest.mark.crash
def test_kill9_of_the_daemon_mid_retry(rwf, db, calls, daemon):
    n = 30
    path = rwf(loop_doc(n, name="crashy", body_prep=True, maxConcurrency=1))
    bad = [3, 7, 11, 20, 25]
    calls.bad(*bad)
    d = daemon()
    code, first = run_json(db, "run", str(path))
    assert code == 1 and len(calls.lines()) == 2 * n
    calls.bad()
    calls.slow(*bad)  # each item run again takes a while: the daemon dies among them
    calls.reset()
    code, queued = run_json(db, "retry", first["id"], "--detach")
    assert code == 0 and queued["status"] == "queued"
    new = queued["id"]
    wait_until(lambda: len(calls.lines()) >= 2, 60, "two items of the retry started")
    d.kill9()
    assert exec_status(db, new) == "running"
    daemon()
    end = api.wait(new, db=db, timeout=120)
    assert end["status"] == "succeeded", end
    assert end["output"] == {"total": sum(2 * i for i in range(n))}
    ran = calls.lines()
    # Only the failed items' work ran again (an interrupted one may have run twice);
    # no reused item and no reused prep was called.
    assert set(ran) == {f"each[{i}].work" for i in bad}, ran
    rows = query(db, "SELECT path, status, reused_from FROM node_runs WHERE execution_id=?", (new,))
    assert all(r["status"] == "succeeded" for r in rows)
    reused = {r["path"] for r in rows if r["reused_from"] == first["id"]}
    assert {f"each[{i}].prep" for i in range(n)} <= reused
    assert not any(f"each[{i}]" in reused or f"each[{i}].work" in reused for i in bad)
    assert len(rows) == 2 + 3 * n  # each, total; n item rows and 2n body rows


def test_a_version_4_file_gets_the_retry_columns_and_can_be_retried(rwf, db, calls):
    """Old databases keep working: an execution recorded before schema version 5 is
    retried once a writer has migrated the file."""
    import sqlite3

    from fm_local import store

    path = rwf(chain_doc())
    calls.bad("c")
    code, first = run_json(db, "run", str(path))
    assert code == 1
    with sqlite3.connect(db) as con:
        undo_version_5(con)
        con.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    store.Store(db).close()  # a writer migrates
    assert query(db, "SELECT value FROM meta WHERE key='schema_version'") == [
        {"value": str(store.SCHEMA_VERSION)}
    ]
    calls.bad()
    calls.reset()
    code, again = run_json(db, "retry", first["id"])
    assert code == 0 and calls.lines() == ["c"]
