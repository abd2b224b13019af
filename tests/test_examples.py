"""The example workflows in examples/: each validates cleanly, and the two that show
concurrency control (parallel API calls, batch processing) are run for real and
measured — by the local API server's own concurrency counter, and by the node
instances' recorded start/end timestamps."""

from __future__ import annotations

import importlib.util
import json
import re
import sqlite3
from collections import Counter
from pathlib import Path
from types import ModuleType

import psutil
import pytest
from conftest import fm_cli, show_cli, wait_until

from fm_local import api

EXAMPLES = Path(__file__).parent.parent / "examples"


def workflow_files() -> list[Path]:
    """Every workflow in examples/ (input files such as order.json have no ``nodes``)."""
    out = []
    for p in sorted(EXAMPLES.glob("*.json")):
        doc = json.loads(p.read_text())
        if isinstance(doc, dict) and "nodes" in doc:
            out.append(p)
    return out


def api_tasks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_api_tasks", EXAMPLES / "api_tasks.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def process_gone(pid: int) -> bool:
    """The process has exited. A zombie counts as gone: it has exited and only waits to
    be reaped by its parent (here: PID 1 of the container, which may never reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_every_example_validates_without_warnings(db):
    # In this process (fm_cli), both forms for every example. `fm validate` still
    # imports each workflow's call targets in a short child process (fm_local.calls,
    # by design: a module's import side effects stay out of the validator); that is
    # one `python -c` per validation, not a whole `fm` process.
    files = workflow_files()
    names = {p.name for p in files}
    assert {"parallel_api_calls.json", "batch_processing.json", "fan_out_fan_in.json"} <= names
    for p in files:
        out = fm_cli(db, "validate", str(p))
        assert out.returncode == 0, (p.name, out.stdout, out.stderr)
        assert "ok" in out.stdout, (p.name, out.stdout)
        out = fm_cli(db, "validate", "--json", str(p))
        assert out.returncode == 0, (p.name, out.stderr)
        assert json.loads(out.stdout) == {"valid": True, "warnings": []}, p.name


@pytest.mark.parametrize("workers", [None, 1])
def test_parallel_api_calls(db, workers):
    # With no flag (the default worker count), and with one worker process: the http
    # nodes share the I/O lane's event loop, so ten are in flight either way.
    # 3 s per profile request (the example's default is 100 ms): the server sees ten
    # requests in flight only when the engine lines them up within one request time,
    # which a loaded 2-core machine may not do in 100 ms. The engine's own record is
    # checked as well below.
    res = api.run(EXAMPLES / "parallel_api_calls.json", {"delayMs": 3000}, db=db, workers=workers)
    assert res["status"] == "succeeded", res
    out = res["output"]["enriched"]
    server = out["server"]
    # the server is stopped by the workflow's last node, and in any case exits when idle
    wait_until(lambda: process_gone(server["pid"]), 30, f"local API pid {server['pid']} exit")

    assert out["count"] == 25
    users = out["users"]
    assert [u["id"] for u in users] == list(range(1, 26))  # item order, not finish order
    for u in users:
        assert u["name"] == f"user{u['id']}" and u["email"] == f"user{u['id']}@example.com"
        assert u["profile"]["userId"] == u["id"]
        assert set(u["profile"]) == {"userId", "company", "followers", "verified"}

    assert server["profileRequests"] == 25
    assert server["maxConcurrency"] <= 10  # maxConcurrency 10 holds with more workers
    assert server["maxConcurrency"] == 10  # ... and is reached
    assert server["stopped"] is True

    nodes = {n["path"]: n for n in show_cli(db, res["id"])["nodes"]}
    for i in (0, 3, 24):
        for step in ("profile", "enrich"):
            assert nodes[f"enrich_all[{i}].{step}"]["status"] == "succeeded"
    assert nodes["enrich_all[3].profile"]["type"] == "http"
    assert nodes["enrich_all[3].enrich"]["output"] == users[3]
    assert "enrich_all[25].profile" not in nodes
    profiles = [
        (n["startedAt"], n["finishedAt"])
        for p, n in nodes.items()
        if re.fullmatch(r"enrich_all\[\d+\]\.profile", p)
    ]
    assert len(profiles) == 25
    assert peak_overlap(profiles) == 10  # the engine's view: 10 at once, never 11
    assert [nodes[p]["status"] for p in ("api", "users", "collect", "stats", "stop")] == [
        "succeeded"
    ] * 5


def test_local_api_exits_by_itself_when_idle():
    """A workflow that fails before ``stop_api`` leaves nothing behind."""
    tasks = api_tasks()
    info = tasks.start_api(users=3, delayMs=0, idleTimeout=1)
    assert info["baseUrl"].startswith("http://127.0.0.1:")
    assert tasks._get_json(info["baseUrl"] + "/users") == [
        {"id": i, "name": f"user{i}", "email": f"user{i}@example.com"} for i in (1, 2, 3)
    ]
    assert not process_gone(info["pid"])
    wait_until(lambda: process_gone(info["pid"]), 15, "idle local API to exit")


def _item_times(db: Path, eid: str) -> dict[int, tuple[float, float]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT path, started_at, finished_at FROM node_runs "
            "WHERE execution_id=? AND node_type='python' AND path LIKE 'process_all[%].process'",
            (eid,),
        ).fetchall()
    finally:
        conn.close()
    times = {}
    for path, start, end in rows:
        m = re.fullmatch(r"process_all\[(\d+)\]\.process", path)
        assert m, path
        assert start is not None and end is not None and end >= start, (path, start, end)
        times[int(m.group(1))] = (start, end)
    return times


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    # an end at the same instant as a start is processed first (-1 sorts before 1)
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    return peak


@pytest.mark.slow
def test_batch_processing(db):
    res = api.run(EXAMPLES / "batch_processing.json", db=db, workers=10)
    assert res["status"] == "succeeded", res
    summary = res["output"]["summary"]
    assert summary["records"] == 1000
    assert summary["perBatch"] == {str(b): 100 for b in range(10)}

    nodes = {n["path"]: n for n in show_cli(db, res["id"])["nodes"]}
    results = nodes["process_all"]["output"]
    assert len(results) == 1000
    assert [r["id"] for r in results] == list(range(1000))
    assert [r["index"] for r in results] == list(range(1000))
    assert [r["batch"] for r in results] == [i // 100 for i in range(1000)]
    assert Counter(r["batch"] for r in results) == {b: 100 for b in range(10)}
    assert summary["sumOfSquares"] == sum(r["square"] for r in results)

    times = _item_times(db, res["id"])
    assert sorted(times) == list(range(1000))
    for k in range(9):
        last_end = max(times[i][1] for i in range(k * 100, k * 100 + 100))
        next_start = min(times[i][0] for i in range(k * 100 + 100, k * 100 + 200))
        assert next_start - last_end >= 1.0, (k, next_start - last_end)
    assert peak_overlap(list(times.values())) <= 5


def test_enrich_1000_keeps_100_calls_in_flight(db):
    """examples/enrich_1000.json, as the README runs it: 1,000 profile calls, at most
    100 in flight as the server counts them, each user once, in item order."""
    res = api.run(EXAMPLES / "enrich_1000.json", db=db)
    assert res["status"] == "succeeded", res
    out = res["output"]["enriched"]
    assert out["count"] == 1000
    assert out["first"]["id"] == 1 and out["first"]["company"]
    server = out["server"]
    assert server["profileRequests"] == 1000
    assert 10 < server["maxConcurrency"] <= 100
    assert server["stopped"] is True
    lanes = {n["lane"] for n in show_cli(db, res["id"])["nodes"] if n["path"].endswith(".profile")}
    assert lanes == {"io"}


def test_flaky_api_fails_during_the_outage_and_its_retry_runs_the_7_failed_items(db, tmp_path):
    """examples/flaky_api.json, as the README tour's step 8 runs it: while the outage
    file exists the items i % 15 == 7 fail (7 of 100) and the execution fails; with
    the file removed, `fm retry` calls the API for exactly those 7 items and succeeds."""
    outage, calls = tmp_path / "outage", tmp_path / "calls.txt"
    outage.touch()
    inp = {"seconds": 0.01, "outage": str(outage), "calls": str(calls)}
    res = api.run(EXAMPLES / "flaky_api.json", inp, db=db, workers=2)
    assert res["status"] == "failed", res
    down = [i for i in range(100) if i % 15 == 7]
    assert len(down) == 7
    assert sorted(int(x) for x in calls.read_text().split()) == list(range(100))
    items = {
        n["path"]: n["status"]
        for n in show_cli(db, res["id"])["nodes"]
        if re.fullmatch(r"each\[\d+\]", n["path"])
    }
    assert len(items) == 100
    assert sorted(int(p[5:-1]) for p, s in items.items() if s == "failed") == down
    assert Counter(items.values()) == {"succeeded": 93, "failed": 7}

    outage.unlink()
    calls.unlink()
    out = fm_cli(db, "retry", res["id"], "--json")
    assert out.exit_code == 0, (out.stdout, out.stderr)
    retry = json.loads(out.stdout)
    assert retry["status"] == "succeeded" and retry["retryOf"] == res["id"], retry
    assert retry["output"] == {"total": sum(i * i for i in range(100))}
    assert sorted(int(x) for x in calls.read_text().split()) == down
