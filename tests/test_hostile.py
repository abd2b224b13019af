"""Bad data inside one execution fails that execution, never the daemon.

Each case is a repro of an input that used to stop the daemon (some on every
restart): lone surrogates in printed/logged text, inputs, signal reasons and
notification recipients; a transform value whose JSON is gigabytes; a value
nested hundreds of levels deep sent to a worker; NaN and huge integers at the
boundaries. The engine runs for real (worker processes, a SQLite file); the
error boundary itself is proved by a fault injected into one execution.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from functools import partial
from typing import Any

import pytest
from conftest import ROOT, fm_cli, python_node, query, run_wf, serve_until_done, wait_until

from fm_local import api, errors
from fm_local.store import Batch, Store

py = partial(python_node, "hostiletasks")


# --- lone surrogates: text is stored as valid UTF-8 ------------------------------------------


def test_surrogate_printed_by_a_python_node_is_stored_escaped(hwf, db):
    res = run_wf(hwf({"name": "sp", "nodes": [py("a", "prints_surrogate")]}), db)
    assert res["status"] == "succeeded", res["error"]
    lines = [
        r["line"] for r in query(db, "SELECT line FROM logs WHERE execution_id=?", (res["id"],))
    ]
    assert "bad \\ud800 text" in lines


def test_surrogate_written_by_log_in_a_transform(hwf, db):
    doc = {
        "name": "sl",
        "nodes": [{"id": "t", "type": "transform", "expression": "log('x\\ud800y') or 1"}],
    }
    res = run_wf(hwf(doc), db)
    assert res["status"] == "succeeded", res["error"]
    assert res["output"] == {"t": 1}
    lines = [
        r["line"] for r in query(db, "SELECT line FROM logs WHERE execution_id=?", (res["id"],))
    ]
    assert "x\\ud800y" in lines


def test_surrogate_in_the_input_keeps_its_json_escape(hwf, db):
    doc = {"name": "si", "nodes": [{"id": "t", "type": "transform", "expression": "input.s"}]}
    res = run_wf(hwf(doc), db, input={"s": "a\ud800b"})
    assert res["status"] == "succeeded", res["error"]
    assert res["output"] == {"t": "a\ud800b"}
    raw = query(db, "SELECT output FROM executions WHERE id=?", (res["id"],))[0]["output"]
    assert "\\ud800" in raw  # JSON values keep their escapes


def test_surrogates_in_a_signal_reason_and_a_notify_recipient(hwf, db, daemon):
    doc = {
        "name": "notify",
        "settings": {"signalHandlers": {"cancel": {"action": "cancel", "notify": ["ops\ud800"]}}},
        "nodes": [{"id": "w", "type": "wait", "signal": "go"}],
    }
    path = hwf(doc)
    d = daemon(workers=1)
    eid = api.submit(path, db=db)
    wait_until(
        lambda: (
            query(db, "SELECT status FROM executions WHERE id=?", (eid,))[0]["status"] == "running"
        ),
        30,
        "execution running",
    )
    # A reason made of bytes that are not UTF-8, as a shell would pass them.
    env = {"FM_DB": str(db), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [
            sys.executable.encode(),
            b"-m",
            b"fm_local",
            b"cancel",
            eid.encode(),
            b"--reason",
            b"bad \xff bytes",
        ],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert out.returncode in (0, 1), out.stderr
    wait_until(
        lambda: (
            query(db, "SELECT status FROM executions WHERE id=?", (eid,))[0]["status"]
            == "cancelled"
        ),
        30,
        "execution cancelled",
    )
    sig = query(db, "SELECT reason, status FROM signals WHERE execution_id=?", (eid,))[0]
    assert sig["status"] == "applied"
    assert sig["reason"] == "bad \\udcff bytes"
    note = query(db, "SELECT recipient FROM notifications WHERE execution_id=?", (eid,))[0]
    assert note["recipient"] == "ops\\ud800"
    assert d.proc is not None and d.proc.poll() is None  # the daemon is still up
    canary = api.run(hwf({"name": "canary", "nodes": [py("a", "noop")]}), db=db)
    assert canary["status"] == "succeeded"


# --- values too large or too deep fail their node --------------------------------------------


def test_huge_transform_value_fails_the_node_with_output_too_large(hwf, db):
    doc = {
        "name": "huge",
        "nodes": [{"id": "t", "type": "transform", "expression": "['a' * 999999] * 3000"}],
    }
    res = run_wf(hwf(doc), db)
    assert res["status"] == "failed"
    assert res["error"]["details"]["code"] == errors.OUTPUT_TOO_LARGE
    assert "'t'" in res["error"]["message"]


def test_huge_template_in_a_task_input_fails_with_input_too_large(hwf, db):
    doc = {"name": "hugein", "nodes": [py("a", "echo", args={"x": "{{ ['a' * 999999] * 3000 }}"})]}
    res = run_wf(hwf(doc), db)
    assert res["status"] == "failed"
    assert res["error"]["details"]["code"] == errors.INPUT_TOO_LARGE


def test_deep_value_sent_to_a_worker_fails_with_input_too_deep(hwf, db):
    doc = {
        "name": "deep",
        "nodes": [
            py("a", "nested", args={"depth": 199}),
            py("b", "echo", args={"x": "{{a}}"}),
        ],
        "edges": [{"source": "a", "target": "b"}],
    }
    res = run_wf(hwf(doc), db)
    assert res["status"] == "failed"
    assert res["error"]["nodePath"] == "b"
    assert res["error"]["details"]["code"] == errors.INPUT_TOO_DEEP


def test_deep_output_of_a_worker_is_refused_by_the_worker(hwf, db):
    res = run_wf(hwf({"name": "deepout", "nodes": [py("a", "nested", args={"depth": 900})]}), db)
    assert res["status"] == "failed"
    assert res["error"]["details"]["code"] == errors.OUTPUT_NOT_SERIALIZABLE
    assert "nested deeper than" in res["error"]["message"]


# --- NaN, Infinity, huge integers: refused at the boundary -----------------------------------


@pytest.mark.parametrize(
    "text,where",
    [
        ('{"a": NaN}', "input.a"),
        ('{"a": [1, Infinity]}', "input.a[1]"),
        ('{"a": -Infinity}', "input.a"),
        ('{"a": 1e999}', "input.a"),
        ('{"a": ' + "7" * 5000 + "}", "input.a"),
        ('{"a": 1, "a": 2}', "input"),
    ],
)
def test_bad_numbers_in_an_input_are_a_usage_error(hwf, db, text, where):
    path = hwf({"name": "canary", "nodes": [py("a", "noop")]})
    result = fm_cli(db, "submit", str(path), "--input", text)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(f"error: {where}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_nan_in_a_python_api_input_is_refused(hwf, db):
    path = hwf({"name": "canary", "nodes": [py("a", "noop")]})
    with pytest.raises(errors.UsageError, match=r"input\.x\[0\]"):
        api.submit(path, {"x": [math.nan]}, db=db)


def test_priority_beyond_64_bits_is_a_usage_error(hwf, db):
    path = hwf({"name": "canary", "nodes": [py("a", "noop")]})
    result = fm_cli(db, "submit", str(path), "--priority", str(2**70))
    assert result.exit_code == 2, result.stderr


# --- the group commit loses no other row ------------------------------------------------------


def test_a_refused_row_does_not_lose_the_rest_of_the_batch(tmp_path):
    store = Store(tmp_path / "fm.db")
    try:
        b = Batch()
        now = time.time()
        b.logs.append(("e-good", "a", 1, now, "log", "fine"))
        b.logs.append(("e-text", "a", 1, now, "log", "lone \ud800 surrogate"))
        b.events.append(("e-good", None, now, "started", None))
        b.signals.append(("applied", "too big an id", now, None, 2**70))
        rejected = store.commit_batch(b)
        lines = store.conn.execute("SELECT execution_id, line FROM logs ORDER BY id").fetchall()
        assert lines == [("e-good", "fine"), ("e-text", "lone \\ud800 surrogate")]
        assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1
        assert len(rejected) == 1 and isinstance(rejected[0].error, OverflowError)
    finally:
        store.close()


# --- the error boundary ---------------------------------------------------------------------


def test_an_internal_error_fails_one_execution_and_the_others_go_on(hwf, db, caplog):
    """A bug met while advancing one execution (injected at node 'boom') fails that
    execution with INTERNAL_ERROR naming the cause; the other one succeeds, and a
    restart does not meet it again."""
    from fm_local.supervisor import Supervisor

    class Faulty(Supervisor):
        def _consider(self, frame: Any, nid: str) -> None:
            if nid == "boom":
                raise RuntimeError("injected fault")
            super()._consider(frame, nid)

    bad = hwf(
        {
            "name": "bad",
            "nodes": [py("a", "noop"), {"id": "boom", "type": "transform", "expression": "1"}],
            "edges": [{"source": "a", "target": "boom"}],
        }
    )
    good = hwf(
        {
            "name": "good",
            "nodes": [py("a", "sleep", args={"seconds": 0.5}), py("b", "noop")],
            "edges": [{"source": "a", "target": "b"}],
        }
    )
    e_bad = api.submit(bad, db=db)
    e_good = api.submit(good, db=db)
    serve_until_done(Faulty(db, workers=2), {e_bad, e_good})
    rows = {r["id"]: r for r in query(db, "SELECT id, status, error FROM executions")}
    assert rows[e_good]["status"] == "succeeded"
    assert rows[e_bad]["status"] == "failed"
    err = json.loads(rows[e_bad]["error"])
    assert err["code"] == errors.INTERNAL_ERROR
    assert "RuntimeError: injected fault" in err["message"]
    # Logged once, with its traceback, naming the execution.
    logged = [r for r in caplog.records if r.levelname == "ERROR" and e_bad in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    # A fresh supervisor finds nothing to redo: the failure was committed.
    sup2 = Supervisor(db, workers=1)
    sup2.open()
    try:
        assert e_bad not in sup2.execs
    finally:
        sup2.close()


def test_the_daemon_survives_hostile_executions_beside_canaries(hwf, db, daemon):
    d = daemon(workers=2)
    hostile = {
        "huge": {
            "name": "huge",
            "nodes": [{"id": "t", "type": "transform", "expression": "['a' * 999999] * 3000"}],
        },
        "deep": {
            "name": "deep",
            "nodes": [py("a", "nested", args={"depth": 199}), py("b", "echo", args={"x": "{{a}}"})],
            "edges": [{"source": "a", "target": "b"}],
        },
        "print": {"name": "print", "nodes": [py("a", "prints_surrogate")]},
        "log": {
            "name": "log",
            "nodes": [{"id": "t", "type": "transform", "expression": "log('\\ud800') or 2"}],
        },
    }
    canary = hwf({"name": "canary", "nodes": [py("a", "sleep", args={"seconds": 0.2})]})
    ids = {name: api.submit(hwf(doc), db=db) for name, doc in hostile.items()}
    canaries = [api.submit(canary, db=db) for _ in range(4)]
    for eid in [*ids.values(), *canaries]:
        api.wait(eid, db=db, timeout=120)
    assert d.proc is not None and d.proc.poll() is None
    status = {r["id"]: r for r in query(db, "SELECT id, status, error FROM executions")}
    assert all(status[c]["status"] == "succeeded" for c in canaries)
    assert status[ids["huge"]]["status"] == "failed"
    assert status[ids["deep"]]["status"] == "failed"
    assert status[ids["print"]]["status"] == "succeeded"
    assert status[ids["log"]]["status"] == "succeeded"


def _open_store(path: str) -> None:
    Store(path).close()


def test_concurrent_first_opens_migrate_once(tmp_path):
    """A client and a starting daemon may create the database at the same moment:
    each migration step is applied once (checked inside its write transaction)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for round_no in range(3):
        path = str(tmp_path / f"race{round_no}.db")
        procs = [ctx.Process(target=_open_store, args=(path,)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
