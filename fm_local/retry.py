"""Planning a retry (``fm retry``, docs/retry.md): which recorded results of an
ended execution a new execution of the same workflow and input reuses, and which
node instances run again.

Pure functions of the workflow model and the old execution's rows (no SQL, no
processes). The rule, frame by frame in dependency order: a node instance is
*reused* when it succeeded cleanly (no error kept: not a continued, fallen-back or
timed-out-and-continued failure), it is not a target of ``--node``, its
compensation never ran, and every dependency is reused or *skipped the same way*
(skipped before, and its dependencies say it would be skipped again). A loop whose
dependencies are all the same reuses its items one by one (per index), each item
whole when its body is all reused, else in part; it is reused whole only when
every item is. Everything else runs again — and so does everything downstream of
it, as its inputs may change.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fm_local import expr, graph
from fm_local.graph import CompiledGraph
from fm_local.nodes.kinds import Runs, kind_of
from fm_local.nodes.loop import LoopNode
from fm_local.nodes.merge import MergeNode
from fm_local.status import NODE_TERMINAL
from fm_local.store.retry import OldRow

REUSED, SAME, CHANGED = "reused", "same", "changed"

_SEGMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")
# Names whose value differs between two executions of the same input.
_UNSTABLE_NAMES = frozenset({"execution", "signals"})
_NOW = re.compile(r"\bnow\s*\(")

Target = tuple[tuple[str, int | None], ...]


def parse_target(text: str) -> Target:
    """``--node`` PATH: ``step``, ``each.step`` (every item's step), ``each[3].step``.
    Raises ValueError naming what is wrong."""
    parts: list[tuple[str, int | None]] = []
    for seg in text.strip().split("."):
        m = _SEGMENT.match(seg)
        if m is None:
            raise ValueError(
                f"--node {text!r}: {seg!r} is not a node id (optionally with [INDEX]); "
                "write a node path such as step, loop.step or loop[3].step"
            )
        parts.append((m.group(1), int(m.group(2)) if m.group(2) is not None else None))
    return tuple(parts)


def target_node(nodes: list[Any], target: Target) -> str | None:
    """Why ``target`` names no node of the workflow, or None when it does."""
    here = nodes
    for depth, (nid, idx) in enumerate(target):
        node = next((n for n in here if n.id == nid), None)
        where = ".".join(t[0] for t in target[:depth]) or "the workflow"
        if node is None:
            known = ", ".join(sorted(n.id for n in here)[:12])
            return f"no node '{nid}' in {where} (its nodes: {known})"
        if depth < len(target) - 1:
            if not isinstance(node, LoopNode):
                return f"node '{nid}' is not a loop: nothing is inside it"
            here = node.body.nodes
        elif idx is not None and not isinstance(node, LoopNode):
            return f"'{nid}[{idx}]': node '{nid}' is not a loop; an index names a loop item"
    return None


def item_out_of_range(target: Target, rows: list[Any]) -> str | None:
    """Why an indexed ``--node`` target names a loop item the old execution's loop
    did not have (``rows``: its node instances, with each loop's item count), or
    None. An item the loop had but never opened (a fail-fast stop) is fine."""
    by_path = {r.path: r for r in rows}
    prefix = ""
    for nid, idx in target:
        loop_path = prefix + nid
        if idx is not None:
            row = by_path.get(loop_path)
            n = row.items if row is not None else None
            if n is not None and idx >= n:
                span = f"0..{n - 1}" if n else "none"
                return f"loop {loop_path} had {n} items ({span}) in that execution"
            prefix = f"{loop_path}[{idx}]."
        else:
            prefix = loop_path + "."
    return None


def _split(path: str) -> Target:
    out: list[tuple[str, int | None]] = []
    for seg in path.split("."):
        m = _SEGMENT.match(seg)
        if m is None:
            return ()
        out.append((m.group(1), int(m.group(2)) if m.group(2) is not None else None))
    return tuple(out)


def _matches(target: Target, path: Target) -> bool:
    """Whether a ``--node`` target names this node instance (an index in the target
    must be the instance's; no index: every item)."""
    if len(target) != len(path):
        return False
    for (tid, tidx), (pid, pidx) in zip(target, path, strict=True):
        if tid != pid or (tidx is not None and tidx != pidx):
            return False
    return True


@dataclass
class Plan:
    """What a retry copies: the rows of ``paths``; ``loops``: the item count then of
    every loop that runs again with some items reused (the new run must count the
    same, or the loop fails rather than mix items); ``changed_used``: modules that
    changed since, with a reused node instance that ran them."""

    paths: list[str]
    loops: dict[str, int] = field(default_factory=dict)
    changed_used: dict[str, str] = field(default_factory=dict)
    rerun_changed: int = 0
    items: int = 0  # loop items among the reused


class _Planner:
    def __init__(
        self,
        rows: Iterable[OldRow],
        targets: list[Target],
        changed_codes: set[str],
        rerun_changed: bool,
        compensated: set[str],
    ) -> None:
        self.rows = {r.path: r for r in rows}
        self.sorted_paths = sorted(self.rows)
        self.targets = targets
        self.changed_codes = changed_codes
        self.rerun_changed = rerun_changed
        self.compensated = compensated
        self.copies: list[str] = []
        self.loops: dict[str, int] = {}
        self.changed_used: dict[str, str] = {}
        self.rerun_count = 0
        self.bodies: dict[int, CompiledGraph] = {}

    def _under(self, prefix: str) -> list[str]:
        """Recorded paths that start with ``prefix`` (contiguous once sorted)."""
        paths = self.sorted_paths
        i = bisect.bisect_left(paths, prefix)
        j = i
        while j < len(paths) and paths[j].startswith(prefix):
            j += 1
        return paths[i:j]

    def _forced(self, path: str) -> bool:
        if not self.targets:
            return False
        parts = _split(path)
        return any(_matches(t, parts) for t in self.targets)

    def _body(self, node: LoopNode) -> CompiledGraph:
        g = self.bodies.get(id(node))
        if g is None:
            g = self.bodies[id(node)] = graph.compile_graph(node.body.nodes, node.body.edges)
        return g

    def frame(self, g: CompiledGraph, prefix: str) -> dict[str, str]:
        """Plan one frame (the top level, or one item's body): each node's state."""
        state: dict[str, str] = {}
        rows = self.rows
        for nid in g.order:
            node = g.nodes[nid]
            path = prefix + nid
            row = rows.get(path)
            st = CHANGED
            if row is not None and path not in self.compensated and not self._forced(path):
                deps = g.deps[nid]
                same = all(state[d.source] != CHANGED for d in deps)
                if (
                    isinstance(node, MergeNode)
                    and node.mode == "first_success"
                    and nid in g.sections
                    and row.status == "succeeded"
                ):
                    st = self._first_success(g, prefix, nid, row, state)
                elif not same:
                    pass
                elif row.status == "skipped":
                    old = {d.source: rows[prefix + d.source] for d in deps}
                    if graph.readiness(deps, old, g.has_edges[nid]) == "skip":
                        st = SAME
                elif kind_of(node).runs is Runs.LOOP:
                    assert isinstance(node, LoopNode)
                    st = self._loop(node, path, row)
                elif row.status == "succeeded" and row.clean:
                    st = self._reuse(path, row)
            state[nid] = st
        return state

    def _reuse(self, path: str, row: OldRow) -> str:
        if row.code is not None and row.code in self.changed_codes:
            if self.rerun_changed:
                self.rerun_count += 1
                return CHANGED
            self.changed_used.setdefault(row.code, path)
        self.copies.append(path)
        return REUSED

    def _loop(self, node: LoopNode, path: str, row: OldRow) -> str:
        n = row.items
        if n is None or not items_stable(node):
            return CHANGED
        body = self._body(node)
        start = len(self.copies)
        whole = True
        for i in range(n):
            ip = f"{path}[{i}]"
            irow = self.rows.get(ip)
            if irow is None or self._forced(ip):
                whole = False
                continue
            mark = len(self.copies)
            states = self.frame(body, ip + ".")
            if irow.status == "succeeded" and irow.clean and CHANGED not in states.values():
                # The whole item: its row and everything recorded under it.
                del self.copies[mark:]
                self.copies.append(ip)
                self.copies.extend(self._under(ip + "."))
            else:
                whole = False
        if whole and row.status == "succeeded" and row.clean:
            self.copies.append(path)
            return REUSED
        if len(self.copies) > start:
            self.loops[path] = n
        return CHANGED

    def _first_success(
        self, g: CompiledGraph, prefix: str, nid: str, row: OldRow, state: dict[str, str]
    ) -> str:
        """A first_success merge that succeeded is reused with its whole section —
        the winner, and the losers as they were stopped — when the winner is reused:
        the losers are not run again to lose a second time."""
        winner = row.port
        if not row.clean or winner is None or state.get(winner) != REUSED:
            return CHANGED
        if any(d.is_ref and state[d.source] == CHANGED for d in g.deps[nid]):
            return CHANGED
        members = g.sections[nid].members
        for m in members:
            mrow = self.rows.get(prefix + m)
            if mrow is None:
                continue
            if mrow.status not in NODE_TERMINAL or (mrow.status == "failed" and not mrow.handled):
                return CHANGED
        for m in sorted(members):
            mp = prefix + m
            if mp in self.rows and state.get(m) != REUSED:
                self.copies.append(mp)
                self.copies.extend(self._under(mp + "["))
                self.loops.pop(mp, None)
                state[m] = SAME
        self.copies.append(prefix + nid)
        return REUSED


def items_stable(node: LoopNode) -> bool:
    """Whether a loop's items are the same in another execution of the same input
    when its dependencies are: not when they read ``execution``, ``signals`` or
    ``now()``."""
    source = node.count if node.loop_type == "count" else node.array_path
    try:
        names = expr.value_names(source)
    except expr.ExpressionError:
        return False
    if names & _UNSTABLE_NAMES:
        return False
    return not _NOW.search(json.dumps(source))


def plan(
    workflow: Any,
    rows: Iterable[OldRow],
    *,
    targets: list[Target] | None = None,
    changed_codes: set[str] | None = None,
    rerun_changed: bool = False,
    compensated: set[str] | None = None,
) -> Plan:
    """Which rows of the old execution a retry copies (module docstring)."""
    p = _Planner(rows, targets or [], changed_codes or set(), rerun_changed, compensated or set())
    g = graph.compile_graph(workflow.nodes, workflow.edges)
    p.frame(g, "")
    paths = list(dict.fromkeys(p.copies))
    items = sum(1 for x in paths if p.rows[x].node_type == "item")
    return Plan(paths, p.loops, p.changed_used, p.rerun_count, items)


def code_file(code: str) -> str:
    """The module file of a recorded ``code`` (``tasks.py@3f2a9c0d1b7e``)."""
    return code.rpartition("@")[0]


def changed_modules(folder: str, codes: Iterable[str]) -> dict[str, str]:
    """The recorded ``code`` values whose module file differs now (or is gone), each
    with what is different."""
    out: dict[str, str] = {}
    for code in set(codes):
        rel, _, digest = code.rpartition("@")
        if not rel or not digest:
            continue
        file = Path(folder, rel)
        try:
            now = hashlib.sha256(file.read_bytes()).hexdigest()[:12]
        except OSError:
            out[code] = f"{rel} is gone"
            continue
        if now != digest:
            out[code] = f"{rel} changed (recorded {digest}, now {now})"
    return out


def document_change(path: str | None, recorded: str) -> str | None:
    """How the workflow file at ``path`` differs from the recorded document, or None."""
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{path} is gone"
    except (OSError, UnicodeDecodeError):
        return f"{path} cannot be read"
    try:
        doc = json.loads(text)
    except ValueError:
        return f"{path} changed (it is not valid JSON now)"
    if json.dumps(doc, sort_keys=True, separators=(",", ":")) != recorded:
        return f"{path} changed"
    return None


def folder_of(row: dict[str, Any]) -> str:
    return str(row.get("folder") or os.getcwd())
