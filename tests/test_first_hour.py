"""What a new user meets in the first hour: semantics that do what they say.

`collect`/`continue` run every item; an http node keeps its url's query string;
a dead letter replays into its still-running execution; a queue-timeout dead
letter keeps its input; Chrome traces never draw overlapping slices on one track;
a labelled switch case answers to its value and its label; the daemon runs the
code that is on disk and records which; `fm validate` checks python call
targets; the Python API takes a workflow as a dict or a model.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import HERE, fm_cli, python_fresh, python_node, query, run_wf, wait_until

from fm_local import api


@pytest.fixture
def fwf(wf: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    """Like ``wf``, with firsttasks.py beside the workflow."""
    (tmp_path / "firsttasks.py").write_text((HERE / "firsttasks.py").read_text())
    return wf


py = partial(python_node, "firsttasks")


def loop(n: int, bad: list[int], **kw: Any) -> dict[str, Any]:
    return {
        "id": "each",
        "type": "loop",
        "loopType": "count",
        "count": n,
        "parallel": True,
        "maxConcurrency": 2,
        "body": {"nodes": [py("w", "item", args={"i": "{{index}}", "bad": bad})], "edges": []},
        **kw,
    }


# --- collect and continue run every item -----------------------------------------------------


def test_collect_runs_every_item(fwf, db):
    """The README's loop: collect + minSuccessRate 0.8, no failFast written."""
    doc = {
        "name": "collect",
        "nodes": [loop(40, [3], policy={"onPartialFailure": "collect", "minSuccessRate": 0.8})],
    }
    res = run_wf(fwf(doc), db)
    assert res["status"] == "succeeded", res["error"]
    out = res["output"]["each"]
    assert (out["successCount"], out["failureCount"]) == (39, 1)
    ran = query(
        db,
        "SELECT count(*) AS n FROM node_runs WHERE execution_id=? AND path GLOB 'each[[]*].w'",
        (res["id"],),
    )[0]["n"]
    assert ran == 40


def test_continue_runs_every_item(fwf, db):
    doc = {"name": "continue", "nodes": [loop(20, [0, 5], policy={"onPartialFailure": "continue"})]}
    res = run_wf(fwf(doc), db)
    assert res["status"] == "succeeded", res["error"]
    assert res["output"]["each"] == [i for i in range(20) if i not in (0, 5)]


def test_written_fail_fast_still_applies_under_collect(fwf, db):
    doc = {
        "name": "collect-ff",
        "nodes": [
            loop(
                30, [0], maxConcurrency=1, policy={"onPartialFailure": "collect", "failFast": True}
            )
        ],
    }
    res = run_wf(fwf(doc), db)
    assert res["status"] == "succeeded", res["error"]
    assert res["output"]["each"]["successCount"] < 29


def test_a_fail_fast_error_counts_the_items_that_never_ran(fwf, db):
    doc = {"name": "ff", "nodes": [loop(30, [0], maxConcurrency=1)]}
    res = run_wf(fwf(doc), db)
    assert res["status"] == "failed"
    assert "29 not started because failFast" in res["error"]["message"], res["error"]


# --- http: the url's own query string is kept ----------------------------------------------


def test_http_node_keeps_the_query_string_of_its_url(fwf, db):
    from test_http_node import Server

    s = Server()
    s.thread.start()
    try:
        node = {
            "id": "h",
            "type": "http",
            "url": s.url("/json?page=2&q=hello"),
            "query": {"extra": "x y", "flag": True},
        }
        res = run_wf(fwf({"name": "q", "nodes": [node]}), db)
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
    assert res["status"] == "succeeded", res["error"]
    got = res["output"]["h"]["body"]["query"]
    assert got == {"page": ["2"], "q": ["hello"], "extra": ["x y"], "flag": ["true"]}


# --- dead letters ---------------------------------------------------------------------------


def test_dlq_replay_into_a_running_execution_runs_the_node_there(fwf, db, daemon, tmp_path):
    counter = tmp_path / "counter"
    doc = {
        "name": "replay-running",
        "nodes": [
            py("charge", "fail_once", args={"counter": str(counter)}, errorStrategy="continue"),
            {"id": "hold", "type": "wait", "signal": "go"},
        ],
    }
    eid = api.submit(fwf(doc), db=db)
    daemon(workers=1)
    wait_until(lambda: query(db, "SELECT id FROM dead_letters"), 30, "a dead letter")
    dl = query(db, "SELECT id FROM dead_letters")[0]["id"]
    res = fm_cli(db, "dlq", "replay", str(dl))
    assert res.exit_code == 0, res.stderr
    replay_path = f"charge->replay#{dl}"
    wait_until(
        lambda: (
            query(
                db,
                "SELECT status FROM node_runs WHERE execution_id=? AND path=?",
                (eid, replay_path),
            )
            == [{"status": "succeeded"}]
        ),
        30,
        "the replay to succeed in place",
    )
    assert query(db, "SELECT status FROM executions WHERE id=?", (eid,))[0]["status"] == "running"
    assert fm_cli(db, "signal", eid, "go").exit_code == 0
    assert api.wait(eid, db=db, timeout=60)["status"] == "succeeded"


def test_a_queue_timeout_dead_letter_keeps_the_input(fwf, db):
    doc = {
        "name": "qt",
        "settings": {"queue": {"timeout": 300}},
        "nodes": [
            py("long", "nap", args={"seconds": 1.5}),
            py("late", "echo", args={"who": "{{ input.who }}"}),
        ],
    }
    res = run_wf(fwf(doc), db, input={"who": "ada"}, workers=1)
    assert res["status"] == "failed"
    dead = query(db, "SELECT path, input, error FROM dead_letters")
    assert [d["path"] for d in dead] == ["late"]
    assert json.loads(dead[0]["error"])["code"] == "QUEUE_TIMEOUT"
    assert json.loads(dead[0]["input"])["args"] == {"who": "ada"}


# --- traces ---------------------------------------------------------------------------------


def test_chrome_trace_never_overlaps_slices_on_one_track(fwf, db, tmp_path):
    doc = {
        "name": "trace",
        "nodes": [
            {
                "id": "each",
                "type": "loop",
                "loopType": "count",
                "count": 12,
                "parallel": True,
                "body": {
                    "nodes": [
                        py("w", "nap", args={"seconds": 0.05}),
                        {"id": "t", "type": "transform", "expression": "w"},
                    ],
                    "edges": [{"source": "w", "target": "t"}],
                },
            }
        ],
    }
    res = run_wf(fwf(doc), db, workers=3)
    assert res["status"] == "succeeded"
    out = tmp_path / "trace.json"
    assert fm_cli(db, "trace", res["id"], "-o", str(out)).exit_code == 0
    events = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X"]
    by_tid: dict[int, list[tuple[int, int]]] = {}
    for e in events:
        by_tid.setdefault(e["tid"], []).append((e["ts"], e["ts"] + e["dur"]))
    for tid, slices in by_tid.items():
        slices.sort()
        for (_, end), (start, _) in zip(slices, slices[1:], strict=False):
            assert start >= end, f"track {tid}: overlapping slices"
    assert len(by_tid) > 2  # items ran at once: several tracks


# --- switch ports -----------------------------------------------------------------------------


@pytest.mark.parametrize("handle", ["big", "2"])
def test_a_labelled_switch_case_answers_to_its_label_and_its_value(fwf, db, handle):
    doc = {
        "name": "switch",
        "nodes": [
            {
                "id": "s",
                "type": "switch",
                "expression": "input.n",
                "cases": [{"value": 1, "label": "small"}, {"value": 2, "label": "big"}],
            },
            {"id": "a", "type": "transform", "expression": "'went ' + str(input.n)"},
        ],
        "edges": [{"source": "s", "target": "a", "sourceHandle": handle}],
    }
    path = fwf(doc)
    assert fm_cli(db, "validate", str(path)).exit_code == 0
    res = run_wf(path, db, input={"n": 2})
    assert res["status"] == "succeeded", res["error"]
    assert res["output"] == {"a": "went 2"}
    skipped = run_wf(path, db, input={"n": 1})
    assert skipped["status"] == "succeeded" and skipped["output"] == {}


# --- the daemon runs the code on disk ---------------------------------------------------------


def test_the_daemon_runs_the_edited_module_and_records_which_code_ran(wf, db, daemon, tmp_path):
    mod = tmp_path / "livetasks.py"
    doc = {"name": "live", "nodes": [{"id": "a", "type": "python", "call": "livetasks:version"}]}
    path = wf(doc)
    daemon(workers=1)
    codes = []
    for version in ("one", "two", "three"):
        mod.write_text(f"def version():\n    return {version!r}\n")
        res = api.wait(api.submit(path, db=db), db=db, timeout=60)
        assert res["status"] == "succeeded", res["error"]
        assert res["output"] == {"a": version}
        digest = hashlib.sha256(mod.read_bytes()).hexdigest()[:12]
        code = query(db, "SELECT code FROM node_runs WHERE execution_id=?", (res["id"],))[0]
        assert code["code"] == f"livetasks.py@{digest}"
        codes.append(code["code"])
    assert len(set(codes)) == 3


# --- fm validate checks call targets ---------------------------------------------------------


def test_validate_names_a_missing_function_with_a_suggestion(fwf, db):
    path = fwf({"name": "typo", "nodes": [py("a", "ech")]})
    res = fm_cli(db, "validate", str(path))
    assert res.exit_code == 2
    assert (
        f"{path}: nodes[0].call: module 'firsttasks' ({path.parent / 'firsttasks.py'}) has no "
        "function 'ech'; did you mean 'echo'?" in res.stderr
    ), res.stderr


def test_validate_names_a_missing_module_inside_a_loop_body(fwf, db):
    doc = {
        "name": "typo",
        "nodes": [
            {
                "id": "l",
                "type": "loop",
                "loopType": "count",
                "count": 1,
                "body": {"nodes": [{"id": "w", "type": "python", "call": "firsttask:echo"}]},
            }
        ],
    }
    path = fwf(doc)
    res = fm_cli(db, "validate", str(path))
    assert res.exit_code == 2
    assert "nodes[0].body.nodes[0].call: module 'firsttask' not found beside the workflow" in (
        res.stderr
    )
    assert "did you mean 'firsttasks'?" in res.stderr


def test_validate_does_not_hang_on_a_module_that_works_at_import(wf, db, tmp_path, monkeypatch):
    (tmp_path / "slowimport.py").write_text("import time\ntime.sleep(120)\ndef f():\n    pass\n")
    path = wf({"name": "slow", "nodes": [{"id": "a", "type": "python", "call": "slowimport:f"}]})
    monkeypatch.setenv("FM_VALIDATE_IMPORT_TIMEOUT", "2")
    res = fm_cli(db, "validate", str(path))
    assert res.exit_code == 0, res.stderr
    assert "call targets not checked" in res.stderr


# --- the Python API takes a dict or a model ----------------------------------------------------


def test_api_runs_a_workflow_given_as_a_dict_or_a_model(tmp_path, db):
    from fm_local.model import Workflow

    (tmp_path / "firsttasks.py").write_text((HERE / "firsttasks.py").read_text())
    doc = {"name": "as-dict", "nodes": [py("a", "echo", args={"x": "{{ input.x }}"})]}
    res = api.run(doc, {"x": 1}, db=db, folder=tmp_path)
    assert res["status"] == "succeeded", res["error"]
    assert res["output"] == {"a": {"x": 1}}
    model = Workflow.model_validate(doc)
    res = api.run(model, {"x": 2}, db=db, folder=tmp_path)
    assert res["output"] == {"a": {"x": 2}}


# --- a known workflow is not validated again at submit ------------------------------------

# In a fresh interpreter: submit through the real CLI entry point, then say whether
# the validator (pydantic and the model) had to be imported.
_SUBMIT_AND_TELL = """
import sys
from fm_local.cli import main
code = 0
try:
    main(["submit", sys.argv[1], *sys.argv[2:]])
except SystemExit as e:
    code = e.code
print("validated" if "fm_local.validate" in sys.modules else "known", code, file=sys.stderr)
"""


def _submit_fresh(db: Path, *args: str) -> tuple[str, int, str]:
    (how, code), err, _ = python_fresh(db, _SUBMIT_AND_TELL, *args)
    return how, int(code), err


def test_a_known_workflow_is_not_validated_again_but_its_input_is(wf, db):
    doc = {
        "name": "known",
        "inputs": {"type": "object", "properties": {"n": {"type": "integer"}}},
        "nodes": [{"id": "t", "type": "transform", "expression": "input.get('n', 0) + 1"}],
    }
    path = wf(doc)
    assert _submit_fresh(db, str(path))[:2] == ("validated", 0)
    assert _submit_fresh(db, str(path))[:2] == ("known", 0)
    # the input is still checked against the schema
    how, code, err = _submit_fresh(db, str(path), "--input", '{"n": "x"}')
    assert (how, code) == ("known", 2)
    assert err == f"{path}: input.n: 'x' is not of type 'integer'"
    assert query(db, "SELECT count(*) AS n FROM workflows")[0]["n"] == 1

    # an edit makes it a new document: validated, and an error is one line
    doc["nodes"][0]["expression"] = "input.get('n', 0) +"
    path.write_text(json.dumps(doc))
    how, code, err = _submit_fresh(db, str(path))
    assert (how, code) == ("validated", 2)
    assert err.startswith("nodes[0].expression: ")

    # validated under other rules (another fm_local): validated again
    doc["nodes"][0]["expression"] = "1"
    path.write_text(json.dumps(doc))
    assert _submit_fresh(db, str(path))[:2] == ("validated", 0)
    assert _submit_fresh(db, str(path))[:2] == ("known", 0)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE workflows SET checked = json_set(checked, '$.rules', 'older')")
    assert _submit_fresh(db, str(path))[:2] == ("validated", 0)


def test_a_known_workflow_keeps_its_warnings_and_queue_limit(wf, db):
    doc = {
        "name": "warned",
        "settings": {"queue": {"maxSize": 1}},
        "nodes": [
            {"id": "c", "type": "condition", "expression": "True"},
            {"id": "t", "type": "transform", "expression": "1"},
        ],
        "edges": [{"source": "c", "target": "t", "sourceHandle": "true"}],
    }
    path = wf(doc)
    how, code, first = _submit_fresh(db, str(path))
    assert (how, code) == ("validated", 0)
    assert first == f"{path}: warning: nodes[0]: node 'c': port 'false' has no outgoing edge"
    # no daemon: the first execution stays queued, and maxSize 1 refuses a second
    how, code, second = _submit_fresh(db, str(path))
    assert (how, code) == ("known", 1)
    warning, refusal = second.splitlines()
    assert warning == first  # the same warning, printed again
    assert "maxSize" in refusal or "queue" in refusal
