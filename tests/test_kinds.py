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


def test_the_union_lists_every_kind_in_order() -> None:
    """model.py builds the Node union from KINDS, in their order (that of
    pydantic's messages and fm schema)."""
    import typing

    from fm_local import model

    members = [k.model.__name__ for k in KINDS]
    assert members == [
        "PythonNode",
        "TransformNode",
        "HttpNode",
        "ShellNode",
        "ConditionNode",
        "SwitchNode",
        "MergeNode",
        "LoopNode",
        "DelayNode",
        "WaitNode",
        "OutputNode",
    ]
    union = typing.get_args(typing.get_args(model.Node)[0])
    assert [m.__name__ for m in union] == members


def test_any_node_module_can_be_imported_first() -> None:
    """fm_local.model, fm_local.nodes and its modules import one another: whichever
    a program imports first, it works (in a fresh interpreter each time)."""
    import subprocess
    import sys

    from conftest import ROOT

    names = ["fm_local.model", "fm_local.nodes", "fm_local.graph", "fm_local.validate"]
    names += [
        f"fm_local.nodes.{p.stem}" for p in sorted((ROOT / "fm_local" / "nodes").glob("*.py"))
    ]
    script = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    for m in [m for m in sys.modules if m.startswith('fm_local')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
        "    from fm_local.model import NODE_TYPES\n"
        "    assert len(NODE_TYPES) == 11, (name, NODE_TYPES)\n"
        "print('ok')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


_NEW_TYPE = """
from typing import Literal

from fm_local import expr
from fm_local.model import NodeBase
from fm_local.nodes.kind import Kind, Runs


class ShoutNode(NodeBase):
    type: Literal["shout"]
    text: str


def evaluate(node, scope, log):
    return expr.render_value(node.text, scope, log).upper() + "!", None


KIND = Kind("shout", ShoutNode, Runs.INLINE, templates=(("text", "text"),), evaluate=evaluate)
"""


def test_a_new_node_type_is_one_module(tmp_path: Any) -> None:
    """Adding a node type is adding its module to fm_local/nodes: on a copy of the
    package with one new file, fm validate, fm schema and fm run know the type."""
    import json
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    shutil.copytree(
        ROOT / "fm_local",
        tmp_path / "pkg" / "fm_local",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (tmp_path / "pkg" / "fm_local" / "nodes" / "shout.py").write_text(_NEW_TYPE)
    doc = {
        "name": "shouting",
        "nodes": [
            {"id": "a", "type": "transform", "expression": "'hello ' + input.who"},
            {"id": "b", "type": "shout", "text": "{{a}}"},
            {"id": "out", "type": "output", "value": "{{b}}"},
        ],
        "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "out"}],
    }
    (tmp_path / "wf.json").write_text(json.dumps(doc))
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "pkg")}

    def fm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fm_local", "--db", str(tmp_path / "fm.db"), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )

    checked = fm("validate", "wf.json")
    assert checked.returncode == 0, checked.stderr
    schema = fm("schema")
    assert schema.returncode == 0, schema.stderr
    assert '"shout"' in schema.stdout
    ran = fm("run", "wf.json", "--input", '{"who": "world"}', "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["output"] == {"out": "HELLO WORLD!"}
    # The package this test copied is the one that ran.
    where = subprocess.run(
        [sys.executable, "-c", "import fm_local; print(fm_local.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert where.stdout.startswith(str(tmp_path / "pkg"))
