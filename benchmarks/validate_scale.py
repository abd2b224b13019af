"""Validation at scale: ``fm validate`` (``validate.load_workflow``) and the
supervisor's ``graph.compile_graph`` on big generated workflow documents.

Standalone: ``python benchmarks/validate_scale.py [--scale 0.1] [CASE ...]``.
Prints one line per case: its size, the seconds ``load_workflow`` took on the
file (read, strict JSON, shape, meaning, compile) and the seconds one more
``compile_graph`` of the top graph took. Invalid cases time the whole report.
Validation is linear in the document, so the seconds should grow with ``--scale``,
not with its square.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from fm_local.errors import WorkflowInvalid  # noqa: E402
from fm_local.graph import compile_graph  # noqa: E402
from fm_local.validate import load_workflow  # noqa: E402

Doc = dict[str, Any]


def transform(nid: str, expression: str) -> Doc:
    return {"id": nid, "type": "transform", "expression": expression}


def independent(n: int) -> Doc:
    """n nodes, no edges (every node is a root and a sink)."""
    return {"name": "independent", "nodes": [transform(f"n{i}", f"{i} + 1") for i in range(n)]}


def chain(n: int) -> Doc:
    """n_0 -> n_1 -> ... by edges."""
    nodes = [transform(f"n{i}", str(i)) for i in range(n)]
    edges = [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(n - 1)]
    return {"name": "chain", "nodes": nodes, "edges": edges}


def chain_of_references(n: int) -> Doc:
    """n_i reads n_{i-1}: a chain of implicit edges."""
    nodes = [transform("n0", "1")] + [transform(f"n{i}", f"n{i - 1} + 1") for i in range(1, n)]
    return {"name": "chain-refs", "nodes": nodes}


def chain_with_cycle(n: int) -> Doc:
    """A chain closed by one back edge: invalid, the report prints the n-node cycle."""
    doc = chain(n)
    doc["edges"].append({"source": f"n{n - 1}", "target": "n0"})
    return doc


def fan(n: int) -> Doc:
    """start -> n branches -> one merge (the section has n members)."""
    nodes = [transform("start", "1")]
    nodes += [transform(f"b{i}", f"start + {i}") for i in range(n)]
    nodes.append({"id": "join", "type": "merge"})
    edges = [{"source": "start", "target": f"b{i}"} for i in range(n)]
    edges += [{"source": f"b{i}", "target": "join"} for i in range(n)]
    return {"name": "fan", "nodes": nodes, "edges": edges}


def chain_then_fan(n: int) -> Doc:
    """A chain of n/2 nodes, then n/2 branches from its end into one merge."""
    half = max(n // 2, 1)
    doc = chain(half)
    doc["nodes"] += [transform(f"b{i}", "1") for i in range(half)]
    doc["nodes"].append({"id": "join", "type": "merge"})
    doc["edges"] += [{"source": f"n{half - 1}", "target": f"b{i}"} for i in range(half)]
    doc["edges"] += [{"source": f"b{i}", "target": "join"} for i in range(half)]
    return doc


def diamonds(n: int) -> Doc:
    """n/3 diamonds in a row, each closed by a merge (n/3 sections)."""
    k = max(n // 3, 1)
    nodes, edges = [transform("d0", "1")], []
    for i in range(k):
        a, b, m = f"a{i}", f"b{i}", f"d{i + 1}"
        nodes += [transform(a, "1"), transform(b, "2"), {"id": m, "type": "merge"}]
        edges += [{"source": f"d{i}", "target": a}, {"source": f"d{i}", "target": b}]
        edges += [{"source": a, "target": m}, {"source": b, "target": m}]
    return {"name": "diamonds", "nodes": nodes, "edges": edges}


def loop_body(n: int) -> Doc:
    """One loop whose body is a chain of n nodes reading the item."""
    body = chain(n)
    for i, node in enumerate(body["nodes"]):
        node["expression"] = f"item + {i}"
    loop = {"id": "each", "type": "loop", "arrayPath": "{{[1, 2]}}"}
    loop["body"] = {"nodes": body["nodes"], "edges": body["edges"]}
    return {"name": "loop-body", "nodes": [loop]}


def many_loops(n: int) -> Doc:
    """n loops side by side, each with a one-node body."""
    body = {"nodes": [transform("step", "item")]}
    nodes = [
        {"id": f"l{i}", "type": "loop", "arrayPath": "{{[1]}}", "body": body} for i in range(n)
    ]
    return {"name": "many-loops", "nodes": nodes}


def undeclared_input(n: int) -> Doc:
    """n nodes reading a name no node provides (one warning each)."""
    return {"name": "undeclared", "nodes": [transform(f"n{i}", "users + 1") for i in range(n)]}


def misspelled_targets(n: int) -> Doc:
    """n nodes and n edges to missing nodes (one error each, with a hint)."""
    nodes = [transform(f"n{i}", "1") for i in range(n)]
    edges = [{"source": f"n{i}", "target": f"nx{i}"} for i in range(n)]
    return {"name": "misspelled", "nodes": nodes, "edges": edges}


CASES: dict[str, tuple[Callable[[int], Doc], int]] = {
    "independent": (independent, 100_000),
    "chain": (chain, 20_000),
    "chain-refs": (chain_of_references, 20_000),
    "chain-cycle": (chain_with_cycle, 20_000),
    "fan": (fan, 20_000),
    "chain-then-fan": (chain_then_fan, 100_000),
    "diamonds": (diamonds, 60_000),
    "loop-body": (loop_body, 20_000),
    "many-loops": (many_loops, 20_000),
    "undeclared-input": (undeclared_input, 100_000),
    "misspelled-targets": (misspelled_targets, 20_000),
}


def run_case(name: str, n: int, folder: Path) -> str:
    make, _ = CASES[name]
    path = folder / f"{name}.json"
    path.write_text(json.dumps(make(n)))
    t0 = time.perf_counter()
    try:
        loaded = load_workflow(path)
    except WorkflowInvalid as e:
        took = time.perf_counter() - t0
        return f"{name:<20} n={n:<7} load_workflow {took:6.2f}s  invalid ({len(e.problems)} errors)"
    took = time.perf_counter() - t0
    t1 = time.perf_counter()
    compile_graph(loaded.workflow.nodes, loaded.workflow.edges)
    compiled = time.perf_counter() - t1
    return (
        f"{name:<20} n={n:<7} load_workflow {took:6.2f}s  compile_graph {compiled:6.2f}s"
        f"  ({len(loaded.warnings)} warnings)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help="cases to run: " + ", ".join(CASES))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size (1.0)")
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r} (cases: {', '.join(CASES)})")
    names = args.cases or list(CASES)
    with tempfile.TemporaryDirectory(prefix="fm-validate-scale-") as tmp:
        for name in names:
            n = max(int(CASES[name][1] * args.scale), 2)
            print(run_case(name, n, Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
