"""Validation and graph compiling on big documents (SPEC §1, §2, §5).

These check behaviour, not speed: big documents validate, with the same results
as small ones, and a long cycle is reported with its whole path (no
RecursionError on a 20,000-node chain). ``benchmarks/validate_scale.py`` measures
the seconds; pytest-timeout is the guard against a quadratic step coming back.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from fm_local import validate
from fm_local.errors import WorkflowInvalid
from fm_local.graph import Branch, compile_graph, merge_sections
from fm_local.model import Workflow
from fm_local.validate import check_document, load_workflow, parse_workflow


def transform(nid: str, expression: str = "1") -> dict[str, Any]:
    return {"id": nid, "type": "transform", "expression": expression}


def chain(n: int, expression: str = "1") -> dict[str, Any]:
    nodes = [transform(f"n{i}", expression) for i in range(n)]
    edges = [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(n - 1)]
    return {"name": "chain", "nodes": nodes, "edges": edges}


def fan(n: int) -> dict[str, Any]:
    """start -> b0..b{n-1} -> join (a merge)."""
    nodes = [transform("start")] + [transform(f"b{i}", f"start + {i}") for i in range(n)]
    nodes.append({"id": "join", "type": "merge"})
    edges = [{"source": "start", "target": f"b{i}"} for i in range(n)]
    edges += [{"source": f"b{i}", "target": "join"} for i in range(n)]
    return {"name": "fan", "nodes": nodes, "edges": edges}


def loaded(doc: dict[str, Any]) -> Workflow:
    return parse_workflow(json.dumps(doc)).workflow


def strs(ps: list[validate.Problem]) -> list[str]:
    return [str(p) for p in ps]


# --- chains: no recursion, cycles printed whole -------------------------------------


def test_long_chain_validates_and_compiles_in_order(tmp_path: Path) -> None:
    n = 5_000
    f = tmp_path / "chain.json"
    f.write_text(json.dumps(chain(n)))
    lw = load_workflow(f)
    assert lw.warnings == []
    g = compile_graph(lw.workflow.nodes, lw.workflow.edges)
    assert g.order == [f"n{i}" for i in range(n)]
    assert g.roots == ["n0"] and g.sinks == [f"n{n - 1}"]
    assert g.dependents["n0"] == ["n1"]
    assert set(g.branches.values()) == {Branch(None, None, ())}


def test_long_chain_of_references_validates() -> None:
    n = 5_000
    nodes = [transform("n0")] + [transform(f"n{i}", f"n{i - 1} + 1") for i in range(1, n)]
    wf = loaded({"name": "refs", "nodes": nodes})
    g = compile_graph(wf.nodes, wf.edges)
    assert g.order == [f"n{i}" for i in range(n)]
    assert all(d.is_ref for ds in g.deps.values() for d in ds)
    assert g.has_edges == dict.fromkeys(g.order, False)


def test_cycle_in_a_long_chain_is_reported_with_its_path() -> None:
    n = 5_000
    doc = chain(n)
    doc["edges"].append({"source": f"n{n - 1}", "target": "n0"})
    with pytest.raises(WorkflowInvalid) as ei:
        parse_workflow(json.dumps(doc))
    expected = "cycle: " + " -> ".join([f"n{i}" for i in range(n)] + ["n0"])
    assert ei.value.problems == [f"nodes[0]: {expected}"]
    with pytest.raises(ValueError, match="^cycle: n0 -> n1 -> n2 -> "):
        compile_graph(Workflow.model_validate(chain(n)).nodes, _edges(doc))


def test_cycle_through_references_in_a_long_chain() -> None:
    n = 5_000
    nodes = [transform("n0", f"n{n - 1}")] + [transform(f"n{i}", f"n{i - 1}") for i in range(1, n)]
    ps = validate.check_document({"name": "c", "nodes": nodes})[1]
    assert [p.path for p in ps] == ["nodes[0]"]
    assert ps[0].message == "cycle: " + " -> ".join([f"n{i}" for i in range(n)] + ["n0"])


def _edges(doc: dict[str, Any]) -> list[Any]:
    return Workflow.model_validate(doc).edges


# --- the same results as small documents --------------------------------------------

# A small document with one problem of each kind, which big padding must not change.
SMALL: dict[str, Any] = {
    "name": "small",
    "nodes": [
        {"id": "get", "type": "python", "call": "tasks:get"},
        {"id": "enrich", "type": "transform", "expression": "get + usres"},
        {"id": "check", "type": "condition", "expression": "enrich > 1"},
        {"id": "a", "type": "transform", "expression": "b"},
        {"id": "b", "type": "transform", "expression": "a"},
        {"id": "p", "type": "python", "call": "t:f", "pool": "dbb", "errorStrategy": "continue"},
        {"id": "after", "type": "python", "call": "t:f"},
    ],
    "edges": [
        {"source": "get", "target": "enrich"},
        {"source": "enrich", "target": "check"},
        {"source": "check", "target": "gett", "sourceHandle": "true"},
        {"source": "p", "target": "after", "sourceHandle": "error"},
    ],
    "settings": {"concurrencyLimits": {"db": 2}},
}


def padded(doc: dict[str, Any], n: int) -> dict[str, Any]:
    """``doc`` with n more independent nodes after its own (so its paths stay)."""
    big = json.loads(json.dumps(doc))
    big["nodes"] += [transform(f"pad_{i:06d}", f"{i} * 2") for i in range(n)]
    return big


def test_padding_with_5000_nodes_changes_no_problem() -> None:
    small = check_document(SMALL)[1]
    assert len(small) >= 5  # the planted problems are there
    assert any("did you mean 'get'?" in p.message for p in small)
    assert any("did you mean 'db'?" in p.message for p in small)
    assert check_document(padded(SMALL, 5_000))[1] == small


def test_valid_small_and_padded_documents_compile_alike() -> None:
    small = fan(3)
    g_small = compile_graph(*_graph(small))
    g_big = compile_graph(*_graph(padded(small, 3_000)))
    assert [nid for nid in g_big.order if nid in g_small.nodes] == g_small.order
    for nid in g_small.nodes:
        assert [(d.source, d.handle, d.is_ref) for d in g_big.deps[nid]] == [
            (d.source, d.handle, d.is_ref) for d in g_small.deps[nid]
        ]
        assert g_big.dependents[nid] == g_small.dependents[nid]
    assert g_big.sections["join"].members == g_small.sections["join"].members
    assert g_big.sections["join"].fanout == "start"


def _graph(doc: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    wf = loaded(doc)
    return wf.nodes, wf.edges


def test_many_independent_nodes_validate(tmp_path: Path) -> None:
    # Correctness at size; the 100,000-node timing is in make bench.
    n = 5_000
    doc = {"name": "wide", "nodes": [transform(f"n{i}", f"{i} + 1") for i in range(n)]}
    f = tmp_path / "wide.json"
    f.write_text(json.dumps(doc))
    lw = load_workflow(f)
    assert lw.warnings == []
    assert len(lw.workflow.nodes) == n
    g = compile_graph(lw.workflow.nodes, lw.workflow.edges)
    ids = [f"n{i}" for i in range(n)]
    assert g.order == ids and g.roots == ids and g.sinks == ids
    # Every root starts its own branch, numbered in document order.
    assert g.branches["n0"] == Branch("n0", "n0", (1,))
    assert g.branches[f"n{n - 1}"] == Branch(f"n{n - 1}", f"n{n - 1}", (n,))


def test_wide_fan_out_and_fan_in_is_one_section() -> None:
    n = 5_000
    g = compile_graph(*_graph(fan(n)))
    sec = g.sections["join"]
    assert sec.fanout == "start"
    assert sec.members == frozenset(f"b{i}" for i in range(n))
    assert sec.branches["b7"] == frozenset({"b7"})
    assert g.branches["b7"] == Branch("b7", "b7", (8,))
    assert g.branches["join"] == Branch(None, None, ())
    assert g.section_owner["b123"] == "join"
    assert g.dependents["start"] == [f"b{i}" for i in range(n)]


def test_section_after_a_long_chain_stops_at_the_fan_out() -> None:
    half = 5_000
    doc = chain(half)
    doc["nodes"] += [transform(f"b{i}") for i in range(half)] + [{"id": "m", "type": "merge"}]
    doc["edges"] += [{"source": f"n{half - 1}", "target": f"b{i}"} for i in range(half)]
    doc["edges"] += [{"source": f"b{i}", "target": "m"} for i in range(half)]
    sec = compile_graph(*_graph(doc)).sections["m"]
    assert sec.fanout == f"n{half - 1}"
    assert sec.members == frozenset(f"b{i}" for i in range(half))


def test_many_diamonds_each_have_their_own_section() -> None:
    k = 2_000
    nodes, edges = [transform("d0")], []
    for i in range(k):
        nodes += [transform(f"a{i}"), transform(f"b{i}"), {"id": f"d{i + 1}", "type": "merge"}]
        edges += [{"source": f"d{i}", "target": f"a{i}"}, {"source": f"d{i}", "target": f"b{i}"}]
        edges += [{"source": f"a{i}", "target": f"d{i + 1}"}]
        edges += [{"source": f"b{i}", "target": f"d{i + 1}"}]
    g = compile_graph(*_graph({"name": "d", "nodes": nodes, "edges": edges}))
    assert len(g.sections) == k
    for i in (0, 1234, k - 1):
        sec = g.sections[f"d{i + 1}"]
        assert sec.fanout == f"d{i}"
        assert sec.branches == {f"a{i}": frozenset({f"a{i}"}), f"b{i}": frozenset({f"b{i}"})}


def test_loop_with_a_5000_node_body() -> None:
    body = chain(5_000, "item + 1")
    loop = {"id": "each", "type": "loop", "arrayPath": "{{[1, 2]}}", "body": body}
    del body["name"]
    wf = loaded({"name": "l", "nodes": [loop]})
    g = compile_graph(wf.nodes[0].body.nodes, wf.nodes[0].body.edges)
    assert g.order[:3] == ["n0", "n1", "n2"] and len(g.order) == 5_000
    assert g.free_names == frozenset({"item"})


def test_many_loops_read_their_own_item_and_the_outer_scope() -> None:
    n = 3_000
    nodes = [transform("base")] + [
        {
            "id": f"l{i}",
            "type": "loop",
            "arrayPath": "{{[1]}}",
            "body": {"nodes": [transform("step", "item + base + bsae")]},
        }
        for i in range(n)
    ]
    ps = check_document({"name": "ml", "nodes": nodes})[1]
    # One warning per body for the misspelled name, each with the same hint.
    assert len(ps) == n
    assert all(p.severity == "warning" and "(did you mean 'base'?)" in p.message for p in ps)
    assert ps[0].path == "nodes[1].body.nodes[0].expression"


def test_switch_with_many_cases() -> None:
    n = 5_000
    cases = [{"value": f"v{i}"} for i in range(n)]
    nodes = [{"id": "s", "type": "switch", "expression": "1", "cases": cases}]
    nodes += [transform(f"t{i}") for i in range(n)]
    edges = [{"source": "s", "target": f"t{i}", "sourceHandle": f"v{i}"} for i in range(n)]
    edges.append({"source": "s", "target": "t0", "sourceHandle": "nope"})
    ps = check_document({"name": "sw", "nodes": nodes, "edges": edges})[1]
    assert [(p.path, p.severity) for p in ps] == [
        (f"edges[{n}].sourceHandle", "error"),
        ("nodes[0]", "warning"),
    ]
    assert "has no port 'nope'" in ps[0].message
    assert ps[1].message == "node 's': port 'default' has no outgoing edge"


def test_many_misspelled_targets_are_all_reported() -> None:
    n = 2_000
    nodes = [transform(f"n{i}") for i in range(n)]
    edges = [{"source": f"n{i}", "target": f"nx{i}"} for i in range(n)]
    ps = check_document({"name": "m", "nodes": nodes, "edges": edges})[1]
    assert [p.path for p in ps] == [f"edges[{i}].target" for i in range(n)]
    assert all(f"edge target 'nx{i}' is not a node" in p.message for i, p in enumerate(ps))
    # Hints are exact while the document's hint budget lasts (each compares the
    # name with all n ids), and left out after it, so errors stay linear.
    hinted = validate.HINT_BUDGET // n
    assert ps[0].message.endswith("(did you mean 'n0'?)")
    assert ps[hinted - 1].message.endswith(f"(did you mean 'n{hinted - 1}'?)")
    assert not ps[hinted].message.endswith("?)")
    assert not ps[-1].message.endswith("?)")


# --- merge sections: the definition, on random graphs -------------------------------


def _reference_sections(g: Any, merges: list[str]) -> dict[str, tuple[Any, Any, Any]]:
    """SPEC §5 as written: the fan-out is the latest common edge ancestor (itself
    included) of the merge's predecessors; a branch is what leads to it below."""
    pos = {nid: i for i, nid in enumerate(g.order)}

    def ancestors(nid: str) -> set[str]:
        seen, stack = {nid}, [nid]
        while stack:
            for d in g.deps[stack.pop()]:
                if not d.is_ref and d.source not in seen:
                    seen.add(d.source)
                    stack.append(d.source)
        return seen

    out = {}
    for mid in merges:
        preds = list(dict.fromkeys(d.source for d in g.deps[mid] if not d.is_ref))
        anc = {p: ancestors(p) for p in preds}
        common = set.intersection(*anc.values()) if anc else set()
        fanout = max(common, key=pos.__getitem__) if common else None
        above = ancestors(fanout) if fanout else set()
        branches = {p: frozenset(anc[p] - above) for p in preds}
        members = frozenset().union(*branches.values())
        out[mid] = (fanout, members, branches)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_merge_sections_match_their_definition(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randrange(2, 40)
    kinds = ["merge" if rng.random() < 0.3 else "transform" for _ in range(n)]
    nodes = [
        {"id": f"n{i}", "type": "merge"} if k == "merge" else transform(f"n{i}")
        for i, k in enumerate(kinds)
    ]
    edges = []
    for _ in range(rng.randrange(n, 3 * n)):
        a, b = sorted(rng.sample(range(n), 2))
        edge = {"source": f"n{a}", "target": f"n{b}"}
        if rng.random() < 0.1:
            edge["sourceHandle"] = "error"
        edges.append(edge)
    rng.shuffle(nodes)
    g = compile_graph(*_graph({"name": "r", "nodes": nodes, "edges": edges}))
    merges = [nid for nid, node in g.nodes.items() if node.type == "merge"]
    got = merge_sections(g, merges)
    want = _reference_sections(g, merges)
    assert {m: (s.fanout, s.members, s.branches) for m, s in got.items()} == want
