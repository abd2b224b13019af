"""The ``merge`` node: the automatic merge ``{predecessor_id: output}`` of the
branches that succeeded (skipped and failed branches are absent)."""

from __future__ import annotations

from typing import Any, Literal

from fm_local.model import NodeBase, SectionPolicy
from fm_local.nodes.kind import Kind, Runs


class MergeNode(NodeBase):
    type: Literal["merge"]
    mode: Literal["all", "first_success"] = "all"
    policy: SectionPolicy | None = None


def automatic(outputs: dict[str, Any]) -> tuple[Any, str | None]:
    return dict(outputs), None


KIND = Kind("merge", MergeNode, Runs.MERGE, order=70)
