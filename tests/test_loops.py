"""Parallel loops and concurrency control (SPEC §4), measured from the items' own
start/end timestamps recorded by real worker processes."""

from __future__ import annotations

import time

from conftest import read_marks, run_wf, show

from fm_local.store import Store


def sleeper(mark, seconds=0.2, **kw):
    node = {
        "id": "work",
        "type": "python",
        "call": "fmtasks:sleep",
        "args": {"seconds": seconds, "mark": str(mark), "tag": "{{index}}"},
    }
    node.update(kw)
    return node


def loop_doc(body_nodes, edges=None, **loop):
    node = {"id": "each", "type": "loop", "body": {"nodes": body_nodes, "edges": edges or []}}
    node.update(loop)
    return {"name": "loop", "nodes": [node]}


def peak_overlap(marks):
    events = sorted([(m["start"], 1) for m in marks] + [(m["end"], -1) for m in marks])
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    return peak


def max_starts_in_window(starts, window):
    starts = sorted(starts)
    best = j = 0
    for i, s in enumerate(starts):
        while starts[j] <= s - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_for_each_results_in_item_order(wf, db):
    doc = loop_doc(
        [
            {
                "id": "w",
                "type": "python",
                "call": "fmtasks:sleep",
                "args": {"seconds": "{{ 0.3 - item * 0.05 }}", "tag": "{{item}}"},
            },
            {"id": "t", "type": "transform", "expression": "int(w.tag) * 10"},
        ],
        [{"source": "w", "target": "t"}],
        arrayPath="{{ input.xs }}",
        parallel=True,
    )
    res = run_wf(wf(doc), db, input={"xs": [0, 1, 2, 3, 4, 5]}, workers=6)
    assert res["status"] == "succeeded", res
    assert res["output"] == {"each": [0, 10, 20, 30, 40, 50]}


def test_item_scope_variables(wf, db):
    doc = loop_doc(
        [
            {
                "id": "v",
                "type": "transform",
                "expression": "{'u': user, 'i': i, 'p': parallel, 'l': loop}",
            }
        ],
        arrayPath="{{ ['a', 'b', 'c', 'd', 'e'] }}",
        itemVariable="user",
        indexVariable="i",
        batchSize=2,
        parallel=True,
    )
    res = run_wf(wf(doc), db)
    out = res["output"]["each"]
    assert out[3] == {
        "u": "d",
        "i": 3,
        "p": {"index": 3, "total": 5, "batchId": 1},
        "l": {"item": "d", "index": 3, "length": 5, "isFirst": False, "isLast": False},
    }
    assert out[0]["l"]["isFirst"] and out[4]["l"]["isLast"]


def test_items_cannot_see_each_other(wf, db):
    doc = loop_doc(
        [
            {"id": "a", "type": "transform", "expression": "item * 2"},
            {"id": "b", "type": "transform", "expression": "a + 1"},
        ],
        [{"source": "a", "target": "b"}],
        arrayPath="{{ [1, 2, 3] }}",
        parallel=True,
    )
    res = run_wf(wf(doc), db)
    assert res["output"]["each"] == [3, 5, 7]


def test_count_loop_and_multi_sink_item_result(wf, db):
    doc = loop_doc(
        [
            {"id": "a", "type": "transform", "expression": "index"},
            {"id": "b", "type": "transform", "expression": "-index"},
        ],
        loopType="count",
        count=3,
    )
    res = run_wf(wf(doc), db)
    assert res["output"]["each"] == [{"a": 0, "b": 0}, {"a": 1, "b": -1}, {"a": 2, "b": -2}]


def test_sequential_loop_runs_one_at_a_time_in_order(wf, db, tmp_path):
    mark = tmp_path / "m"
    doc = loop_doc([sleeper(mark, 0.1)], loopType="count", count=5, parallel=False)
    res = run_wf(wf(doc), db, workers=4)
    assert res["status"] == "succeeded"
    marks = read_marks(mark)
    assert [m["tag"] for m in sorted(marks, key=lambda m: m["start"])] == [0, 1, 2, 3, 4]
    assert peak_overlap(marks) == 1


def test_max_concurrency_is_exact(wf, db, tmp_path):
    mark = tmp_path / "m"
    doc = loop_doc(
        [sleeper(mark, 0.3)], loopType="count", count=12, parallel=True, maxConcurrency=3
    )
    res = run_wf(wf(doc), db, workers=6)
    assert res["status"] == "succeeded"
    assert peak_overlap(read_marks(mark)) == 3


def test_nested_loop_paths_and_results(wf, db):
    inner = {
        "id": "inner",
        "type": "loop",
        "loopType": "count",
        "count": 2,
        "indexVariable": "j",
        "parallel": True,
        "body": {
            "nodes": [
                {
                    "id": "step",
                    "type": "python",
                    "call": "fmtasks:echo",
                    "args": {"i": "{{index}}", "j": "{{j}}"},
                }
            ]
        },
    }
    doc = {
        "name": "nested",
        "nodes": [
            {
                "id": "outer",
                "type": "loop",
                "loopType": "count",
                "count": 2,
                "parallel": True,
                "body": {"nodes": [inner]},
            }
        ],
    }
    res = run_wf(wf(doc), db)
    assert res["output"]["outer"] == [
        [{"i": 0, "j": 0}, {"i": 0, "j": 1}],
        [{"i": 1, "j": 0}, {"i": 1, "j": 1}],
    ]
    paths = {n["path"] for n in show(db, res["id"])["nodes"]}
    assert "outer[1].inner[0].step" in paths and "outer[0].inner" in paths


def test_item_trace_ids_and_ctx_parallel(wf, db):
    doc = loop_doc(
        [{"id": "c", "type": "python", "call": "fmtasks:ctx_info"}],
        loopType="count",
        count=3,
        parallel=True,
    )
    res = run_wf(wf(doc), db)
    trace = show(db, res["id"])["traceId"]
    out = res["output"]["each"]
    assert [o["traceId"] for o in out] == [f"{trace}-001", f"{trace}-002", f"{trace}-003"]
    assert out[2]["nodePath"] == "each[2].c"
    assert out[2]["parallel"] == {"index": 2, "total": 3, "batchId": 0}


def test_rate_limit_windows(wf, db, tmp_path):
    mark = tmp_path / "m"
    doc = loop_doc(
        [sleeper(mark, 0.01)],
        loopType="count",
        count=30,
        parallel=True,
        rateLimit={"rate": 10, "per": 500},
    )
    t0 = time.monotonic()
    res = run_wf(wf(doc), db, workers=4)
    assert res["status"] == "succeeded"
    starts = [m["start"] for m in read_marks(mark)]
    assert max_starts_in_window(starts, 0.5) <= 10
    assert time.monotonic() - t0 >= 1.0  # 30 starts at 10 per 500 ms need > 1 s


def test_node_rate_limit_shared_by_name(wf, db, tmp_path):
    mark = tmp_path / "m"
    work = sleeper(mark, 0.01, rateLimit="api")
    doc = loop_doc([work], loopType="count", count=12, parallel=True)
    doc["settings"] = {"rateLimits": {"api": {"rate": 4, "per": 400}}}
    res = run_wf(wf(doc), db, workers=4)
    assert res["status"] == "succeeded"
    starts = [m["start"] for m in read_marks(mark)]
    assert max_starts_in_window(starts, 0.4) <= 4


def test_batches_wait_for_previous_batch_plus_delay(wf, db, tmp_path):
    mark = tmp_path / "m"
    doc = loop_doc(
        [sleeper(mark, 0.1)],
        loopType="count",
        count=7,
        parallel=True,
        batchSize=3,
        delayBetweenBatches=300,
    )
    res = run_wf(wf(doc), db, workers=4)
    assert res["status"] == "succeeded"
    marks = {int(m["tag"]): m for m in read_marks(mark)}
    for b_end, b_next in ((2, 3), (5, 6)):
        batch = [marks[i] for i in range(b_end - 2, b_end + 1)]
        nxt = [marks[i] for i in range(b_next, min(b_next + 3, 7))]
        assert min(m["start"] for m in nxt) >= max(m["end"] for m in batch) + 0.29


def test_pool_concurrency_limit(wf, db, tmp_path):
    mark = tmp_path / "m"
    doc = loop_doc([sleeper(mark, 0.2, pool="db")], loopType="count", count=8, parallel=True)
    doc["settings"] = {"concurrencyLimits": {"db": 2}}
    res = run_wf(wf(doc), db, workers=4)
    assert res["status"] == "succeeded"
    assert peak_overlap(read_marks(mark)) == 2


def test_loop_timeout_limits_each_item(wf, db, tmp_path):
    mark = tmp_path / "m"
    doc = loop_doc(
        [
            {
                "id": "w",
                "type": "python",
                "call": "fmtasks:sleep",
                "args": {
                    "seconds": "{{ 5 if item == 1 else 0.05 }}",
                    "mark": str(mark),
                    "tag": "{{item}}",
                },
            }
        ],
        arrayPath="{{ [0, 1, 2] }}",
        parallel=True,
        timeout=600,
        onTimeout="cancel",
        policy={"onPartialFailure": "collect"},
    )
    res = run_wf(wf(doc), db, workers=3)
    # The loop did not wait for item 1: its 5 s sleep (which marks only at its end)
    # had not ended when the run did. Causality, whatever the machine's speed.
    assert sorted(m["tag"] for m in read_marks(mark)) == [0, 2]
    assert res["status"] == "succeeded", res
    out = res["output"]["each"]
    assert out["successCount"] == 2
    assert out["results"][1]["success"] is False
    nodes = {n["path"]: n for n in show(db, res["id"])["nodes"]}
    assert nodes["each[1]"]["status"] == "cancelled"


def test_policy_collect_and_min_success_rate(wf, db):
    body = [{"id": "w", "type": "python", "call": "fmtasks:always_fail", "errorStrategy": "fail"}]
    cond = {"id": "w", "type": "transform", "expression": "1 / (item % 3)"}
    doc = loop_doc(
        [cond],
        arrayPath="{{ list(range(6)) }}",
        parallel=True,
        policy={"onPartialFailure": "collect", "failFast": False},
    )
    res = run_wf(wf(doc), db)
    assert res["status"] == "succeeded", res
    out = res["output"]["each"]
    assert out["successCount"] == 4 and out["failureCount"] == 2
    assert (
        out["results"][0]["success"] is False
        and out["results"][0]["error"]["code"] == "EXPRESSION_ERROR"
    )
    assert out["results"][1] == {"success": True, "data": 1.0}
    doc2 = loop_doc(
        [cond],
        arrayPath="{{ list(range(6)) }}",
        parallel=True,
        policy={"onPartialFailure": "continue", "failFast": False, "minSuccessRate": 0.8},
    )
    res2 = run_wf(wf(doc2), db)
    assert res2["status"] == "failed"
    assert "minSuccessRate" in res2["error"]["message"]
    doc3 = loop_doc(
        [cond],
        arrayPath="{{ list(range(6)) }}",
        parallel=True,
        policy={"onPartialFailure": "continue", "failFast": False},
    )
    assert run_wf(wf(doc3), db)["output"]["each"] == [1.0, 0.5, 1.0, 0.5]
    assert body  # keeps the unused helper honest


def test_default_policy_fails_the_execution(wf, db):
    doc = loop_doc(
        [{"id": "w", "type": "transform", "expression": "1 / (item - 2)"}],
        arrayPath="{{ [0, 1, 2, 3] }}",
        parallel=False,
    )
    res = run_wf(wf(doc), db)
    assert res["status"] == "failed"
    assert res["error"]["code"] == "EXPRESSION_ERROR"
    assert "each[2].w" in res["error"]["message"]
    nodes = {n["path"] for n in show(db, res["id"])["nodes"]}
    assert "each[3]" not in nodes  # fail-fast: no item after the failure started


def test_hundred_items_with_limits_compose(wf, db, tmp_path):
    mark = tmp_path / "m"
    doc = loop_doc(
        [sleeper(mark, 0.05)], loopType="count", count=100, parallel=True, maxConcurrency=5
    )
    doc["settings"] = {"maxConcurrency": 3}
    res = run_wf(wf(doc), db, workers=8)
    assert res["status"] == "succeeded"
    marks = read_marks(mark)
    assert len(marks) == 100
    assert peak_overlap(marks) == 3
    st = Store(db)
    assert (
        st.conn.execute("SELECT count(*) FROM node_runs WHERE node_type='item'").fetchone()[0]
        == 100
    )


def test_an_item_output_is_compact_json_even_when_its_body_is_a_loop(wf, db):
    """An item whose one-node body is a loop: the item's recorded output is the
    compact JSON of the inner loop's value (an inner loop's own text spells some
    errors with spaces), as every other item output is."""
    import json

    inner = {
        "id": "inner",
        "type": "loop",
        "arrayPath": "{{ [0, 1, 2] }}",
        "policy": {"onPartialFailure": "collect", "failFast": True},
        "body": {"nodes": [{"id": "t", "type": "transform", "expression": "1 / item"}]},
    }
    outer = {"id": "outer", "type": "loop", "arrayPath": "{{ [0] }}", "body": {"nodes": [inner]}}
    res = run_wf(wf({"name": "nested", "nodes": [outer]}), db)
    assert res["status"] == "succeeded", res
    rows = dict(
        Store(db).conn.execute(
            "SELECT path, output FROM node_runs WHERE execution_id=?", (res["id"],)
        )
    )
    value = json.loads(rows["outer[0].inner"])
    assert value["failureCount"] == 3
    assert rows["outer[0]"] == json.dumps(value, separators=(",", ":"))
