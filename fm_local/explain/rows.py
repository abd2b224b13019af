"""What the database alone says about node instances, for ``fm explain``.

- How a finished instance ended (:func:`finished_detail`): succeeded, failed with
  its error, skipped and why (the edge that was not taken, read from the stored
  document and the rows of its dependencies).
- The workflow document's shape (:class:`Doc`): the ids of each graph, loops and
  their bodies, edges — to check a requested path and to order the answer, without
  building the pydantic model.
- When no supervisor answers (none serves the file, or it did not answer in time):
  the reasons the rows support (:func:`database_entries`), read with the
  scheduler's own readiness function on the compiled graph, and said to come from
  the database only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fm_local.explain.paths import Pattern, covers, parse, relevant
from fm_local.status import NODE_TERMINAL

ITEMS_LISTED = 10  # as fm_local.supervisor.explain: unopened items before a range


def _get(d: Mapping[str, Any], camel: str, snake: str, default: Any = None) -> Any:
    """A document key in either spelling the model accepts."""
    if camel in d:
        return d[camel]
    return d.get(snake, default)


def err_text(err: Any) -> str:
    if not isinstance(err, dict):
        return "-"
    lines = str(err.get("message") or "").splitlines()
    return f"{err.get('code')}: {lines[0] if lines else ''}"


def clock(ts: float | None) -> str:
    if ts is None:
        return "?"
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def due_in(ts: float | None, now: float) -> str:
    if ts is None:
        return "?"
    left = ts - now
    return f"in {left:.1f} s" if left > 0 else "due now"


# --- the document --------------------------------------------------------------------


@dataclass
class Graph:
    """One graph of the stored document: its nodes in document order, and the
    edges into each node (``(source, handle)``; goto targets in the graph too)."""

    nodes: dict[str, dict[str, Any]]
    order: dict[str, int]
    incoming: dict[str, list[tuple[str, str | None]]]


def _graph(nodes: Any, edges: Any) -> Graph:
    by_id: dict[str, dict[str, Any]] = {}
    for n in nodes if isinstance(nodes, list) else []:
        if isinstance(n, dict) and isinstance(n.get("id"), str):
            by_id.setdefault(n["id"], n)
    incoming: dict[str, list[tuple[str, str | None]]] = {nid: [] for nid in by_id}
    for e in edges if isinstance(edges, list) else []:
        if isinstance(e, dict) and e.get("target") in incoming:
            incoming[e["target"]].append(
                (str(e.get("source")), _get(e, "sourceHandle", "source_handle"))
            )
    for nid, n in by_id.items():
        goto = _get(n, "gotoNodeId", "goto_node_id")
        if _get(n, "errorStrategy", "error_strategy") == "goto" and goto in incoming:
            incoming[goto].append((nid, "error"))
    return Graph(by_id, {nid: i for i, nid in enumerate(by_id)}, incoming)


class Doc:
    """The stored workflow document, read as JSON (it passed validation when saved)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.top = _graph(document.get("nodes"), document.get("edges"))
        self._bodies: dict[int, Graph] = {}

    def body(self, node: dict[str, Any]) -> Graph | None:
        if node.get("type") != "loop" or not isinstance(node.get("body"), dict):
            return None
        g = self._bodies.get(id(node))
        if g is None:
            b = node["body"]
            g = self._bodies[id(node)] = _graph(b.get("nodes"), b.get("edges"))
        return g

    def locate(self, segs: Pattern) -> tuple[Graph, dict[str, Any]] | None:
        """The graph holding the last segment's node, and that node (None: not a
        node of this document; opaque segments, like a fallback's tail, are skipped)."""
        g: Graph | None = self.top
        found: tuple[Graph, dict[str, Any]] | None = None
        for sid, _ in segs:
            if sid.startswith("->") or not re.match(r"[A-Za-z_]", sid):
                return found
            if g is None or sid not in g.nodes:
                return None
            node = g.nodes[sid]
            found = (g, node)
            g = self.body(node)
        return found

    def check(self, segs: Pattern, items: Mapping[str, int | None]) -> str | None:
        """Why ``segs`` names no node instance of this workflow, or None.
        ``items``: the item count of each loop instance that started."""
        g: Graph | None = self.top
        where = "the workflow"
        prefix = ""
        for k, (sid, idx) in enumerate(segs):
            if sid.startswith("->") or (k == 0 and not re.match(r"[A-Za-z_]", sid)):
                return None  # a node outside the graph: its rows say whether it exists
            if g is None:
                return f"{prefix.rstrip('.')} is not a loop: nothing is inside it"
            if sid not in g.nodes:
                known = ", ".join(list(g.nodes)[:12]) + (" …" if len(g.nodes) > 12 else "")
                return f"no node '{sid}' in {where} (its nodes: {known or 'none'})"
            node = g.nodes[sid]
            body = self.body(node)
            if idx is not None:
                if body is None:
                    return f"'{prefix}{sid}' is not a loop: it has no items ([{idx}])"
                n = items.get(prefix + sid)
                if n is not None and idx >= n:
                    return f"loop {prefix}{sid} has {n} items (0..{n - 1}); no item {idx}"
            where = f"the body of loop '{sid}'"
            prefix += sid + (f"[{idx}]" if idx is not None else "") + "."
            g = body
        return None

    def order_key(self, path: str) -> tuple[Any, ...]:
        """Sort key: document order of each segment, then the item index."""
        path = re.sub(r"\[(\d+)\.\.\d+\]", r"[\1]", path)
        key: list[Any] = []
        g: Graph | None = self.top
        for sid, idx in parse(path):
            if g is not None and sid in g.nodes:
                key.append((g.order[sid], -1 if idx is None else idx, ""))
                g = self.body(g.nodes[sid])
            else:
                key.append((1 << 30, 0, sid))
                g = None
        return tuple(key)


# --- a finished instance -------------------------------------------------------------


def finished_detail(row: dict[str, Any], rows: Mapping[str, dict[str, Any]], doc: Doc) -> str:
    """A short line on how a finished node instance ended."""
    from fm_local.store import loads

    if row["status"] == "skipped":
        return "skipped: " + skip_cause(row["path"], rows, doc)
    err = loads(row["error"]) if row.get("error") else None
    return ended(row["status"], err, row.get("attempts") or 0, bool(row.get("handled")))


def ended(status: str, err: Any, attempts: int, handled: bool = False) -> str:
    """How a node instance ended, from its status, error and attempts alone (a
    skipped one's cause needs its dependencies: :func:`skip_cause`)."""
    after = f" after {attempts} attempts" if attempts > 1 else ""
    if status == "succeeded":
        if isinstance(err, dict) and err.get("timedOut"):
            return "succeeded: it timed out and onTimeout says continue"
        if isinstance(err, dict):
            return (
                f"succeeded with its outputOnError (errorStrategy continue) after {err_text(err)}"
            )
        return "succeeded" + after
    if status == "failed":
        how = " (handled: an error edge, goto or fallback took over)" if handled else ""
        return f"failed{after}: {err_text(err)}{how}"
    if status in ("cancelled", "timed_out"):
        word = status.replace("_", " ")
        return f"{word}: {err_text(err)}" if err else word
    return status


def skip_cause(path: str, rows: Mapping[str, dict[str, Any]], doc: Doc) -> str:
    """Why a node was skipped: the edges into it that were not taken."""
    segs = parse(path)
    where = doc.locate(segs)
    if where is None:
        return "nothing it depends on let it run"
    g, node = where
    prefix = path[: len(path) - len(node["id"])]
    causes: list[str] = []
    for src, handle in g.incoming.get(node["id"], []):
        r = rows.get(prefix + src)
        if r is None:
            continue
        st, port = r["status"], r.get("port")
        stype = g.nodes.get(src, {}).get("type")
        if st == "skipped":
            causes.append(f"'{src}' was skipped")
        elif handle == "error":
            if st != "failed":
                causes.append(f"'{src}' did not fail (error edge)")
        elif st == "failed":
            causes.append(f"'{src}' failed")
        elif st in ("cancelled", "timed_out"):
            causes.append(f"'{src}' was {st.replace('_', ' ')}")
        elif handle is not None and st == "succeeded" and str(handle) != str(port):
            if stype == "condition":
                causes.append(f"condition '{src}' was {port}")
            elif stype == "switch":
                causes.append(f"switch '{src}' chose '{port}', not '{handle}'")
            else:
                causes.append(f"'{src}' took port '{port}', not '{handle}'")
    if causes:
        return "; ".join(dict.fromkeys(causes))
    if not g.incoming.get(node["id"]):
        return "no node it refers to succeeded"
    return "its merge section stopped"


# --- from the rows alone ---------------------------------------------------------------


@dataclass
class _Outcome:
    """A row as :func:`fm_local.graph.readiness` reads a dependency."""

    status: str
    port: str | None


def row_reason(
    row: dict[str, Any],
    node: Any,
    policy_attempts: int,
    queue: Mapping[str, tuple[int, int]],
    now: float,
) -> tuple[str, str, float | None]:
    """(reason, detail, until) of an unfinished row, as far as the row tells."""
    from fm_local.store import loads

    st = row["status"]
    ntype = row["node_type"]
    if st == "retry_wait":
        due = row.get("next_attempt_at")
        err = loads(row["error"]) if row.get("error") else None
        tries = row.get("attempts") or 0
        return (
            "retry_backoff",
            f"attempt {tries + 1} of {policy_attempts} at {clock(due)} ({due_in(due, now)}); "
            f"attempt {tries} failed: {err_text(err)}",
            due,
        )
    if st == "running" and ntype == "delay":
        due = row.get("next_attempt_at")
        return "timer", f"a delay node: it ends at {clock(due)} ({due_in(due, now)})", due
    if st == "running" and ntype == "wait":
        sig = getattr(node, "signal", "?")
        return "signal", f"waiting for a '{sig}' signal", None
    if st == "running":
        pid = row.get("worker_pid")
        return (
            "running",
            f"running since {clock(row.get('started_at'))}" + (f" on worker {pid}" if pid else ""),
            None,
        )
    if st == "queued":
        pos = queue.get(row["path"])
        if pos is not None:
            return (
                "queued",
                f"in the queue table: {pos[0]} of {pos[1]} queued tasks of the execution",
                None,
            )
        return "queued", "queued", None
    return "queued", st, None


def database_entries(
    workflow: Any,
    exec_row: dict[str, Any],
    rows: Mapping[str, dict[str, Any]],
    queue: Mapping[str, tuple[int, int]],
    pattern: Pattern | None,
    now: float,
) -> list[dict[str, Any]]:
    """Entries for the unfinished part of an execution from its rows: walks the
    compiled graphs (top level, then each open item's body) as the supervisor
    would, asking :func:`fm_local.graph.readiness` about nodes with no row."""
    from fm_local import graph
    from fm_local.nodes.loop import LoopNode

    out: list[dict[str, Any]] = []
    bodies: dict[int, Any] = {}

    def body_of(node: Any) -> Any:
        g = bodies.get(id(node))
        if g is None:
            g = bodies[id(node)] = graph.compile_graph(node.body.nodes, node.body.edges)
        return g

    def add(
        path: str,
        status: str,
        reason: str,
        detail: str,
        until: float | None = None,
        blockers: list[str] | None = None,
    ) -> None:
        out.append(
            {
                "path": path,
                "status": status,
                "reason": reason,
                "detail": detail,
                "until": until,
                "blockers": blockers,
            }
        )

    def walk(g: Any, prefix: str) -> None:
        outcomes = {}
        for nid in g.order:
            r = rows.get(prefix + nid)
            if r is not None:
                outcomes[nid] = _Outcome(r["status"], r.get("port"))
        for nid in g.order:
            path = prefix + nid
            segs = parse(path)
            if pattern is not None and not relevant(pattern, segs):
                continue
            asked = pattern is None or covers(pattern, segs)
            node = g.nodes[nid]
            r = rows.get(path)
            if r is None:
                if not asked:
                    continue
                deps = g.deps[nid]
                verdict = graph.readiness(deps, outcomes, g.has_edges[nid]) if deps else "run"
                if verdict is None:
                    waiting = [
                        (prefix + s, outcomes[s].status if s in outcomes else "not started")
                        for s in dict.fromkeys(d.source for d in deps)
                        if s not in outcomes or outcomes[s].status not in NODE_TERMINAL
                    ]
                    add(
                        path,
                        "pending",
                        "dependencies",
                        "waiting for " + ", ".join(f"{p} ({s})" for p, s in waiting),
                        None,
                        [p for p, _ in waiting],
                    )
                else:
                    add(path, "pending", "queued", "ready: no supervisor has started it yet")
                continue
            if r["status"] in NODE_TERMINAL:
                continue
            if isinstance(node, LoopNode) and r["status"] == "running":
                items = sorted(
                    (int(x["item_index"]), x)
                    for p, x in rows.items()
                    if x["node_type"] == "item"
                    and p.startswith(path + "[")
                    and x.get("item_index") is not None
                    and "." not in p[len(path) :]
                )
                open_items = [x["path"] for _, x in items if x["status"] not in NODE_TERMINAL]
                for i, x in items:
                    if x["status"] not in NODE_TERMINAL:
                        walk(body_of(node), f"{path}[{i}].")
                n = r.get("items") or 0
                started = {i for i, _ in items}
                waiting_items = [i for i in range(n) if i not in started]
                if waiting_items and asked:
                    window = node.max_concurrency if node.is_parallel else 1
                    detail = f"not opened yet; {len(open_items)} items open"
                    reason = "queued"
                    if window is not None and len(open_items) >= window:
                        reason = "max_concurrency"
                        detail += f" (at most {window} at once)"
                    first = waiting_items[0]
                    label = (
                        f"{path}[{first}]"
                        if len(waiting_items) == 1
                        else (f"{path}[{first}..{waiting_items[-1]}]")
                    )
                    add(label, "pending", reason, detail, None, open_items or None)
                continue
            if not asked:
                continue
            policy = node.retry or workflow.settings.retry
            reason, detail, until = row_reason(r, node, policy.max_attempts, queue, now)
            add(path, r["status"], reason, detail, until)

    top = graph.compile_graph(workflow.nodes, workflow.edges)
    walk(top, "")
    # Rows outside the graphs (fallbacks, handlers, compensations, replays).
    for path, r in rows.items():
        if "->" in path and r["status"] not in NODE_TERMINAL:
            if pattern is None or covers(pattern, parse(path)):
                reason, detail, until = row_reason(r, None, 1, queue, now)
                add(path, r["status"], reason, detail, until)
    return out
