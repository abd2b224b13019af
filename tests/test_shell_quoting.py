"""Template values in a shell node's string ``command`` are quoted as one shell word.

Unit tests of :func:`fm_local.expr.render_shell`, then end-to-end runs through the
real engine proving that a hostile value reaches the command as one literal argument
and that nothing it tries to inject runs.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import run_wf

from fm_local import replay
from fm_local.expr import MAX_STR, ExpressionError, compile_template, render_shell, render_value
from fm_local.model import ShellNode
from fm_local.validate import check_document

HOSTILE = [
    "; rm -rf /",
    "$(touch pwned)",
    "`touch pwned`",
    "a && touch pwned || touch pwned",
    "x | touch pwned",
    "' ; touch pwned ; '",
    '" ; touch pwned ; "',
    "it's",
    "a\ntouch pwned",
    "a\rb\tc",
    "$HOME ${PATH} $((1+1)) *",
    "> pwned",
    "\\",
    "-n",
    "",
    "   ",
    "é ☃ 𝄞",
    "{{ not_a_template }}",
]

# Hostile values that create the marker file when pasted unquoted.
INJECTIONS = [
    "; touch {m}",
    "$(touch {m})",
    "`touch {m}`",
    "x && touch {m}",
    "x | touch {m}",
    "x\ntouch {m}",
    "' ; touch {m} ; '",
    '" ; touch {m} ; "',
    "x > {m}",
]


def words(command: str) -> list[str]:
    """How a POSIX shell splits ``command`` into words (no expansions in our tests)."""
    return shlex.split(command, posix=True)


# -- rendering -------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_string_is_one_word(value: str) -> None:
    rendered = render_shell("printf '[%s]' {{ v }} end", {"v": value})
    assert isinstance(rendered, str)
    assert words(rendered) == ["printf", "[%s]", value, "end"]
    assert rendered == f"printf '[%s]' {shlex.quote(value)} end"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ([1, "a b", None], '[1,"a b",null]'),
        ({"k": "$(x)", "n": [True]}, '{"k":"$(x)","n":[true]}'),
        ((1, 2), "[1,2]"),
        (42, "42"),
        (-2.5, "-2.5"),
        (True, "true"),
        (False, "false"),
        (None, ""),
        ("", ""),
    ],
)
def test_other_values_are_their_template_text_as_one_word(value: Any, text: str) -> None:
    rendered = render_shell("echo {{ v }}", {"v": value})
    assert words(rendered) == ["echo", text]
    # The same text a template anywhere else gives, only quoted.
    assert rendered == "echo " + shlex.quote(render_value("{{ v }}!", {"v": value})[:-1])


def test_every_template_is_quoted_and_literal_text_is_kept() -> None:
    scope = {"a": "x y", "b": "$(z)", "n": 3}
    rendered = render_shell("cp {{ a }} --to={{ b }}.bak {{ n }}{{ n }} | wc -l", scope)
    assert rendered == "cp 'x y' --to='$(z)'.bak 33 | wc -l"
    assert words(rendered) == ["cp", "x y", "--to=$(z).bak", "33", "|", "wc", "-l"]


def test_a_command_that_is_exactly_one_template_is_one_quoted_word() -> None:
    assert render_shell("{{ c }}", {"c": "ls -l; touch pwned"}) == "'ls -l; touch pwned'"
    assert render_shell("  {{ c }}\n", {"c": "ls -l"}) == "  'ls -l'\n"
    # Still a script, never an argv: a list value does not become the argv.
    assert render_shell("{{ c }}", {"c": ["ls", "-l"]}) == """'["ls","-l"]'"""
    assert render_shell("{{ c }}", {"c": None}) == "''"


def test_raw_pastes_the_text_unquoted() -> None:
    scope = {"cmd": "ls -l | wc -l", "xs": ["a", "b"], "n": None}
    assert render_shell("{{ raw: cmd }}", scope) == "ls -l | wc -l"
    assert render_shell("{{raw:cmd}} > out", scope) == "ls -l | wc -l > out"
    assert render_shell("echo {{ raw : xs }} {{ xs }}", scope) == """echo ["a","b"] '["a","b"]'"""
    assert render_shell("x{{ raw: n }}y", scope) == "xy"
    assert render_shell("{{ raw: ' '.join(xs) }}", scope) == "a b"


def test_a_string_literal_is_the_authors_text_and_is_not_quoted() -> None:
    # The escape for a literal "{{" keeps working inside shell commands.
    command = "docker inspect --format \"{{ '{{' }}.Name}}\" {{ c }}"
    assert render_shell(command, {"c": "a b"}) == "docker inspect --format \"{{.Name}}\" 'a b'"
    assert render_shell("echo {{ 'a b' }}", {}) == "echo a b"
    # Anything computed is quoted, even from literals only.
    assert render_shell("echo {{ 'a' + ' b' }}", {}) == "echo 'a b'"


def test_list_commands_and_other_fields_are_not_quoted() -> None:
    scope = {"v": "; touch pwned", "n": 3}
    assert render_shell(["printf", "%s", "{{ v }}"], scope) == ["printf", "%s", "; touch pwned"]
    assert render_shell(["echo", "{{ n }}"], scope) == ["echo", 3]
    assert render_shell("echo plain", scope) == "echo plain"
    # Templates outside a shell script are never quoted; "raw:" changes nothing there.
    assert render_value({"A": "{{ v }}", "B": "x {{ raw: v }}"}, scope) == {
        "A": "; touch pwned",
        "B": "x ; touch pwned",
    }
    assert render_value("{{ raw: n }}", scope) == 3


def test_raw_is_parsed_and_checked_like_any_expression() -> None:
    template = compile_template("a {{ raw: x.y }} {{ raw: len(zs) }} {{ raw }} {{ raw[0] }}")
    assert template is not None
    assert template.names == frozenset({"x", "zs", "raw"})
    assert render_shell("{{ raw }} {{ raw[0] }}", {"raw": ["a b"]}) == """'["a b"]' 'a b'"""
    with pytest.raises(ExpressionError, match="syntax error"):
        compile_template("echo {{ raw: 1 + }}")
    with pytest.raises(ExpressionError, match="empty expression"):
        compile_template("echo {{ raw: }}")
    with pytest.raises(ExpressionError, match="not allowed"):
        compile_template("echo {{ raw: __import__('os') }}")
    with pytest.raises(ExpressionError) as info:
        render_shell("echo {{ raw: 1 / 0 }}", {})
    assert info.value.expression == " 1 / 0 "


def test_validate_checks_the_expression_inside_raw() -> None:
    def problems(command: str) -> list[str]:
        doc = {"name": "t", "nodes": [{"id": "s", "type": "shell", "command": command}]}
        return [p.message for p in check_document(doc)[1]]

    assert problems("echo {{ raw: input.x }}") == []
    assert any("does not parse" in m for m in problems("echo {{ raw: 1 + }}"))
    assert any("'nope'" in m for m in problems("echo {{ raw: nope }}"))


def test_a_dead_letter_replay_reruns_the_recorded_command_unchanged() -> None:
    rendered = render_shell(
        "printf '%s\\n' {{ v }} \"{{ '{{' }}x}}\"", {"v": "{{ evil }} $(touch pwned)"}
    )
    node = ShellNode.model_validate({"id": "s", "type": "shell", "command": "unused"})
    again = replay.node_with_input(node, {"command": rendered})
    assert render_shell(again.command, {}) == rendered


def test_quoting_counts_against_the_render_limits() -> None:
    # Each "'" is five characters once quoted: the rendered script would be too long.
    with pytest.raises(ExpressionError, match="too long"):
        render_shell("echo {{ v }}", {"v": "'" * (MAX_STR // 4)})
    assert len(render_shell("echo {{ v }}", {"v": "a" * (MAX_STR - 10)})) == MAX_STR - 5


# -- through the engine --------------------------------------------------------------


def shell(nid: str, command: Any, **fields: Any) -> dict[str, Any]:
    return {"id": nid, "type": "shell", "command": command, **fields}


def test_hostile_input_reaches_the_command_as_one_argument(
    wf: Callable[..., Path], db: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    values = [v.format(m=marker) for v in INJECTIONS] + HOSTILE
    nodes = [shell(f"s{i}", f"printf '[%s]' {{{{ input.v{i} }}}}") for i in range(len(values))]
    res = run_wf(
        wf({"name": "quoted", "nodes": nodes}), db, {f"v{i}": v for i, v in enumerate(values)}
    )
    assert res["status"] == "succeeded", res
    for i, value in enumerate(values):
        # printf repeats its format for every argument: one "[...]" means one argument.
        assert res["output"][f"s{i}"]["stdout"] == f"[{value}]"
    assert not marker.exists()


def test_a_command_that_is_one_template_is_not_run_as_a_script(
    wf: Callable[..., Path], db: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    doc = {"name": "one", "nodes": [shell("s", "{{ cmd }}", allowFailure=True)]}
    res = run_wf(wf(doc), db, {"cmd": f"touch {marker}"})
    assert res["status"] == "succeeded", res
    assert res["output"]["s"]["exitCode"] == 127  # no program named "touch /…/pwned"
    assert not marker.exists()


def test_raw_pastes_a_pipeline_on_purpose(
    wf: Callable[..., Path], db: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "made"
    doc = {
        "name": "raw",
        "nodes": [
            shell("pipeline", "{{ raw: script }}"),
            shell("split", "printf '[%s]' {{ raw: words }} {{ words }}"),
        ],
    }
    res = run_wf(wf(doc), db, {"script": f"touch {marker} && printf ok", "words": "a b"})
    assert res["status"] == "succeeded", res
    assert marker.exists()
    assert res["output"]["pipeline"]["stdout"] == "ok"
    assert res["output"]["split"]["stdout"] == "[a][b][a b]"


def test_argv_env_and_cwd_get_the_value_unquoted(
    wf: Callable[..., Path], db: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    value = f"it's $(touch {marker}); x"
    (tmp_path / "d i r").mkdir()
    doc = {
        "name": "plain",
        "nodes": [
            shell("argv", ["printf", "[%s]", "{{ v }}"]),
            shell("env", "printf '[%s]' \"$V\"", env={"V": "{{ v }}"}),
            shell("cwd", 'basename "$PWD"', cwd="{{ d }}"),
        ],
    }
    res = run_wf(wf(doc), db, {"v": value, "d": "d i r"})
    assert res["status"] == "succeeded", res
    assert res["output"]["argv"]["stdout"] == f"[{value}]"
    assert res["output"]["env"]["stdout"] == f"[{value}]"
    assert res["output"]["cwd"]["stdout"] == "d i r\n"
    assert not marker.exists()


def test_a_value_with_a_nul_byte_runs_nothing(
    wf: Callable[..., Path], db: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    doc = {"name": "nul", "nodes": [shell("s", "printf '[%s]' {{ v }}")]}
    res = run_wf(wf(doc), db, {"v": f"a\x00; touch {marker}"})
    assert res["status"] == "failed"
    assert not marker.exists()
