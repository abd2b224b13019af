"""fm_local.nodes.kinds: one table says how each node type runs, and graph,
validate and the supervisor read it (no process needed for these)."""

from __future__ import annotations

from typing import Any

import pytest

from fm_local import graph
from fm_local.model import NODE_TYPES, Workflow
from fm_local.nodes.kinds import KINDS, Runs, body_nodes, kind_of, runs_on_worker
from fm_local.validate import _expression_fields, _ports

DOC: dict[str, Any] = {
    "name": "every-kind",
    "nodes": [
        {"id": "p", "type": "python", "call": "m:f", "args": {"x": "{{a.b}}"}},
        {"id": "h", "type": "http", "url": "http://h/{{c}}", "json": {"k": "{{d}}"}},
        {"id": "s", "type": "shell", "command": "echo {{e}}", "env": {"V": "{{f}}"}},
        {"id": "t", "type": "transform", "expression": "g + 1"},
        {"id": "c", "type": "condition", "expression": "h > 0"},
        {
            "id": "w",
            "type": "switch",
            "expression": "i",
            "cases": [{"value": 1, "label": "one"}, {"value": "b"}],
        },
        {"id": "o", "type": "output", "value": "{{j}}"},
        {"id": "m", "type": "merge"},
        {
            "id": "l",
            "type": "loop",
            "arrayPath": "{{k}}",
            "body": {"nodes": [{"id": "inner", "type": "wait", "signal": "go"}]},
        },
        {"id": "d", "type": "delay", "duration": "{{n}}"},
        {"id": "x", "type": "wait", "signal": "approve"},
    ],
}


def _nodes() -> dict[str, Any]:
    return {n.id: n for n in Workflow.model_validate(DOC).nodes}


def test_every_node_type_has_one_kind_and_every_kind_a_type() -> None:
    assert sorted(k.name for k in KINDS) == sorted(NODE_TYPES)
    for k in KINDS:
        assert NODE_TYPES[k.name] is k.model


def test_where_each_type_runs() -> None:
    runs = {n.id: kind_of(n).runs for n in _nodes().values()}
    assert runs == {
        "p": Runs.WORKER,
        "h": Runs.WORKER,
        "s": Runs.WORKER,
        "t": Runs.INLINE,
        "c": Runs.INLINE,
        "w": Runs.INLINE,
        "o": Runs.INLINE,
        "m": Runs.MERGE,
        "l": Runs.LOOP,
        "d": Runs.DELAY,
        "x": Runs.WAIT,
    }
    assert {nid for nid, n in _nodes().items() if runs_on_worker(n)} == {"p", "h", "s"}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_a_kind_runs_one_way(kind: Any) -> None:
    assert (kind.task is not None) == (kind.runs is Runs.WORKER)
    assert (kind.evaluate is not None) == (kind.runs is Runs.INLINE)


def test_the_names_a_node_reads_come_from_its_kinds_fields() -> None:
    names = {nid: set(graph.node_expression_names(n)) for nid, n in _nodes().items()}
    assert names["p"] == {"a"}
    assert names["h"] == {"c", "d"}
    assert names["s"] == {"e", "f"}
    assert names["t"] == {"g"}
    assert names["c"] == {"h"}
    assert names["w"] == {"i"}
    assert names["o"] == {"j"}
    assert names["l"] == {"k"}
    assert names["d"] == {"n"}
    assert names["m"] == names["x"] == set()


def test_validate_walks_the_same_fields_with_their_json_paths() -> None:
    nodes = _nodes()
    raw = {n["id"]: n for n in DOC["nodes"]}
    found = {
        nid: [
            (".".join(map(str, at)), what, text)
            for at, what, text in _expression_fields(n, raw[nid], [])
        ]
        for nid, n in nodes.items()
    }
    assert found["h"] == [
        ("method", "tpl", "GET"),
        ("url", "tpl", "http://h/{{c}}"),
        ("json.k", "tpl", "{{d}}"),
    ]
    assert found["t"] == [("expression", "expr", "g + 1")]
    assert found["x"] == []


def test_ports_and_handles() -> None:
    nodes = _nodes()
    assert _ports(nodes["c"]) == ["true", "false"]
    assert _ports(nodes["w"]) == ["one", "b", "default"]
    assert _ports(nodes["w"], accepted=True) == ["one", "b", "1", "default"]
    assert _ports(nodes["p"]) == []
    handle_map = kind_of(nodes["w"]).handle_map
    assert handle_map is not None and handle_map(nodes["w"])["1"] == "one"
    assert kind_of(nodes["c"]).handle_map is None


def test_worker_tasks_are_rendered_in_a_scope() -> None:
    nodes = _nodes()
    scope = {"a": {"b": 7}, "c": "x", "d": [1], "e": "it's", "f": 2}
    p, h, s = (kind_of(nodes[i]).task for i in ("p", "h", "s"))
    assert p is not None and p(nodes["p"], scope) == {"call": "m:f", "args": {"x": 7}}
    assert h is not None
    task = h(nodes["h"], scope)
    assert (task["url"], task["json"], task["method"]) == ("http://h/x", {"k": [1]}, "GET")
    assert s is not None
    task = s(nodes["s"], scope)
    assert task["command"] == "echo 'it'\"'\"'s'" and task["env"] == {"V": 2}


def test_inline_kinds_evaluate_in_a_scope() -> None:
    nodes = _nodes()
    lines: list[str] = []
    for nid, scope, want in [
        ("t", {"g": 1}, (2, None)),
        ("c", {"h": 1}, ({"result": True}, "true")),
        ("w", {"i": 1}, ({"value": 1}, "one")),
        ("o", {"j": "v"}, ("v", None)),
    ]:
        evaluate = kind_of(nodes[nid]).evaluate
        assert evaluate is not None
        assert evaluate(nodes[nid], scope, lines.append) == want, nid


def test_a_body_is_a_loops_only() -> None:
    nodes = _nodes()
    assert [n.id for n in body_nodes(nodes["l"])] == ["inner"]
    assert all(body_nodes(n) == [] for nid, n in nodes.items() if nid != "l")


def test_the_union_mypy_reads_lists_every_kind_in_order() -> None:
    """model.py writes the Node union out for mypy (it cannot read the one built from
    KINDS at run time): the two must name the same classes in the same order."""
    import ast
    import typing

    from conftest import ROOT

    from fm_local import model

    tree = ast.parse((ROOT / "fm_local" / "model.py").read_text())
    written: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and stmt.targets[0].id == "Node":  # type: ignore[attr-defined]
                    written = _names_in_order(stmt.value)
    members = [k.model.__name__ for k in KINDS]
    assert [n for n in written if n in NODE_TYPES_BY_NAME] == members
    union = typing.get_args(typing.get_args(model.Node)[0])
    assert [m.__name__ for m in union] == members


NODE_TYPES_BY_NAME = {m.__name__ for m in NODE_TYPES.values()}


def _names_in_order(expr: Any) -> list[str]:
    """The names of an expression, left to right (``A | B | C``: A, B, C)."""
    import ast

    if isinstance(expr, ast.Name):
        return [expr.id]
    out: list[str] = []
    for child in ast.iter_child_nodes(expr):
        out += _names_in_order(child)
    return out
