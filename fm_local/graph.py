"""The dependency structure of a workflow graph, and readiness (SPEC §2, §5).

Pure functions of the model: no I/O, no clocks. A node's dependencies are its
incoming edges plus every node whose output its expressions reference; it is
ready when every dependency is finished, and it runs when at least one of them
let it through (a taken edge, or a succeeded reference), else it is skipped.
Compiling is iterative and linear in nodes + edges, besides the size of what it
returns (merge sections, branch suffixes): a 100,000-node graph or a 20,000-node
chain compiles in seconds.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fm_local import expr
from fm_local.model import Edge, NodeBase
from fm_local.nodes.kinds import ERROR_HANDLE, Runs, kind_of
from fm_local.nodes.loop import LoopNode
from fm_local.status import NODE_TERMINAL as TERMINAL

# Terminal node statuses (fm_local.status), and the one that lets normal edges through.


@dataclass(frozen=True, slots=True)
class Dep:
    """One dependency of a node: an edge (``handle`` may be set) or a reference."""

    source: str
    handle: str | None = None
    is_ref: bool = False


@dataclass(frozen=True, slots=True)
class Branch:
    """The parallel branch a node belongs to (SPEC §5, §9)."""

    id: str | None
    name: str | None
    suffix: tuple[int, ...]  # trace-id suffix: (1, 2) -> "-001-002"

    def trace_id(self, root: str) -> str:
        if not self.suffix:
            return root  # the one branch of a graph without parallel branches
        return root + "".join(f"-{i:03d}" for i in self.suffix)

    def scope(self) -> dict[str, Any] | None:
        if self.id is None:
            return None
        return {"id": self.id, "name": self.name}


@dataclass
class CompiledGraph:
    """A graph (top level or loop body) with its dependency structure resolved."""

    nodes: dict[str, NodeBase]
    order: list[str]
    deps: dict[str, list[Dep]]
    dependents: dict[str, list[str]]
    branches: dict[str, Branch]
    roots: list[str]
    sinks: list[str]
    # outputVariable -> node id, for scope lookups.
    aliases: dict[str, str] = field(default_factory=dict)
    # Names read by each node's expressions (for sending little to workers).
    refs: dict[str, frozenset[str]] = field(default_factory=dict)
    # Names the graph reads that none of its nodes provide (scope from outside).
    free_names: frozenset[str] = frozenset()
    # Merge sections, and the innermost section each node belongs to.
    sections: dict[str, Section] = field(default_factory=dict)
    section_owner: dict[str, str] = field(default_factory=dict)
    # Whether a node has explicit incoming edges (then they alone decide if it runs).
    has_edges: dict[str, bool] = field(default_factory=dict)
    # Worker node -> the worker node that may wait behind it on its worker (chained).
    chained: dict[str, str] = field(default_factory=dict)


def node_expression_names(node: NodeBase) -> frozenset[str]:
    """Names read by a node's own expressions and templates (not a loop body's)."""
    names: set[str] = set()
    kind = kind_of(node)
    if kind.expression:
        names |= expr.compile_expr(node.expression).names  # type: ignore[attr-defined]
    for _, value in kind.template_values(node):
        names |= expr.value_names(value)
    return frozenset(names)


# Names that item bodies receive from their loop, never from a node.
LOOP_SCOPE_NAMES = frozenset({"parallel", "loop"})


def node_references(node: NodeBase) -> frozenset[str]:
    """All names a node reads, including names its loop body reads from outside."""
    names = set(node_expression_names(node))
    if isinstance(node, LoopNode):
        body = compile_graph(node.body.nodes, node.body.edges)
        names |= body.free_names - {node.item_variable, node.index_variable} - LOOP_SCOPE_NAMES
    return frozenset(names)


def find_cycle(ids: Iterable[str], deps: Mapping[str, Iterable[Dep]]) -> list[str] | None:
    """A cycle as a list of ids (first == last), or None. Iterative DFS."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(ids, WHITE)
    for start in color:
        if color[start] != WHITE:
            continue
        stack: list[tuple[str, Any]] = [(start, iter(deps.get(start, ())))]
        path = [start]
        color[start] = GREY
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                path.pop()
                color[node] = BLACK
                continue
            src = nxt.source
            if src not in color:
                continue
            if color[src] == GREY:
                i = path.index(src)
                # deps point backwards (target -> source); print in flow order.
                cyc = path[i:] + [src]
                return list(reversed(cyc))
            if color[src] == WHITE:
                color[src] = GREY
                path.append(src)
                stack.append((src, iter(deps.get(src, ()))))
    return None


def compile_graph(nodes: list[Any], edges: list[Edge]) -> CompiledGraph:
    """Resolve dependencies, order and branches. Assumes ids are unique and edges
    name existing nodes (``validate`` reports those); raises ValueError on a cycle."""
    by_id: dict[str, NodeBase] = {n.id: n for n in nodes}
    aliases = {n.output_variable: n.id for n in nodes if n.output_variable}
    deps: dict[str, list[Dep]] = {nid: [] for nid in by_id}
    out_edges: dict[str, list[Edge]] = {nid: [] for nid in by_id}
    edges = list(edges)
    for n in nodes:
        # errorStrategy "goto" to a node of this graph is an error edge (SPEC §6).
        if n.error_strategy == "goto" and n.goto_node_id in by_id:
            edges.append(Edge(source=n.id, target=n.goto_node_id, source_handle=ERROR_HANDLE))
    handle_maps: dict[str, dict[str, str]] = {}  # per switch, built once
    for e in edges:
        if e.source in by_id and e.target in by_id:
            source_node = by_id[e.source]
            handle_map = kind_of(source_node).handle_map
            if handle_map is not None and e.source_handle is not None:
                hmap = handle_maps.get(e.source)
                if hmap is None:
                    hmap = handle_maps[e.source] = handle_map(source_node)
                handle = hmap.get(e.source_handle, e.source_handle)
                if handle != e.source_handle:  # a labelled case named by its value
                    e = Edge(source=e.source, target=e.target, source_handle=handle)
            deps[e.target].append(Dep(e.source, e.source_handle))
            out_edges[e.source].append(e)
    refs: dict[str, frozenset[str]] = {}
    free: set[str] = set()
    for nid, node in by_id.items():
        names = node_references(node)
        refs[nid] = names
        edge_sources = {d.source for d in deps[nid]}
        for name in sorted(names):
            src = name if name in by_id else aliases.get(name)
            if src is None:
                free.add(name)
            elif src != nid and src not in edge_sources:
                deps[nid].append(Dep(src, None, is_ref=True))
                edge_sources.add(src)
            elif src == nid:
                raise ValueError(f"node '{nid}' references its own output")
    cycle = find_cycle(by_id, deps)
    if cycle:
        raise ValueError("cycle: " + " -> ".join(cycle))
    order = topo_order(list(by_id), deps)
    dependents: dict[str, list[str]] = {nid: [] for nid in by_id}
    for nid in order:
        # Each source once per dependent (a set, not a scan of the growing list).
        for src in dict.fromkeys(d.source for d in deps[nid]):
            dependents[src].append(nid)
    roots = [nid for nid in by_id if not deps[nid]]
    sinks = [nid for nid in by_id if not dependents[nid]]
    branches = _branches(order, roots, deps, out_edges, by_id)
    g = CompiledGraph(
        nodes=by_id,
        order=order,
        deps=deps,
        dependents=dependents,
        branches=branches,
        roots=roots,
        sinks=sinks,
        aliases=aliases,
        refs=refs,
        free_names=frozenset(free),
    )
    g.has_edges = {nid: any(not d.is_ref for d in deps[nid]) for nid in by_id}
    merges = [nid for nid, n in by_id.items() if kind_of(n).runs is Runs.MERGE]
    if merges:
        g.sections = merge_sections(g, merges)
        g.section_owner = innermost_sections(g.sections)
    g.chained = chained(g)
    return g


def topo_order(ids: list[str], deps: Mapping[str, list[Dep]]) -> list[str]:
    """Kahn's algorithm, stable with respect to document order."""
    pending = {nid: len({d.source for d in deps[nid]}) for nid in ids}
    children: dict[str, list[str]] = {nid: [] for nid in ids}
    for nid in ids:
        for src in {d.source for d in deps[nid]}:
            children[src].append(nid)
    ready = deque(nid for nid in ids if pending[nid] == 0)
    order: list[str] = []
    while ready:
        nid = ready.popleft()
        order.append(nid)
        for c in children[nid]:
            pending[c] -= 1
            if pending[c] == 0:
                ready.append(c)
    return order


def _branches(
    order: list[str],
    roots: list[str],
    deps: Mapping[str, list[Dep]],
    out_edges: Mapping[str, list[Edge]],
    nodes: Mapping[str, NodeBase],
) -> dict[str, Branch]:
    """Each fan-out edge starts a branch; joins fall back to the common parent."""
    top = Branch(None, None, ())
    result: dict[str, Branch] = {}
    # The first branch assigned with each suffix, for joins (see _common_branch).
    by_suffix: dict[tuple[int, ...], Branch] = {}
    # Per source: its normal out-edges' count, and each target's first position
    # among them (computed once per source, not once per child).
    fans: dict[str, tuple[int, dict[str, int]]] = {}

    def assign(nid: str, b: Branch) -> None:
        result[nid] = b
        by_suffix.setdefault(b.suffix, b)

    def fan_of(src: str) -> tuple[int, dict[str, int]]:
        f = fans.get(src)
        if f is None:
            first: dict[str, int] = {}
            k = 0
            for e in out_edges[src]:
                if e.source_handle != ERROR_HANDLE:
                    first.setdefault(e.target, k)
                    k += 1
            f = fans[src] = (k, first)
        return f

    edge_roots = list(roots)
    for i, r in enumerate(edge_roots):
        if len(edge_roots) > 1:
            assign(r, Branch(r, nodes[r].display_name, (i + 1,)))
        else:
            assign(r, top)
    for nid in order:
        if nid in result:
            continue
        parents = [d for d in deps[nid] if not d.is_ref and d.handle != ERROR_HANDLE]
        if not parents:
            parents = [d for d in deps[nid] if not d.is_ref]
        if not parents:
            # Only reference deps: it belongs to no particular branch.
            assign(nid, top)
            continue
        candidates: list[Branch] = []
        for d in parents:
            src_branch = result.get(d.source, top)
            width, first = fan_of(d.source)
            if width > 1 and len(parents) == 1:
                idx = first.get(nid, 0)
                candidates.append(
                    Branch(nid, nodes[nid].display_name, src_branch.suffix + (idx + 1,))
                )
            else:
                candidates.append(src_branch)
        if len(candidates) == 1:
            assign(nid, candidates[0])
        else:
            assign(nid, _common_branch(candidates, by_suffix))
    return result


def _common_branch(candidates: list[Branch], known: Mapping[tuple[int, ...], Branch]) -> Branch:
    """The branch of a join: the longest common suffix prefix of its candidates,
    as the first candidate, else the first known branch, that has it exactly.
    ``known`` maps a suffix to the first branch assigned with it."""
    prefix = candidates[0].suffix
    for b in candidates[1:]:
        n = 0
        while n < min(len(prefix), len(b.suffix)) and prefix[n] == b.suffix[n]:
            n += 1
        prefix = prefix[:n]
    if not prefix:
        return Branch(None, None, ())
    for b in candidates:
        if b.suffix == prefix:
            return b
    found = known.get(prefix)
    return found if found is not None else Branch(None, None, prefix)


# --- readiness -------------------------------------------------------------------


def dep_taken(dep: Dep, status: str, port: str | None) -> bool:
    """Whether a finished dependency lets its dependent run.

    ``port`` is the outgoing port a condition or switch chose ("true", "false", a
    case port, "default"); None for other node types."""
    if dep.handle == ERROR_HANDLE:
        return status == "failed"
    if status != "succeeded":
        return False
    if dep.handle is None or dep.is_ref:
        return True
    return dep.handle == port


class Outcome(Protocol):
    """What readiness reads of a dependency: its status and, for a condition or
    switch, the port it chose (the supervisor's runs are such objects)."""

    @property
    def status(self) -> str: ...
    @property
    def port(self) -> str | None: ...


# Names whose value may change while a node's predecessor runs.
_CHANGING_NAMES = frozenset({"signals"})


def chained(g: CompiledGraph) -> dict[str, str]:
    """Per worker node A, a worker node B that may be sent to A's worker behind A,
    to start there as soon as A succeeds (Dispatch._chain): B depends on A alone, by
    a plain edge, and A's error strategy is "fail" (so B runs if and only if A's
    task succeeds), and B's task is known before A ends: its templates read no
    node's output, no signal and call no function (``now()``, ``log()``). Not in a
    graph with merge sections."""
    out: dict[str, str] = {}
    if g.sections:
        return out
    provided = set(g.nodes) | set(g.aliases) | _CHANGING_NAMES
    for nid in g.order:
        deps = g.deps[nid]
        if len(deps) != 1:
            continue
        d = deps[0]
        if d.is_ref or d.handle is not None or d.source in out:
            continue
        node = g.nodes[nid]
        if kind_of(node).runs is not Runs.WORKER:
            continue
        source = g.nodes[d.source]
        if kind_of(source).runs is not Runs.WORKER or source.error_strategy != "fail":
            continue  # (with another strategy its failure may still let this run)
        if g.refs.get(nid, frozenset()) & provided or _calls(node):
            continue
        out[d.source] = nid
    return out


def _calls(node: NodeBase) -> bool:
    """Whether a template of ``node`` may call a function (a "(" inside "{{ }}")."""
    stack: list[Any] = [v for _, v in kind_of(node).template_values(node)]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            start = v.find("{{")
            if start >= 0 and "(" in v[start:]:
                return True
        elif isinstance(v, Mapping):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return False


def readiness(deps: list[Dep], runs: Mapping[str, Outcome], explicit: bool) -> str | None:
    """``"run"``, ``"skip"``, or None when some dependency is not finished.

    ``runs`` maps the node ids of the frame that have started to their outcome;
    ``explicit``: the node has incoming edges (``CompiledGraph.has_edges``).
    Explicit edges decide whether a node runs; references only order it, unless
    the node has no edges (then a succeeded reference lets it run). SPEC §2,
    docs/semantics.md. (A merge with a section is decided by its section first.)"""
    taken = not deps
    for d in deps:
        r = runs.get(d.source)
        if r is None:
            return None
        status = r.status
        if status not in TERMINAL:
            return None
        if not taken and (not explicit or not d.is_ref) and dep_taken(d, status, r.port):
            taken = True
    return "run" if taken else "skip"


# --- merge sections (SPEC §5) ------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """The section of a merge: every node on a path from its fan-out point (the
    nearest node all its branches start from) to the merge, both excluded.
    ``branches`` maps each predecessor (a branch, keyed as in the merge output) to
    the section nodes that lead to it, itself included."""

    merge: str
    fanout: str | None
    members: frozenset[str]
    branches: dict[str, frozenset[str]]


def _edge_ancestors(g: CompiledGraph, nid: str) -> set[str]:
    seen: set[str] = set()
    stack = [nid]
    while stack:
        n = stack.pop()
        for d in g.deps[n]:
            if not d.is_ref and d.source not in seen:
                seen.add(d.source)
                stack.append(d.source)
    return seen


def merge_sections(g: CompiledGraph, merge_ids: Iterable[str]) -> dict[str, Section]:
    """The section of each merge in ``merge_ids``.

    Work is proportional to each section (and the part of the graph between its
    fan-out point and its merge), not to the whole graph per predecessor."""
    pos = {nid: i for i, nid in enumerate(g.order)}
    parents = {
        nid: list(dict.fromkeys(d.source for d in ds if not d.is_ref)) for nid, ds in g.deps.items()
    }
    return {mid: _section(g, mid, parents, pos) for mid in merge_ids}


def _section(
    g: CompiledGraph, mid: str, parents: Mapping[str, list[str]], pos: Mapping[str, int]
) -> Section:
    preds = parents[mid]
    fanout = _nearest_common_ancestor(preds, parents, pos)
    above: set[str] | None = None  # the fan-out's ancestors, built only if needed
    members: set[str] = set()
    branches: dict[str, frozenset[str]] = {}
    for p in preds:
        # Ancestors of p (itself included) not above the fan-out (it included): a
        # path from one of them to p never enters that set, so stop where it starts.
        own: set[str] = set()
        stack = [p]
        while stack:
            n = stack.pop()
            if n in own:
                continue
            if fanout is not None and pos[n] <= pos[fanout]:
                # Only nodes before the fan-out in a topological order can be above it.
                if n == fanout:
                    continue
                if above is None:
                    above = _edge_ancestors(g, fanout)
                if n in above:
                    continue
            own.add(n)
            stack.extend(parents[n])
        branches[p] = frozenset(own)
        members |= own
    return Section(mid, fanout, frozenset(members), branches)


def _nearest_common_ancestor(
    preds: list[str], parents: Mapping[str, list[str]], pos: Mapping[str, int]
) -> str | None:
    """The latest node, in topological order, that is an edge ancestor of every
    node of ``preds`` or one of them; None when they share none.

    Walks back from ``preds`` latest first, carrying which preds reach each node:
    when a node is taken, every node after it has been, so its set is complete,
    and the first one reached by all is the answer."""
    if not preds:
        return None
    want = len(preds)
    reached: dict[str, set[str]] = {p: {p} for p in preds}
    heap = [(-pos[p], p) for p in preds]
    heapq.heapify(heap)
    while heap:
        _, n = heapq.heappop(heap)
        mine = reached.pop(n)
        if len(mine) == want:
            return n
        ps = parents[n]
        for q in ps:
            theirs = reached.get(q)
            if theirs is None:
                # With one parent the set moves on; with several each gets a copy.
                reached[q] = mine if len(ps) == 1 else set(mine)
                heapq.heappush(heap, (-pos[q], q))
            elif len(ps) == 1 and len(theirs) < len(mine):
                mine |= theirs  # the smaller set merges into the larger
                reached[q] = mine
            else:
                theirs |= mine
    return None


def innermost_sections(sections: Mapping[str, Section]) -> dict[str, str]:
    """For each node that is in some section: the merge of the smallest one."""
    owner: dict[str, str] = {}
    for mid, sec in sorted(sections.items(), key=lambda kv: -len(kv[1].members)):
        for n in sec.members:
            owner[n] = mid
    return owner
