"""The filters of ``fm ls`` as a person types them: statuses (repeated, or a comma
list), and ``--since`` as a duration back from now (``2h``, ``7d``, ``1h30m``) or an
ISO date/time. Pure functions of their text (and ``now``): each bad value is one
line that says what is accepted."""

from __future__ import annotations

import re
from datetime import datetime

from fm_local.errors import UsageError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_statuses(values: tuple[str, ...], known: tuple[str, ...], option: str) -> tuple[str, ...]:
    """The statuses of a repeatable option whose values may be comma lists
    (``--status failed,cancelled --status timed_out``), in order, once each."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            name = part.strip().lower()
            if not name:
                continue
            if name not in known:
                raise UsageError(
                    f"{option} {part.strip()!r}: unknown status; one of {', '.join(known)}"
                )
            if name not in out:
                out.append(name)
    return tuple(out)


def parse_duration(text: str) -> float | None:
    """Seconds of ``30s``, ``15m``, ``2h``, ``7d``, ``1w``, ``1h30m`` (units ms, s,
    m, h, d, w); None if ``text`` is not one."""
    text = text.strip().lower()
    if not text:
        return None
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) else None


def parse_since(text: str, now: float, option: str = "--since") -> float:
    """Epoch seconds of a ``--since`` value: ``now`` minus a duration, or an ISO
    date or date/time (``2026-12-03``, ``2026-12-03T14:00``, ``2026-12-03 14:00:00Z``,
    with an offset or not; without one it is local time, as ``fm ls`` prints times)."""
    seconds = parse_duration(text)
    if seconds is not None:
        return now - seconds
    iso = text.strip()
    if iso.endswith(("Z", "z")):
        iso = iso[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: expected a duration back from now like 30m, 2h or 7d, or an "
            "ISO date/time like 2026-12-03 or 2026-12-03T14:00"
        ) from None
