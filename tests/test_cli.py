"""The ``fm`` command line (SPEC §1 validation, §10 commands and exit codes).

Commands run in this process: ``fm_cli(...)`` calls ``fm_local.cli.main`` (the real
error mapping and exit codes) with click's ``CliRunner`` isolation, and gives back
the signal handlers, logger and subreaper flag an in-process ``fm run`` changes
(conftest ``process_state_kept``). Tests that call ``main`` themselves use the
``restore_process_state`` fixture for that (applied to the whole module).

A handful stay real subprocesses (``fm(...)`` runs ``python -m fm_local``), for what
only a separate process shows:

- ``test_help_exits_0_and_usage_errors_exit_2``: ``python -m fm_local --help``, the
  entry point itself (``__main__``, imports of a fresh interpreter).
- ``test_validate_good_file_subprocess``: a fresh process's stderr is empty (no
  import-time warning or stray output), besides the exact ``ok`` line.
- ``test_run_prints_output_json``: one ``fm run`` end to end; the embedded supervisor
  and its worker processes share the command's stdout/stderr, so the process's
  stdout being exactly the output JSON also says no worker wrote there (in-process,
  workers write to pytest's file descriptors, which ``CliRunner`` does not capture).
- ``test_run_failing_workflow_exits_1_naming_the_node``: the same for stderr: one
  line and the user's traceback, nothing of the engine's, from any process.

The daemon tests start ``fm daemon`` as a subprocess (the ``daemon`` fixture); the
commands sent to it run in-process.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import fm, fm_cli, python_node, show_cli, wait_until

from fm_local import __version__
from fm_local.cli import cli, main

pytestmark = pytest.mark.usefixtures("restore_process_state")

ID_RE = re.compile(r"^[0-9a-f]{12}$")


py = partial(python_node, "fmtasks")


GOOD = {"name": "good", "nodes": [py("a", "add", args={"a": 1, "b": 2})]}

FAILING = {
    "name": "failing",
    "nodes": [
        py("first", "add", args={"a": 1, "b": 1}),
        py("second", "always_fail", args={"message": "kaboom"}),
    ],
    "edges": [{"source": "first", "target": "second"}],
}

TYPED_INPUT = {
    "name": "typed",
    "inputs": {
        "type": "object",
        "properties": {
            "count": {"type": "integer"},
            "user": {"type": "object", "properties": {"age": {"type": "integer"}}},
        },
        "required": ["count"],
    },
    "nodes": [{"id": "double", "type": "transform", "expression": "input.count * 2"}],
}


def parallel_sleeps(seconds: float = 0.5) -> dict[str, Any]:
    """start -> (x, y sleeping in parallel) -> p (prints log lines)."""
    return {
        "name": "par",
        "nodes": [
            py("start", "noop"),
            py("x", "sleep", args={"seconds": seconds, "tag": "x"}),
            py("y", "sleep", args={"seconds": seconds, "tag": "y"}),
            py("p", "prints", args={"n": 2}),
        ],
        "edges": [
            {"source": "start", "target": "x"},
            {"source": "start", "target": "y"},
            {"source": "x", "target": "p"},
            {"source": "y", "target": "p"},
        ],
    }


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def assert_one_line_error(res, code: int) -> str:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert "Traceback" not in res.stdout
    err = lines(res.stderr)
    assert len(err) == 1, res.stderr
    return err[0]


def call_main(args: list[str], capsys) -> tuple[int, str, str]:
    """Run ``main`` in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    code = info.value.code
    return (0 if code is None else code), out.out, out.err


# --- fm validate ---------------------------------------------------------------------


def test_validate_good_file_with_clirunner(wf, db):
    p = wf(GOOD)
    result = CliRunner().invoke(cli, ["--db", str(db), "validate", str(p)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout
    assert "1 nodes" in result.stdout


def test_validate_good_file_subprocess(wf, db):
    p = wf(GOOD)
    res = fm(db, "validate", str(p))
    assert res.returncode == 0, res.stderr
    assert lines(res.stdout) == [f"{p}: ok (1 nodes, workflow 'good')"]
    assert res.stderr == ""


def test_validate_json_output(wf, db):
    res = fm_cli(db, "validate", str(wf(GOOD)), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"valid": True, "warnings": []}


def test_validate_malformed_json_names_line_and_column(tmp_path, db):
    p = tmp_path / "broken.json"
    p.write_text('{"name": "x",\n  "nodes": [ }\n')
    res = fm_cli(db, "validate", str(p))
    line = assert_one_line_error(res, 2)
    assert "line 2, column 14" in line
    assert res.stdout == ""


def test_validate_malformed_json_through_main(tmp_path, db, capsys):
    p = tmp_path / "broken.json"
    p.write_text("{\n\n   nodes: []}")
    code, out, err = call_main(["--db", str(db), "validate", str(p)], capsys)
    assert code == 2
    assert "line 3, column 4" in err
    assert "Traceback" not in err


def test_validate_unknown_node_type(wf, db):
    p = wf({"name": "t", "nodes": [{"id": "a", "type": "teleport"}]})
    line = assert_one_line_error(fm_cli(db, "validate", str(p)), 2)
    assert "nodes[0].type" in line
    assert "unknown node type 'teleport'" in line


def test_validate_unknown_key(wf, db):
    doc = {
        "name": "k",
        "nodes": [{"id": "a", "type": "transform", "expression": "1", "expresion": "2"}],
    }
    line = assert_one_line_error(fm_cli(db, "validate", str(wf(doc))), 2)
    assert "nodes[0].expresion" in line
    assert "unknown key" in line


def test_validate_unknown_top_level_key(wf, db):
    doc = {"name": "k", "setings": {}, "nodes": [py("a", "noop")]}
    line = assert_one_line_error(fm_cli(db, "validate", str(wf(doc))), 2)
    assert line.startswith("setings")
    assert "unknown key 'setings'" in line


def test_validate_cycle_is_printed(wf, db):
    doc = {
        "name": "c",
        "nodes": [
            {"id": "a", "type": "transform", "expression": "1"},
            {"id": "b", "type": "transform", "expression": "2"},
        ],
        "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}],
    }
    line = assert_one_line_error(fm_cli(db, "validate", str(wf(doc))), 2)
    assert "cycle: a -> b -> a" in line


def test_validate_several_problems_one_per_line(wf, db):
    doc = {
        "name": "m",
        "bogus": 1,
        "nodes": [
            {"id": "a", "type": "nope"},
            {"id": "b", "type": "transform", "expression": "1", "colour": "red"},
            {"id": "b", "type": "transform", "expression": "1"},
        ],
        "edges": [{"source": "b", "target": "zz"}],
    }
    res = fm_cli(db, "validate", str(wf(doc)))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    err = lines(res.stderr)
    assert len(err) == 5, res.stderr
    joined = "\n".join(err)
    for needle in (
        "nodes[0].type",
        "nodes[1].colour",
        "bogus: unknown key 'bogus'",
        "duplicate id",
        "edges[0].target",
    ):
        assert sum(needle in ln for ln in err) == 1, (needle, joined)


def test_validate_debug_shows_traceback_only_then(tmp_path, db):
    p = tmp_path / "broken.json"
    p.write_text("{ not json")
    plain = fm_cli(db, "validate", str(p))
    assert plain.returncode == 2
    assert "Traceback" not in plain.stderr
    debug = fm_cli(db, "--debug", "validate", str(p))
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert "line 1, column 3" in debug.stderr


def test_validate_missing_file(tmp_path, db):
    line = assert_one_line_error(fm_cli(db, "validate", str(tmp_path / "nope.json")), 2)
    assert "nope.json" in line


# --- fm run --------------------------------------------------------------------------


def test_run_prints_output_json(wf, db):
    res = fm(db, "run", str(wf(GOOD)))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"a": 3}
    assert "succeeded" in res.stderr


def test_run_json_has_exactly_four_keys(wf, db):
    res = fm_cli(db, "run", str(wf(GOOD)), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert set(doc) == {"id", "status", "output", "error"}
    assert ID_RE.match(doc["id"])
    assert doc["status"] == "succeeded"
    assert doc["output"] == {"a": 3}
    assert doc["error"] is None
    # The global spelling works as well.
    res2 = fm_cli(db, "--json", "run", str(wf(GOOD)))
    assert res2.returncode == 0
    assert set(json.loads(res2.stdout)) == {"id", "status", "output", "error"}


def test_run_with_input(wf, db):
    res = fm_cli(db, "run", str(wf(TYPED_INPUT)), "--input", '{"count": 21}')
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"double": 42}


def test_run_with_input_file(wf, db, tmp_path):
    f = tmp_path / "in.json"
    f.write_text('{"count": 5}')
    res = fm_cli(db, "run", str(wf(TYPED_INPUT)), "--input-file", str(f), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["output"] == {"double": 10}


def test_run_failing_workflow_exits_1_naming_the_node(wf, db):
    res = fm(db, "run", str(wf(FAILING)))
    assert res.returncode == 1, res.stderr
    err = lines(res.stderr)
    # One line, then only the failed node's own traceback, indented: the user's
    # frames, none of the engine's.
    assert all(ln.startswith("    ") for ln in err[1:]), res.stderr
    assert "fmtasks.py" in res.stderr and "/fm_local/" not in res.stderr
    assert "failed" in err[0]
    assert "'second'" in err[0]
    assert "kaboom" in err[0]
    assert res.stdout.strip() == ""


def test_run_failing_workflow_json(wf, db):
    res = fm_cli(db, "run", str(wf(FAILING)), "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["status"] == "failed"
    assert doc["error"]["nodePath"] == "second"
    assert "kaboom" in doc["error"]["message"]


def test_run_invalid_input_exits_2_naming_the_path(wf, db):
    p = wf(TYPED_INPUT)
    line = assert_one_line_error(fm_cli(db, "run", str(p), "--input", '{"count": "many"}'), 2)
    assert "input.count" in line
    nested = fm_cli(db, "run", str(p), "--input", '{"count": 1, "user": {"age": "old"}}')
    line = assert_one_line_error(nested, 2)
    assert "input.user.age" in line
    missing = fm_cli(db, "run", str(p), "--input", "{}")
    line = assert_one_line_error(missing, 2)
    assert "count" in line


def test_submit_invalid_input_queues_nothing(wf, db):
    p = wf(TYPED_INPUT)
    ok = fm_cli(db, "submit", str(p), "--input", '{"count": 1}')
    assert ok.returncode == 0, ok.stderr
    bad = fm_cli(db, "submit", str(p), "--input", '{"count": "x"}')
    assert_one_line_error(bad, 2)
    assert bad.stdout == ""
    listed = json.loads(fm_cli(db, "ls", "--json").stdout)
    assert [e["id"] for e in listed] == [ok.stdout.strip()]


def test_run_input_not_json_exits_2(wf, db):
    line = assert_one_line_error(fm_cli(db, "run", str(wf(GOOD)), "--input", "{bad"), 2)
    assert "--input" in line
    assert "not valid JSON" in line


def test_run_missing_file_exits_2(tmp_path, db):
    line = assert_one_line_error(fm_cli(db, "run", str(tmp_path / "absent.json")), 2)
    assert "absent.json" in line


def test_run_invalid_workflow_exits_2(wf, db):
    p = wf({"name": "t", "nodes": [{"id": "a", "type": "teleport"}]})
    line = assert_one_line_error(fm_cli(db, "run", str(p)), 2)
    assert "unknown node type" in line


def test_run_exit_codes_through_main(wf, db, capsys):
    code, out, _ = call_main(["--db", str(db), "run", str(wf(GOOD)), "--json"], capsys)
    assert code == 0
    assert json.loads(out)["output"] == {"a": 3}
    code, out, err = call_main(["--db", str(db), "run", str(wf(FAILING))], capsys)
    assert code == 1
    assert "second" in err


# --- fm submit / wait / show / output / logs / ls / timeline / trace / queue ---------


def test_submit_prints_id_alone(wf, db):
    res = fm_cli(db, "submit", str(wf(GOOD)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.endswith("\n")
    assert ID_RE.match(res.stdout.strip()), repr(res.stdout)
    assert len(res.stdout.splitlines()) == 1
    data = show_cli(db, res.stdout.strip())
    assert data["status"] == "queued"
    assert data["workflow"] == "good"
    assert data["nodes"] == []


def test_submit_priority_is_recorded(wf, db):
    eid = fm_cli(db, "submit", str(wf(GOOD)), "--priority", "7").stdout.strip()
    assert show_cli(db, eid)["priority"] == 7


def test_wait_output_show_logs_with_daemon(wf, db, daemon):
    good = fm_cli(db, "submit", str(wf(parallel_sleeps(0.2))), "--input", '{"k": 1}')
    bad = fm_cli(db, "submit", str(wf(FAILING)))
    assert good.returncode == 0 and bad.returncode == 0
    gid, bid = good.stdout.strip(), bad.stdout.strip()
    daemon(workers=3)

    w = fm_cli(db, "wait", gid)
    assert w.returncode == 0, w.stderr
    assert json.loads(w.stdout) == {"p": 2}
    w = fm_cli(db, "wait", bid)
    assert w.returncode == 1, w.stderr
    assert "second" in w.stderr
    wj = fm_cli(db, "wait", bid, "--json")
    assert wj.returncode == 1
    assert set(json.loads(wj.stdout)) == {"id", "status", "output", "error"}

    data = show_cli(db, gid)
    for key in (
        "id",
        "workflow",
        "status",
        "traceId",
        "input",
        "output",
        "error",
        "startedAt",
        "finishedAt",
        "nodes",
    ):
        assert key in data, key
    assert data["id"] == gid
    assert data["workflow"] == "par"
    assert data["status"] == "succeeded"
    assert re.fullmatch(r"trace-[0-9a-f]{12}", data["traceId"])
    assert data["input"] == {"k": 1}
    assert data["output"] == {"p": 2}
    assert data["error"] is None
    assert data["startedAt"] <= data["finishedAt"]
    assert sorted(n["path"] for n in data["nodes"]) == ["p", "start", "x", "y"]
    for n in data["nodes"]:
        for key in ("path", "status", "attempts", "startedAt", "finishedAt", "error"):
            assert key in n, (key, n)
        assert n["status"] == "succeeded"
        assert n["attempts"] == 1
        assert n["error"] is None
        assert data["startedAt"] <= n["startedAt"] <= n["finishedAt"] <= data["finishedAt"]

    failed = show_cli(db, bid)
    assert failed["status"] == "failed"
    nodes = {n["path"]: n for n in failed["nodes"]}
    assert nodes["second"]["status"] == "failed"
    assert nodes["second"]["error"]["code"]
    assert "kaboom" in nodes["second"]["error"]["message"]
    assert failed["error"]["nodePath"] == "second"

    # Human-readable show.
    text = fm_cli(db, "show", gid)
    assert text.returncode == 0
    assert gid in text.stdout and "succeeded" in text.stdout
    assert re.search(r"^x\s+succeeded\s+1\s", text.stdout, re.M), text.stdout

    out = fm_cli(db, "output", gid)
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"p": 2}
    out_failed = fm_cli(db, "output", bid)
    assert out_failed.returncode == 1

    logs = fm_cli(db, "logs", gid, "--node", "p")
    assert logs.returncode == 0, logs.stderr
    log_lines = lines(logs.stdout)
    assert any("p#1 stdout: line 0" in ln for ln in log_lines), logs.stdout
    assert any("p#1 stdout: line 1" in ln for ln in log_lines)
    assert any("a warning" in ln for ln in log_lines)
    assert any("from ctx.log" in ln for ln in log_lines)
    assert all(" p#" in ln for ln in log_lines), log_lines
    logs_json = json.loads(fm_cli(db, "logs", gid, "--node", "p", "--json").stdout)
    assert {r["path"] for r in logs_json} == {"p"}
    assert [r["line"] for r in logs_json if r["stream"] == "stdout"] == ["line 0", "line 1"]
    # Nodes that logged nothing: nothing for them.
    assert lines(fm_cli(db, "logs", gid, "--node", "x").stdout) == []


def test_ls_human_and_json(wf, db):
    a = fm_cli(db, "run", str(wf(GOOD)), "--json")
    b = fm_cli(db, "run", str(wf(FAILING)), "--json")
    ida, idb = json.loads(a.stdout)["id"], json.loads(b.stdout)["id"]
    listed = fm_cli(db, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {ida, idb}
    assert by_id[ida]["status"] == "succeeded"
    assert by_id[ida]["workflow"] == "good"
    assert by_id[idb]["status"] == "failed"
    assert rows[0]["id"] == idb  # newest first
    human = fm_cli(db, "ls")
    assert human.returncode == 0
    text = lines(human.stdout)
    assert text[0].split()[:3] == ["ID", "WORKFLOW", "STATUS"]
    assert any(ln.startswith(ida) and "succeeded" in ln for ln in text)
    assert any(ln.startswith(idb) and "failed" in ln for ln in text)
    only_failed = json.loads(fm_cli(db, "ls", "--status", "failed", "--json").stdout)
    assert [r["id"] for r in only_failed] == [idb]


def _bar_span(line: str) -> tuple[int, int]:
    bar = line.split("|")[1]
    filled = [i for i, ch in enumerate(bar) if ch != " "]
    assert filled, line
    return filled[0], filled[-1] + 1


def test_timeline_bars_overlap_for_parallel_branches(wf, db):
    run = fm_cli(db, "run", str(wf(parallel_sleeps(0.5))), "--workers", "3", "--json")
    assert run.returncode == 0, run.stderr
    eid = json.loads(run.stdout)["id"]
    res = fm_cli(db, "timeline", eid)
    assert res.returncode == 0, res.stderr
    bar_lines = [ln for ln in res.stdout.splitlines() if ln.count("|") >= 2]
    assert len(bar_lines) == 4, res.stdout  # one per node instance
    spans = {ln.split("|")[0].strip(): _bar_span(ln) for ln in bar_lines}
    assert set(spans) == {"start", "x", "y", "p"}
    (xa, xb), (ya, yb) = spans["x"], spans["y"]
    # The two parallel sleeps overlap on the shared axis, for most of their length.
    overlap = min(xb, yb) - max(xa, ya)
    assert overlap > 0.5 * (xb - xa), spans
    # p starts after both; start ends before both start (roughly, one column slack).
    assert spans["p"][0] >= max(xb, yb) - 2, spans
    assert spans["start"][1] <= min(xa, ya) + 2, spans
    tj = json.loads(fm_cli(db, "timeline", eid, "--json").stdout)
    assert {n["path"] for n in tj} == {"start", "x", "y", "p"}


def test_trace_chrome_file(wf, db, tmp_path):
    run = fm_cli(db, "run", str(wf(parallel_sleeps(0.3))), "--workers", "3", "--json")
    eid = json.loads(run.stdout)["id"]
    out = tmp_path / "f.json"
    res = fm_cli(db, "trace", eid, "--format", "chrome", "-o", str(out))
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    events = data["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert {e["name"] for e in complete} == {"start", "x", "y", "p"}
    for e in complete:
        assert isinstance(e["ts"], int | float) and isinstance(e["dur"], int | float)
        assert e["dur"] > 0
        assert "pid" in e and "tid" in e
    by = {e["name"]: e for e in complete}
    # The parallel sleeps overlap in trace time and ran on different tracks.
    x, y = by["x"], by["y"]
    assert max(x["ts"], y["ts"]) < min(x["ts"] + x["dur"], y["ts"] + y["dur"])
    assert x["tid"] != y["tid"]
    assert x["dur"] >= 300_000  # microseconds
    # stdout variant: the same JSON.
    res2 = fm_cli(db, "trace", eid)
    assert json.loads(res2.stdout)["traceEvents"] == events


def test_queue_shows_running_task_with_daemon(wf, db, daemon):
    doc = {"name": "q", "nodes": [py("zz", "sleep", args={"seconds": 3})]}
    eid = fm_cli(db, "submit", str(wf(doc))).stdout.strip()
    before = json.loads(fm_cli(db, "queue", "--json").stdout)
    assert before == {"tasks": [], "queuedExecutions": 1, "deadLetters": 0}
    assert "executions waiting to start: 1" in fm_cli(db, "queue").stdout
    daemon()

    def running_rows() -> Any:
        rows = json.loads(fm_cli(db, "queue", "--json").stdout)["tasks"]
        return [r for r in rows if r["status"] == "running"]

    rows = wait_until(running_rows, 15, "a running task in fm queue")
    assert rows[0]["tasks"] == 1
    human = fm_cli(db, "queue")
    assert re.search(r"running\s+0\s+1", human.stdout), human.stdout
    assert fm_cli(db, "wait", eid).returncode == 0
    assert wait_until(lambda: json.loads(fm_cli(db, "queue", "--json").stdout)["tasks"] == [], 10)


def test_schema_is_json_schema():
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert "properties" in doc
    assert {"name", "nodes", "edges", "settings"} <= set(doc["properties"])


def test_version(db):
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.stdout
    res = fm_cli(db, "--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"fm, version {__version__}"


@pytest.mark.parametrize("command", ["show", "output", "wait", "logs", "timeline", "trace"])
def test_unknown_execution_exits_2(wf, db, command):
    fm_cli(db, "submit", str(wf(GOOD)))  # the database exists
    line = assert_one_line_error(fm_cli(db, command, "feedfacecafe"), 2)
    assert "feedfacecafe" in line


# --- engine / storage errors: exit 3 ------------------------------------------------


def test_garbage_database_file_exits_3(wf, tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(bytes(range(256)) * 64)
    for args in (("run", str(wf(GOOD))), ("ls",), ("submit", str(wf(GOOD)))):
        line = assert_one_line_error(fm_cli(garbage, *args), 3)
        assert "garbage.db" in line, line
        assert "not a database" in line, line


def test_db_in_uncreatable_directory_exits_3(wf, tmp_path):
    blocker = tmp_path / "plainfile"
    blocker.write_text("I am a file, not a directory")
    db = blocker / "sub" / "fm.db"
    line = assert_one_line_error(fm_cli(db, "run", str(wf(GOOD))), 3)
    assert "plainfile" in line, line


def test_uncreatable_db_directory_is_a_storage_error_not_internal(wf, tmp_path):
    blocker = tmp_path / "plainfile"
    blocker.write_text("not a directory")
    line = assert_one_line_error(fm_cli(blocker / "fm.db", "submit", str(wf(GOOD))), 3)
    assert "internal error" not in line, line
    assert "--debug" not in line, line


def test_engine_error_debug_shows_traceback(wf, tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00\xff" * 4096)
    res = fm_cli(garbage, "--debug", "ls")
    assert res.returncode == 3
    assert "Traceback (most recent call last)" in res.stderr


def test_missing_database_for_inspection_exits_3(tmp_path):
    line = assert_one_line_error(fm_cli(tmp_path / "never.db", "ls"), 3)
    assert "never.db" in line


def test_db_option_overrides_env(wf, tmp_path, db):
    other = tmp_path / "other.db"
    res = fm_cli(db, "--db", str(other), "run", str(wf(GOOD)), "--json")
    assert res.returncode == 0, res.stderr
    assert other.exists()
    assert not Path(db).exists()


@pytest.mark.parametrize("ident", ["_", "", "____________"])
def test_wildcard_like_ids_are_unknown(wf, db, ident):
    eid = fm_cli(db, "submit", str(wf(GOOD))).stdout.strip()
    res = fm_cli(db, "show", ident, "--json")
    assert res.returncode == 2, f"'{ident}' resolved to {eid}: {res.stdout[:80]}"


def test_unique_id_prefix_resolves(wf, db):
    eid = fm_cli(db, "submit", str(wf(GOOD))).stdout.strip()
    assert show_cli(db, eid[:6])["id"] == eid


# --- usage errors ----------------------------------------------------------------------


def test_help_exits_0_and_usage_errors_exit_2(db):
    assert fm(db, "--help").returncode == 0  # python -m fm_local: the entry point
    assert fm_cli(db, "run", "--help").returncode == 0
    bad_cmd = fm_cli(db, "frobnicate")
    assert bad_cmd.returncode == 2
    assert "No such command" in bad_cmd.stderr
    bad_opt = fm_cli(db, "run", "--workers", "0", "x.json")
    assert bad_opt.returncode == 2
    assert "--workers" in bad_opt.stderr
    bad_fmt = fm_cli(db, "trace", "abc", "--format", "svg")
    assert bad_fmt.returncode == 2
    for res in (bad_cmd, bad_opt, bad_fmt):
        assert "Traceback" not in res.stderr
