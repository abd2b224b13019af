"""Workflow validation (SPEC §1): every problem, with its JSON path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fm_local.errors import WorkflowInvalid
from fm_local.model import Workflow
from fm_local.validate import (
    LoadedWorkflow,
    Problem,
    check_document,
    load_workflow,
    parse_workflow,
    validate_input,
)


def doc(nodes: list[Any], edges: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": "t", "nodes": nodes, "edges": edges or [], **extra}


def py(nid: str, **fields: Any) -> dict[str, Any]:
    return {"id": nid, "type": "python", "call": "tasks:f", **fields}


def problems(d: Any) -> list[Problem]:
    return check_document(d)[1]


def errors(d: Any) -> list[Problem]:
    return [p for p in problems(d) if p.severity == "error"]


def warnings(d: Any) -> list[Problem]:
    return [p for p in problems(d) if p.severity == "warning"]


def at(ps: list[Problem], path: str, phrase: str = "") -> Problem:
    """The one problem at ``path`` whose message contains ``phrase``."""
    found = [p for p in ps if p.path == path and phrase in p.message]
    assert len(found) == 1, f"no single problem at {path!r} with {phrase!r}: {ps}"
    return found[0]


# --- the whole document -------------------------------------------------------------


def test_valid_minimal_document() -> None:
    wf, ps = check_document(doc([py("a")]))
    assert ps == []
    assert isinstance(wf, Workflow)


def test_malformed_json_names_line_and_column() -> None:
    with pytest.raises(WorkflowInvalid) as ei:
        parse_workflow('{"name": "x",\n  "nodes": [}')
    assert len(ei.value.problems) == 1
    assert ei.value.problems[0].startswith("workflow: not valid JSON: line 2, column 13: ")


def test_top_level_not_an_object() -> None:
    wf, ps = check_document([1, 2])
    assert wf is None
    assert at(ps, "", "must be a JSON object, got an array")


def test_problem_str() -> None:
    assert str(Problem("nodes[0].type", "node 'x': bad")) == "nodes[0].type: node 'x': bad"
    assert str(Problem("nodes[3]", "node 'y' is unreachable", "warning")) == (
        "warning: nodes[3]: node 'y' is unreachable"
    )
    assert str(Problem("", "line 1, column 2: oops")) == "line 1, column 2: oops"


# --- shape --------------------------------------------------------------------------


def test_unknown_key_suggests_the_documented_spelling() -> None:
    p = at(errors(doc([py("a", timout=5)])), "nodes[0].timout")
    assert p.message == "node 'a': unknown key 'timout' (did you mean 'timeout'?)"


def test_unknown_key_at_top_level_and_in_settings() -> None:
    ps = errors(doc([py("a")], edgs=[], settings={"retry": {"maxAtempts": 2}}))
    assert "did you mean 'edges'?" in at(ps, "edgs").message
    assert "did you mean 'maxAttempts'?" in at(ps, "settings.retry.maxAtempts").message


def test_unknown_key_snake_case_suggests_camel_case() -> None:
    p = at(errors(doc([py("a", error_strategie="fail")])), "nodes[0].error_strategie")
    assert "did you mean 'errorStrategy'?" in p.message


def test_missing_required_key() -> None:
    ps = errors(doc([{"id": "c", "type": "condition"}]))
    assert at(ps, "nodes[0].expression").message == "node 'c': missing required key 'expression'"
    assert "missing required key 'name'" in at(errors({"nodes": []}), "name").message


def test_node_without_type() -> None:
    p = at(errors(doc([{"id": "a", "call": "t:f"}])), "nodes[0].type")
    assert p.message == "node 'a': missing required key 'type'"


def test_unknown_node_type() -> None:
    p = at(errors(doc([py("a"), {"id": "enrich", "type": "pythn"}])), "nodes[1].type")
    assert p.message.startswith("node 'enrich': unknown node type 'pythn'")
    assert "did you mean 'python'?" in p.message
    assert "expected one of: python, transform, http, shell" in p.message


def test_bad_enum_value_lists_allowed_values() -> None:
    ps = errors(doc([{"id": "m", "type": "merge", "mode": "any"}]))
    p = at(ps, "nodes[0].mode")
    assert "bad value 'any' for 'mode'" in p.message
    assert "expected one of: all, first_success" in p.message


def test_wrong_type() -> None:
    ps = errors(doc([py("a")], settings={"retry": {"maxAttempts": "x"}}))
    assert (
        "'maxAttempts' must be an integer, got a string 'x'"
        in at(ps, "settings.retry.maxAttempts").message
    )


def test_union_type_mismatch_is_one_problem() -> None:
    ps = errors(doc([py("a", rateLimit=[1])]))
    assert len(ps) == 1
    p = at(ps, "nodes[0].rateLimit")
    assert "must be a number, an object {rate, per} or a string, got an array" in p.message


def test_union_member_errors_keep_the_specific_one() -> None:
    loop = {
        "id": "l",
        "type": "loop",
        "arrayPath": "{{[1]}}",
        "parallel": {"onPartialFailure": "sometimes"},
        "body": {"nodes": [py("b")]},
    }
    ps = errors(doc([loop]))
    assert [p.path for p in ps] == ["nodes[0].parallel.onPartialFailure"]
    ps = errors(doc([py("a", rateLimit={"per": 5})]))
    assert at(ps, "nodes[0].rateLimit.rate", "missing required key 'rate'")
    ps = errors(doc([{"id": "s", "type": "shell", "command": []}]))
    assert at(ps, "nodes[0].command", "'command' must not be empty")


def test_shape_errors_in_loop_bodies_and_compensate() -> None:
    loop = {
        "id": "l",
        "type": "loop",
        "arrayPath": "{{[1]}}",
        "body": {"nodes": [{"id": "b", "type": "python", "call": "nocolon"}]},
    }
    comp = py("c", compensate={"id": "undo", "type": "nope"})
    ps = errors(doc([loop, comp]))
    assert "node 'b': invalid call 'nocolon'" in at(ps, "nodes[0].body.nodes[0].call").message
    assert "node 'undo': unknown node type 'nope'" in at(ps, "nodes[1].compensate.type").message


def test_model_level_value_error_is_on_the_node() -> None:
    ps = errors(doc([{"id": "l", "type": "loop", "loopType": "count", "body": {"nodes": []}}]))
    assert at(ps, "nodes[0]").message == "node 'l': a count loop needs 'count'"


def test_invalid_node_id() -> None:
    p = at(errors(doc([py("1st")])), "nodes[0].id")
    assert "invalid node id '1st'" in p.message


def test_shape_error_in_snake_case_keeps_the_users_spelling() -> None:
    ps = errors(doc([py("a", output_variable="not a name")]))
    assert "'output_variable' must be a name" in at(ps, "nodes[0].output_variable").message


def test_shape_errors_also_report_duplicate_ids_and_missing_edge_ends() -> None:
    d = doc([py("a", bogus=1), py("a")], [{"source": "a", "target": "zz"}])
    ps = errors(d)
    assert at(ps, "nodes[0].bogus", "unknown key 'bogus'")
    assert at(ps, "nodes[1].id", "duplicate id")
    assert at(ps, "edges[0].target", "'zz'")


def test_messages_are_one_line_without_urls() -> None:
    d = doc([py("a", bogus=1), {"id": "b"}, {"id": "c", "type": "x"}, 5], settings=[])
    for p in errors(d):
        assert "\n" not in str(p)
        assert "pydantic.dev" not in str(p)


# --- ids and edges ------------------------------------------------------------------


def test_duplicate_node_id() -> None:
    p = at(errors(doc([py("a"), py("b"), py("a")])), "nodes[2].id")
    assert p.message == "node 'a': duplicate id (also used at nodes[0])"


def test_duplicate_id_between_nodes_and_handlers() -> None:
    d = doc([py("a", errorStrategy="fallback", fallbackNodeId="a")], handlers=[py("a")])
    assert at(errors(d), "handlers[0].id", "duplicate id")


def test_loop_body_has_its_own_id_namespace() -> None:
    loop = {
        "id": "l",
        "type": "loop",
        "arrayPath": "{{[1, 2]}}",
        "body": {"nodes": [py("a"), py("x"), py("x")]},
    }
    ps = errors(doc([py("a"), loop], [{"source": "a", "target": "l"}]))
    assert [p.path for p in ps] == ["nodes[1].body.nodes[2].id"]


def test_edge_to_missing_node() -> None:
    d = doc([py("get"), py("enrich")], [{"source": "get", "target": "enrcih"}])
    p = at(errors(d), "edges[0].target")
    assert "'enrcih' is not a node" in p.message
    assert "did you mean 'enrich'?" in p.message


def test_edge_to_a_handler_explains() -> None:
    d = doc([py("a", errorStrategy="goto", gotoNodeId="h")], [{"source": "a", "target": "h"}])
    d["handlers"] = [py("h")]
    assert "is a handler" in at(errors(d), "edges[0].target").message


def test_edge_in_loop_body_to_missing_node() -> None:
    loop = {
        "id": "l",
        "type": "loop",
        "arrayPath": "{{[1]}}",
        "body": {"nodes": [py("b")], "edges": [{"source": "q", "target": "b"}]},
    }
    assert at(errors(doc([loop])), "nodes[0].body.edges[0].source", "loop body")


# --- cycles -------------------------------------------------------------------------


def test_cycle_of_edges_is_printed() -> None:
    d = doc(
        [py("a"), py("b"), py("c")],
        [
            {"source": "a", "target": "b"},
            {"source": "b", "target": "c"},
            {"source": "c", "target": "a"},
        ],
    )
    ps = errors(d)
    assert len(ps) == 1
    assert ps[0].message.startswith("cycle: ")
    cyc = ps[0].message.removeprefix("cycle: ").split(" -> ")
    assert cyc[0] == cyc[-1] and set(cyc) == {"a", "b", "c"}


def test_cycle_through_a_reference() -> None:
    d = doc(
        [py("a", args={"x": "{{b}}"}), py("b")],
        [{"source": "a", "target": "b"}],
    )
    assert any(p.message in ("cycle: a -> b -> a", "cycle: b -> a -> b") for p in errors(d))


def test_reference_to_own_output() -> None:
    d = doc([{"id": "t", "type": "transform", "expression": "t + 1"}])
    assert "references its own output" in at(errors(d), "nodes[0]").message


def test_loop_body_reading_the_loop_itself() -> None:
    loop = {
        "id": "l",
        "type": "loop",
        "arrayPath": "{{[1]}}",
        "body": {"nodes": [py("b", args={"x": "{{l}}"})]},
    }
    assert (
        "loop body references the loop's own output" in at(errors(doc([loop])), "nodes[0]").message
    )


# --- ports --------------------------------------------------------------------------


def _condition_doc(handle: Any) -> dict[str, Any]:
    return doc(
        [{"id": "check", "type": "condition", "expression": "1 > 0"}, py("yes"), py("no")],
        [
            {"source": "check", "target": "yes", "sourceHandle": handle},
            {"source": "check", "target": "no", "sourceHandle": "false"},
        ],
    )


def test_condition_ports() -> None:
    assert problems(_condition_doc("true")) == []
    assert problems(_condition_doc(True)) == []  # unquoted JSON true
    p = at(errors(_condition_doc("maybe")), "edges[0].sourceHandle")
    assert "node 'check' (condition) has no port 'maybe'" in p.message
    assert "expected one of: true, false, error" in p.message


def test_handle_on_a_node_without_ports() -> None:
    d = doc([py("a"), py("b")], [{"source": "a", "target": "b", "source_handle": "true"}])
    p = at(errors(d), "edges[0].source_handle")
    assert "node 'a' (python) has no port 'true'" in p.message


def test_error_handle_is_fine_on_any_node() -> None:
    d = doc([py("a"), py("b")], [{"source": "a", "target": "b", "sourceHandle": "error"}])
    assert problems(d) == []


def test_switch_ports_are_labels_or_values() -> None:
    switch = {
        "id": "s",
        "type": "switch",
        "expression": "2",
        "cases": [{"value": 1}, {"value": "b"}, {"value": 3, "label": "three"}],
    }
    edges = [
        {"source": "s", "target": "x", "sourceHandle": h} for h in ("1", "b", "three", "default")
    ]
    assert problems(doc([switch, py("x")], edges)) == []
    # A labelled case answers to its value too (issue 10: SPEC §3 says the port is
    # the value; the label stays accepted).
    edges[2]["sourceHandle"] = "3"
    assert problems(doc([switch, py("x")], edges)) == []
    edges[2]["sourceHandle"] = "4"
    p = at(errors(doc([switch, py("x")], edges)), "edges[2].sourceHandle")
    assert "expected one of: 1, b, three, 3, default, error" in p.message


def test_switch_duplicate_case_port() -> None:
    switch = {
        "id": "s",
        "type": "switch",
        "expression": "2",
        "cases": [{"value": "a"}, {"value": 1, "label": "a"}, {"value": "default"}],
    }
    ps = errors(doc([switch]))
    assert at(ps, "nodes[0].cases[1]", "also the port of cases[0]")
    assert at(ps, "nodes[0].cases[2]", "built-in port")


def test_port_without_edge_is_a_warning() -> None:
    d = doc(
        [{"id": "check", "type": "condition", "expression": "True"}, py("yes")],
        [{"source": "check", "target": "yes", "sourceHandle": "true"}],
    )
    assert errors(d) == []
    p = at(warnings(d), "nodes[0]")
    assert p.message == "node 'check': port 'false' has no outgoing edge"


# --- expressions and names -----------------------------------------------------------


def test_expression_that_does_not_parse() -> None:
    d = doc([{"id": "t", "type": "transform", "expression": "1 +"}])
    p = at(errors(d), "nodes[0].expression")
    assert p.message.startswith("node 't': expression '1 +' does not parse: ")


def test_template_that_does_not_parse_in_nested_args() -> None:
    d = doc([py("a", args={"user": {"name": "{{ input. }}"}, "ok": ["{{input}}"]})])
    p = at(errors(d), "nodes[0].args.user.name")
    assert "template" in p.message and "does not parse" in p.message


def test_an_http_url_that_is_not_http_is_an_error() -> None:
    nodes = [
        {"id": "f", "type": "http", "url": "ftp://example.com/x"},
        {"id": "n", "type": "http", "url": "not a url"},
        {"id": "ok", "type": "http", "url": "HTTPS://example.com/x?q=1"},
        {"id": "t", "type": "http", "url": "{{ 'ftp' }}://example.com"},  # known at run time
    ]
    errs = errors(doc(nodes))
    assert {p.path for p in errs} == {"nodes[0].url", "nodes[1].url"}
    assert "its scheme is 'ftp'" in at(errs, "nodes[0].url").message
    assert "no http:// or https://" in at(errs, "nodes[1].url").message


def test_templates_in_http_shell_output_loop_delay() -> None:
    bad = "{{ 1 + }}"
    nodes = [
        {"id": "h", "type": "http", "url": bad, "headers": {"X-Token": bad}},
        {"id": "s", "type": "shell", "command": ["echo", bad], "env": {"A": bad}, "cwd": bad},
        {"id": "o", "type": "output", "value": {"k": [bad]}},
        {"id": "l", "type": "loop", "arrayPath": bad, "body": {"nodes": [py("b")]}},
        {
            "id": "c",
            "type": "loop",
            "loopType": "count",
            "count": bad,
            "body": {"nodes": [py("b")]},
        },
        {"id": "d", "type": "delay", "duration": bad},
    ]
    paths = {p.path for p in errors(doc(nodes))}
    assert paths == {
        "nodes[0].url",
        'nodes[0].headers["X-Token"]',
        "nodes[1].command[1]",
        "nodes[1].env.A",
        "nodes[1].cwd",
        "nodes[2].value.k[0]",
        "nodes[3].arrayPath",
        "nodes[4].count",
        "nodes[5].duration",
    }


def test_unknown_name_is_an_error_when_inputs_declare_keys() -> None:
    d = doc(
        [py("a", args={"u": "{{ usr }}", "v": "{{ user }}", "w": "{{ input.user }}"})],
        inputs={"type": "object", "properties": {"user": {"type": "string"}}},
    )
    ps = problems(d)
    p = at(ps, "nodes[0].args.u")
    assert p.severity == "error"
    assert "name 'usr' is not in scope" in p.message
    assert "did you mean 'user'?" in p.message
    assert len(ps) == 1


def test_unknown_name_is_a_warning_without_declared_inputs() -> None:
    ps = problems(doc([py("a", args={"u": "{{ usr }}"})]))
    p = at(ps, "nodes[0].args.u")
    assert p.severity == "warning"
    assert "name 'usr' is not a node id or a declared input" in p.message
    ps = problems(doc([py("a", args={"u": "{{ usr }}"})], inputs={"type": "object"}))
    assert at(ps, "nodes[0].args.u").severity == "warning"


def test_scope_names_node_ids_and_output_variables_are_known() -> None:
    nodes = [
        py("a", outputVariable="users"),
        {
            "id": "t",
            "type": "transform",
            "expression": "[a, users, input, execution.id, signals, branch, error, signal]",
        },
    ]
    assert problems(doc(nodes, [{"source": "a", "target": "t"}])) == []


def test_loop_scope_names_only_inside_bodies() -> None:
    ps = problems(doc([{"id": "t", "type": "transform", "expression": "loop.index"}]))
    assert at(ps, "nodes[0].expression", "name 'loop'").severity == "warning"


def test_body_node_is_not_in_scope_outside_its_loop() -> None:
    loop = {
        "id": "l",
        "type": "loop",
        "arrayPath": "{{[1]}}",
        "body": {"nodes": [py("inner")]},
    }
    after = {"id": "t", "type": "transform", "expression": "inner"}
    ps = errors(doc([loop, after], [{"source": "l", "target": "t"}]))
    assert "node inside loop 'l'" in at(ps, "nodes[1].expression").message


# --- loops, targets, limits, signals, inputs -----------------------------------------


def test_loop_with_empty_body() -> None:
    d = doc([{"id": "l", "type": "loop", "arrayPath": "{{[1]}}", "body": {"nodes": []}}])
    assert at(errors(d), "nodes[0].body").message == "node 'l': the loop body has no nodes"


def test_error_strategy_needs_its_target() -> None:
    d = doc([py("a", errorStrategy="fallback"), py("b", error_strategy="goto")])
    ps = errors(d)
    assert "needs 'fallbackNodeId'" in at(ps, "nodes[0].errorStrategy").message
    assert "needs 'gotoNodeId'" in at(ps, "nodes[1].error_strategy").message


def test_fallback_and_goto_targets_must_exist() -> None:
    d = doc(
        [
            py("a", errorStrategy="fallback", fallbackNodeId="fix"),
            py("b", errorStrategy="goto", gotoNodeId="nowhere"),
            py("c", errorStrategy="goto", gotoNodeId="b"),
        ],
        handlers=[py("fixx")],
    )
    ps = errors(d)
    p = at(ps, "nodes[0].fallbackNodeId")
    assert "'fix' is neither a handler nor a node of the same graph" in p.message
    assert "did you mean 'fixx'?" in p.message
    assert at(ps, "nodes[1].gotoNodeId", "'nowhere'")
    assert len(ps) == 2  # a node of the same graph is a fine goto target


def test_pool_and_named_rate_limit_must_be_defined() -> None:
    settings = {"concurrencyLimits": {"db": 2}, "rateLimits": {"github": {"rate": 5}}}
    d = doc(
        [py("a", pool="db", rateLimit="github"), py("b", pool="dbb", rate_limit="gitlab")],
        settings=settings,
    )
    ps = errors(d)
    assert (
        "pool 'dbb' is not defined in settings.concurrencyLimits" in at(ps, "nodes[1].pool").message
    )
    assert "rate limiter 'gitlab' is not defined" in at(ps, "nodes[1].rate_limit").message
    assert len(ps) == 2


def test_custom_signal_handler_needs_a_handler_node() -> None:
    settings = {
        "signalHandlers": {
            "prio": {"action": "custom"},
            "approve": {"action": "custom", "handler": "on_aprove"},
            "pause": {"action": "pause"},
        }
    }
    d = doc([py("a")], settings=settings, handlers=[py("on_approve")])
    ps = errors(d)
    assert "action 'custom' needs 'handler'" in at(ps, "settings.signalHandlers.prio").message
    p = at(ps, "settings.signalHandlers.approve.handler")
    assert "no handler 'on_aprove' in handlers" in p.message


def test_inputs_must_be_a_json_schema() -> None:
    d = doc([py("a")], inputs={"type": "object", "properties": {"n": {"type": "integr"}}})
    p = at(errors(d), "inputs")
    assert "not a valid JSON Schema" in p.message


def test_unreachable_after_error_edge_of_a_continue_node() -> None:
    d = doc(
        [py("a", errorStrategy="continue"), py("on_err"), py("next")],
        [
            {"source": "a", "target": "on_err", "sourceHandle": "error"},
            {"source": "on_err", "target": "next"},
        ],
    )
    ws = warnings(d)
    assert "node 'on_err' is unreachable" in at(ws, "nodes[1]").message
    assert "node 'next' is unreachable" in at(ws, "nodes[2]").message
    assert errors(d) == []


def test_unused_handler_is_a_warning() -> None:
    d = doc([py("a")], handlers=[py("lonely")])
    p = at(warnings(d), "handlers[0]")
    assert p.message.startswith("handler 'lonely' is never used")


def test_handlers_are_checked_like_nodes() -> None:
    d = doc(
        [py("a", errorStrategy="fallback", fallbackNodeId="h")],
        handlers=[{"id": "h", "type": "transform", "expression": "error.code +"}],
    )
    assert at(errors(d), "handlers[0].expression", "does not parse")


# --- a realistic workflow and many problems at once ----------------------------------

COMPLEX: dict[str, Any] = {
    "name": "enrich-users",
    "settings": {
        "rateLimits": {"github": {"rate": 10, "per": 1000}},
        "concurrencyLimits": {"db": 2},
        "signalHandlers": {"priority_change": {"action": "custom", "handler": "on_priority"}},
    },
    "inputs": {
        "type": "object",
        "properties": {"count": {"type": "integer"}, "mode": {"type": "string"}},
    },
    "nodes": [
        {
            "id": "get_users",
            "type": "python",
            "call": "tasks:get_users",
            "args": {"n": "{{count}}"},
        },
        {"id": "branch_a", "type": "python", "call": "tasks:a", "pool": "db"},
        {
            "id": "branch_b",
            "type": "http",
            "url": "https://example.com/{{ get_users[0].id }}",
            "rateLimit": "github",
            "errorStrategy": "fallback",
            "fallbackNodeId": "fallback_b",
        },
        {"id": "merged", "type": "merge", "mode": "all"},
        {
            "id": "combine",
            "type": "transform",
            "expression": "{'total': len(branch_a) + len(branch_b['body'])}",
        },
        {"id": "is_big", "type": "condition", "expression": "combine['total'] > 10"},
        {"id": "kind", "type": "switch", "expression": "mode", "cases": [{"value": "fast"}]},
        {
            "id": "enrich_all",
            "type": "loop",
            "arrayPath": "{{ get_users }}",
            "parallel": {"onPartialFailure": "collect", "minSuccessRate": 0.5},
            "maxConcurrency": 4,
            "itemVariable": "user",
            "outputVariable": "enriched",
            "body": {
                "nodes": [
                    {
                        "id": "enrich",
                        "type": "python",
                        "call": "tasks:enrich",
                        "args": {"user": "{{user}}", "i": "{{index}}", "total": "{{combine}}"},
                    },
                    {"id": "tag", "type": "transform", "expression": "[enrich, loop.isLast]"},
                ],
                "edges": [{"source": "enrich", "target": "tag"}],
            },
        },
        {"id": "small", "type": "delay", "duration": 10},
        {"id": "fast", "type": "shell", "command": ["echo", "{{ mode }}"]},
        {"id": "slow", "type": "wait", "signal": "go"},
        {"id": "result", "type": "output", "outputName": "users", "value": "{{ enriched }}"},
        {"id": "total", "type": "output", "value": "{{ combine.total }}"},
    ],
    "edges": [
        {"source": "get_users", "target": "branch_a"},
        {"source": "get_users", "target": "branch_b"},
        {"source": "branch_a", "target": "merged"},
        {"source": "branch_b", "target": "merged"},
        {"source": "merged", "target": "combine"},
        {"source": "combine", "target": "is_big"},
        {"source": "is_big", "target": "enrich_all", "sourceHandle": "true"},
        {"source": "is_big", "target": "small", "sourceHandle": "false"},
        {"source": "combine", "target": "kind"},
        {"source": "kind", "target": "fast", "sourceHandle": "fast"},
        {"source": "kind", "target": "slow", "sourceHandle": "default"},
        {"source": "enrich_all", "target": "result"},
        {"source": "combine", "target": "total"},
    ],
    "handlers": [
        {"id": "fallback_b", "type": "transform", "expression": "{'body': [], 'e': error.code}"},
        {"id": "on_priority", "type": "python", "call": "tasks:prio", "args": {"s": "{{signal}}"}},
    ],
}


def test_complex_valid_workflow_has_no_problems() -> None:
    wf, ps = check_document(json.loads(json.dumps(COMPLEX)))
    assert ps == []
    assert wf is not None and len(wf.nodes) == len(COMPLEX["nodes"])


def test_snake_case_spelling_is_accepted() -> None:
    d = doc(
        [
            py("a", output_variable="out", error_strategy="goto", goto_node_id="h"),
            {
                "id": "l",
                "type": "loop",
                "loop_type": "for_each",
                "array_path": "{{ out }}",
                "item_variable": "it",
                "index_variable": "i",
                "max_concurrency": 2,
                "body": {"nodes": [py("b", args={"x": "{{ it }}", "i": "{{ i }}"})]},
            },
        ],
        [{"source": "a", "target": "l"}, {"source": "a", "target": "l", "source_handle": "error"}],
        handlers=[py("h")],
        settings={"max_concurrency": 3, "retry": {"max_attempts": 2}},
    )
    assert problems(d) == []


def test_several_problems_are_all_reported() -> None:
    d = doc(
        [
            py("a", pool="nope"),
            py("a"),
            {"id": "t", "type": "transform", "expression": "1 +"},
            {"id": "l", "type": "loop", "arrayPath": "{{[1]}}", "body": {"nodes": []}},
            py("f", errorStrategy="fallback"),
        ],
        [{"source": "a", "target": "ghost"}],
    )
    paths = {p.path for p in errors(d)}
    assert paths == {
        "nodes[0].pool",
        "nodes[1].id",
        "nodes[2].expression",
        "nodes[3].body",
        "nodes[4].errorStrategy",
        "edges[0].target",
    }


def test_parse_workflow_raises_with_every_line_and_keeps_warnings() -> None:
    d = doc([py("a", args={"u": "{{ usr }}"}), py("a")])
    with pytest.raises(WorkflowInvalid) as ei:
        parse_workflow(json.dumps(d))
    assert ei.value.problems == ["nodes[1].id: node 'a': duplicate id (also used at nodes[0])"]
    assert len(ei.value.warnings) == 1 and ei.value.warnings[0].startswith("warning: ")
    assert ei.value.exit_code == 2


# --- files and inputs ----------------------------------------------------------------


def test_load_workflow_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WorkflowInvalid) as ei:
        load_workflow(tmp_path / "nope.json")
    assert ei.value.problems == [f"{tmp_path / 'nope.json'}: no such file"]


def test_load_workflow_reads_the_file(tmp_path: Path) -> None:
    f = tmp_path / "wf.json"
    f.write_text(json.dumps(doc([py("a", args={"u": "{{ usr }}"})])))
    loaded = load_workflow(str(f))
    assert isinstance(loaded, LoadedWorkflow)
    assert loaded.folder == tmp_path.absolute()
    assert loaded.path == f.absolute()
    assert loaded.raw["name"] == "t"
    assert [w.path for w in loaded.warnings] == ["nodes[0].args.u"]


def test_parse_workflow_text_uses_cwd() -> None:
    loaded = parse_workflow(json.dumps(doc([py("a")])))
    assert loaded.path is None and loaded.folder == Path.cwd()


def test_validate_input_against_the_schema() -> None:
    schema = {
        "type": "object",
        "required": ["users"],
        "properties": {
            "users": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"email": {"type": "integer"}},
                    "required": ["email"],
                },
            }
        },
    }
    wf = Workflow.model_validate(doc([py("a")], inputs=schema))
    assert validate_input(wf, {"users": [{"email": 1}]}) == []
    assert validate_input(wf, {}) == ["input: 'users' is a required property"]
    got = validate_input(wf, {"users": [{"email": 1}, {}, {"email": "x"}]})
    assert got == [
        "input.users[1]: 'email' is a required property",
        "input.users[2].email: 'x' is not of type 'integer'",
    ]


def test_validate_input_without_inputs_accepts_anything() -> None:
    wf = Workflow.model_validate(doc([py("a")]))
    assert validate_input(wf, {"anything": 1}) == []
    assert validate_input(wf, [1, 2]) == []
    assert validate_input(wf, None) == []


def test_output_variable_of_a_body_node_is_not_in_scope_outside() -> None:
    loop = {
        "id": "l",
        "type": "loop",
        "arrayPath": "{{[1]}}",
        "body": {"nodes": [py("inner", outputVariable="res")]},
    }
    after = {"id": "t", "type": "output", "value": "{{ res }}"}
    ps = errors(doc([loop, after], [{"source": "l", "target": "t"}]))
    assert "node inside loop 'l'" in at(ps, "nodes[1].value").message
