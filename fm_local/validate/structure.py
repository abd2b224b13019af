"""Structure checks on the raw document (work even when the shape is wrong)."""

from __future__ import annotations

from typing import Any

from fm_local.validate.text import PathPart, Problem, _Budget, _format_path, _hint, _list, _Names


def _raw_structure_problems(raw: dict[str, Any], budget: _Budget | None = None) -> list[Problem]:
    problems: list[Problem] = []
    _raw_graph(raw, [], problems, budget or _Budget(), handlers=_list(raw, "handlers"))
    return problems


def _raw_graph(
    graph: Any,
    at: list[PathPart],
    problems: list[Problem],
    budget: _Budget,
    handlers: list[Any] | None = None,
) -> None:
    nodes = _list(graph, "nodes")
    edges = _list(graph, "edges")
    seen: dict[str, list[PathPart]] = {}  # id -> where first used (formatted if needed)
    node_ids: set[str] = set()
    handler_ids: set[str] = set()
    members: list[tuple[str, list[Any]]] = [("nodes", nodes)]
    if handlers is not None:
        members.append(("handlers", handlers))
    for key, items in members:
        for i, n in enumerate(items):
            if not isinstance(n, dict):
                continue
            path = at + [key, i]
            nid = n.get("id")
            if isinstance(nid, str):
                if nid in seen:
                    problems.append(
                        Problem(
                            _format_path(path + ["id"]),
                            f"node '{nid}': duplicate id (also used at {_format_path(seen[nid])})",
                        )
                    )
                else:
                    seen[nid] = path
                (node_ids if key == "nodes" else handler_ids).add(nid)
            _raw_nested(n, path, problems, budget)
    where = "this loop body" if at else "the workflow"
    names: _Names | None = None
    for k, e in enumerate(edges):
        if not isinstance(e, dict):
            continue
        for end in ("source", "target"):
            v = e.get(end)
            if not isinstance(v, str) or v in node_ids:
                continue
            if v in handler_ids:
                hint = (
                    f" ('{v}' is a handler: handlers run through fallbackNodeId, "
                    "gotoNodeId or signalHandlers, not through edges)"
                )
            else:
                names = names or _Names(node_ids)
                hint = _hint(v, budget, names)
            problems.append(
                Problem(
                    _format_path(at + ["edges", k, end]),
                    f"edge {end} '{v}' is not a node of {where}{hint}",
                )
            )


def _raw_nested(
    node: dict[str, Any], path: list[PathPart], problems: list[Problem], budget: _Budget
) -> None:
    body = node.get("body")
    if isinstance(body, dict):
        _raw_graph(body, path + ["body"], problems, budget)
    comp = node.get("compensate")
    if isinstance(comp, dict):
        _raw_nested(comp, path + ["compensate"], problems, budget)
