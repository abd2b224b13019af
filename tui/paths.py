"""Node paths as the timeline needs them: which loop an item belongs to, and
which loops and items must be expanded (on which page) to show a given path.

A path is ``id``, ``loop[3]`` (an item), ``loop[3].step`` (a node of an item's
body), ``loop[3].inner[5].step`` (nested loops); node ids are identifiers, so
``[`` and ``.`` only ever come from the engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ITEM = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True)
class Step:
    """One loop on the way down to a path: the loop, the item of it, the item's index."""

    loop: str
    item: str
    index: int


def steps(path: str) -> list[Step]:
    """The loops (and their items) that contain ``path``, outermost first; an
    item path ends with its own step."""
    return [Step(path[: m.start()], path[: m.end()], int(m.group(1))) for m in _ITEM.finditer(path)]


def item_index(path: str) -> int | None:
    """``7`` for an item path ``loop[7]``; None for any other path."""
    m = _ITEM.search(path)
    if m is None:
        return None
    last = list(_ITEM.finditer(path))[-1]
    return int(last.group(1)) if last.end() == len(path) else None


def enclosing_loop(path: str, kind: str) -> tuple[str, int] | None:
    """The loop the cursor's row belongs to, and the item index it stands at:
    a loop row is its own loop (before its first item: -1), an item or a node
    of an item's body is in the innermost loop around it. None outside loops."""
    if kind == "loop":
        return path, -1
    found = steps(path)
    if not found:
        return None
    last = found[-1]
    return last.loop, last.index


def page_of(index: int, size: int) -> int:
    """The first item index of the page of ``size`` items that holds ``index``."""
    return max(0, index) // size * size
