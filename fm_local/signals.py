"""Which signals an execution accepts, and what each one does (SPEC §8).

Pure functions of the workflow: the supervisor applies signals, clients use these
to refuse a bad one at once with a clear error (the supervisor checks again).
"""

from __future__ import annotations

from typing import Any

from fm_local.model import LoopNode, NodeBase, SignalHandler, WaitNode, Workflow

BUILT_IN = ("pause", "resume", "cancel")
# Internal: `fm dlq replay` of a node whose execution still runs (SPEC §8).
REPLAY = "__replay"


def _wait_types(nodes: list[Any]) -> set[str]:
    found: set[str] = set()
    for n in nodes:
        if isinstance(n, WaitNode):
            found.add(n.signal)
        if isinstance(n, LoopNode):
            found |= _wait_types(n.body.nodes)
    return found


def wait_types(workflow: Workflow) -> set[str]:
    """Signal types some ``wait`` node of the workflow waits for."""
    return _wait_types(list(workflow.nodes) + list(workflow.handlers))


def handler_for(workflow: Workflow, type_: str) -> SignalHandler | None:
    h = workflow.settings.signal_handlers.get(type_)
    if h is not None:
        return h
    if type_ in BUILT_IN:
        return SignalHandler(action=type_)  # type: ignore[arg-type]
    return None


def accepted_types(workflow: Workflow) -> list[str]:
    return sorted(set(BUILT_IN) | set(workflow.settings.signal_handlers) | wait_types(workflow))


def refusal(workflow: Workflow, type_: str) -> str | None:
    """Why ``type_`` is refused for this workflow, or None if it is accepted."""
    if type_ == REPLAY:
        return None
    if handler_for(workflow, type_) is not None or type_ in wait_types(workflow):
        return None
    return (
        f"workflow '{workflow.name}' does not handle signal type '{type_}' "
        f"(it accepts: {', '.join(accepted_types(workflow))})"
    )


def handler_node(workflow: Workflow, handler: SignalHandler) -> NodeBase | None:
    for h in workflow.handlers:
        if h.id == handler.handler:
            return h
    return None
