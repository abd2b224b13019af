"""Integration tests: the real supervisor, real worker processes, a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from functools import partial
from pathlib import Path

import psutil
import pytest
from conftest import python_node, read_marks, run_wf, show

from fm_local import retries
from fm_local.model import RetryPolicy
from fm_local.store import Store

py = partial(python_node, "fmtasks")


def test_single_python_node(wf, db):
    p = wf({"name": "one", "nodes": [py("a", "add", args={"a": 1, "b": 2})]})
    res = run_wf(p, db)
    assert res["status"] == "succeeded"
    assert res["output"] == {"a": 3}


def test_chain_passes_outputs_and_templates(wf, db):
    doc = {
        "name": "chain",
        "nodes": [
            py("a", "add", args={"a": 1, "b": 2}),
            py("b", "add", args={"a": "{{a}}", "b": 10}),
            {"id": "c", "type": "transform", "expression": "b * 2"},
            {"id": "out", "type": "output", "outputName": "text", "value": "result={{c}}"},
        ],
        "edges": [{"source": "a", "target": "b"}],
    }
    res = run_wf(wf(doc), db)
    assert res["status"] == "succeeded", res
    assert res["output"] == {"text": "result=26"}


def test_reference_is_an_implicit_edge(wf, db, tmp_path):
    """c references a and b: it must wait for both without any edge."""
    mark = tmp_path / "marks"
    doc = {
        "name": "refs",
        "nodes": [
            {"id": "c", "type": "transform", "expression": "[a.tag, b.tag]"},
            py("a", "sleep", args={"seconds": 0.2, "tag": "A", "mark": str(mark)}),
            py("b", "sleep", args={"seconds": 0.1, "tag": "B", "mark": str(mark)}),
        ],
    }
    res = run_wf(wf(doc), db)
    assert res["output"] == {"c": ["A", "B"]}


def test_parallel_branches_overlap_in_time(wf, db, tmp_path):
    mark = tmp_path / "marks"
    doc = {
        "name": "fan",
        "nodes": [py("start", "noop")]
        + [
            py(f"b{i}", "sleep", args={"seconds": 0.5, "tag": f"b{i}", "mark": str(mark)})
            for i in range(3)
        ]
        + [{"id": "m", "type": "merge"}],
        "edges": [{"source": "start", "target": f"b{i}"} for i in range(3)]
        + [{"source": f"b{i}", "target": "m"} for i in range(3)],
    }
    res = run_wf(wf(doc), db, workers=3)
    assert res["status"] == "succeeded"
    marks = read_marks(mark)
    assert len(marks) == 3
    latest_start = max(m["start"] for m in marks)
    earliest_end = min(m["end"] for m in marks)
    assert latest_start < earliest_end, "branches did not overlap"
    assert len({m["pid"] for m in marks}) == 3
    assert set(res["output"]["m"]) == {"b0", "b1", "b2"}


def test_no_waves(wf, db, tmp_path):
    """A node starts when its own dependencies finish, not when its 'level' does."""
    mark = tmp_path / "marks"
    doc = {
        "name": "nowaves",
        "nodes": [
            py("slow", "sleep", args={"seconds": 1.0, "tag": "slow", "mark": str(mark)}),
            py("fast", "sleep", args={"seconds": 0.05, "tag": "fast", "mark": str(mark)}),
            py(
                "after_fast",
                "sleep",
                args={"seconds": 0.05, "tag": "after_fast", "mark": str(mark)},
            ),
        ],
        "edges": [{"source": "fast", "target": "after_fast"}],
    }
    res = run_wf(wf(doc), db, workers=2)
    assert res["status"] == "succeeded"
    m = {x["tag"]: x for x in read_marks(mark)}
    assert m["after_fast"]["end"] < m["slow"]["end"]


def test_merge_keys_by_branch_and_skips_untaken(wf, db):
    doc = {
        "name": "cond",
        "nodes": [
            {"id": "check", "type": "condition", "expression": "input.n > 5"},
            {"id": "big", "type": "transform", "expression": "'big'"},
            {"id": "small", "type": "transform", "expression": "'small'"},
            {"id": "m", "type": "merge"},
        ],
        "edges": [
            {"source": "check", "target": "big", "sourceHandle": "true"},
            {"source": "check", "target": "small", "sourceHandle": "false"},
            {"source": "big", "target": "m"},
            {"source": "small", "target": "m"},
        ],
    }
    p = wf(doc)
    res = run_wf(p, db, input={"n": 10})
    assert res["output"] == {"m": {"big": "big"}}
    res2 = run_wf(p, db, input={"n": 1})
    assert res2["output"] == {"m": {"small": "small"}}
    nodes = {n["path"]: n for n in show(db, res2["id"])["nodes"]}
    assert nodes["big"]["status"] == "skipped"


def test_switch_routes_by_case(wf, db):
    doc = {
        "name": "switch",
        "nodes": [
            {
                "id": "s",
                "type": "switch",
                "expression": "input.color",
                "cases": [{"value": "red"}, {"value": "blue", "label": "b"}],
            },
            {"id": "r", "type": "transform", "expression": "'R'"},
            {"id": "bl", "type": "transform", "expression": "'B'"},
            {"id": "d", "type": "transform", "expression": "'D'"},
        ],
        "edges": [
            {"source": "s", "target": "r", "sourceHandle": "red"},
            {"source": "s", "target": "bl", "sourceHandle": "b"},
            {"source": "s", "target": "d", "sourceHandle": "default"},
        ],
    }
    p = wf(doc)
    assert run_wf(p, db, input={"color": "red"})["output"] == {"r": "R"}
    assert run_wf(p, db, input={"color": "blue"})["output"] == {"bl": "B"}
    res = run_wf(p, db, input={"color": "green"})
    assert res["output"] == {"d": "D"}


def test_ctx_and_trace_ids(wf, db):
    doc = {
        "name": "ctx",
        "nodes": [py("root", "noop"), py("x", "ctx_info", name="Branch X"), py("y", "ctx_info")],
        "edges": [{"source": "root", "target": "x"}, {"source": "root", "target": "y"}],
    }
    res = run_wf(wf(doc), db)
    assert res["status"] == "succeeded"
    x, y = res["output"]["x"], res["output"]["y"]
    detail = show(db, res["id"])
    trace = detail["traceId"]
    assert trace.startswith("trace-") and len(trace) == len("trace-") + 12
    assert x["traceId"] == f"{trace}-001" and y["traceId"] == f"{trace}-002"
    assert x["branch"] == {"id": "x", "name": "Branch X"}
    assert y["branch"] == {"id": "y", "name": "y"}
    assert x["executionId"] == res["id"] and x["nodePath"] == "x" and x["attempt"] == 1
    assert x["idempotencyKey"] == f"{res['id']}:x"


def test_async_function(wf, db):
    res = run_wf(wf({"name": "async", "nodes": [py("a", "async_add", args={"a": 2, "b": 3})]}), db)
    assert res["output"] == {"a": 5}


def test_retry_with_backoff_then_success(wf, db, tmp_path):
    counter = tmp_path / "count"
    doc = {
        "name": "retry",
        "nodes": [
            py(
                "f",
                "flaky",
                args={"counter": str(counter), "fail_times": 2},
                retry={"maxAttempts": 3, "initialDelay": 200, "backoffMultiplier": 2},
            )
        ],
    }
    res = run_wf(wf(doc), db)
    assert res["status"] == "succeeded", res
    assert res["output"]["f"]["attempt"] == 3
    times = [float(t) for t in (tmp_path / "count.times").read_text().split()]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Each retry waited at least its back-off (200 ms, then 400 ms); how much longer
    # is dispatch speed, not behaviour (a busy machine adds to it). The schedule
    # itself is exact:
    assert 0.18 <= gaps[0], gaps
    assert 0.38 <= gaps[1], gaps
    policy = RetryPolicy.model_validate(doc["nodes"][0]["retry"])
    assert [retries.retry_delay_ms(policy, n) for n in (1, 2)] == [200, 400]
    node = show(db, res["id"])["nodes"][0]
    assert node["attempts"] == 3
    st = Store(db)
    rows = st.attempts(res["id"], "f")
    assert [r["status"] for r in rows] == ["failed", "failed", "succeeded"]


def test_retries_exhausted_fails_execution(wf, db, tmp_path):
    counter = tmp_path / "count"
    doc = {
        "name": "retry-fail",
        "settings": {"retry": {"maxAttempts": 2, "initialDelay": 10}},
        "nodes": [
            py("f", "flaky", args={"counter": str(counter), "fail_times": 5}),
            py("after", "noop"),
        ],
        "edges": [{"source": "f", "target": "after"}],
    }
    res = run_wf(wf(doc), db)
    assert res["status"] == "failed"
    assert res["error"]["nodePath"] == "f"
    assert res["error"]["code"] == "TRANSIENT"
    assert "flaky failure 2" in res["error"]["message"]
    assert counter.read_text() == "2"


def test_fatal_error_not_retried(wf, db):
    doc = {
        "name": "fatal",
        "nodes": [py("f", "fatal", retry={"maxAttempts": 5, "initialDelay": 10})],
    }
    res = run_wf(wf(doc), db)
    assert res["status"] == "failed"
    assert res["error"]["code"] == "FATAL"
    assert show(db, res["id"])["nodes"][0]["attempts"] == 1


def test_output_not_serializable(wf, db):
    res = run_wf(wf({"name": "nan", "nodes": [py("f", "returns_nan")]}), db)
    assert res["status"] == "failed"
    assert res["error"]["code"] == "OUTPUT_NOT_SERIALIZABLE"
    assert "'f'" in res["error"]["message"]


def test_expression_error_names_node(wf, db):
    doc = {
        "name": "exprerr",
        "nodes": [{"id": "t", "type": "transform", "expression": "1 / input.zero"}],
    }
    res = run_wf(wf(doc), db, input={"zero": 0})
    assert res["status"] == "failed"
    assert res["error"]["code"] == "EXPRESSION_ERROR"
    assert "node 't'" in res["error"]["message"] and "1 / input.zero" in res["error"]["message"]


def test_error_strategy_continue(wf, db):
    doc = {
        "name": "cont",
        "nodes": [
            py("f", "always_fail", errorStrategy="continue", outputOnError={"fallback": True}),
            {"id": "g", "type": "transform", "expression": "f"},
        ],
        "edges": [{"source": "f", "target": "g"}],
    }
    res = run_wf(wf(doc), db)
    assert res["status"] == "succeeded"
    assert res["output"] == {"g": {"fallback": True}}


def test_error_edge_handles_failure(wf, db):
    doc = {
        "name": "erredge",
        "nodes": [
            py("f", "always_fail"),
            {"id": "ok", "type": "transform", "expression": "'not me'"},
            {"id": "h", "type": "transform", "expression": "'handled'"},
        ],
        "edges": [
            {"source": "f", "target": "ok"},
            {"source": "f", "target": "h", "sourceHandle": "error"},
        ],
    }
    res = run_wf(wf(doc), db)
    assert res["status"] == "succeeded", res
    assert res["output"] == {"h": "handled"}


def test_fail_fast_lets_running_finish(wf, db, tmp_path):
    mark = tmp_path / "marks"
    doc = {
        "name": "failfast",
        "nodes": [
            py("bad", "always_fail"),
            py("slow", "sleep", args={"seconds": 0.6, "tag": "slow", "mark": str(mark)}),
            py("never", "record", args={"mark": str(mark), "tag": "never"}),
        ],
        "edges": [{"source": "slow", "target": "never"}],
    }
    res = run_wf(wf(doc), db)
    assert res["status"] == "failed"
    tags = [m["tag"] for m in read_marks(mark)]
    assert tags == ["slow"]
    nodes = {n["path"]: n for n in show(db, res["id"])["nodes"]}
    assert nodes["slow"]["status"] == "succeeded"
    assert "never" not in nodes


def test_node_timeout_stops_process_tree(wf, db, tmp_path):
    mark = tmp_path / "marks"
    doc = {
        "name": "timeout",
        "nodes": [py("h", "hang", args={"mark": str(mark), "child": True}, timeout=500)],
    }
    res = run_wf(wf(doc), db)  # h never returns: only its timeout ends this run
    assert res["status"] == "failed"
    assert res["error"]["code"] == "TIMEOUT"
    m = read_marks(mark)
    for pid in (m[0]["pid"], m[0]["child_pid"]):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_timeout_on_timeout_continue_and_cancel(wf, db, tmp_path):
    doc = {
        "name": "timeout2",
        "nodes": [
            py("c", "hang", timeout=300, onTimeout="continue", outputOnError="late"),
            py("x", "hang", timeout=300, onTimeout="cancel"),
            {"id": "after_x", "type": "transform", "expression": "1"},
        ],
        "edges": [{"source": "x", "target": "after_x"}],
    }
    res = run_wf(wf(doc), db)
    assert res["status"] == "succeeded", res
    assert res["output"] == {"c": "late"}
    nodes = {n["path"]: n for n in show(db, res["id"])["nodes"]}
    assert nodes["x"]["status"] == "cancelled"
    assert nodes["after_x"]["status"] == "skipped"
    assert nodes["c"]["error"]["timedOut"] is True


def test_timeout_then_retry(wf, db, tmp_path):
    doc = {
        "name": "timeout3",
        "nodes": [py("h", "hang", timeout=200, retry={"maxAttempts": 2, "initialDelay": 10})],
    }
    res = run_wf(wf(doc), db)
    assert res["status"] == "failed"
    assert show(db, res["id"])["nodes"][0]["attempts"] == 2


def test_worker_crash_is_recovered(wf, db, tmp_path):
    counter = tmp_path / "crashes"
    doc = {
        "name": "crash1",
        "nodes": [py("c", "crash", args={"counter": str(counter), "times": 1})],
    }
    res = run_wf(wf(doc), db)
    assert res["status"] == "succeeded", res
    node = show(db, res["id"])["nodes"][0]
    assert node["attempts"] == 1 and node["recoveries"] == 1
    rows = Store(db).attempts(res["id"], "c")
    assert [(r["kind"], r["status"]) for r in rows] == [
        ("attempt", "failed"),
        ("recovery", "succeeded"),
    ]


def test_worker_crash_every_time_fails_after_recovery_attempts(wf, db, tmp_path):
    counter = tmp_path / "crashes"
    doc = {
        "name": "crashloop",
        "settings": {"recoveryAttempts": 2},
        "nodes": [py("c", "crash", args={"counter": str(counter)}), py("ok", "noop")],
    }
    res = run_wf(wf(doc), db)
    assert res["status"] == "failed"
    assert res["error"]["code"] == "WORKER_CRASH"
    assert counter.read_text() == "3"


def test_shell_node(wf, db):
    doc = {
        "name": "shell",
        "nodes": [
            {
                "id": "s",
                "type": "shell",
                "command": "echo hello $WHO; echo oops >&2",
                "env": {"WHO": "{{input.who}}"},
            },
            {"id": "l", "type": "shell", "command": ["printf", "%s", "x y"]},
            {"id": "bad", "type": "shell", "command": "exit 3", "allowFailure": True},
        ],
    }
    res = run_wf(wf(doc), db, input={"who": "world"})
    assert res["status"] == "succeeded", res
    assert res["output"]["s"] == {"exitCode": 0, "stdout": "hello world\n", "stderr": "oops\n"}
    assert res["output"]["l"]["stdout"] == "x y"
    assert res["output"]["bad"]["exitCode"] == 3


def test_shell_failure(wf, db):
    res = run_wf(
        wf(
            {
                "name": "shellfail",
                "nodes": [{"id": "s", "type": "shell", "command": "echo nope >&2; exit 4"}],
            }
        ),
        db,
    )
    assert res["status"] == "failed"
    assert res["error"]["code"] == "SHELL_ERROR"
    assert "exited with code 4: nope" in res["error"]["message"]


def test_delay_holds_no_worker(wf, db, tmp_path):
    mark = tmp_path / "marks"
    doc = {
        "name": "delay",
        "nodes": [
            {"id": "d", "type": "delay", "duration": 800},
            py("w", "sleep", args={"seconds": 0.2, "mark": str(mark), "tag": "w"}),
            {"id": "after", "type": "transform", "expression": "d"},
        ],
        "edges": [{"source": "d", "target": "after"}],
    }
    res = run_wf(wf(doc), db, workers=1)
    assert res["status"] == "succeeded"
    assert res["output"]["after"] is None
    w = read_marks(mark)[0]
    d = [n for n in show(db, res["id"])["nodes"] if n["path"] == "d"][0]
    # The only worker ran w while the delay was pending: their recorded times overlap
    # (had the delay held the worker, w would have run wholly before or after it).
    assert d["startedAt"] < w["end"] and w["start"] < d["finishedAt"], (d, w)
    assert d["finishedAt"] - d["startedAt"] >= 0.79


def test_logs_captured_per_attempt(wf, db):
    res = run_wf(wf({"name": "logs", "nodes": [py("p", "prints", args={"n": 2})]}), db)
    lines = [(r["stream"], r["line"]) for r in Store(db).logs(res["id"], "p")]
    assert ("stdout", "line 0") in lines and ("stdout", "line 1") in lines
    assert any(s == "logging" and "a warning" in line for s, line in lines)
    assert ("log", "from ctx.log") in lines


def test_output_flood_fails_only_itself(wf, db):
    res = run_wf(wf({"name": "flood", "nodes": [py("f", "flood", args={"lines": 50000})]}), db)
    assert res["status"] == "succeeded"
    n = len(Store(db).logs(res["id"], "f"))
    assert n <= 5001


def test_module_identity_by_folder(tmp_path, db):
    """Two workflows in different folders each with a tasks.py: never mixed up."""
    from fm_local import api
    from fm_local.supervisor import Supervisor

    ids = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "tasks.py").write_text(f"def who():\n    return {name!r}\n")
        (folder / "wf.json").write_text(
            json.dumps(
                {"name": name, "nodes": [{"id": "w", "type": "python", "call": "tasks:who"}]}
            )
        )
        ids.append(api.submit(folder / "wf.json", db=db))
    sup = Supervisor(db, workers=1)
    sup.open()
    try:
        sup.serve(until=lambda: all(i in sup.finished for i in ids))
    finally:
        sup.close()
    st = Store(db)
    assert [json.loads(st.get_execution(i)["output"]) for i in ids] == [{"w": "one"}, {"w": "two"}]


def test_settings_max_concurrency(wf, db, tmp_path):
    mark = tmp_path / "marks"
    doc = {
        "name": "maxconc",
        "settings": {"maxConcurrency": 2},
        "nodes": [
            py(f"n{i}", "sleep", args={"seconds": 0.3, "mark": str(mark), "tag": str(i)})
            for i in range(6)
        ],
    }
    res = run_wf(wf(doc), db, workers=4)
    assert res["status"] == "succeeded"
    marks = read_marks(mark)
    events = sorted([(m["start"], 1) for m in marks] + [(m["end"], -1) for m in marks])
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak == 2


def test_execution_timeout(wf, db):
    doc = {"name": "exectimeout", "settings": {"timeout": 500}, "nodes": [py("h", "hang")]}
    res = run_wf(wf(doc), db)  # h never returns: only settings.timeout ends this run
    assert res["status"] == "timed_out"
    assert show(db, res["id"])["nodes"][0]["status"] == "timed_out"


def test_db_is_readable_offline(wf, db):
    res = run_wf(wf({"name": "offline", "nodes": [py("a", "noop")]}), db)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    row = conn.execute(
        "SELECT status, nodes, succeeded FROM execution_summary WHERE id=?", (res["id"],)
    ).fetchone()
    assert row == ("succeeded", 1, 1)
    assert conn.execute("SELECT count(*) FROM queue").fetchone()[0] == 0


@pytest.mark.parametrize(
    "example,input_file",
    [
        ("fan_out_fan_in.json", None),
        ("custom_merge.json", None),
        ("parallel_validation.json", "order.json"),
    ],
)
def test_examples_run(example, input_file, db):
    root = Path(__file__).parent.parent / "examples"
    inp = json.loads((root / input_file).read_text()) if input_file else None
    res = run_wf(root / example, db, input=inp)
    assert res["status"] == "succeeded", res
