"""The ``output`` node: its templated ``value``; the execution output is
``{outputName: value}`` over all output nodes that succeeded."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from fm_local import expr
from fm_local.model import NodeBase
from fm_local.nodes.kind import Kind, Runs


class OutputNode(NodeBase):
    type: Literal["output"]
    output_name: str | None = None
    value: Any = None

    @property
    def key(self) -> str:
        return self.output_name or self.id


def evaluate(
    node: OutputNode, scope: Mapping[str, Any], log: Callable[[str], None]
) -> tuple[Any, str | None]:
    return expr.render_value(node.value, scope, log), None


KIND = Kind(
    "output", OutputNode, Runs.INLINE, templates=(("value", "value"),), evaluate=evaluate, order=110
)
