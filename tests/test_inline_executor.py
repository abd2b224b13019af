"""The engine on the inline executor (fm_local.executors.inline): node tasks run in
the test's own process, no worker process is started, and the same workflows
end exactly as they do on worker processes."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import python_node, query, serve_until_done

from fm_local import api
from fm_local.executors.inline import InlineExecutor
from fm_local.executors.process import ProcessExecutor
from fm_local.supervisor import Supervisor

py = partial(python_node, "fmtasks")


def _docs(tmp: Path) -> dict[str, dict[str, Any]]:
    counter = str(tmp / "flaky-count")
    return {
        "fan-out-in": {
            "name": "fan-out-in",
            "nodes": [
                py("a", "add", {"a": 1, "b": 2}),
                py("b", "add", {"a": "{{a}}", "b": 10}),
                py("c", "add", {"a": "{{a}}", "b": 20}),
                {"id": "m", "type": "merge"},
                {"id": "t", "type": "transform", "expression": "m['b'] + m['c']"},
            ],
            "edges": [
                {"source": "a", "target": "b"},
                {"source": "a", "target": "c"},
                {"source": "b", "target": "m"},
                {"source": "c", "target": "m"},
                {"source": "m", "target": "t"},
            ],
        },
        "retries": {
            "name": "retries",
            "nodes": [
                py(
                    "f",
                    "flaky",
                    {"counter": counter, "fail_times": 2},
                    retry={"maxAttempts": 3, "initialDelay": 1, "backoff": "fixed"},
                )
            ],
        },
        "loop-collect": {
            "name": "loop-collect",
            "nodes": [
                {
                    "id": "l",
                    "type": "loop",
                    "arrayPath": [1, 2, 3, 4],
                    "parallel": True,
                    "policy": {"onPartialFailure": "collect"},
                    "body": {
                        "nodes": [
                            {
                                "id": "check",
                                "type": "condition",
                                "expression": "item % 2 == 0",
                            },
                            py("even", "add", {"a": "{{item}}", "b": 100}),
                            py("odd", "always_fail", {"message": "odd {{item}}"}),
                        ],
                        "edges": [
                            {"source": "check", "target": "even", "sourceHandle": "true"},
                            {"source": "check", "target": "odd", "sourceHandle": "false"},
                        ],
                    },
                }
            ],
        },
        "fallback": {
            "name": "fallback",
            "nodes": [
                py("bad", "always_fail", errorStrategy="fallback", fallbackNodeId="spare"),
                {"id": "after", "type": "transform", "expression": "bad"},
            ],
            "edges": [{"source": "bad", "target": "after"}],
            "handlers": [py("spare", "echo", {"x": "{{error.message}}"})],
        },
    }


def _timeless(value: Any) -> Any:
    """``value`` without its ``timestamp`` keys (when an error happened differs)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "timestamp"}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _run(db: Path, path: Path, executor: Any) -> dict[str, Any]:
    eid = api.submit(path, db=db)
    sup = Supervisor(db, workers=2, executor=executor)
    serve_until_done(sup, {eid})
    row = query(db, "SELECT status, output, error FROM executions WHERE id=?", (eid,))[0]
    runs = query(
        db,
        "SELECT path, status, attempts, worker_pid FROM node_runs WHERE execution_id=? "
        "ORDER BY path",
        (eid,),
    )
    return {
        "status": row["status"],
        "output": json.loads(row["output"]) if row["output"] else None,
        "error": json.loads(row["error"]) if row["error"] else None,
        "runs": runs,
    }


@pytest.mark.parametrize("name", ["fan-out-in", "retries", "loop-collect", "fallback"])
def test_a_workflow_ends_alike_inline_and_on_worker_processes(wf, tmp_path, name):
    made: list[InlineExecutor] = []

    def inline(*args: Any, **kw: Any) -> InlineExecutor:
        made.append(InlineExecutor(*args, **kw))
        return made[-1]

    ends = {}
    for label, executor in (("inline", inline), ("process", ProcessExecutor)):
        docs = _docs(tmp_path / label)
        (tmp_path / label).mkdir()
        path = wf(docs[name], f"{name}-{label}.json")
        ends[label] = _run(tmp_path / f"{label}.db", path, executor)
    inline_end, process_end = ends["inline"], ends["process"]
    assert inline_end["status"] == process_end["status"]
    assert _timeless(inline_end["output"]) == _timeless(process_end["output"])
    assert (inline_end["error"] or {}).get("code") == (process_end["error"] or {}).get("code")
    strip = [{k: r[k] for k in ("path", "status", "attempts")} for r in inline_end["runs"]]
    assert strip == [{k: r[k] for k in ("path", "status", "attempts")} for r in process_end["runs"]]
    # The inline run ran every worker task here, in this process.
    worker_runs = [r for r in inline_end["runs"] if r["worker_pid"] is not None]
    assert worker_runs and {r["worker_pid"] for r in worker_runs} == {os.getpid()}
    assert made[0].ran >= len(worker_runs)
    assert {r["worker_pid"] for r in process_end["runs"] if r["worker_pid"]} - {os.getpid()}


def test_what_each_workflow_gives(wf, tmp_path):
    """The expected ends themselves (so the comparison above cannot pass on two
    equally wrong engines)."""
    docs = _docs(tmp_path)
    ends = {
        n: _run(tmp_path / f"{n}.db", wf(d, f"{n}.json"), InlineExecutor) for n, d in docs.items()
    }
    assert ends["fan-out-in"]["output"] == {"t": 36}
    assert ends["retries"]["status"] == "succeeded"
    assert [r["attempts"] for r in ends["retries"]["runs"]] == [3]
    collect = ends["loop-collect"]
    assert collect["status"] == "succeeded"
    results = collect["output"]["l"]
    assert [r["data"]["even"] for r in results["results"] if r["success"]] == [102, 104]
    assert [r["error"]["message"] for r in results["results"] if not r["success"]] == [
        "node 'l[0].odd' failed: ValueError: odd 1",
        "node 'l[2].odd' failed: ValueError: odd 3",
    ]
    assert ends["fallback"]["status"] == "succeeded"
    assert ends["fallback"]["output"]["after"] == {"x": "ValueError: boom"}
