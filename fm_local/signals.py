"""Which signals an execution accepts, and what each one does (SPEC §8).

Pure functions of the workflow: the supervisor applies signals, clients use these
to refuse a bad one at once with a clear error (the supervisor checks again).
A client reads the accepted types from the stored document
(:func:`document_refusal`), without building the pydantic model, so sending a
signal stays quick; both spellings give the same answer and the same message.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fm_local.model import NodeBase, SignalHandler, Workflow

BUILT_IN = ("pause", "resume", "cancel")
# Internal: `fm dlq replay` of a node whose execution still runs (SPEC §8).
REPLAY = "__replay"
# Internal: `fm explain` asks the supervisor why nodes do not run (fm_local.explain);
# answered in the row's result, applied to nothing.
EXPLAIN = "__explain"


def _wait_types(nodes: list[Any]) -> set[str]:
    from fm_local.nodes.kinds import Runs, body_nodes, kind_of

    found: set[str] = set()
    for n in nodes:
        if kind_of(n).runs is Runs.WAIT:
            found.add(n.signal)
        found |= _wait_types(body_nodes(n))
    return found


def wait_types(workflow: Workflow) -> set[str]:
    """Signal types some ``wait`` node of the workflow waits for."""
    return _wait_types(list(workflow.nodes) + list(workflow.handlers))


def handler_for(workflow: Workflow, type_: str) -> SignalHandler | None:
    from fm_local.model import SignalHandler

    h = workflow.settings.signal_handlers.get(type_)
    if h is not None:
        return h
    if type_ in BUILT_IN:
        return SignalHandler(action=type_)  # type: ignore[arg-type]
    return None


def accepted_types(workflow: Workflow) -> list[str]:
    return _accepted(workflow.settings.signal_handlers, wait_types(workflow))


def _accepted(handled: Collection[str], waits: set[str]) -> list[str]:
    return sorted(set(BUILT_IN) | set(handled) | waits)


def refusal(workflow: Workflow, type_: str) -> str | None:
    """Why ``type_`` is refused for this workflow, or None if it is accepted."""
    return _refusal(workflow.name, workflow.settings.signal_handlers, wait_types(workflow), type_)


def document_refusal(document: Mapping[str, Any], type_: str) -> str | None:
    """:func:`refusal` read from a stored workflow document (one that passed
    validation when it was saved), in either key spelling the model accepts."""
    settings = document.get("settings")
    handled: Any = None
    if isinstance(settings, Mapping):
        handled = settings.get("signalHandlers", settings.get("signal_handlers"))
    handlers = document.get("handlers")
    nodes = [*_nodes_of(document), *(handlers if isinstance(handlers, list) else [])]
    return _refusal(
        str(document.get("name")),
        handled if isinstance(handled, Mapping) else {},
        _document_wait_types(nodes),
        type_,
    )


def _nodes_of(graph: Any) -> list[Any]:
    nodes = graph.get("nodes") if isinstance(graph, Mapping) else None
    return nodes if isinstance(nodes, list) else []


def _document_wait_types(nodes: list[Any]) -> set[str]:
    """As :func:`wait_types`: wait nodes, also inside loop bodies (walked with a
    stack, not recursion)."""
    found: set[str] = set()
    stack = list(nodes)
    while stack:
        n = stack.pop()
        if not isinstance(n, Mapping):
            continue
        if n.get("type") == "wait" and isinstance(n.get("signal"), str):
            found.add(n["signal"])
        if n.get("type") == "loop":
            stack.extend(_nodes_of(n.get("body")))
    return found


def _refusal(name: str, handled: Collection[str], waits: set[str], type_: str) -> str | None:
    if type_ == REPLAY:
        return None
    if type_ in BUILT_IN or type_ in handled or type_ in waits:
        return None
    return (
        f"workflow '{name}' does not handle signal type '{type_}' "
        f"(it accepts: {', '.join(_accepted(handled, waits))})"
    )


def handler_node(workflow: Workflow, handler: SignalHandler) -> NodeBase | None:
    for h in workflow.handlers:
        if h.id == handler.handler:
            return h
    return None
