"""The ``merge`` node: the automatic merge ``{predecessor_id: output}`` of the
branches that succeeded (skipped and failed branches are absent)."""

from __future__ import annotations

from typing import Any


def automatic(outputs: dict[str, Any]) -> tuple[Any, str | None]:
    return dict(outputs), None
