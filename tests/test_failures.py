"""Failure semantics (SPEC §5–§6), with real worker processes: merge-section and
loop policies, first_success, per-branch/per-item timeouts, error strategies and
the execution default. Each test checks exact output shapes and node statuses;
what really ran is read from the mark files that tests/failtasks.py writes.

Tests marked ``xfail(strict=True)`` with a reason starting "BUG:" show a defect of
fm_local that is reported, not fixed here; they pass (and so fail strictly) once
it is fixed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import fm, read_marks, run_wf, show, wait_until

HERE = Path(__file__).parent
EXAMPLES = HERE.parent / "examples"

# The `error` scope object and a node's error record (SPEC §6).
ERROR_KEYS = {"code", "message", "nodeId", "nodePath", "attempt", "timestamp", "details"}


@pytest.fixture
def fwf(wf: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    """Like ``wf``, with tests/failtasks.py copied beside the workflow."""
    (tmp_path / "failtasks.py").write_text((HERE / "failtasks.py").read_text())
    return wf


@pytest.fixture
def mark(tmp_path: Path) -> Path:
    return tmp_path / "marks"


# --- building workflows ---------------------------------------------------------------


def work(
    nid: str,
    *,
    seconds: float | str = 0.0,
    fail: bool | str = False,
    code: str = "NODE_ERROR",
    mark: Path | None = None,
    child: bool | str = False,
    tag: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A python node running failtasks:work (tag = its id unless given)."""
    args: dict[str, Any] = {"tag": tag if tag is not None else nid, "seconds": seconds}
    if fail:
        args.update(fail=fail, code=code)
    if mark is not None:
        args["mark"] = str(mark)
    if child:
        args["child"] = child
    return {"id": nid, "type": "python", "call": "failtasks:work", "args": args, **fields}


def see_error(nid: str, mark: Path | None = None, **fields: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"error": "{{error}}", "tag": nid}
    if mark is not None:
        args["mark"] = str(mark)
    return {"id": nid, "type": "python", "call": "failtasks:see_error", "args": args, **fields}


def fan(chains: list[list[dict[str, Any]]], merge: dict[str, Any], **doc: Any) -> dict[str, Any]:
    """``start`` fans out to one branch per chain; each chain's last node goes to
    ``merge``. So the merge's section is exactly the chains' nodes.

        start ─┬─→ a ──────────┐
               ├─→ c1 ──→ c2 ──┼─→ merge
               └─→ d ──────────┘
    """
    nodes: list[dict[str, Any]] = [{"id": "start", "type": "transform", "expression": "1"}]
    edges: list[dict[str, Any]] = []
    for chain in chains:
        nodes += chain
        edges.append({"source": "start", "target": chain[0]["id"]})
        for x, y in zip(chain, chain[1:], strict=False):
            edges.append({"source": x["id"], "target": y["id"]})
        edges.append({"source": chain[-1]["id"], "target": merge["id"]})
    nodes.append(merge)
    return {"name": "fan", "nodes": nodes, "edges": edges, **doc}


def merge(policy: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    node: dict[str, Any] = {"id": "m", "type": "merge", **fields}
    if policy is not None:
        node["policy"] = policy
    return node


def four_branches(**merge_fields: Any) -> dict[str, Any]:
    """a, c, d succeed; b fails with code BAD. All four start at once."""
    return fan(
        [
            [work("a", seconds=0.1)],
            [work("b", seconds=0.2, fail=True, code="BAD")],
            [work("c", seconds=0.3)],
            [work("d", seconds=0.1)],
        ],
        merge(**merge_fields),
    )


def loop_doc(items: list[Any], body_args: dict[str, Any], **loop: Any) -> dict[str, Any]:
    """One loop ``each`` over ``items`` whose body is one failtasks:work node ``w``."""
    body = {
        "id": "w",
        "type": "python",
        "call": "failtasks:work",
        "args": {"tag": "{{item}}", **body_args},
    }
    node: dict[str, Any] = {
        "id": "each",
        "type": "loop",
        "arrayPath": "{{ " + json.dumps(items) + " }}",
        "parallel": True,
        "body": {"nodes": [body]},
    }
    node.update(loop)
    return {"name": "loop", "nodes": [node]}


# Items 0..3; item 2 fails with BAD. All four start at once (parallel, no limit).
ITEM2_FAILS = {"seconds": "{{ 0.05 * item }}", "fail": "{{ item == 2 }}", "code": "BAD"}


# --- reading results ------------------------------------------------------------------


def nodes_of(db: Path, eid: str) -> dict[str, dict[str, Any]]:
    return {n["path"]: n for n in show(db, eid)["nodes"]}


def gone(pid: int) -> bool:
    """The process has exited (a zombie has exited too: it only waits to be reaped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def marks_of(mark: Path, tag: Any, phase: str | None = None) -> list[dict[str, Any]]:
    return [
        m for m in read_marks(mark) if m["tag"] == tag and (phase is None or m["phase"] == phase)
    ]


def strip(value: Any) -> Any:
    """``value`` without the volatile parts of error records (times, tracebacks)."""
    if isinstance(value, dict):
        return {
            k: strip(v)
            for k, v in value.items()
            if k not in ("timestamp", "traceback", "exceptionTypes")
        }
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def node_error(nid: str, message: str, code: str, attempt: int = 1) -> dict[str, Any]:
    """A python node's error record as stored (volatile parts stripped)."""
    return {
        "code": code,
        "message": message,
        "nodeId": nid,
        "nodePath": nid,
        "attempt": attempt,
        "details": {"exception": "NodeError"},
    }


# === merges: section policies (SPEC §5, §6) ============================================


def test_merge_default_policy_fails_the_execution(fwf, db):
    """Default policy (fail, failFast): the section fails, so its merge fails with
    the branch's code and names it; the execution fails with that error; the
    siblings already running finish and are recorded."""
    res = run_wf(fwf(four_branches()), db, workers=4)
    assert res["status"] == "failed"
    err = res["error"]
    assert (err["code"], err["nodePath"]) == ("BAD", "m")
    assert (
        err["message"] == "node 'm' failed: 1 of 4 branches of merge 'm' failed; first: b: b failed"
    )
    nodes = nodes_of(db, res["id"])
    assert {p: nodes[p]["status"] for p in "abcd"} == {
        "a": "succeeded",
        "b": "failed",
        "c": "succeeded",
        "d": "succeeded",
    }


def test_merge_on_partial_failure_fail(fwf, db):
    """onPartialFailure fail (failFast off): every branch finishes, then the merge
    fails and with it the execution; the error names the path, code and message."""
    res = run_wf(fwf(four_branches(policy={"failFast": False})), db, workers=4)
    assert res["status"] == "failed"
    section_msg = "1 of 4 branches of merge 'm' failed; first: b: b failed"
    err = res["error"]
    assert (err["code"], err["nodePath"], err["nodeId"]) == ("BAD", "m", "m")
    assert err["message"] == f"node 'm' failed: {section_msg}"
    nodes = nodes_of(db, res["id"])
    assert nodes["m"]["status"] == "failed"
    assert (nodes["m"]["error"]["code"], nodes["m"]["error"]["message"]) == ("BAD", section_msg)
    assert [nodes[p]["status"] for p in "acd"] == ["succeeded"] * 3


@pytest.mark.parametrize(
    "merge_fields,details",
    [
        (
            {"policy": {"failFast": False, "collectErrors": True}},
            {
                "failedCount": 1,
                "total": 4,
                "errors": [{"branch": "b", "code": "BAD", "message": "b failed", "attempt": 1}],
            },
        ),
        (
            {"policy": {"onPartialFailure": "continue", "minSuccessRate": 0.8, "failFast": False}},
            {"successCount": 3, "failureCount": 1},
        ),
    ],
    ids=["fail+collectErrors", "minSuccessRate"],
)
def test_merge_error_keeps_its_details(fwf, db, merge_fields, details):
    res = run_wf(fwf(four_branches(**merge_fields)), db, workers=4)
    assert res["status"] == "failed"
    assert nodes_of(db, res["id"])["m"]["error"]["details"] == details
    assert res["error"]["details"]["details"] == details


def test_merge_section_failure_reaches_the_merges_error_edge(fwf, db):
    doc = four_branches(policy={"collectErrors": True})
    doc["nodes"].append({"id": "h", "type": "transform", "expression": "error"})
    doc["edges"].append({"source": "m", "target": "h", "sourceHandle": "error"})
    res = run_wf(fwf(doc), db, workers=4)
    assert res["status"] == "succeeded", res["error"]
    handled = res["output"]["h"]
    assert handled["nodePath"] == "m" and handled["code"] == "BAD"
    assert handled["details"]["errors"] == [
        {"branch": "b", "code": "BAD", "message": "b failed", "attempt": 1}
    ]
    assert nodes_of(db, res["id"])["m"]["status"] == "failed"


@pytest.mark.parametrize("collect_errors", [False, True])
def test_merge_on_partial_failure_continue(fwf, db, collect_errors):
    policy = {"onPartialFailure": "continue", "failFast": False, "collectErrors": collect_errors}
    res = run_wf(fwf(four_branches(policy=policy)), db, workers=4)
    assert res["status"] == "succeeded", res
    expected: dict[str, Any] = {"a": {"tag": "a"}, "c": {"tag": "c"}, "d": {"tag": "d"}}
    if collect_errors:
        expected["errors"] = [{"branch": "b", "code": "BAD", "message": "b failed", "attempt": 1}]
    assert res["output"] == {"m": expected}
    assert nodes_of(db, res["id"])["b"]["status"] == "failed"


@pytest.mark.parametrize("collect_errors", [False, True])
def test_merge_on_partial_failure_collect(fwf, db, collect_errors):
    policy = {"onPartialFailure": "collect", "failFast": False, "collectErrors": collect_errors}
    res = run_wf(fwf(four_branches(policy=policy)), db, workers=4)
    assert res["status"] == "succeeded", res
    out = res["output"]["m"]
    assert list(out["results"]) == ["a", "b", "c", "d"]  # keyed by branch id
    assert set(out["results"]["b"]["error"]) == ERROR_KEYS
    expected: dict[str, Any] = {
        "results": {
            "a": {"success": True, "data": {"tag": "a"}},
            "b": {"success": False, "error": node_error("b", "b failed", "BAD")},
            "c": {"success": True, "data": {"tag": "c"}},
            "d": {"success": True, "data": {"tag": "d"}},
        },
        "successCount": 3,
        "failureCount": 1,
    }
    if collect_errors:
        expected["errors"] = [{"branch": "b", "code": "BAD", "message": "b failed", "attempt": 1}]
    assert strip(out) == expected


@pytest.mark.parametrize(
    "mode,rate,status",
    [
        ("continue", 0.75, "succeeded"),
        ("continue", 0.8, "failed"),
        ("collect", 0.75, "succeeded"),
        ("collect", 0.8, "failed"),
    ],
)
def test_merge_min_success_rate(fwf, db, mode, rate, status):
    """3 of 4 branches succeed: 75%."""
    policy = {"onPartialFailure": mode, "minSuccessRate": rate, "failFast": False}
    res = run_wf(fwf(four_branches(policy=policy)), db, workers=4)
    assert res["status"] == status, res
    if status == "succeeded":
        out = res["output"]["m"]
        if mode == "continue":
            assert out == {"a": {"tag": "a"}, "c": {"tag": "c"}, "d": {"tag": "d"}}
        else:
            assert (out["successCount"], out["failureCount"]) == (3, 1)
        return
    msg = "only 3 of 4 branches of merge 'm' succeeded (75%); minSuccessRate is 80%"
    assert res["error"]["code"] == "PARTIAL_FAILURE"
    assert res["error"]["message"] == f"node 'm' failed: {msg}"
    assert nodes_of(db, res["id"])["m"]["error"]["message"] == msg


@pytest.mark.parametrize(
    "policy,second_runs",
    [
        ({"onPartialFailure": "collect", "failFast": True}, False),
        ({"onPartialFailure": "fail"}, False),  # failFast from settings.parallel
        ({"onPartialFailure": "collect", "failFast": False}, True),  # the control
    ],
    ids=["collect+failFast", "fail(default failFast)", "collect,no failFast"],
)
def test_merge_fail_fast_starts_no_new_section_node(fwf, db, mark, policy, second_runs):
    """Branch c is c1 (0.8 s) → c2. b fails at 0.2 s while c1 runs: with failFast,
    c2 (which would start at 0.8 s) never starts; c1 is not stopped."""
    doc = fan(
        [
            [work("a", seconds=0.1)],
            [work("b", seconds=0.2, fail=True, mark=mark)],
            [work("c1", seconds=0.8, mark=mark), work("c2", mark=mark)],
        ],
        merge(policy),
    )
    res = run_wf(fwf(doc), db, workers=4)
    assert marks_of(mark, "c1", "end"), "c1 was stopped: failFast must let it finish"
    nodes = nodes_of(db, res["id"])
    assert nodes["c1"]["status"] == "succeeded"
    assert bool(marks_of(mark, "c2")) is second_runs
    if second_runs:
        assert nodes["c2"]["status"] == "succeeded"
    else:
        assert nodes.get("c2", {"status": "no row"})["status"] in ("skipped", "no row")
        assert marks_of(mark, "b", "fail")[0]["t"] < marks_of(mark, "c1", "end")[0]["t"]
    if policy["onPartialFailure"] == "collect":
        assert res["status"] == "succeeded", res
        out = res["output"]["m"]
        assert out["results"]["a"] == {"success": True, "data": {"tag": "a"}}
        assert out["results"]["b"]["success"] is False
    else:
        # The section fails, so its merge does: it names the first failed branch.
        assert res["status"] == "failed" and res["error"]["nodePath"] == "m"
        assert "first: b:" in res["error"]["message"]


def test_merge_collect_reports_branch_stopped_by_fail_fast(fwf, db):
    doc = fan(
        [
            [work("a", seconds=0.1)],
            [work("b", seconds=0.2, fail=True)],
            [work("c1", seconds=0.8), work("c2")],
        ],
        merge({"onPartialFailure": "collect", "failFast": True}),
    )
    res = run_wf(fwf(doc), db, workers=4)
    out = res["output"]["m"]
    assert set(out["results"]) == {"a", "b", "c2"}
    assert out["results"]["c2"]["success"] is False
    assert out["results"]["c2"]["error"]["code"] == "CANCELLED"
    assert (out["successCount"], out["failureCount"]) == (1, 2)


def test_merge_cancel_on_failure_stops_sibling_now(fwf, db, mark, daemon):
    """b fails at 0.6 s; c (60 s, with a child process) is stopped at once: its
    worker and the child are gone while the daemon still runs, and the mark it
    writes at the end of its sleep never appears."""
    daemon(workers=4)
    doc = fan(
        [
            [work("a", seconds=0.1)],
            [work("b", seconds=0.6, fail=True, mark=mark)],
            [work("c", seconds=60, mark=mark, child=True)],
        ],
        merge({"onPartialFailure": "collect", "failFast": True, "cancelOnFailure": True}),
    )
    res = run_wf(fwf(doc), db)
    assert res["status"] == "succeeded", res
    start = marks_of(mark, "c", "start")[0]
    for pid in (start["pid"], start["child_pid"]):
        wait_until(lambda pid=pid: gone(pid), 30, f"process {pid} of branch c to exit")
    assert marks_of(mark, "c", "end") == []
    nodes = nodes_of(db, res["id"])
    assert nodes["c"]["status"] == "cancelled"
    assert nodes["c"]["error"]["code"] == "CANCELLED"
    # Stopped because b failed, long before its own 60 s could end (order, not speed).
    assert nodes["b"]["finishedAt"] <= nodes["c"]["finishedAt"] < start["t"] + 60
    out = res["output"]["m"]
    assert out["results"]["a"] == {"success": True, "data": {"tag": "a"}}
    assert out["results"]["b"]["success"] is False and out["results"]["b"]["error"]["code"]


@pytest.mark.slow
def test_merge_cancel_on_failure_seed_spelling(fwf, db, mark):
    doc = fan(
        [
            [work("b", seconds=0.3, fail=True, mark=mark)],
            [work("c", seconds=6, mark=mark)],
        ],
        merge({"failFast": True, "cancelOnFailure": True}),
    )
    res = run_wf(fwf(doc), db, workers=3)
    assert res["status"] == "failed"
    assert marks_of(mark, "c", "end") == [], "the sibling ran to its end"
    assert nodes_of(db, res["id"])["c"]["status"] == "cancelled"


@pytest.mark.parametrize("on_timeout", ["fail", "collect_partial"])
def test_merge_total_timeout(fwf, db, mark, on_timeout):
    """totalTimeout 800 ms from the section's first start: the two slow branches
    are stopped; collect_partial succeeds with the collect shape."""
    doc = fan(
        [
            [work("a", seconds=0.1)],
            [work("b", seconds=60, mark=mark, child=True)],
            [work("c", seconds=60, mark=mark)],
        ],
        merge({"totalTimeout": 800, "onTimeout": on_timeout}),
    )
    res = run_wf(fwf(doc), db, workers=4)  # b and c sleep 60 s: only the timeout ends it
    nodes = nodes_of(db, res["id"])
    assert nodes["b"]["status"] == nodes["c"]["status"] == "cancelled"
    assert marks_of(mark, "b", "end") == marks_of(mark, "c", "end") == []
    first_start = min(nodes[p]["startedAt"] for p in "abc")
    assert nodes["m"]["finishedAt"] - first_start >= 0.79
    if on_timeout == "fail":
        assert res["status"] == "failed"
        msg = "the section of merge 'm' passed its totalTimeout (800 ms)"
        assert (res["error"]["code"], res["error"]["nodePath"]) == ("TOTAL_TIMEOUT", "m")
        assert res["error"]["message"] == f"node 'm' failed: {msg}"
        assert nodes["m"]["status"] == "failed"
        return
    assert res["status"] == "succeeded", res
    late = {
        "success": False,
        "error": {"code": "TOTAL_TIMEOUT", "message": "the section's totalTimeout passed first"},
    }
    assert res["output"] == {
        "m": {
            "results": {"a": {"success": True, "data": {"tag": "a"}}, "b": late, "c": late},
            "successCount": 1,
            "failureCount": 2,
            "timedOut": True,
        }
    }


@pytest.mark.parametrize("on_timeout", ["error", "cancel", "continue"])
def test_merge_branch_timeout_from_each_branchs_start(fwf, db, mark, on_timeout):
    """The merge's ``timeout`` (1.5 s) bounds each branch from that branch's own
    start. a and b share a pool of one, so one of them starts 0.9 s late and ends
    1.8 s after the section started: it must not be cut. c (60 s) times out."""
    doc = fan(
        [
            [work("a", seconds=0.9, mark=mark, pool="one")],
            [work("b", seconds=0.9, mark=mark, pool="one")],
            [work("c", seconds=60, mark=mark)],
        ],
        merge(timeout=1500, onTimeout=on_timeout, outputOnError="late"),
        settings={"concurrencyLimits": {"one": 1}},
    )
    res = run_wf(fwf(doc), db, workers=4)
    starts = sorted(marks_of(mark, t, "start")[0]["t"] for t in "ab")
    late_end = max(marks_of(mark, t, "end")[0]["t"] for t in "ab")
    assert starts[1] - starts[0] >= 0.85 and late_end - starts[0] > 1.5  # it did start late
    nodes = nodes_of(db, res["id"])
    assert nodes["a"]["status"] == nodes["b"]["status"] == "succeeded"
    assert nodes["c"]["status"] == "cancelled" and marks_of(mark, "c", "end") == []
    ab = {"a": {"tag": "a"}, "b": {"tag": "b"}}
    if on_timeout == "error":
        assert res["status"] == "failed"
        msg = "1 of 3 branches of merge 'm' failed; first: c: branch 'c' timed out after 1500 ms"
        assert (res["error"]["code"], res["error"]["nodePath"]) == ("TIMEOUT", "m")
        assert res["error"]["message"] == f"node 'm' failed: {msg}"
    elif on_timeout == "cancel":
        assert res["status"] == "succeeded", res
        assert res["output"] == {"m": ab}
    else:
        assert res["status"] == "succeeded", res
        assert res["output"] == {"m": {**ab, "c": "late"}}


# === first_success (SPEC §5) ===========================================================


def test_first_success_fastest_wins_and_losers_are_killed(fwf, db, mark, daemon):
    daemon(workers=4)
    doc = fan(
        [
            [work("fast", seconds=0.6, mark=mark)],
            [work("slow1", seconds=60, mark=mark, child=True)],
            [work("slow2", seconds=60, mark=mark)],
        ],
        merge(mode="first_success"),
    )
    res = run_wf(fwf(doc), db)
    assert res["status"] == "succeeded", res
    assert res["output"] == {"m": {"tag": "fast"}}
    s1, s2 = marks_of(mark, "slow1", "start")[0], marks_of(mark, "slow2", "start")[0]
    for pid in (s1["pid"], s1["child_pid"], s2["pid"]):
        wait_until(lambda pid=pid: gone(pid), 30, f"loser process {pid} to exit")
    assert marks_of(mark, "slow1", "end") == marks_of(mark, "slow2", "end") == []
    nodes = nodes_of(db, res["id"])
    assert nodes["m"]["port"] == "fast"  # the merge's record names the winner
    assert nodes["fast"]["status"] == "succeeded"
    for p, started in (("slow1", s1), ("slow2", s2)):
        assert nodes[p]["status"] == "cancelled"
        assert nodes[p]["error"]["code"] == "CANCELLED"
        # Stopped because fast won, long before its own 60 s could end.
        assert nodes["fast"]["finishedAt"] <= nodes[p]["finishedAt"] < started["t"] + 60


def test_first_success_failing_fast_branch_does_not_win(fwf, db):
    doc = fan(
        [[work("fast", seconds=0.1, fail=True)], [work("slow", seconds=0.6)]],
        merge(mode="first_success"),
    )
    res = run_wf(fwf(doc), db, workers=3)
    assert res["status"] == "succeeded", res
    assert res["output"] == {"m": {"tag": "slow"}}
    nodes = nodes_of(db, res["id"])
    assert nodes["m"]["port"] == "slow"
    assert nodes["fast"]["status"] == "failed"


def test_first_success_fails_when_every_branch_failed(fwf, db):
    doc = fan(
        [
            [work("a", seconds=0.1, fail=True, code="X1")],
            [work("b", seconds=0.2, fail=True, code="X2")],
            [work("c", seconds=0.3, fail=True, code="X3")],
        ],
        merge(mode="first_success"),
    )
    res = run_wf(fwf(doc), db, workers=4)
    assert res["status"] == "failed"
    msg = "all 3 branches of merge 'm' failed; first: a: a failed"
    assert (res["error"]["code"], res["error"]["nodePath"]) == ("X1", "m")
    assert res["error"]["message"] == f"node 'm' failed: {msg}"
    nodes = nodes_of(db, res["id"])
    assert nodes["m"]["status"] == "failed" and nodes["m"]["port"] is None
    assert [nodes[p]["status"] for p in "abc"] == ["failed"] * 3


def test_first_success_error_names_every_branch(fwf, db):
    doc = fan(
        [
            [work("a", seconds=0.1, fail=True, code="X1")],
            [work("b", seconds=0.2, fail=True, code="X2")],
        ],
        merge(mode="first_success"),
    )
    res = run_wf(fwf(doc), db, workers=3)
    err = nodes_of(db, res["id"])["m"]["error"]
    assert err["details"]["errors"] == [
        {"branch": "a", "code": "X1", "message": "a failed", "attempt": 1},
        {"branch": "b", "code": "X2", "message": "b failed", "attempt": 1},
    ]


# === loops: the same policies (SPEC §4, §6) ============================================


def test_loop_seed_parallel_object_is_policy_and_parallel(fwf, db, mark):
    """``parallel: {...}`` on a loop is its policy and means parallel: true."""
    doc = loop_doc(
        [0, 1, 2, 3],
        {**ITEM2_FAILS, "seconds": 0.4, "mark": str(mark)},
        parallel={"onPartialFailure": "collect", "failFast": False},
    )
    res = run_wf(fwf(doc), db, workers=4)
    assert res["status"] == "succeeded", res
    starts = [m["t"] for m in read_marks(mark) if m["phase"] == "start"]
    ends = [m["t"] for m in read_marks(mark) if m["phase"] != "start"]
    assert len(starts) == 4 and max(starts) < min(ends), "items did not overlap"
    out = res["output"]["each"]
    assert (out["successCount"], out["failureCount"]) == (3, 1)
    assert [r["success"] for r in out["results"]] == [True, True, False, True]


@pytest.mark.parametrize("collect_errors", [False, True])
def test_loop_on_partial_failure_fail(fwf, db, collect_errors):
    policy = {"collectErrors": True} if collect_errors else None
    doc = loop_doc([0, 1, 2, 3], ITEM2_FAILS, **({"policy": policy} if policy else {}))
    res = run_wf(fwf(doc), db, workers=4)
    assert res["status"] == "failed"
    msg = "1 of 4 items of loop 'each' failed; first: each[2].w: 2 failed"
    err = res["error"]
    assert (err["code"], err["nodePath"], err["message"]) == (
        "BAD",
        "each",
        f"node 'each' failed: {msg}",
    )
    details: dict[str, Any] = {"failedCount": 1, "total": 4}
    if collect_errors:
        details["errors"] = [
            {
                "index": 2,
                "code": "BAD",
                "message": "node 'each[2].w' failed: 2 failed",
                "attempt": 1,
            }
        ]
    nodes = nodes_of(db, res["id"])
    assert nodes["each"]["status"] == "failed"
    assert nodes["each"]["error"]["message"] == msg
    assert nodes["each"]["error"]["details"] == details
    assert err["details"]["details"] == details
    assert [nodes[f"each[{i}]"]["status"] for i in range(4)] == [
        "succeeded",
        "succeeded",
        "failed",
        "succeeded",
    ]


@pytest.mark.parametrize("collect_errors", [False, True])
def test_loop_on_partial_failure_continue(fwf, db, collect_errors):
    policy = {"onPartialFailure": "continue", "failFast": False, "collectErrors": collect_errors}
    res = run_wf(fwf(loop_doc([0, 1, 2, 3], ITEM2_FAILS, policy=policy)), db, workers=4)
    assert res["status"] == "succeeded", res
    ok = [{"tag": 0}, {"tag": 1}, {"tag": 3}]  # item order, failed item left out
    if collect_errors:
        errs = [
            {
                "index": 2,
                "code": "BAD",
                "message": "node 'each[2].w' failed: 2 failed",
                "attempt": 1,
            }
        ]
        assert res["output"] == {"each": {"results": ok, "errors": errs}}
    else:
        assert res["output"] == {"each": ok}


def test_loop_on_partial_failure_collect(fwf, db):
    policy = {"onPartialFailure": "collect", "failFast": False}
    res = run_wf(fwf(loop_doc([0, 1, 2, 3], ITEM2_FAILS, policy=policy)), db, workers=4)
    assert res["status"] == "succeeded", res
    item_error = {
        "code": "BAD",
        "message": "node 'each[2].w' failed: 2 failed",
        "nodePath": "each[2].w",
        "nodeId": "w",
        "attempt": 1,
        "details": {**node_error("w", "2 failed", "BAD"), "nodePath": "each[2].w"},
    }
    assert strip(res["output"]) == {
        "each": {
            "results": [
                {"success": True, "data": {"tag": 0}},
                {"success": True, "data": {"tag": 1}},
                {"success": False, "error": item_error},
                {"success": True, "data": {"tag": 3}},
            ],
            "successCount": 3,
            "failureCount": 1,
        }
    }


@pytest.mark.parametrize(
    "mode,rate,status",
    [
        ("continue", 0.75, "succeeded"),
        ("continue", 0.8, "failed"),
        ("collect", 0.75, "succeeded"),
        ("collect", 0.8, "failed"),
    ],
)
def test_loop_min_success_rate(fwf, db, mode, rate, status):
    policy = {"onPartialFailure": mode, "minSuccessRate": rate, "failFast": False}
    res = run_wf(fwf(loop_doc([0, 1, 2, 3], ITEM2_FAILS, policy=policy)), db, workers=4)
    assert res["status"] == status, res
    if status == "failed":
        msg = "only 3 of 4 items of loop 'each' succeeded (75%); minSuccessRate is 80%"
        assert res["error"]["code"] == "PARTIAL_FAILURE"
        assert res["error"]["message"] == f"node 'each' failed: {msg}"
        assert res["error"]["details"]["details"] == {"successCount": 3, "failureCount": 1}


@pytest.mark.parametrize("fail_fast", [True, False])
def test_loop_fail_fast_starts_no_new_item(fwf, db, mark, fail_fast):
    """maxConcurrency 2: item 1 fails at 0.2 s while item 0 runs (0.8 s). With
    failFast, items 2 and 3 never start; item 0 is let finish."""
    body = {
        "seconds": "{{ 0.8 if item == 0 else 0.2 }}",
        "fail": "{{ item == 1 }}",
        "mark": str(mark),
    }
    policy = {"onPartialFailure": "collect", "failFast": fail_fast}
    doc = loop_doc([0, 1, 2, 3], body, maxConcurrency=2, policy=policy)
    res = run_wf(fwf(doc), db, workers=4)
    assert res["status"] == "succeeded", res
    started = sorted({m["tag"] for m in read_marks(mark) if m["phase"] == "start"})
    assert marks_of(mark, 0, "end"), "item 0 was stopped"
    out = res["output"]["each"]
    if not fail_fast:
        assert started == [0, 1, 2, 3]
        assert (out["successCount"], out["failureCount"]) == (3, 1)
        return
    assert started == [0, 1]
    not_started = {"success": False, "error": {"code": "CANCELLED", "message": "not started"}}
    assert out["results"][0] == {"success": True, "data": {"tag": 0}}
    assert out["results"][1]["error"]["code"] == "NODE_ERROR"
    assert out["results"][2:] == [not_started, not_started]
    assert (out["successCount"], out["failureCount"]) == (1, 3)
    paths = nodes_of(db, res["id"])
    assert "each[2]" not in paths and "each[3]" not in paths


def test_loop_cancel_on_failure_stops_running_items(fwf, db, mark, daemon):
    """The seed's Fail-Fast spelling on a loop: item 1 fails at 0.6 s; item 0 (60 s,
    with a child process) is stopped at once."""
    daemon(workers=4)
    body = {
        "seconds": "{{ 60 if item == 0 else 0.6 }}",
        "fail": "{{ item == 1 }}",
        "child": "{{ item == 0 }}",
        "mark": str(mark),
    }
    doc = loop_doc([0, 1], body, parallel={"failFast": True, "cancelOnFailure": True})
    res = run_wf(fwf(doc), db)
    assert res["status"] == "failed"
    assert res["error"]["message"] == (
        "node 'each' failed: 1 of 2 items of loop 'each' failed; first: each[1].w: 1 failed"
    )
    start = marks_of(mark, 0, "start")[0]
    for pid in (start["pid"], start["child_pid"]):
        wait_until(lambda pid=pid: gone(pid), 30, f"process {pid} of item 0 to exit")
    assert marks_of(mark, 0, "end") == []
    nodes = nodes_of(db, res["id"])
    assert nodes["each[0].w"]["status"] == "cancelled"
    assert nodes["each[0].w"]["error"]["code"] == "CANCELLED"
    # Stopped because item 1 failed, long before its own 60 s could end.
    stopped = nodes["each[0].w"]["finishedAt"]
    assert nodes["each[1].w"]["finishedAt"] <= stopped < start["t"] + 60


def test_loop_item_stopped_by_cancel_on_failure_is_cancelled(fwf, db):
    body = {"seconds": "{{ 0.3 if item == 1 else 30 }}", "fail": "{{ item == 1 }}"}
    policy = {"onPartialFailure": "collect", "failFast": True, "cancelOnFailure": True}
    res = run_wf(fwf(loop_doc([0, 1, 2], body, policy=policy)), db, workers=4)
    nodes = nodes_of(db, res["id"])
    assert nodes["each[0]"]["status"] == nodes["each[2]"]["status"] == "cancelled"
    out = res["output"]["each"]
    assert [r["success"] for r in out["results"]] == [False, False, False]
    assert out["results"][0]["error"]["code"] == "CANCELLED"
    assert (out["successCount"], out["failureCount"]) == (0, 3)


@pytest.mark.parametrize("on_timeout", ["fail", "collect_partial"])
def test_loop_total_timeout(fwf, db, mark, on_timeout):
    """Items 0..4, two at a time; items 1 and 2 hang: at totalTimeout (800 ms)
    they are stopped, items 3 and 4 never started."""
    body = {"seconds": "{{ 60 if item in (1, 2) else 0.05 }}", "mark": str(mark)}
    policy = {"totalTimeout": 800, "onTimeout": on_timeout}
    doc = loop_doc([0, 1, 2, 3, 4], body, maxConcurrency=2, policy=policy)
    res = run_wf(fwf(doc), db, workers=4)  # items 1, 2 sleep 60 s: only the timeout ends it
    assert sorted({m["tag"] for m in read_marks(mark) if m["phase"] == "start"}) == [0, 1, 2]
    assert [m["tag"] for m in read_marks(mark) if m["phase"] == "end"] == [0]
    nodes = nodes_of(db, res["id"])
    assert nodes["each[1]"]["status"] == nodes["each[2]"]["status"] == "cancelled"
    assert nodes["each[1].w"]["status"] == "cancelled"
    assert nodes["each"]["finishedAt"] - nodes["each"]["startedAt"] >= 0.79
    if on_timeout == "fail":
        assert res["status"] == "failed"
        msg = "loop 'each' passed its totalTimeout (800 ms) with 1 of 5 items done"
        assert (res["error"]["code"], res["error"]["nodePath"]) == ("TOTAL_TIMEOUT", "each")
        assert res["error"]["message"] == f"node 'each' failed: {msg}"
        return
    assert res["status"] == "succeeded", res

    def late(path: str | None) -> dict[str, Any]:
        err = {"code": "TOTAL_TIMEOUT", "message": "the loop's totalTimeout passed first"}
        return {"success": False, "error": {**err, "nodePath": path} if path else err}

    assert res["output"] == {
        "each": {
            "results": [
                {"success": True, "data": {"tag": 0}},
                late("each[1]"),
                late("each[2]"),
                late(None),
                late(None),
            ],
            "successCount": 1,
            "failureCount": 4,
            "timedOut": True,
        }
    }


@pytest.mark.parametrize(
    "on_timeout,policy",
    [("cancel", None), ("continue", None), ("error", "collect"), ("error", None)],
)
def test_loop_item_timeout(fwf, db, mark, on_timeout, policy):
    """The loop's ``timeout`` bounds each item (700 ms); item 1 hangs."""
    body = {"seconds": "{{ 60 if item == 1 else 0.05 }}", "mark": str(mark)}
    extra: dict[str, Any] = {"timeout": 700, "onTimeout": on_timeout, "outputOnError": "late"}
    if policy:
        extra["policy"] = {"onPartialFailure": policy}
    res = run_wf(fwf(loop_doc([0, 1, 2], body, **extra)), db, workers=4)  # item 1: 60 s
    assert marks_of(mark, 1, "end") == []
    nodes = nodes_of(db, res["id"])
    assert nodes["each[1].w"]["status"] == "cancelled"
    item = nodes["each[1]"]
    assert item["error"]["code"] == "TIMEOUT"
    assert item["error"]["message"] == "item 1 timed out after 700 ms"
    if on_timeout == "cancel":
        assert item["status"] == "cancelled"
        assert res["status"] == "succeeded", res
        assert res["output"] == {"each": [{"tag": 0}, None, {"tag": 2}]}
    elif on_timeout == "continue":
        assert item["status"] == "succeeded" and item["error"]["timedOut"] is True
        assert res["output"] == {"each": [{"tag": 0}, "late", {"tag": 2}]}
    elif policy == "collect":
        assert item["status"] == "failed"
        assert res["output"] == {
            "each": {
                "results": [
                    {"success": True, "data": {"tag": 0}},
                    {
                        "success": False,
                        "error": {
                            "code": "TIMEOUT",
                            "message": "item 1 timed out after 700 ms",
                            "nodePath": "each[1]",
                            "nodeId": "each",
                            "attempt": 1,
                        },
                    },
                    {"success": True, "data": {"tag": 2}},
                ],
                "successCount": 2,
                "failureCount": 1,
            }
        }
    else:
        assert item["status"] == "failed"
        assert res["status"] == "failed"
        assert res["error"]["code"] == "TIMEOUT"
        assert res["error"]["message"] == (
            "node 'each' failed: 1 of 3 items of loop 'each' failed; "
            "first: each[1]: item 1 timed out after 700 ms"
        )


def test_loop_item_timeout_counts_from_the_items_start(fwf, db, mark):
    """One item at a time, 0.6 s each, timeout 1.2 s: item 2 ends 1.8 s after the
    loop started, but only 0.6 s after its own start: nothing times out."""
    body = {"seconds": 0.6, "mark": str(mark)}
    doc = loop_doc([0, 1, 2], body, maxConcurrency=1, timeout=1200, onTimeout="error")
    res = run_wf(fwf(doc), db, workers=2)
    assert res["status"] == "succeeded", res
    assert res["output"] == {"each": [{"tag": 0}, {"tag": 1}, {"tag": 2}]}
    t = {m["tag"]: m["t"] for m in read_marks(mark) if m["phase"] == "start"}
    assert t[2] - t[0] >= 1.1  # item 2 did start late


# === error strategies (SPEC §6) ========================================================


def test_error_strategy_continue_keeps_the_error(fwf, db):
    doc = {
        "name": "continue",
        "nodes": [
            work("f", fail=True, code="BAD", errorStrategy="continue", outputOnError={"x": 1}),
            {"id": "g", "type": "transform", "expression": "f"},
        ],
        "edges": [{"source": "f", "target": "g"}],
    }
    res = run_wf(fwf(doc), db)
    assert res["status"] == "succeeded", res
    assert res["output"] == {"g": {"x": 1}}
    f = nodes_of(db, res["id"])["f"]
    assert (f["status"], f["output"]) == ("succeeded", {"x": 1})
    assert strip(f["error"]) == node_error("f", "f failed", "BAD")


def test_fallback_gets_error_scope_and_replaces_the_output(fwf, db):
    doc = {
        "name": "fallback",
        "nodes": [
            work("f", fail=True, code="BAD", errorStrategy="fallback", fallbackNodeId="fb"),
            {"id": "g", "type": "transform", "expression": "f"},
        ],
        "edges": [{"source": "f", "target": "g"}],
        "handlers": [see_error("fb")],
    }
    t0 = time.time()
    res = run_wf(fwf(doc), db)
    assert res["status"] == "succeeded", res
    seen = res["output"]["g"]["error"]
    assert set(seen) == ERROR_KEYS
    assert strip(seen) == node_error("f", "f failed", "BAD")
    assert t0 * 1000 <= seen["timestamp"] <= time.time() * 1000
    nodes = nodes_of(db, res["id"])
    assert nodes["f->fb"]["status"] == "succeeded"
    # the node's output is the fallback's; its own error stays on its record
    assert nodes["f"]["status"] == "succeeded"
    assert nodes["f"]["output"] == {"tag": "fb", "error": seen}
    assert nodes["f"]["error"]["code"] == "BAD"


@pytest.mark.parametrize(
    "strategy,handler",
    [
        ("fallback", "python"),
        ("fallback", "transform"),
        ("goto", "python"),
    ],
)
def test_failing_handler_fails_the_execution(fwf, db, strategy, handler):
    h = (
        work("h", fail=True, code="HBAD")
        if handler == "python"
        else {"id": "h", "type": "transform", "expression": "1 / 0"}
    )
    key = "fallbackNodeId" if strategy == "fallback" else "gotoNodeId"
    doc = {
        "name": "badhandler",
        "nodes": [work("f", fail=True, code="BAD", errorStrategy=strategy, **{key: "h"})],
        "handlers": [h],
    }
    res = run_wf(fwf(doc), db)
    assert res["status"] == "failed"
    assert res["error"]["code"] != "INTERNAL_ERROR", res["error"]
    nodes = nodes_of(db, res["id"])
    assert nodes["f"]["status"] == "failed"
    assert nodes["f->h"]["status"] == "failed"
    if strategy == "fallback":
        assert res["error"]["nodePath"] == "f"


def test_goto_a_graph_node_skips_normal_successors(fwf, db):
    doc = {
        "name": "goto",
        "nodes": [
            work("f", fail=True, code="BAD", errorStrategy="goto", gotoNodeId="h"),
            {"id": "nxt", "type": "transform", "expression": "f"},
            see_error("h"),
        ],
        "edges": [{"source": "f", "target": "nxt"}],
    }
    res = run_wf(fwf(doc), db)
    assert res["status"] == "succeeded", res
    assert strip(res["output"]) == {"h": {"tag": "h", "error": node_error("f", "f failed", "BAD")}}
    nodes = nodes_of(db, res["id"])
    assert (nodes["f"]["status"], nodes["nxt"]["status"]) == ("failed", "skipped")


def test_goto_a_handler_skips_normal_successors(fwf, db, mark):
    doc = {
        "name": "goto-handler",
        "nodes": [
            work("f", fail=True, code="BAD", errorStrategy="goto", gotoNodeId="h"),
            {"id": "nxt", "type": "transform", "expression": "f"},
        ],
        "edges": [{"source": "f", "target": "nxt"}],
        "handlers": [see_error("h", mark=mark)],
    }
    res = run_wf(fwf(doc), db)
    assert res["status"] == "succeeded", res
    assert res["output"] == {}  # the only sink was skipped; a handler is no sink
    nodes = nodes_of(db, res["id"])
    assert (nodes["f"]["status"], nodes["nxt"]["status"]) == ("failed", "skipped")
    assert nodes["f->h"]["status"] == "succeeded"
    assert strip(nodes["f->h"]["output"]["error"]) == node_error("f", "f failed", "BAD")
    assert [m["path"] for m in read_marks(mark)] == ["f->h"]


def test_error_edge_target_sees_the_error(fwf, db):
    doc = {
        "name": "error-edge",
        "nodes": [
            work("f", fail=True, code="BAD"),
            {"id": "nxt", "type": "transform", "expression": "f"},
            {"id": "h", "type": "transform", "expression": "error"},
        ],
        "edges": [
            {"source": "f", "target": "nxt"},
            {"source": "f", "target": "h", "sourceHandle": "error"},
        ],
    }
    res = run_wf(fwf(doc), db)
    assert res["status"] == "succeeded", res
    assert set(res["output"]["h"]) == ERROR_KEYS
    assert strip(res["output"]) == {"h": node_error("f", "f failed", "BAD")}
    nodes = nodes_of(db, res["id"])
    assert (nodes["f"]["status"], nodes["nxt"]["status"]) == ("failed", "skipped")


def test_fallback_runs_only_after_retries_are_exhausted(fwf, db, tmp_path, mark):
    counter = tmp_path / "count"
    doc = {
        "name": "retry-fallback",
        "nodes": [
            {
                "id": "f",
                "type": "python",
                "call": "failtasks:flaky",
                "args": {"counter": str(counter), "fail_times": 5, "mark": str(mark)},
                "retry": {"maxAttempts": 3, "initialDelay": 50},
                "errorStrategy": "fallback",
                "fallbackNodeId": "fb",
            }
        ],
        "handlers": [see_error("fb", mark=mark)],
    }
    res = run_wf(fwf(doc), db)
    assert res["status"] == "succeeded", res
    assert counter.read_text() == "3"
    assert [(m["tag"], m.get("attempt")) for m in read_marks(mark)] == [
        ("flaky", 1),
        ("flaky", 2),
        ("flaky", 3),
        ("fb", None),
    ]
    seen = res["output"]["f"]["error"]
    assert (seen["code"], seen["attempt"], seen["message"]) == ("TRANSIENT", 3, "flaky failure 3")
    assert nodes_of(db, res["id"])["f"]["attempts"] == 3


# === the execution default (SPEC §6) ===================================================


def test_execution_default_unhandled_failure(fwf, db, mark):
    """bad fails at 0.3 s: nothing new starts (q, waiting for a worker, is
    cancelled; after_slow never starts), slow finishes and is recorded, then the
    execution fails naming the node path, code and message."""
    doc = {
        "name": "default",
        "nodes": [
            work("bad", seconds=0.3, fail=True, code="BAD", mark=mark),
            work("slow", seconds=1.0, mark=mark),
            work("q", mark=mark),
            work("after_slow", mark=mark),
            work("after_bad", mark=mark),
        ],
        "edges": [
            {"source": "slow", "target": "after_slow"},
            {"source": "bad", "target": "after_bad"},
        ],
    }
    res = run_wf(fwf(doc), db, workers=2)
    assert res["status"] == "failed"
    err = res["error"]
    assert (err["code"], err["nodePath"], err["nodeId"]) == ("BAD", "bad", "bad")
    assert err["message"] == "node 'bad' failed: bad failed"
    assert sorted({m["tag"] for m in read_marks(mark)}) == ["bad", "slow"]
    assert marks_of(mark, "slow", "end")
    detail = show(db, res["id"])
    nodes = {n["path"]: n for n in detail["nodes"]}
    assert nodes["slow"]["status"] == "succeeded"
    assert nodes["q"]["status"] == "cancelled"
    assert nodes["q"]["error"]["message"] == "not started: an earlier node failed"
    assert "after_slow" not in nodes and "after_bad" not in nodes
    assert detail["finishedAt"] >= nodes["slow"]["finishedAt"]
    human = fm(db, "show", res["id"])
    assert human.returncode == 0, human.stderr
    assert "error      BAD: node 'bad' failed: bad failed" in human.stdout.splitlines()


@pytest.mark.slow
def test_execution_cancel_on_failure_setting(fwf, db, mark):
    doc = {
        "name": "exec-cancel",
        "settings": {"parallel": {"cancelOnFailure": True}},
        "nodes": [work("bad", seconds=0.3, fail=True), work("slow", seconds=6, mark=mark)],
    }
    res = run_wf(fwf(doc), db, workers=2)
    assert res["status"] == "failed"
    assert marks_of(mark, "slow", "end") == [], "slow ran to its end"
    assert nodes_of(db, res["id"])["slow"]["status"] == "cancelled"


# === validation (SPEC §1) ==============================================================


def test_validate_rejects_missing_fallback_and_goto_targets(tmp_path, db):
    doc = {
        "name": "bad-targets",
        "nodes": [
            work("a", errorStrategy="fallback", fallbackNodeId="nope"),
            {
                "id": "each",
                "type": "loop",
                "loopType": "count",
                "count": 2,
                "body": {"nodes": [work("b", errorStrategy="goto", gotoNodeId="missing")]},
            },
        ],
    }
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    out = fm(db, "validate", str(p))
    assert out.returncode == 2
    lines = (out.stdout + out.stderr).splitlines()
    assert any(ln.startswith("nodes[0].fallbackNodeId:") and "'nope'" in ln for ln in lines), lines
    assert any(
        ln.startswith("nodes[1].body.nodes[0].gotoNodeId:") and "'missing'" in ln for ln in lines
    ), lines
    assert "Traceback" not in out.stderr


# === examples ==========================================================================


@pytest.mark.parametrize(
    "inp,winner,primary_status",
    [
        ({}, "primary", "succeeded"),
        ({"primaryFails": True}, "backup", "failed"),
        ({"primaryDelayMs": 5000, "city": "Lyon"}, "backup", "cancelled"),
    ],
)
def test_example_parallel_with_fallback(db, inp, winner, primary_status):
    res = run_wf(EXAMPLES / "parallel_with_fallback.json", db, input=inp, workers=3)
    assert res["status"] == "succeeded", res
    city = inp.get("city", "Paris")
    weather = res["output"]["weather"]
    assert (weather["winner"], weather["city"]) == (winner, city)
    assert weather["latencyMs"] == (200 if winner == "primary" else 600)
    nodes = nodes_of(db, res["id"])
    assert nodes["first_success"]["port"] == winner
    assert nodes["primary"]["status"] == primary_status
    loser = "backup" if winner == "primary" else "primary"
    if primary_status != "failed":
        assert nodes[loser]["status"] == "cancelled"
    if primary_status == "failed":
        assert nodes["primary"]["error"]["code"] == "NETWORK"


def test_example_loop_collect(db):
    res = run_wf(EXAMPLES / "loop_collect.json", db, workers=4)
    assert res["status"] == "succeeded", res
    out = res["output"]
    assert out["summary"] == {"successCount": 12, "failureCount": 2, "failedRecords": [7, 14]}
    results = out["results"]["results"]
    assert len(results) == 14
    assert results[0] == {"success": True, "data": {"n": 1, "square": 1}}
    assert results[6]["success"] is False
    assert results[6]["error"]["code"] == "INVALID_RECORD"
    assert results[6]["error"]["nodePath"] == "process_all[6].process"
    assert (out["results"]["successCount"], out["results"]["failureCount"]) == (12, 2)
    below = run_wf(EXAMPLES / "loop_collect.json", db, input={"failEvery": 3}, workers=4)
    assert below["status"] == "failed"
    assert below["error"]["code"] == "PARTIAL_FAILURE"
    assert "only 10 of 14 items" in below["error"]["message"]


def test_example_fail_fast_validation(db):
    order = json.loads((EXAMPLES / "order.json").read_text())
    declined = {"order": {**order["order"], "id": "A-1002", "payment": {"amount": 0}}}
    res = run_wf(EXAMPLES / "fail_fast_validation.json", db, input=declined, workers=4)
    assert res["status"] == "succeeded", res
    assert res["output"] == {
        "decision": {
            "orderId": "A-1002",
            "status": "rejected",
            "failedChecks": {"payment": "payment declined (amount 0)"},
            "stoppedChecks": ["inventory", "shipping"],
        }
    }
    nodes = nodes_of(db, res["id"])
    assert nodes["payment"]["status"] == "failed"
    for check in ("inventory", "shipping"):
        assert nodes[check]["status"] == "cancelled"  # stopped, not let run 2 s:
        # stopped after the payment failed, before its own 2 s sleep could end.
        stopped = nodes[check]["finishedAt"]
        assert nodes["payment"]["finishedAt"] <= stopped < nodes[check]["startedAt"] + 2
    assert nodes["process"]["status"] == "skipped"
    ok = run_wf(EXAMPLES / "fail_fast_validation.json", db, input=order, workers=4)
    assert ok["status"] == "succeeded", ok
    assert ok["output"] == {"decision": {"orderId": "A-1001", "status": "processed"}}
