"""The ``switch`` node: ``{"value": v}``; it chooses the port of the first case whose
value equals ``v``, else port "default"."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fm_local import expr
from fm_local.model import SwitchNode


def evaluate(
    node: SwitchNode, scope: Mapping[str, Any], log: Callable[[str], None]
) -> tuple[Any, str | None]:
    value = expr.compile_expr(node.expression).evaluate(scope, log)
    for case in node.cases:
        # True must not match a case 1 (nor 1 a case true), as in JSON.
        if case.value == value and isinstance(case.value, bool) == isinstance(value, bool):
            return {"value": value}, case.port
    return {"value": value}, "default"
