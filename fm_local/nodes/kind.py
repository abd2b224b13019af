"""What a node type declares: its :class:`Kind`.

Each node type's module in this package (``fm_local.nodes.<type>``) declares its model
class, one ``KIND = Kind(...)`` and its evaluation or task; :mod:`fm_local.nodes.kinds`
lists those modules and answers ``kind_of(node)``. This module imports neither them
nor ``fm_local.model`` at run time, so each of them can import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fm_local.model import NodeBase

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


def io_lane(node: Any, folder: str) -> str:
    """The lane of a type whose every node waits on I/O (http, shell)."""
    return "io"


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
    # Runs.WORKER: its lane, given the node and the workflow folder — "io" (many at
    # once on a worker's event loop) or "process" (a worker process each); None:
    # always "process".
    lane: Callable[[Any, str], str] | None = None
    # Its place among the types: the order of the document's Node union, which
    # pydantic's messages (the expected tags) and ``fm schema`` follow. A new type
    # may leave it: it goes after the others, by name.
    order: int = 1000

    @property
    def has_body(self) -> bool:
        return self.runs is Runs.LOOP

    def template_values(self, node: NodeBase) -> list[tuple[str, Any]]:
        """(JSON key, value) of each templated field of ``node``."""
        return [(key, getattr(node, attr)) for key, attr in self.templates]
