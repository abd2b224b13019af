"""Hostile workflow JSON (SPEC §1): what JSON or our storage cannot carry is a
validation error — one line naming the file and the JSON path, exit 2 — never a
traceback or an engine error (exit 3).

The document is parsed with ``jsonio.strict_loads``; these tests go through
``parse_workflow``/``load_workflow`` in-process, and through the CLI for the
exit code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fm_local import jsonio
from fm_local.cli import cli, main
from fm_local.errors import EXIT_USAGE, WorkflowInvalid
from fm_local.validate import load_workflow, parse_workflow

PY = '{"id": "a", "type": "python", "call": "tasks:f"'


def node_with(field: str, value_text: str) -> str:
    """A workflow whose only node has ``field`` set to the raw JSON ``value_text``."""
    return '{"name": "w", "nodes": [' + PY + f', "{field}": {value_text}' + "}]}"


def problem(text: str, path: Path | None = None) -> str:
    """The one line ``parse_workflow`` refuses ``text`` with."""
    with pytest.raises(WorkflowInvalid) as ei:
        parse_workflow(text, path=path)
    assert ei.value.exit_code == EXIT_USAGE
    assert len(ei.value.problems) == 1, ei.value.problems
    line = ei.value.problems[0]
    assert "\n" not in line and "Traceback" not in line
    return line


# --- numbers JSON cannot carry ------------------------------------------------------


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_with_their_path(constant: str) -> None:
    line = problem(node_with("args", '{"limit": [1, ' + constant + "]}"))
    assert line == (
        f"workflow: nodes[0].args.limit[1]: {constant} is not valid JSON (use null or a string)"
    )


def test_a_number_out_of_float_range_is_refused() -> None:
    line = problem(node_with("timeout", "1e999"), Path("flows/big.json"))
    assert line == (
        "flows/big.json: nodes[0].timeout: the number 1e999 is out of range (it would be Infinity)"
    )


def test_an_integer_over_the_digit_limit_is_refused() -> None:
    digits = "9" * 5000
    line = problem(node_with("args", '{"n": -' + digits + "}"))
    assert line.startswith("workflow: nodes[0].args.n: an integer of 5000 digits is over the limit")


def test_a_big_integer_under_the_limit_is_kept() -> None:
    digits = "9" * 1000
    lw = parse_workflow(node_with("args", '{"n": ' + digits + "}"))
    assert lw.workflow.nodes[0].args["n"] == int(digits)


# --- duplicate keys -----------------------------------------------------------------


def test_two_ids_in_one_node() -> None:
    text = '{"name": "w", "nodes": [' + PY + "}, " + PY + ', "id": "b"}]}'
    line = problem(text, Path("dup.json"))
    assert line == "dup.json: nodes[1]: duplicate key 'id' (a key may appear once)"


def test_two_nodes_keys_at_the_top() -> None:
    text = '{"name": "w", "nodes": [], "nodes": [' + PY + "}]}"
    assert problem(text) == "workflow: duplicate key 'nodes' (a key may appear once)"


def test_duplicate_key_deep_inside_args_and_in_a_loop_body() -> None:
    line = problem(node_with("args", '{"headers": {"x-a": 1, "x-a": 2}}'))
    assert line == ("workflow: nodes[0].args.headers: duplicate key 'x-a' (a key may appear once)")
    body = '{"nodes": [' + PY + ', "call": "tasks:g"}]}'
    loop = '{"id": "l", "type": "loop", "arrayPath": "{{[1]}}", "body": ' + body + "}"
    line = problem('{"name": "w", "nodes": [' + loop + "]}")
    assert line == (
        "workflow: nodes[0].body.nodes[0]: duplicate key 'call' (a key may appear once)"
    )


def test_a_key_that_is_not_a_name_is_quoted_in_the_path() -> None:
    line = problem(node_with("args", '{"my key": {"v": NaN}}'))
    assert line.startswith('workflow: nodes[0].args["my key"].v: NaN is not valid JSON')


# --- nesting ------------------------------------------------------------------------


def test_nesting_deeper_than_the_limit_names_where() -> None:
    depth = jsonio.MAX_DEPTH + 50
    line = problem(node_with("args", '{"v": ' + "[" * depth + "]" * depth + "}"))
    assert line.startswith("workflow: nodes[0].args.v[0]")
    assert line.endswith(f"nested deeper than {jsonio.MAX_DEPTH} levels")
    assert f"({jsonio.MAX_DEPTH} levels)" in line  # the long path is shortened


def test_nesting_past_the_parsers_recursion_is_still_one_line() -> None:
    depth = 100_000
    line = problem(node_with("args", '{"v": ' + "[" * depth + "]" * depth + "}"))
    assert line == f"workflow: nested deeper than {jsonio.MAX_DEPTH} levels"


def test_nesting_within_the_limit_is_accepted() -> None:
    depth = jsonio.MAX_DEPTH - 10
    value = '{"v": ' + "[" * depth + "]" * depth + "}"
    lw = parse_workflow(node_with("args", value))
    assert lw.workflow.nodes[0].args["v"] == json.loads("[" * depth + "]" * depth)


# --- malformed text -----------------------------------------------------------------


def test_malformed_json_names_the_file_line_and_column(tmp_path: Path) -> None:
    f = tmp_path / "bad.json"
    f.write_text('{"name": "x", "nodes": [,]}')
    with pytest.raises(WorkflowInvalid) as ei:
        load_workflow(f)
    assert ei.value.problems == [f"{f}: not valid JSON: line 1, column 25: expecting value"]


def test_malformed_json_without_a_file_says_workflow() -> None:
    assert problem('{"name": "x",\n  "nodes": [}') == (
        "workflow: not valid JSON: line 2, column 13: expecting value"
    )


def test_a_clean_document_loads_as_before(tmp_path: Path) -> None:
    f = tmp_path / "ok.json"
    doc: dict[str, Any] = {
        "name": "ok",
        "nodes": [{"id": "a", "type": "transform", "expression": "1.5e3"}],
    }
    f.write_text(json.dumps(doc))
    lw = load_workflow(f)
    assert lw.raw == doc
    assert type(lw.raw) is dict


# --- through the CLI ------------------------------------------------------------------


def test_cli_validate_refuses_a_duplicate_key(tmp_path: Path) -> None:
    f = tmp_path / "dup.json"
    f.write_text('{"name": "w", "nodes": [' + PY + ', "id": "b"}]}')
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "fm.db"), "validate", str(f)])
    # cli() raises the error and main() turns it into the exit code: it must be the
    # validation error (exit 2), not an engine error or a crash (exit 3).
    assert isinstance(result.exception, WorkflowInvalid), result.exception
    assert result.exception.exit_code == 2
    assert result.exception.problems == [
        f"{f}: nodes[0]: duplicate key 'id' (a key may appear once)"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (node_with("args", '{"x": NaN}'), "nodes[0].args.x: NaN is not valid JSON"),
        (node_with("timeout", "1e999"), "nodes[0].timeout: the number 1e999 is out of range"),
        ('{"name": "x", "nodes": [,]}', "not valid JSON: line 1, column 25: expecting value"),
    ],
)
def test_fm_validate_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    f = tmp_path / "bad.json"
    f.write_text(text)
    with pytest.raises(SystemExit) as info:
        main(["--db", str(tmp_path / "fm.db"), "validate", str(f)])
    assert info.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "Traceback" not in out.err
    lines = out.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{f}: {needle}"), out.err
