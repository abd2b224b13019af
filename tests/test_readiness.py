"""Readiness (fm_local.graph.readiness), the rule the supervisor applies to every
node, tested without a supervisor or a process: explicit edges decide, references
only order, error edges run on failure, a condition's or switch's port chooses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from fm_local.graph import compile_graph, readiness
from fm_local.validate import parse_workflow


@dataclass
class Done:
    status: str
    port: str | None = None


def compiled(nodes: list[dict[str, Any]], edges: list[dict[str, Any]] | None = None) -> Any:
    doc = {"name": "r", "nodes": nodes, "edges": edges or []}
    wf = parse_workflow(json.dumps(doc)).workflow
    return compile_graph(wf.nodes, wf.edges)


def verdict(g: Any, nid: str, runs: dict[str, Done]) -> str | None:
    return readiness(g.deps[nid], runs, g.has_edges[nid])


T = {"type": "transform", "expression": "1"}


def test_a_node_without_dependencies_runs():
    g = compiled([{"id": "a", **T}])
    assert verdict(g, "a", {}) == "run"


def test_it_waits_for_every_dependency_to_finish():
    g = compiled(
        [{"id": "a", **T}, {"id": "b", **T}, {"id": "c", **T}],
        [{"source": "a", "target": "c"}, {"source": "b", "target": "c"}],
    )
    assert verdict(g, "c", {}) is None
    assert verdict(g, "c", {"a": Done("succeeded")}) is None
    assert verdict(g, "c", {"a": Done("succeeded"), "b": Done("running")}) is None
    assert verdict(g, "c", {"a": Done("succeeded"), "b": Done("succeeded")}) == "run"


def test_one_taken_edge_is_enough_and_none_taken_skips():
    g = compiled(
        [{"id": "a", **T}, {"id": "b", **T}, {"id": "c", **T}],
        [{"source": "a", "target": "c"}, {"source": "b", "target": "c"}],
    )
    assert verdict(g, "c", {"a": Done("skipped"), "b": Done("succeeded")}) == "run"
    assert verdict(g, "c", {"a": Done("skipped"), "b": Done("failed")}) == "skip"


@pytest.mark.parametrize(
    "port, then, otherwise", [("true", "run", "skip"), ("false", "skip", "run")]
)
def test_a_condition_port_chooses_the_branch(port, then, otherwise):
    g = compiled(
        [
            {"id": "c", "type": "condition", "expression": "True"},
            {"id": "yes", **T},
            {"id": "no", **T},
        ],
        [
            {"source": "c", "target": "yes", "sourceHandle": "true"},
            {"source": "c", "target": "no", "sourceHandle": "false"},
        ],
    )
    runs = {"c": Done("succeeded", port)}
    assert (verdict(g, "yes", runs), verdict(g, "no", runs)) == (then, otherwise)


def test_an_error_edge_runs_only_on_failure():
    g = compiled(
        [{"id": "a", **T}, {"id": "handler", **T}],
        [{"source": "a", "target": "handler", "sourceHandle": "error"}],
    )
    assert verdict(g, "handler", {"a": Done("failed")}) == "run"
    assert verdict(g, "handler", {"a": Done("succeeded")}) == "skip"


def test_references_order_a_node_with_edges_but_do_not_decide():
    g = compiled(
        [
            {"id": "a", **T},
            {"id": "b", **T},
            {"id": "c", "type": "transform", "expression": "b + 1"},
        ],
        [{"source": "a", "target": "c"}],
    )
    assert verdict(g, "c", {"a": Done("succeeded")}) is None  # waits for b
    assert verdict(g, "c", {"a": Done("succeeded"), "b": Done("skipped")}) == "run"
    assert verdict(g, "c", {"a": Done("skipped"), "b": Done("succeeded")}) == "skip"


def test_without_edges_a_succeeded_reference_lets_it_run():
    g = compiled([{"id": "a", **T}, {"id": "c", "type": "transform", "expression": "a + 1"}])
    assert verdict(g, "c", {"a": Done("succeeded")}) == "run"
    assert verdict(g, "c", {"a": Done("skipped")}) == "skip"
