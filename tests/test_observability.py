"""Tools for the person on call: ``fm logs -f``, the filters of ``fm ls``,
``fm trace --format otlp-json`` and the daemon's OTLP exporter
(docs/observability.md). Real daemons, real worker processes, a real HTTP server
that records what the exporter posts."""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ROOT,
    exec_status,
    fm,
    fm_cli,
    python_node,
    query,
    run_wf,
    undo_version_7,
    wait_until,
)

py = partial(python_node, "obstasks")
HERE = Path(__file__).parent


@pytest.fixture
def owf(wf: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    """Like ``wf``, with obstasks.py beside the workflow."""
    (tmp_path / "obstasks.py").write_text((HERE / "obstasks.py").read_text())
    return wf


# --- fm logs -f ----------------------------------------------------------------


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Follower:
    """``fm logs -f`` in a subprocess, its stdout read line by line as it comes."""

    def __init__(self, db: Path, *args: str) -> None:
        env = dict(os.environ, FM_DB=str(db), PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fm_local", "logs", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            # Ctrl-C as at a terminal: pytest started in the background by a shell
            # without job control ignores SIGINT, and its children would inherit that
            # (Python then installs no KeyboardInterrupt handler).
            preexec_fn=_default_sigint,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        """The first line (not seen before) that contains ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line with {pattern!r} within {timeout}s; got {self.seen}"
                ) from None
            self.seen.append(line)
            if pattern in line:
                return line

    def end(self, timeout: float = 60) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        while not self.lines.empty() or self.proc.stdout and not self.proc.stdout.closed:
            try:
                self.seen.append(self.lines.get(timeout=0.5))
            except queue.Empty:
                break
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def followers() -> Iterator[Callable[..., Follower]]:
    started: list[Follower] = []

    def start(db: Path, *args: str) -> Follower:
        f = Follower(db, *args)
        started.append(f)
        return f

    yield start
    for f in started:
        f.kill()


def two_steps(tmp_path: Path, fail: bool = False) -> dict[str, Any]:
    """``first`` prints at once; ``second`` waits for the gate file ``go``, prints,
    and fails if ``fail``."""
    return {
        "name": "talkative",
        "nodes": [
            py("first", "say", {"text": "hello from first"}),
            py(
                "second",
                "say",
                {"text": "hello from second", "gate": str(tmp_path / "go"), "fail": fail},
            ),
        ],
        "edges": [{"source": "first", "target": "second"}],
    }


def test_logs_follow_prints_lines_as_they_come_and_exits_with_the_executions_code(
    owf, db, tmp_path, daemon, followers
):
    daemon()
    eid = fm(db, "submit", str(owf(two_steps(tmp_path)))).stdout.strip()
    f = followers(db, eid, "-f")
    line = f.wait_for("hello from first")
    assert re.match(r"^\d\d:\d\d:\d\d\.\d{3} first#1 stdout: hello from first$", line), line
    # The execution waits for the gate: the follower is still there, waiting too.
    assert exec_status(db, eid) == "running"
    assert f.proc.poll() is None
    (tmp_path / "go").write_text("")
    assert "second#1 stdout: hello from second" in f.wait_for("hello from second")
    code, err = f.end()
    assert code == 0, err
    assert f"execution {eid} succeeded" in err
    assert exec_status(db, eid) == "succeeded"


def test_logs_follow_of_a_failing_execution_prints_the_error_and_exits_1(
    owf, db, tmp_path, daemon, followers
):
    daemon()
    eid = fm(db, "submit", str(owf(two_steps(tmp_path, fail=True)))).stdout.strip()
    f = followers(db, eid, "--follow", "--node", "second")
    wait_until(lambda: query(db, "SELECT 1 FROM logs WHERE execution_id=?", (eid,)), 60, "first")
    (tmp_path / "go").write_text("")
    f.wait_for("hello from second")
    error = f.wait_for("second#1 failed: NODE_ERROR: ValueError: failed after")
    assert error
    f.wait_for("raise ValueError")  # its traceback follows
    code, err = f.end()
    assert code == 1, err
    assert f"execution {eid} failed" in err
    assert not any("hello from first" in s for s in f.seen), "--node second only"


def submitted(db: Path) -> list[dict[str, Any]]:
    """The executions in ``db``; none while it is still being created."""
    try:
        return query(db, "SELECT id FROM executions") if db.exists() else []
    except sqlite3.OperationalError:  # no such table yet: fm run is creating the file
        return []


def test_logs_follow_json_lines_of_an_embedded_fm_run_in_another_process(
    owf, db, tmp_path, followers
):
    path = owf(two_steps(tmp_path))
    env = dict(os.environ, FM_DB=str(db), PYTHONPATH=str(ROOT))
    run = subprocess.Popen(
        [sys.executable, "-m", "fm_local", "run", str(path), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        eid = wait_until(lambda: submitted(db), 60, "fm run submits")[0]["id"]
        f = followers(db, eid, "-f", "--json")
        first = json.loads(f.wait_for("hello from first"))
        assert first["path"] == "first" and first["attempt"] == 1
        assert first["stream"] == "stdout" and first["line"] == "hello from first"
        assert set(first) == {"path", "attempt", "ts", "stream", "line"}
        assert run.poll() is None and f.proc.poll() is None
        (tmp_path / "go").write_text("")
        second = json.loads(f.wait_for("hello from second"))
        assert second["path"] == "second"
        code, err = f.end()
        assert code == 0, err
        assert all(json.loads(s) for s in f.seen), "every stdout line is a JSON object"
    finally:
        (tmp_path / "go").write_text("")
        run.wait(60)
    assert run.returncode == 0


def test_logs_follow_ctrl_c_exits_130_without_a_traceback(owf, db, tmp_path, daemon, followers):
    daemon()
    eid = fm(db, "submit", str(owf(two_steps(tmp_path)))).stdout.strip()
    f = followers(db, eid, "-f")
    f.wait_for("hello from first")
    f.proc.send_signal(signal.SIGINT)
    code, err = f.end()
    assert code == 130
    assert "Traceback" not in err and "error" not in err, err
    assert exec_status(db, eid) == "running", "following never changes the execution"
    (tmp_path / "go").write_text("")


def test_logs_follow_of_an_ended_execution_prints_it_all_and_exits_at_once(owf, db, tmp_path):
    (tmp_path / "go").write_text("")
    eid = run_wf(owf(two_steps(tmp_path, fail=True)), db)["id"]
    res = fm_cli(db, "logs", eid, "-f")
    assert res.exit_code == 1
    assert "hello from first" in res.stdout and "hello from second" in res.stdout
    assert "second#1 failed: NODE_ERROR" in res.stdout
    assert f"execution {eid} failed" in res.stderr
    # Without -f: the same lines, exit 0.
    plain = fm_cli(db, "logs", eid)
    assert plain.exit_code == 0 and plain.stdout == res.stdout


def test_logs_follow_reads_new_lines_by_keyset(db, owf, tmp_path):
    """The follower's queries read the rows after the last one seen (rowid ranges),
    not every row of the execution again."""
    from fm_local.store import Store

    (tmp_path / "go").write_text("")
    eid = run_wf(owf(two_steps(tmp_path)), db)["id"]
    s = Store(db, readonly=True)
    try:
        for sql, args in [
            (
                "SELECT * FROM logs WHERE id > ? AND +execution_id = ? ORDER BY id LIMIT ?",
                (0, eid, 9),
            ),
            ("SELECT * FROM attempts WHERE id >= ? AND +execution_id = ? ORDER BY id", (0, eid)),
        ]:
            plan = " ".join(r[3] for r in s.conn.execute("EXPLAIN QUERY PLAN " + sql, args))
            assert "INTEGER PRIMARY KEY (rowid>" in plan, plan
        lines = s.logs_after(eid, 0)
        assert [r["line"] for r in lines] == ["hello from first", "hello from second"]
        assert s.logs_after(eid, lines[0]["id"]) == lines[1:]
        assert s.logs_after(eid, 0, "second") == lines[1:]
    finally:
        s.close()


# --- fm ls filters ---------------------------------------------------------------

OK = {"name": "etl-orders", "nodes": [py("a", "say", {"text": "ok"})]}
BAD = {"name": "etl-users", "nodes": [py("a", "say", {"text": "bad", "fail": True})]}
OTHER = {"name": "report", "nodes": [py("a", "say", {"text": "ok"})]}


@pytest.fixture(scope="module")
def listed_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Executions of three workflows in four statuses, some submitted days ago: made
    once per module (four real runs), in a folder of its own that no test touches."""
    from fm_local import api

    folder = tmp_path_factory.mktemp("listed")
    for tasks in ("fmtasks.py", "obstasks.py"):
        (folder / tasks).write_text((HERE / tasks).read_text())
    db = folder / "fm.db"

    def doc(d: dict[str, Any], name: str) -> Path:
        p = folder / f"{name}.json"
        p.write_text(json.dumps(d))
        return p

    ids = {
        "ok_new": run_wf(doc(OK, "ok_new"), db)["id"],
        "bad_new": run_wf(doc(BAD, "bad_new"), db)["id"],
        "report_old": run_wf(doc(OTHER, "report_old"), db)["id"],
        "ok_old": run_wf(doc(OK, "ok_old"), db)["id"],
    }
    ids["queued"] = api.submit(doc(OTHER, "queued"), db=db)  # no supervisor: stays queued
    three_days = time.time() - 3 * 86400
    con = sqlite3.connect(db)
    try:
        with con:  # as if submitted three days ago
            con.execute(
                "UPDATE executions SET created_at=? WHERE id IN (?, ?)",
                (three_days, ids["report_old"], ids["ok_old"]),
            )
    finally:
        con.close()
    return db, ids


@pytest.fixture
def listed_db(listed_template: tuple[Path, dict[str, str]], db: Path) -> dict[str, str]:
    """The test's own copy of ``listed_template`` at ``db`` (the database file and
    whatever SQLite keeps beside it): a test may change it, the next gets a fresh one."""
    template, ids = listed_template
    for src in template.parent.glob(template.name + "*"):
        shutil.copyfile(src, db.with_name(db.name + src.name[len(template.name) :]))
    return dict(ids)


def ls(db: Path, *args: str) -> list[str]:
    res = fm_cli(db, "ls", "--json", *args)
    assert res.exit_code == 0, res.stderr
    return [r["id"] for r in json.loads(res.stdout)]


def test_ls_filters_by_status_workflow_and_time(db, listed_db):
    ids = listed_db
    assert set(ls(db)) == set(ids.values())
    assert ls(db, "--status", "failed") == [ids["bad_new"]]
    assert set(ls(db, "--status", "failed,queued")) == {ids["bad_new"], ids["queued"]}
    assert set(ls(db, "--status", "failed", "--status", "queued")) == {
        ids["bad_new"],
        ids["queued"],
    }
    assert set(ls(db, "--workflow", "etl-orders")) == {ids["ok_new"], ids["ok_old"]}
    assert set(ls(db, "--workflow", "etl-*")) == {ids["ok_new"], ids["ok_old"], ids["bad_new"]}
    assert ls(db, "--workflow", "etl") == [], "a name without glob characters is exact"
    assert set(ls(db, "--since", "1d")) == {ids["ok_new"], ids["bad_new"], ids["queued"]}
    assert set(ls(db, "--since", "1w")) == set(ids.values())
    two_days_ago = time.strftime("%Y-%m-%dT%H:%M", time.localtime(time.time() - 2 * 86400))
    assert set(ls(db, "--since", two_days_ago)) == {ids["ok_new"], ids["bad_new"], ids["queued"]}
    assert ls(db, "--status", "succeeded", "--workflow", "etl-*", "--since", "2h") == [
        ids["ok_new"]
    ]
    assert len(ls(db, "--limit", "2")) == 2
    assert len(ls(db, "--limit", "0")) == 5, "--limit 0: all"
    newest_first = ls(db)
    created = {r["id"]: r["created_at"] for r in query(db, "SELECT id, created_at FROM executions")}
    assert [created[i] for i in newest_first] == sorted(created.values(), reverse=True)


def test_ls_json_keeps_its_shape(db, listed_db):
    rows = json.loads(fm_cli(db, "ls", "--json", "--status", "failed").stdout)
    assert set(rows[0]) == {
        "id", "workflow", "status", "priority", "createdAt", "startedAt", "finishedAt",
        "error", "progress",
    }  # fmt: skip


def test_ls_refuses_a_bad_filter_in_one_line(db, listed_db):
    for args, words in [
        (("--status", "succeeded,runing"), ["'runing'", "queued, running, paused, succeeded"]),
        (("--since", "yesterday"), ["--since 'yesterday'", "2h", "2026-12-03"]),
        (("--since", "5x"), ["--since '5x'"]),
        (("--limit", "-1"), ["--limit"]),
    ]:
        res = fm_cli(db, "ls", *args)
        assert res.exit_code == 2, (args, res.stdout, res.stderr)
        assert res.stdout == ""
        text = res.stderr.strip()
        assert "Traceback" not in text
        for w in words:
            assert w in text, (args, text)


def test_ls_human_output_says_when_filters_match_nothing(db, listed_db):
    res = fm_cli(db, "ls", "--workflow", "nope")
    assert res.exit_code == 0 and res.stdout.strip() == "no executions match these filters"


def test_ls_newest_first_reads_an_index(db, listed_db):
    from fm_local.store import Store

    s = Store(db, readonly=True)
    try:
        for sql in [
            "SELECT * FROM executions ORDER BY created_at DESC LIMIT 20",
            "SELECT * FROM executions WHERE created_at >= 0 ORDER BY created_at DESC LIMIT 20",
            "SELECT * FROM executions WHERE workflow='x' ORDER BY created_at DESC LIMIT 20",
        ]:
            plan = " ".join(r[3] for r in s.conn.execute("EXPLAIN QUERY PLAN " + sql))
            assert "USING INDEX executions_" in plan and "TEMP B-TREE" not in plan, (sql, plan)
    finally:
        s.close()


def test_a_version_5_file_is_read_as_it_is_and_upgraded_by_a_writer(db, listed_db):
    from fm_local import store

    with sqlite3.connect(db) as con:
        con.execute("DROP INDEX executions_created")
        con.execute("DROP INDEX executions_workflow")
        undo_version_7(con)
        con.execute("UPDATE meta SET value='5' WHERE key='schema_version'")
    assert set(ls(db, "--workflow", "etl-*")) == {
        listed_db["ok_new"],
        listed_db["ok_old"],
        listed_db["bad_new"],
    }, "read commands read a version 5 file (only indexes are missing)"
    assert query(db, "SELECT value FROM meta WHERE key='schema_version'") == [{"value": "5"}]
    store.Store(db).close()  # a writer migrates
    names = {r["name"] for r in query(db, "SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"executions_created", "executions_workflow"} <= names
    assert query(db, "SELECT value FROM meta WHERE key='schema_version'") == [
        {"value": str(store.SCHEMA_VERSION)}
    ]


# --- fm trace --format otlp-json -------------------------------------------------


def parse_otlp(doc: dict[str, Any]) -> Any:
    """``doc`` through the OpenTelemetry protocol's own protobuf classes: every key
    must be a field of ExportTraceServiceRequest (no unknown ones). OTLP/JSON writes
    trace and span ids in hex where protobuf's JSON mapping expects base64: they are
    converted first, after checking they are hex of the right length."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    doc = json.loads(json.dumps(doc))
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                assert re.fullmatch(r"[0-9a-f]{32}", span["traceId"]), span["traceId"]
                assert span["traceId"] != "0" * 32
                for key in ("spanId", "parentSpanId"):
                    if key in span:
                        assert re.fullmatch(r"[0-9a-f]{16}", span[key]), span[key]
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
                span["traceId"] = base64.b64encode(bytes.fromhex(span["traceId"])).decode()
    return json_format.Parse(json.dumps(doc), ExportTraceServiceRequest())


def spans_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}


TRACED = {
    "name": "traced",
    "nodes": [
        {**py("flaky", "flaky_once", {"counter": "COUNTER"}), "retry": {"maxAttempts": 2}},
        {
            "id": "each",
            "type": "loop",
            "arrayPath": "{{[1, 2]}}",
            "parallel": True,
            "body": {"nodes": [py("step", "say", {"text": "{{item}}"})]},
        },
        py("boom", "say", {"text": "last", "fail": True}),
    ],
    "edges": [{"source": "flaky", "target": "each"}, {"source": "each", "target": "boom"}],
}


def traced(owf, tmp_path: Path) -> Path:
    doc = json.loads(json.dumps(TRACED).replace("COUNTER", str(tmp_path / "counter")))
    return owf(doc)


def test_trace_otlp_json_is_an_export_trace_service_request(owf, db, tmp_path):
    eid = run_wf(traced(owf, tmp_path), db)["id"]
    res = fm_cli(db, "trace", eid, "--format", "otlp-json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    req = parse_otlp(doc)
    assert len(req.resource_spans[0].scope_spans[0].spans) == len(spans_of(doc))
    rs = doc["resourceSpans"][0]
    assert {"key": "service.name", "value": {"stringValue": "fm_local"}} in rs["resource"][
        "attributes"
    ]
    assert rs["scopeSpans"][0]["scope"]["name"] == "fm_local"
    spans = spans_of(doc)
    row = query(db, "SELECT * FROM executions WHERE id=?", (eid,))[0]
    assert len({s["traceId"] for s in spans}) == 1, "one trace"
    ids = [s["spanId"] for s in spans]
    assert len(ids) == len(set(ids)), "span ids are unique"
    for s in spans:
        assert int(s["startTimeUnixNano"]) <= int(s["endTimeUnixNano"])
        assert isinstance(s["startTimeUnixNano"], str) and isinstance(s["kind"], int)
        assert s.get("parentSpanId") in (None, *ids), "every parent is in the trace"
    by_path = {
        attrs(s)["fm.node.path"]: s
        for s in spans
        if "fm.node.path" in attrs(s) and "fm.attempt.seq" not in attrs(s)
    }
    root = next(s for s in spans if "parentSpanId" not in s)
    ra = attrs(root)
    assert root["name"] == "traced"
    assert ra["fm.execution.id"] == eid and ra["fm.trace_id"] == row["trace_id"]
    assert ra["fm.workflow"] == "traced" and ra["fm.status"] == "failed"
    assert root["status"]["code"] == 2 and "boom" in root["status"]["message"]
    # The node tree: loop -> item -> body node; the rest under the execution.
    assert by_path["flaky"]["parentSpanId"] == root["spanId"]
    assert by_path["each"]["parentSpanId"] == root["spanId"]
    assert by_path["each[1]"]["parentSpanId"] == by_path["each"]["spanId"]
    assert by_path["each[1].step"]["parentSpanId"] == by_path["each[1]"]["spanId"]
    assert by_path["each[1].step"]["name"] == "each[].step", "low-cardinality span names"
    step = attrs(by_path["each[0].step"])
    assert step["fm.status"] == "succeeded" and step["fm.node.type"] == "python"
    assert int(step["fm.worker.pid"]) > 0 and step["fm.lane"] == "process"
    assert step["fm.trace_id"].startswith(row["trace_id"])
    assert by_path["each[0].step"]["status"] == {"code": 1}
    # A failed node: ERROR with its message, and an exception event with the traceback.
    boom = by_path["boom"]
    assert boom["status"]["code"] == 2
    assert boom["status"]["message"] == "NODE_ERROR: ValueError: failed after 'last'"
    (event,) = boom["events"]
    ev = attrs(event)
    assert event["name"] == "exception" and ev["exception.type"] == "ValueError"
    assert "raise ValueError" in ev["exception.stacktrace"]
    # A node that took two tries: a child span per try, the first one an error.
    tries = [s for s in spans if s.get("parentSpanId") == by_path["flaky"]["spanId"]]
    assert [attrs(t)["fm.attempt.seq"] for t in tries] == ["1", "2"]
    assert [t["status"]["code"] for t in tries] == [2, 1]
    assert "first call fails" in tries[0]["status"]["message"]
    assert by_path["flaky"]["startTimeUnixNano"] == tries[0]["startTimeUnixNano"]
    # Deterministic: the same execution gives the same ids.
    again = json.loads(fm_cli(db, "trace", eid, "--format", "otlp-json").stdout)
    assert [s["spanId"] for s in spans_of(again)] == ids
    import hashlib

    from fm_local.otlp import trace_id_of

    assert root["traceId"] == hashlib.sha256(row["trace_id"].encode()).hexdigest()[:32]
    assert trace_id_of(row["trace_id"]) == root["traceId"]


def test_trace_otlp_json_to_a_file(owf, db, tmp_path):
    (tmp_path / "go").write_text("")
    eid = run_wf(owf(two_steps(tmp_path)), db)["id"]
    out = tmp_path / "trace.json"
    res = fm_cli(db, "trace", eid, "--format", "otlp-json", "-o", str(out))
    assert res.exit_code == 0 and "(3 spans)" in res.stderr
    parse_otlp(json.loads(out.read_text()))


def test_otlp_parent_paths():
    from fm_local.otlp import parent_path

    paths = {"a", "loop", "loop[3]", "loop[3].inner", "loop[3].inner[0]", "loop[3].inner[0].x"}
    assert parent_path("a", paths) is None
    assert parent_path("loop[3]", paths) == "loop"
    assert parent_path("loop[3].inner[0].x", paths) == "loop[3].inner[0]"
    assert parent_path("loop[3].inner[0]", paths) == "loop[3].inner"
    assert parent_path("a->fb", paths) == "a"
    assert parent_path("a->compensate", paths) == "a"
    assert parent_path("loop[3].inner[0].x->replay#2", paths) == "loop[3].inner[0].x"
    assert parent_path("signal:note#3->h", paths) is None
    assert parent_path("loop[9].y", paths) == "loop", "an item without a row: under its loop"


# --- the daemon's exporter -------------------------------------------------------


class Collector:
    """An OTLP/HTTP collector stand-in: a real HTTP server on 127.0.0.1 recording
    each POSTed body; answers 503 to the first ``fail_first`` posts."""

    def __init__(self, fail_first: int = 0) -> None:
        self.posts: list[dict[str, Any]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.fail_first > 0:
                    outer.fail_first -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.posts.append(
                    {
                        "path": self.path,
                        "type": self.headers.get("Content-Type"),
                        "body": json.loads(body),
                    }
                )
                answer = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def traces(self) -> dict[str, list[dict[str, Any]]]:
        """fm.execution.id -> the spans received for it."""
        out: dict[str, list[dict[str, Any]]] = {}
        for p in self.posts:
            for s in spans_of(p["body"]):
                out.setdefault(attrs(s)["fm.execution.id"], []).append(s)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Callable[..., Collector]]:
    made: list[Collector] = []

    def make(fail_first: int = 0) -> Collector:
        c = Collector(fail_first)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def test_daemon_exports_each_ended_execution_once(owf, db, tmp_path, daemon, collector):
    c = collector()
    d = daemon(extra=("--otlp-endpoint", f"http://127.0.0.1:{c.port}"))
    (tmp_path / "go").write_text("")
    ok = [fm(db, "submit", str(owf(two_steps(tmp_path)))).stdout.strip() for _ in range(2)]
    bad = fm(db, "submit", str(owf(two_steps(tmp_path, fail=True)))).stdout.strip()
    for eid in [*ok, bad]:
        fm(db, "wait", eid)
    wait_until(lambda: len(c.traces()) == 3, 60, "three executions exported")
    assert all(p["path"] == "/v1/traces" for p in c.posts), "a base URL gets /v1/traces"
    assert all(p["type"] == "application/json" for p in c.posts)
    for p in c.posts:
        parse_otlp(p["body"])
    traces = c.traces()
    for eid in [*ok, bad]:
        mine = json.loads(fm_cli(db, "trace", eid, "--format", "otlp-json").stdout)
        expected = sorted(s["spanId"] for s in spans_of(mine))
        assert sorted(s["spanId"] for s in traces[eid]) == expected, "the same spans, once each"
        root = next(s for s in traces[eid] if "parentSpanId" not in s)
        assert attrs(root)["fm.status"] == ("failed" if eid == bad else "succeeded")
    # Nothing more arrives, up to the daemon's stop: one export per execution.
    assert d.stop() == 0
    assert len(c.posts) == 3


def test_a_collector_that_fails_at_first_gets_the_execution_on_a_retry(
    owf, db, tmp_path, daemon, collector
):
    c = collector(fail_first=1)
    d = daemon(extra=("--otlp-endpoint", f"http://127.0.0.1:{c.port}/v1/traces"))
    (tmp_path / "go").write_text("")
    eid = fm(db, "submit", str(owf(two_steps(tmp_path)))).stdout.strip()
    assert fm(db, "wait", eid).returncode == 0
    wait_until(lambda: c.traces().get(eid), 60, "the retry arrives")
    assert len(c.posts) == 1
    d.stop()
    log = d.log_path.read_text()
    assert f"OTLP export of execution {eid}" in log and "(try 1 of 4): HTTP 503" in log, log


def test_a_dead_collector_does_not_stop_the_daemon(owf, db, tmp_path, daemon):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    d = daemon(extra=("--otlp-endpoint", f"http://127.0.0.1:{port}/v1/traces"))
    (tmp_path / "go").write_text("")
    ids = [fm(db, "submit", str(owf(two_steps(tmp_path)))).stdout.strip() for _ in range(3)]
    for eid in ids:
        res = fm(db, "wait", eid, "--timeout", "60")
        assert res.returncode == 0, res.stderr
    wait_until(lambda: "failed (try 1 of 4)" in d.log_path.read_text(), 30, "a log line")
    assert d.proc is not None and d.proc.poll() is None, "the daemon still runs"
    # More work after the failures: still served.
    eid = fm(db, "submit", str(owf(two_steps(tmp_path)))).stdout.strip()
    assert fm(db, "wait", eid, "--timeout", "60").returncode == 0
    assert d.stop() == 0, "a graceful stop does not hang on the collector"
    log = d.log_path.read_text()
    assert "Traceback" not in log
    assert "Connection refused" in log, log


def test_exporter_never_blocks_the_caller_and_drops_what_does_not_fit(db, owf, tmp_path):
    from fm_local.otlp_export import OtlpExporter

    (tmp_path / "go").write_text("")
    eid = run_wf(owf(two_steps(tmp_path)), db)["id"]
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ex = OtlpExporter(db, f"http://127.0.0.1:{port}/v1/traces", tries=2, backoff=0.05, queue_size=2)
    ex.start()
    try:
        for _ in range(50):
            ex.finished(eid)  # returns at once, whatever the collector does
        assert ex.dropped >= 47
    finally:
        ex.close(timeout=2)
    wait_until(lambda: ex.dropped == 50, 30, "each one dropped once tried")
    assert ex.sent == 0


def test_exporter_sends_a_big_execution_in_parts(db, owf, tmp_path, collector):
    from fm_local.otlp_export import OtlpExporter

    (tmp_path / "go").write_text("")
    eid = run_wf(owf(two_steps(tmp_path)), db)["id"]
    c = collector()
    ex = OtlpExporter(db, f"http://127.0.0.1:{c.port}/v1/traces", max_spans=2)
    ex.start()
    try:
        ex.finished(eid)
        wait_until(lambda: ex.sent == 1, 30, "exported")
    finally:
        ex.close()
    assert [len(spans_of(p["body"])) for p in c.posts] == [2, 1]
    assert len({s["spanId"] for s in c.traces()[eid]}) == 3


def test_endpoint_urls():
    from fm_local.otlp_export import endpoint_url

    assert endpoint_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert endpoint_url("http://h:4318/") == "http://h:4318/v1/traces"
    assert endpoint_url("https://tempo.example/otlp/v1/traces") == (
        "https://tempo.example/otlp/v1/traces"
    )
    for bad in ("127.0.0.1:4318", "grpc://h:4317", "http://", "http://h:99999", "nonsense"):
        assert endpoint_url(bad) is None, bad


def test_daemon_refuses_a_bad_endpoint_in_one_line(db):
    res = fm(db, "daemon", "--otlp-endpoint", "localhost:4318", timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: --otlp-endpoint 'localhost:4318': expected an http(s) URL of an OTLP/HTTP "
        "collector, e.g. http://127.0.0.1:4318/v1/traces"
    ]


def test_logs_follow_into_a_reader_that_stops_early_ends_quietly(owf, db, tmp_path, daemon):
    daemon()
    eid = fm(db, "submit", str(owf(two_steps(tmp_path)))).stdout.strip()
    env = dict(os.environ, FM_DB=str(db), PYTHONPATH=str(ROOT))
    status = tmp_path / "status"
    # grep -m1 exits at its first match, as a person waiting for one line would;
    # the follower meets the closed pipe at its next line.
    pipeline = subprocess.Popen(
        f"{sys.executable} -m fm_local logs -f {eid} 2>{tmp_path / 'err'} "
        f"| grep -m1 'hello from first'; echo ${{PIPESTATUS[0]}} > {status}",
        shell=True,
        executable="/bin/bash",
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert pipeline.stdout is not None
        assert "hello from first" in pipeline.stdout.readline()
        (tmp_path / "go").write_text("")
        pipeline.wait(60)
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
    assert status.read_text().strip() == "141"
    assert (tmp_path / "err").read_text() == "", "no traceback, no error line"


def test_logs_follow_shows_a_running_nodes_lines_before_it_ends(
    owf, db, tmp_path, daemon, followers
):
    """The process lane streams a running try's lines: the first line is there while
    the node still runs, and every line is recorded once, in order."""
    daemon()
    gate = tmp_path / "go"
    doc = {
        "name": "long-talk",
        "nodes": [py("long", "talk", {"first": "one", "gate": str(gate), "last": "two"})],
    }
    eid = fm(db, "submit", str(owf(doc))).stdout.strip()
    f = followers(db, eid, "-f")
    assert "long#1 stdout: one" in f.wait_for("stdout: one")
    rows = query(db, "SELECT status FROM node_runs WHERE execution_id=? AND path='long'", (eid,))
    assert rows == [{"status": "running"}], "the line came while its node ran"
    gate.write_text("")
    f.wait_for("stdout: two")
    code, err = f.end()
    assert code == 0, err
    lines = query(db, "SELECT line, attempt FROM logs WHERE execution_id=? ORDER BY id", (eid,))
    assert lines == [{"line": "one", "attempt": 1}, {"line": "two", "attempt": 1}]


def test_a_try_stopped_by_its_timeout_keeps_the_lines_it_printed(owf, db, tmp_path, daemon):
    daemon()
    doc = {
        "name": "hangs",
        "nodes": [
            py(
                "stuck",
                "talk",
                {
                    "first": "before the hang",
                    "gate": str(tmp_path / "g"),
                    "last": "-",
                    "hang": True,
                },
                timeout=2000,
            )
        ],
    }
    eid = fm(db, "submit", str(owf(doc))).stdout.strip()
    out = fm(db, "wait", eid, timeout=120)
    assert out.returncode == 1
    (row,) = query(
        db, "SELECT status, error FROM node_runs WHERE execution_id=? AND path='stuck'", (eid,)
    )
    assert row["status"] == "failed" and json.loads(row["error"])["code"] == "TIMEOUT", row
    got = fm(db, "logs", eid).stdout
    assert "stuck#1 stdout: before the hang" in got, got
