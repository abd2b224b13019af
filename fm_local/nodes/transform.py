"""The ``transform`` node: the value of its expression (evaluated by the supervisor)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from fm_local import expr
from fm_local.model import NodeBase
from fm_local.nodes.kind import Kind, Runs


class TransformNode(NodeBase):
    type: Literal["transform"]
    expression: str
    operation: Literal["custom"] = "custom"


def evaluate(
    node: TransformNode, scope: Mapping[str, Any], log: Callable[[str], None]
) -> tuple[Any, str | None]:
    return expr.compile_expr(node.expression).evaluate(scope, log), None


KIND = Kind("transform", TransformNode, Runs.INLINE, expression=True, evaluate=evaluate, order=20)
