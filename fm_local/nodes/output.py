"""The ``output`` node: its templated ``value``; the execution output is
``{outputName: value}`` over all output nodes that succeeded."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fm_local import expr
from fm_local.model import OutputNode


def evaluate(
    node: OutputNode, scope: Mapping[str, Any], log: Callable[[str], None]
) -> tuple[Any, str | None]:
    return expr.render_value(node.value, scope, log), None
