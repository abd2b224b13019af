"""The ``delay`` node: a durable timer. It holds no worker: the supervisor keeps a
due time (persisted as ``node_runs.next_attempt_at``) and completes it with null."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field

from fm_local import expr
from fm_local.errors import EXPRESSION_ERROR, NodeError
from fm_local.model import NodeBase
from fm_local.nodes.kind import Kind, Runs


class DelayNode(NodeBase):
    type: Literal["delay"]
    duration: Annotated[int, Field(ge=0)] | str


def duration_ms(node: DelayNode, scope: Mapping[str, Any]) -> int:
    value = expr.render_value(node.duration, scope)
    try:
        ms = int(value)
    except (TypeError, ValueError):
        raise NodeError(
            f"delay duration must be a number of milliseconds, got {value!r}", EXPRESSION_ERROR
        ) from None
    return max(0, ms)


KIND = Kind("delay", DelayNode, Runs.DELAY, templates=(("duration", "duration"),), order=90)
