"""Meaning: checks on the parsed model (``_Checker``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fm_local import expr
from fm_local.graph import LOOP_SCOPE_NAMES, Dep, compile_graph, find_cycle, topo_order
from fm_local.model import Edge, NodeBase, Workflow
from fm_local.nodes.http import HttpNode
from fm_local.nodes.kinds import DEFAULT_HANDLE, ERROR_HANDLE, body_nodes, kind_of
from fm_local.nodes.loop import LoopNode
from fm_local.nodes.output import OutputNode
from fm_local.nodes.switch import SwitchNode
from fm_local.validate.text import (
    PathPart,
    Problem,
    _Budget,
    _child,
    _format_path,
    _hint,
    _list,
    _Names,
    _node_prefix,
    _one_line,
    _raw_key,
    _Scope,
    _short,
    _suggest,
)

# Names every expression may read besides node outputs (SPEC §6–§8).
SCOPE_NAMES = frozenset(
    {"input", "execution", "signals", "error", "branch", "signal", "compensated"}
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Checker:
    def __init__(self, wf: Workflow, raw: dict[str, Any], budget: _Budget | None = None) -> None:
        self.wf = wf
        self.raw = raw
        self.budget = budget or _Budget()
        # settings.concurrencyLimits / rateLimits: names and the "defined" list, once.
        self.pools = _Names(wf.settings.concurrency_limits)
        self.pools_text = ", ".join(sorted(wf.settings.concurrency_limits)) or "none"
        self.limiters = _Names(wf.settings.rate_limits)
        self.limiters_text = ", ".join(sorted(wf.settings.rate_limits)) or "none"
        self.problems: list[Problem] = []
        self.handler_ids = {h.id for h in wf.handlers}
        self.used_handlers: set[str] = set()
        self.graphs: list[tuple[list[PathPart], list[Any], list[Edge]]] = []
        self.input_keys = self._declared_inputs()
        self.input_names = _Names(self.input_keys or ())
        # id of a node inside some loop body -> the loop's id (for hints).
        self.body_ids: dict[str, str] = {}

    # -- reporting

    def error(self, parts: list[PathPart], msg: str, node: str | None = None) -> None:
        self.problems.append(Problem(_format_path(parts), _node_prefix(node) + msg))

    def warn(self, parts: list[PathPart], msg: str, node: str | None = None) -> None:
        self.problems.append(Problem(_format_path(parts), _node_prefix(node) + msg, "warning"))

    # -- entry

    def run(self) -> list[Problem]:
        wf, raw = self.wf, self.raw
        self._collect_body_ids(wf.nodes)
        self._collect_body_ids(wf.handlers)
        self._check_inputs()
        self._check_settings()
        top = self._graph(wf.nodes, _list(raw, "nodes"), wf.edges, _list(raw, "edges"), [], None)
        handler_scope = _Scope(_Names(top["provides"] | self.handler_ids))
        raw_handlers = _list(raw, "handlers")
        handler_targets = _Names(frozenset(h.id for h in wf.handlers) | top["ids"])
        for i, h in enumerate(wf.handlers):
            self._node(
                h,
                _child(raw_handlers, i),
                ["handlers", i],
                handler_scope,
                in_body=False,
                targets=handler_targets,
            )
        self._check_outputs()
        for i, h in enumerate(wf.handlers):
            if h.id not in self.used_handlers:
                self.warn(
                    ["handlers", i],
                    f"handler '{h.id}' is never used (no fallbackNodeId, gotoNodeId or "
                    "signal handler names it)",
                )
        if not any(p.severity == "error" for p in self.problems):
            self._compile_all()
        return self.problems

    def _collect_body_ids(self, nodes: Iterable[NodeBase]) -> None:
        for n in nodes:
            body = body_nodes(n)
            for b in body:
                self.body_ids.setdefault(b.id, n.id)
                if b.output_variable:
                    self.body_ids.setdefault(b.output_variable, n.id)
            self._collect_body_ids(body)

    def _compile_all(self) -> None:
        # The invariant's safety net: what the engine will do must not fail.
        # Compiling a graph compiles its loops' bodies, nested ones too (for their
        # free names); a body compiled that way without an error is not compiled
        # again, so deep nesting costs one compile per graph, not one per level.
        compiled: set[int] = set()
        for at, nodes, edges in self.graphs:
            if id(nodes) in compiled:
                continue
            try:
                compile_graph(nodes, edges)
            except (ValueError, expr.ExpressionError) as e:
                self.error(at, _one_line(str(e)))
                continue
            stack = [nodes]
            while stack:
                for n in stack.pop():
                    body = body_nodes(n)
                    if body:
                        compiled.add(id(body))
                        stack.append(body)

    # -- document-level checks

    def _declared_inputs(self) -> frozenset[str] | None:
        inputs = self.wf.inputs
        if isinstance(inputs, dict) and isinstance(inputs.get("properties"), dict):
            return frozenset(inputs["properties"])
        return None

    def _check_inputs(self) -> None:
        schema = self.wf.inputs
        if schema is None:
            return
        import jsonschema  # ~0.1 s to import: only for workflows that declare inputs

        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.exceptions.SchemaError as e:
            where = _format_path(list(e.path))
            at = f" (at {where})" if where else ""
            self.error(["inputs"], f"not a valid JSON Schema: {_one_line(e.message)}{at}")

    def _check_settings(self) -> None:
        raw_settings = _child(self.raw, "settings")
        s_key = _raw_key(raw_settings, "signalHandlers")
        for sig, sh in self.wf.settings.signal_handlers.items():
            at: list[PathPart] = ["settings", s_key, sig]
            if sh.handler is not None:
                self.used_handlers.add(sh.handler)
            if sh.action == "custom" and not sh.handler:
                self.error(
                    at,
                    f"signal handler '{sig}': action 'custom' needs 'handler' "
                    "(the id of a node in handlers)",
                )
            elif sh.handler and sh.handler not in self.handler_ids:
                self.error(
                    at + ["handler"],
                    f"signal handler '{sig}': no handler '{sh.handler}' in handlers"
                    + _suggest(sh.handler, self.handler_ids),
                )
            elif sh.handler and sh.action != "custom":
                self.warn(
                    at + ["handler"],
                    f"signal handler '{sig}': 'handler' is only run with action 'custom' "
                    f"(this one is '{sh.action}')",
                )

    def _check_outputs(self) -> None:
        seen: dict[str, str] = {}
        for i, n in enumerate(self.wf.nodes):
            if isinstance(n, OutputNode):
                if n.key in seen:
                    self.warn(
                        ["nodes", i],
                        f"output name '{n.key}' is also used by node '{seen[n.key]}'; "
                        "only one of the values will be in the execution output",
                        n.id,
                    )
                else:
                    seen[n.key] = n.id

    # -- graphs

    def _graph(
        self,
        nodes: list[Any],
        raw_nodes: list[Any],
        edges: list[Edge],
        raw_edges: list[Any],
        at: list[PathPart],
        loop: LoopNode | None,
        outer: _Scope | None = None,
    ) -> dict[str, Any]:
        """Check one graph; return its ``ids``, the names it ``provides`` to its
        nodes, and the ``free`` names it reads from outside."""
        self.graphs.append((at, nodes, edges))
        by_id: dict[str, NodeBase] = {}
        index: dict[str, int] = {}
        for i, n in enumerate(nodes):
            by_id.setdefault(n.id, n)
            index.setdefault(n.id, i)
        aliases = {n.output_variable: n.id for n in nodes if n.output_variable}
        ids = frozenset(by_id)
        provides = ids | frozenset(aliases)
        own = provides
        if loop is not None:
            own |= {loop.item_variable, loop.index_variable} | LOOP_SCOPE_NAMES
        scope = _Scope(_Names(own), outer)
        names: dict[str, set[str]] = {}
        own_names: dict[str, set[str]] = {}
        # Built once: rebuilding it per node made a graph quadratic in its size.
        targets = _Names(ids | self.handler_ids)
        for i, n in enumerate(nodes):
            path = at + ["nodes", i]
            direct, total = self._node(
                n,
                _child(raw_nodes, i),
                path,
                scope,
                in_body=loop is not None,
                targets=targets,
            )
            own_names.setdefault(n.id, set()).update(direct)
            names.setdefault(n.id, set()).update(total)
            if n.id in SCOPE_NAMES or n.id in LOOP_SCOPE_NAMES:
                self.warn(
                    path + ["id"],
                    f"the id '{n.id}' is also a name the engine puts in scope; "
                    "expressions may not see this node under it",
                    n.id,
                )

        # Edges: ports and dependencies.
        deps: dict[str, list[Dep]] = {nid: [] for nid in by_id}
        out_handles: dict[str, set[str | None]] = {nid: set() for nid in by_id}
        # Ports per source, listed once: a switch with many cases has many edges.
        ports: dict[str, tuple[list[str], frozenset[str]]] = {}
        switch_maps: dict[str, dict[str, str]] = {}  # per switch: handle -> its port
        for k, e in enumerate(edges):
            src = by_id.get(e.source)
            if src is None or e.target not in by_id:
                continue
            deps[e.target].append(Dep(e.source, e.source_handle))
            handle = e.source_handle
            handle_map = kind_of(src).handle_map
            if handle_map is not None and handle is not None:
                hmap = switch_maps.get(e.source)
                if hmap is None:
                    hmap = switch_maps[e.source] = handle_map(src)
                handle = hmap.get(handle, handle)
            out_handles[e.source].add(handle)
            if e.source_handle is not None:
                if e.source not in ports:
                    listed = _ports(src, accepted=True) + [ERROR_HANDLE]
                    ports[e.source] = (listed, frozenset(listed))
                allowed, allowed_set = ports[e.source]
                if e.source_handle not in allowed_set:
                    rk = _raw_key(_child(raw_edges, k), "sourceHandle")
                    if len(allowed) == 1:
                        expected = "only 'error', or no sourceHandle for the normal output"
                    else:
                        expected = "one of: " + ", ".join(allowed)
                    self.error(
                        at + ["edges", k, rk],
                        f"node '{e.source}' ({_type_of(src)}) has no port '{e.source_handle}' "
                        f"(expected {expected})",
                    )
        for nid, n in by_id.items():
            for port in _ports(n):
                if port not in out_handles[nid]:
                    self.warn(
                        at + ["nodes", index[nid]],
                        f"port '{port}' has no outgoing edge",
                        nid,
                    )

        # References are implicit edges (SPEC §2).
        for nid in by_id:
            sources = {d.source for d in deps[nid]}
            for name in sorted(names[nid]):
                src_id = name if name in by_id else aliases.get(name)
                if src_id is None:
                    continue
                if src_id == nid:
                    if name in own_names[nid]:
                        msg = f"it references its own output '{name}' (a node cannot read itself)"
                    else:
                        msg = f"its loop body references the loop's own output '{name}'"
                    self.error(at + ["nodes", index[nid]], msg, nid)
                elif src_id not in sources:
                    deps[nid].append(Dep(src_id, None, is_ref=True))
                    sources.add(src_id)
        cycle = find_cycle(list(by_id), deps)
        if cycle:
            self.error(at + ["nodes", index[cycle[0]]], "cycle: " + " -> ".join(cycle))
        else:
            self._unreachable(by_id, index, deps, at)

        free: set[str] = set()
        for nid in by_id:
            free |= names[nid]
        return {"ids": ids, "provides": provides, "free": free - provides}

    def _unreachable(
        self,
        by_id: Mapping[str, NodeBase],
        index: Mapping[str, int],
        deps: Mapping[str, list[Dep]],
        at: list[PathPart],
    ) -> None:
        never: dict[str, str] = {}
        for nid in topo_order(list(by_id), deps):  # any order that follows the edges
            ds = deps[nid]
            if not ds:
                continue
            dead = [
                d
                for d in ds
                if d.source in never
                or (d.handle == ERROR_HANDLE and by_id[d.source].error_strategy == "continue")
            ]
            if len(dead) < len(ds):
                continue
            if all(d.source not in never for d in ds):
                never[nid] = (
                    "its only incoming edges are 'error' edges from nodes with "
                    "errorStrategy 'continue', which never fail"
                )
            else:
                never[nid] = "every node it depends on is unreachable"
        for nid, why in sorted(never.items(), key=lambda kv: index[kv[0]]):
            self.warn(at + ["nodes", index[nid]], f"node '{nid}' is unreachable: {why}")

    # -- nodes

    def _node(
        self,
        node: NodeBase,
        raw: Any,
        at: list[PathPart],
        scope: _Scope,
        *,
        in_body: bool,
        targets: _Names,
    ) -> tuple[set[str], set[str]]:
        """Check one node; return the names its own fields read, and all names it
        reads including its loop body's names from outside."""
        nid = node.id
        direct = self._expressions(node, raw, at, scope)
        total = set(direct)
        self._targets(node, raw, at, targets)
        self._limits(node, raw, at)
        if isinstance(node, HttpNode) and "{{" not in node.url:
            scheme = node.url.partition("://")[0].lower() if "://" in node.url else ""
            if scheme not in ("http", "https"):
                what = f"its scheme is '{scheme}'" if scheme else "it has no http:// or https://"
                self.error(
                    at + [_raw_key(raw, "url")],
                    f"'{node.url[:200]}' is not an http(s) url ({what})",
                    nid,
                )
        if isinstance(node, SwitchNode):
            seen: dict[str, int] = {}
            rk = _raw_key(raw, "cases")
            for j, case in enumerate(node.cases):
                port = case.port
                if port in (DEFAULT_HANDLE, ERROR_HANDLE):
                    self.error(
                        at + [rk, j],
                        f"case port '{port}' is a built-in port; give the case a different 'label'",
                        nid,
                    )
                elif port in seen:
                    self.error(
                        at + [rk, j],
                        f"case port '{port}' is also the port of cases[{seen[port]}]; "
                        "give one of them a 'label'",
                        nid,
                    )
                else:
                    seen[port] = j
        if node.compensate is not None:
            ck = _raw_key(raw, "compensate")
            self._node(
                node.compensate,
                _child(raw, ck),
                at + [ck],
                scope,
                in_body=in_body,
                targets=targets,
            )
        if isinstance(node, LoopNode):
            body_raw = _child(raw, "body")
            if not node.body.nodes:
                self.error(at + ["body"], "the loop body has no nodes", nid)
            else:
                body = self._graph(
                    node.body.nodes,
                    _list(body_raw, "nodes"),
                    node.body.edges,
                    _list(body_raw, "edges"),
                    at + ["body"],
                    node,
                    outer=scope,
                )
                total |= body["free"] - {node.item_variable, node.index_variable} - LOOP_SCOPE_NAMES
        return direct, total

    def _targets(self, node: NodeBase, raw: Any, at: list[PathPart], targets: _Names) -> None:
        nid = node.id
        strategy_key = _raw_key(raw, "errorStrategy")
        for strategy, camel, value in (
            ("fallback", "fallbackNodeId", node.fallback_node_id),
            ("goto", "gotoNodeId", node.goto_node_id),
        ):
            key = _raw_key(raw, camel)
            if node.error_strategy == strategy and not value:
                self.error(
                    at + [strategy_key],
                    f"errorStrategy '{strategy}' needs '{camel}' (the node to run on failure)",
                    nid,
                )
            if not value:
                continue
            self.used_handlers.add(value)
            if value == nid:
                self.error(at + [key], f"{camel} cannot be the node itself", nid)
            elif value not in targets:
                self.error(
                    at + [key],
                    f"{camel} '{value}' is neither a handler nor a node of the same graph"
                    + _hint(value, self.budget, targets),
                    nid,
                )
            elif node.error_strategy != strategy:
                self.warn(
                    at + [key],
                    f"{camel} is ignored unless errorStrategy is '{strategy}' "
                    f"(it is '{node.error_strategy}')",
                    nid,
                )

    def _limits(self, node: NodeBase, raw: Any, at: list[PathPart]) -> None:
        if node.pool is not None and node.pool not in self.pools:
            self.error(
                at + ["pool"],
                f"pool '{node.pool}' is not defined in settings.concurrencyLimits "
                f"(defined: {self.pools_text})" + _hint(node.pool, self.budget, self.pools),
                node.id,
            )
        rl = node.rate_limit
        if isinstance(rl, str) and rl not in self.limiters:
            self.error(
                at + [_raw_key(raw, "rateLimit")],
                f"rate limiter '{rl}' is not defined in settings.rateLimits "
                f"(defined: {self.limiters_text})" + _hint(rl, self.budget, self.limiters),
                node.id,
            )

    # -- expressions

    def _expressions(self, node: NodeBase, raw: Any, at: list[PathPart], scope: _Scope) -> set[str]:
        names: set[str] = set()
        for parts, kind, text in _expression_fields(node, raw, at):
            try:
                if kind == "expr":
                    found: frozenset[str] = expr.compile_expr(text).names
                else:
                    tpl = expr.compile_template(text)
                    found = tpl.names if tpl is not None else frozenset()
            except expr.ExpressionError as e:
                what = "expression" if kind == "expr" else "template"
                self.error(
                    parts,
                    f"{what} {_short(text)!r} does not parse: {_one_line(str(e))}",
                    node.id,
                )
                continue
            names |= found
            for name in sorted(found):
                self._check_name(name, parts, scope, node.id)
        return names

    def _check_name(self, name: str, parts: list[PathPart], scope: _Scope, nid: str) -> None:
        if name in scope or name in SCOPE_NAMES or name in self.handler_ids:
            return
        if self.input_keys is not None and name in self.input_keys:
            return
        if name in self.body_ids:
            self.error(
                parts,
                f"name '{name}' is a node inside loop '{self.body_ids[name]}' and is not "
                f"in scope here; read the loop's output '{self.body_ids[name]}' instead",
                nid,
            )
            return
        hint = _hint(name, self.budget, *scope.layers(), self.input_names)
        if self.input_keys is not None:
            self.error(
                parts,
                f"name '{name}' is not in scope: not a node id, an outputVariable, "
                f"a declared input or a scope name{hint}",
                nid,
            )
        else:
            self.warn(
                parts,
                f"name '{name}' is not a node id or a declared input; it must come from "
                f"the execution input{hint}",
                nid,
            )


def _ports(node: NodeBase, accepted: bool = False) -> list[str]:
    """The named output ports of a node, besides 'error' (``accepted``: also the
    other spellings an edge may use, a labelled switch case's value)."""
    ports = kind_of(node).ports
    return ports(node, accepted) if ports is not None else []


def _expression_fields(
    node: NodeBase, raw: Any, at: list[PathPart]
) -> Iterator[tuple[list[PathPart], str, str]]:
    """Every expression (``"expr"``) and templated string (``"tpl"``) of a node's own
    fields, with its path."""
    kind = kind_of(node)
    if kind.expression:
        yield at + ["expression"], "expr", node.expression  # type: ignore[attr-defined]
    for camel, value in kind.template_values(node):
        yield from _template_strings(value, at + [_raw_key(raw, camel)])


def _template_strings(value: Any, at: list[PathPart]) -> Iterator[tuple[list[PathPart], str, str]]:
    if isinstance(value, str):
        yield at, "tpl", value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _template_strings(v, at + [str(k)])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _template_strings(v, at + [i])


def _type_of(node: NodeBase) -> str:
    return str(getattr(node, "type", type(node).__name__))
