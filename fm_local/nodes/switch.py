"""The ``switch`` node: ``{"value": v}``; it chooses the port of the first case whose
value equals ``v``, else port "default"."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Literal

from fm_local import expr
from fm_local.model import Base, NodeBase
from fm_local.nodes.kind import DEFAULT_HANDLE, Kind, Runs


class SwitchCase(Base):
    value: Any
    label: str | None = None

    @property
    def value_port(self) -> str:
        """The case's value as text: its port by SPEC §3."""
        return self.value if isinstance(self.value, str) else _json_text(self.value)

    @property
    def port(self) -> str:
        """The port the engine records for this case: its label when it has one (so
        cases of equal text, 1 and "1", stay apart), else its value as text. Edges
        may name a labelled case by either (SwitchNode.canonical_handle)."""
        return self.label if self.label is not None else self.value_port


class SwitchNode(NodeBase):
    type: Literal["switch"]
    expression: str
    cases: list[SwitchCase]

    def handle_map(self) -> dict[str, str]:
        """sourceHandle -> the port the engine records, for every accepted handle
        (build it once per switch: a switch may have thousands of cases)."""
        mapping = {c.port: c.port for c in self.cases}
        for c in self.cases:
            if c.label is not None:
                mapping.setdefault(c.value_port, c.port)
        return mapping

    def canonical_handle(self, handle: str | None) -> str | None:
        """An edge's sourceHandle as the port the engine records: a labelled case's
        value text stands for its label, unless that text is another case's port."""
        if handle is None:
            return None
        return self.handle_map().get(handle, handle)

    def handles(self) -> list[str]:
        """Every sourceHandle accepted for a case: each port, and a labelled case's
        value text (when no other case has it as its port)."""
        return list(self.handle_map())


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def evaluate(
    node: SwitchNode, scope: Mapping[str, Any], log: Callable[[str], None]
) -> tuple[Any, str | None]:
    value = expr.compile_expr(node.expression).evaluate(scope, log)
    for case in node.cases:
        # True must not match a case 1 (nor 1 a case true), as in JSON.
        if case.value == value and isinstance(case.value, bool) == isinstance(value, bool):
            return {"value": value}, case.port
    return {"value": value}, DEFAULT_HANDLE


def _ports(node: SwitchNode, accepted: bool) -> list[str]:
    names = node.handles() if accepted else [c.port for c in node.cases]
    return list(dict.fromkeys([*names, DEFAULT_HANDLE]))


KIND = Kind(
    "switch",
    SwitchNode,
    Runs.INLINE,
    expression=True,
    ports=_ports,
    handle_map=SwitchNode.handle_map,
    evaluate=evaluate,
    order=60,
)
