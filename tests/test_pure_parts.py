"""Pure parts of the engine, tested without a database or a process: a loop's
output assembled from its item rows, the merge value, and the pictures of an
execution in time (fm timeline, fm trace)."""

from __future__ import annotations

import json
from typing import Any

from fm_local.model import SectionPolicy
from fm_local.nodes import loop, merge
from fm_local.timeline import chrome_trace, render_summary, render_timeline


def _assemble(rows: list[tuple[Any, ...]], n: int, **policy: Any) -> tuple[Any, bool, Any]:
    ok_rows = [r for r in rows if r[1] == "succeeded"]
    bad = [r for r in rows if r[1] != "succeeded"]
    text, ok, error = loop.assemble(
        rows,
        n,
        SectionPolicy.model_validate(policy),
        succeeded=len(ok_rows),
        failed=len(bad),
        timed_out=False,
        errors_list=[json.loads(r[3]) for r in bad if r[3]],
        first_error=json.loads(bad[0][3]) if bad and bad[0][3] else None,
        loop_path="l",
        not_started=n - len(rows),
    )
    return (json.loads(text) if text is not None else None), ok, error


ERR = json.dumps(
    {"code": "NODE_ERROR", "message": "node 'l[1].n' failed: boom", "nodePath": "l[1].n"}
)


def test_a_loop_that_succeeds_gives_its_outputs_in_item_order() -> None:
    rows = [(0, "succeeded", "10", None), (1, "succeeded", '{"a":1}', None)]
    assert _assemble(rows, 2) == ([10, {"a": 1}], True, None)


def test_collect_gives_each_item_as_a_success_or_an_error_and_counts() -> None:
    rows = [(0, "succeeded", "1", None), (1, "failed", None, ERR)]
    out, ok, error = _assemble(rows, 3, onPartialFailure="collect", failFast=False)
    assert ok and error is None
    assert out["successCount"] == 1 and out["failureCount"] == 2
    assert out["results"][0] == {"success": True, "data": 1}
    assert out["results"][1]["success"] is False
    assert out["results"][1]["error"]["code"] == "NODE_ERROR"
    assert out["results"][2]["success"] is False  # never started: still in its place


def test_fail_names_the_first_failure_and_the_items_that_never_ran() -> None:
    rows = [(0, "succeeded", "1", None), (1, "failed", None, ERR)]
    out, ok, error = _assemble(rows, 4, onPartialFailure="fail", failFast=True)
    assert out is None and not ok
    assert error["code"] == "NODE_ERROR"
    assert error["message"] == (
        "1 of 4 items of loop 'l' failed; 2 not started because failFast; first: l[1].n: boom"
    )
    assert error["details"] == {"failedCount": 1, "total": 4}


def test_min_success_rate_under_continue() -> None:
    rows = [(0, "succeeded", "1", None), (1, "failed", None, ERR)]
    out, ok, error = _assemble(rows, 2, onPartialFailure="continue", minSuccessRate=0.8)
    assert not ok and error["code"] == "PARTIAL_FAILURE"
    assert "only 1 of 2 items of loop 'l' succeeded (50%)" in error["message"]
    out, ok, error = _assemble(rows, 2, onPartialFailure="continue", minSuccessRate=0.5)
    assert ok and out == [1]  # a failed item has no place in a continue loop's list


def test_the_merge_value_is_a_copy_of_the_branches_that_succeeded() -> None:
    outputs = {"a": 1, "b": {"x": 2}}
    value, port = merge.automatic(outputs)
    assert value == outputs and value is not outputs and port is None


NODES = [
    {"path": "a", "status": "succeeded", "started_at": 10.0, "finished_at": 11.0},
    {"path": "b", "status": "failed", "started_at": 10.5, "finished_at": 12.0},
    {"path": "c", "status": "pending", "started_at": None, "finished_at": None},
]
EXECUTION = {"id": "e1", "status": "failed", "finished_at": 12.0, "trace_id": "trace-1"}


def test_the_timeline_draws_overlapping_nodes_over_shared_columns() -> None:
    text = render_timeline(EXECUTION, NODES, width=20)
    head, a, b, scale = text.splitlines()
    assert head.startswith("execution e1 (failed), 2000 ms, 2 node instances")
    bar_a, bar_b = a.split("|")[1], b.split("|")[1]
    assert bar_a == "█" * 10 + " " * 10  # 10.0 to 11.0 of 10.0 to 12.0
    assert bar_b == " " * 5 + "X" * 15  # failed: X
    assert a.endswith("1000.0 ms succeeded") and b.endswith("1500.0 ms failed")
    assert "c" not in [line.split()[0] for line in (a, b)]  # never started: no bar
    assert render_timeline(EXECUTION, NODES[2:]) == "execution e1: no node has started yet"
    limited = render_timeline(EXECUTION, NODES, width=20, limit=1)
    assert limited.splitlines()[-2] == "... 1 more node instances (--all to show them)"


def test_the_summary_draws_one_density_bar_per_loop() -> None:
    # (Times are real timestamps: never 0.)
    top = [{"path": "l", "status": "succeeded", "started_at": 100.0, "finished_at": 104.0}]
    items = [(f"l[{i}]", "succeeded", 100.0 + i % 2, 102.0 + i % 2) for i in range(4)]
    items.append(("l[4]", "failed", 103.0, 104.0))
    text = render_summary({"id": "e", "status": "succeeded"}, top, items, width=8)
    loop_line = next(line for line in text.splitlines() if line.startswith("l[*]"))
    assert loop_line.endswith("5 items, peak 4 at once, 1 not succeeded")


def _rows(*spans: tuple[str, int | None, float, float]) -> list[dict[str, Any]]:
    return [
        {
            "path": path,
            "node_type": "python",
            "worker_pid": pid,
            "started_at": s,
            "finished_at": e,
            "status": "succeeded",
            "trace_id": None,
            "attempts": 1,
        }
        for path, pid, s, e in spans
    ]


def test_the_chrome_trace_never_puts_overlapping_slices_on_one_track() -> None:
    trace = chrome_trace(
        EXECUTION,
        _rows(
            ("one", 7, 100.0, 101.0),
            ("two", 7, 101.0, 102.0),  # after one on the same worker: the same track
            ("x", None, 100.0, 102.0),
            ("y", None, 100.5, 101.5),  # overlaps x in the supervisor: another track
        ),
    )
    slices = {e["name"]: e for e in trace["traceEvents"] if e["ph"] == "X"}
    assert slices["one"]["tid"] == slices["two"]["tid"]
    assert slices["x"]["tid"] != slices["y"]["tid"]
    assert slices["one"]["tid"] not in (slices["x"]["tid"], slices["y"]["tid"])
    assert slices["two"]["ts"] == 101_000_000 and slices["two"]["dur"] == 1_000_000
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert names == {"worker 7", "supervisor", "supervisor (2)"}
    assert trace["otherData"] == {"traceId": "trace-1"}
