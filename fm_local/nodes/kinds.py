"""Every node type's behaviour, in one table.

Where a type runs, which of its fields are expressions or hold ``{{templates}}``,
its named output ports, whether it has a body graph, how the supervisor evaluates
it or which task it hands a worker: ``graph``, ``validate`` and the supervisor ask
:func:`kind_of` instead of testing a node's class. A node type is its model class
(the document's shape, ``fm_local.model``), one :class:`Kind` here, and for a
worker type its runner (``fm_local.nodes.<type>.run``, what a worker process
imports: it never imports this table or pydantic).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fm_local import expr
from fm_local.model import (
    NODE_TYPES,
    ConditionNode,
    DelayNode,
    HttpNode,
    LoopNode,
    MergeNode,
    NodeBase,
    OutputNode,
    PythonNode,
    ShellNode,
    SwitchNode,
    TransformNode,
    WaitNode,
)
from fm_local.nodes import condition, output, switch, transform

ERROR_HANDLE = "error"  # every node's port for a handled failure (SPEC §6)
DEFAULT_HANDLE = "default"  # a switch's port when no case matches

Scope = Mapping[str, Any]
Evaluate = Callable[[Any, Scope, Callable[[str], None]], tuple[Any, str | None]]
TaskSpec = Callable[[Any, Scope], dict[str, Any]]


class Runs(StrEnum):
    """Where and how a node of a type runs."""

    WORKER = "worker"  # a task for a worker process (python, http, shell)
    INLINE = "inline"  # the supervisor evaluates it at once (Kind.evaluate)
    MERGE = "merge"  # the supervisor joins its predecessors' outputs (sections)
    LOOP = "loop"  # its body runs once per item
    DELAY = "delay"  # a timer
    WAIT = "wait"  # waits for a signal


@dataclass(frozen=True)
class Kind:
    name: str  # the document's "type"
    model: type[NodeBase]
    runs: Runs
    # Its ``expression`` field is one expression (not a template).
    expression: bool = False
    # (JSON key, attribute) of each field whose strings may hold {{templates}}.
    templates: tuple[tuple[str, str], ...] = ()
    # Named output ports besides "error" (accepted=True: every spelling an edge
    # may use); None: the type has none.
    ports: Callable[[Any, bool], list[str]] | None = None
    # An edge's sourceHandle -> the port the engine records (a switch's labelled
    # case named by its value); None: handles are ports as written.
    handle_map: Callable[[Any], dict[str, str]] | None = None
    # Runs.INLINE: the node's (value, port) in a scope, with a log function.
    evaluate: Evaluate | None = None
    # Runs.WORKER: the task a worker runs, its templates rendered in a scope.
    task: TaskSpec | None = None

    @property
    def has_body(self) -> bool:
        return self.runs is Runs.LOOP

    def template_values(self, node: NodeBase) -> list[tuple[str, Any]]:
        """(JSON key, value) of each templated field of ``node``."""
        return [(key, getattr(node, attr)) for key, attr in self.templates]


def _switch_ports(node: SwitchNode, accepted: bool) -> list[str]:
    names = node.handles() if accepted else [c.port for c in node.cases]
    return list(dict.fromkeys([*names, DEFAULT_HANDLE]))


def _python_task(node: PythonNode, scope: Scope) -> dict[str, Any]:
    return {"call": node.call, "args": expr.render_value(node.args, scope)}


def _http_task(node: HttpNode, scope: Scope) -> dict[str, Any]:
    return {
        "method": expr.render_value(node.method, scope),
        "url": expr.render_value(node.url, scope),
        "headers": expr.render_value(node.headers, scope),
        "query": expr.render_value(node.query, scope),
        "json": expr.render_value(node.json_body, scope),
        "body": expr.render_value(node.body, scope),
        "timeout": node.timeout,
    }


def _shell_task(node: ShellNode, scope: Scope) -> dict[str, Any]:
    return {
        # A string is a shell script: template values are quoted (expr.render_shell).
        "command": expr.render_shell(node.command, scope),
        "env": expr.render_value(node.env, scope),
        "cwd": expr.render_value(node.cwd, scope),
        "allowFailure": node.allow_failure,
    }


_HTTP_FIELDS = (
    ("method", "method"),
    ("url", "url"),
    ("headers", "headers"),
    ("query", "query"),
    ("json", "json_body"),
    ("body", "body"),
)

KINDS: tuple[Kind, ...] = (
    Kind("python", PythonNode, Runs.WORKER, templates=(("args", "args"),), task=_python_task),
    Kind("http", HttpNode, Runs.WORKER, templates=_HTTP_FIELDS, task=_http_task),
    Kind(
        "shell",
        ShellNode,
        Runs.WORKER,
        templates=(("command", "command"), ("env", "env"), ("cwd", "cwd")),
        task=_shell_task,
    ),
    Kind("transform", TransformNode, Runs.INLINE, expression=True, evaluate=transform.evaluate),
    Kind(
        "condition",
        ConditionNode,
        Runs.INLINE,
        expression=True,
        ports=lambda node, accepted: ["true", "false"],
        evaluate=condition.evaluate,
    ),
    Kind(
        "switch",
        SwitchNode,
        Runs.INLINE,
        expression=True,
        ports=_switch_ports,
        handle_map=SwitchNode.handle_map,
        evaluate=switch.evaluate,
    ),
    Kind(
        "output", OutputNode, Runs.INLINE, templates=(("value", "value"),), evaluate=output.evaluate
    ),
    Kind("merge", MergeNode, Runs.MERGE),
    Kind(
        "loop",
        LoopNode,
        Runs.LOOP,
        templates=(("arrayPath", "array_path"), ("count", "count")),
    ),
    Kind("delay", DelayNode, Runs.DELAY, templates=(("duration", "duration"),)),
    Kind("wait", WaitNode, Runs.WAIT),
)

_BY_MODEL: dict[type, Kind] = {k.model: k for k in KINDS}
assert set(_BY_MODEL) == set(NODE_TYPES.values()), "a node type without a Kind (or a stray one)"
assert all(NODE_TYPES[k.name] is k.model for k in KINDS), "a Kind under another type's name"


def kind_of(node: NodeBase) -> Kind:
    """The :class:`Kind` of a node (of a model class of ``NODE_TYPES``)."""
    return _BY_MODEL[type(node)]


def runs_on_worker(node: NodeBase) -> bool:
    return _BY_MODEL[type(node)].runs is Runs.WORKER


def body_nodes(node: NodeBase) -> list[Any]:
    """The nodes of a node's body graph (a loop's), else none."""
    return node.body.nodes if isinstance(node, LoopNode) else []
