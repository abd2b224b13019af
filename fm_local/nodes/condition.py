"""The ``condition`` node: ``{"result": bool}``; it chooses port "true" or "false"."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from fm_local import expr
from fm_local.model import NodeBase
from fm_local.nodes.kind import Kind, Runs


class ConditionNode(NodeBase):
    type: Literal["condition"]
    expression: str


def evaluate(
    node: ConditionNode, scope: Mapping[str, Any], log: Callable[[str], None]
) -> tuple[Any, str | None]:
    result = bool(expr.compile_expr(node.expression).evaluate(scope, log))
    return {"result": result}, "true" if result else "false"


KIND = Kind(
    "condition",
    ConditionNode,
    Runs.INLINE,
    expression=True,
    ports=lambda node, accepted: ["true", "false"],
    evaluate=evaluate,
    order=50,
)
