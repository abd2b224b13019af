"""Node instance paths as ``fm explain`` reads them: ``a``, ``loop[3].step``,
``outer[1].inner[0].step``; a node outside the graph adds a tail
(``step->fallback``, ``signal:approve#7->h``).

A path is a list of segments ``(id, index)``. A pattern *covers* an instance when
the instance is it or under it: ``loop`` covers ``loop[3]`` and ``loop[3].step``;
a segment without an index stands for every item (``loop.step`` covers each
item's ``step``). Pure functions, no I/O.
"""

from __future__ import annotations

import re

Segment = tuple[str, int | None]
Pattern = list[Segment]

_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?\Z")


def parse(path: str) -> Pattern:
    """The segments of ``path``; a part that is not ``id`` or ``id[k]`` (a signal
    handler's ``signal:type#7``, a tail ``->fallback``) is one opaque segment."""
    base, arrow, tail = path.partition("->")
    segs: Pattern = []
    for part in base.split(".") if base else []:
        m = _SEGMENT.match(part)
        if m is None:
            segs.append((part, None))
        else:
            segs.append((m.group(1), int(m.group(2)) if m.group(2) is not None else None))
    if arrow:
        segs.append(("->" + tail, None))
    return segs


def covers(pattern: Pattern, path: Pattern) -> bool:
    """``path`` is the instance ``pattern`` names, or one inside it."""
    if len(path) < len(pattern):
        return False
    for (pid, pidx), (qid, qidx) in zip(pattern, path, strict=False):
        if pid != qid or (pidx is not None and pidx != qidx):
            return False
    return True


def relevant(pattern: Pattern, path: Pattern) -> bool:
    """Something at or inside ``path`` may be covered by ``pattern`` (so a walk of
    the instances goes into it): their common segments agree."""
    for (pid, pidx), (qid, qidx) in zip(pattern, path, strict=False):
        if pid != qid or (pidx is not None and qidx is not None and pidx != qidx):
            return False
    return True


def render(segs: Pattern) -> str:
    out: list[str] = []
    for sid, idx in segs:
        if sid.startswith("->"):
            return ".".join(out) + sid
        out.append(sid if idx is None else f"{sid}[{idx}]")
    return ".".join(out)
