"""The ``wait`` node: waits for a signal of its name (the supervisor holds it; it
holds no worker)."""

from __future__ import annotations

from typing import Literal

from fm_local.model import NodeBase
from fm_local.nodes.kind import Kind, Runs


class WaitNode(NodeBase):
    type: Literal["wait"]
    signal: str


KIND = Kind("wait", WaitNode, Runs.WAIT, order=100)
