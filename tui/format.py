"""How values look on screen: status colours, times, durations, sizes, bars,
progress (percent, rate, ETA).

Pure functions returning ``str`` or Rich ``Text`` (and :func:`pace`, the
arithmetic of a rate and an ETA); the one place that knows the colour of a status.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from rich.text import Text

STATUS_STYLE = {
    "queued": "bright_blue",
    "pending": "bright_blue",
    "running": "yellow",
    "retry_wait": "magenta",
    "timer": "cyan",
    "paused": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "bright_black",
    "skipped": "bright_black",
    "timed_out": "dark_orange",
    "applied": "green",
    "refused": "red",
}

DENSITY = " ░▒▓█"


def status_text(status: str) -> Text:
    # A style on the segment, not the Text: appended text keeps its own style.
    return Text().append(status, style=STATUS_STYLE.get(status, ""))


def clock(ts: float | None) -> str:
    """Local wall-clock time, ``2026-11-24 21:59:08``."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def short_clock(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def duration(seconds: float | None) -> str:
    """``850 ms``, ``12.3 s``, ``4m05s``, ``2h03m``."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def span(start: float | None, end: float | None, now: float) -> float | None:
    """How long something ran: up to ``now`` while it still runs."""
    if start is None:
        return None
    return (end if end is not None else now) - start


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop always returns


@dataclass(frozen=True)
class Pace:
    """How far something got and how fast it goes: ``percent`` done, ``rate`` in
    units per second, ``eta`` in seconds left (0 when done); None when unknown."""

    percent: float | None
    rate: float | None
    eta: float | None


def pace(total: int, done: int, first_start: float | None, now: float) -> Pace:
    """The percentage, rate and ETA of ``done`` of ``total`` units counted since
    ``first_start`` (pass the end time as ``now`` once it stopped). The rate is the
    average since the start; there is none before the first unit is done."""
    percent = None if total <= 0 else min(100.0, 100.0 * done / total)
    elapsed = None if first_start is None else now - first_start
    rate = done / elapsed if done > 0 and elapsed is not None and elapsed > 0 else None
    if total > 0 and done >= total:
        eta: float | None = 0.0
    elif rate is not None and total > 0:
        eta = (total - done) / rate
    else:
        eta = None
    return Pace(percent, rate, eta)


def percent(done: int, total: int) -> str:
    """``95%``, rounded down: 100% only when everything is done."""
    if total <= 0:
        return "-"
    return f"{min(100, done * 100 // total)}%"


def rate(per_second: float | None, unit: str = "/s") -> str:
    """``1234/s``, ``12.3/s``, ``0.45/s`` (``unit`` after the number)."""
    if per_second is None:
        return f"-{unit}"
    if per_second >= 100:
        return f"{per_second:.0f}{unit}"
    if per_second >= 1:
        return f"{per_second:.1f}{unit}"
    return f"{per_second:.2f}{unit}"


def pace_text(p: Pace, going: bool) -> str:
    """``12.3/s ETA 4m05s`` while it goes; the average rate alone once it stopped."""
    if not going:
        return "" if p.rate is None else rate(p.rate)
    return f"{rate(p.rate)} ETA {duration(p.eta)}"


def progress(done: int, total: int, width: int = 5) -> Text:
    """``███░░ 60/100 60%``."""
    filled = 0 if total <= 0 else min(width, done * width // total)
    text = Text().append("█" * filled, style="green")
    text.append("░" * (width - filled), style="bright_black")
    text.append(f" {done}/{total}")
    if total > 0:
        text.append(f" {percent(done, total)}", style="bold")
    return text


def pretty_json(value: Any, limit: int = 20_000) -> str:
    if isinstance(value, str) and value.endswith(" …"):
        return value + " (cut: fm show / fm output print all of it)"  # raw text cut by the reader
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + " …"


def bar(
    start: float | None,
    end: float | None,
    t0: float | None,
    t1: float | None,
    width: int,
    style: str,
) -> Text:
    """A horizontal bar from ``start`` to ``end`` on the axis ``t0``..``t1``."""
    text = Text()
    if start is None or t0 is None or t1 is None or width <= 0:
        return Text(" " * max(width, 0))
    scale = width / max(t1 - t0, 1e-6)
    a = min(width - 1, max(0, int((start - t0) * scale)))
    b = min(width, max(a + 1, round(((end if end is not None else t1) - t0) * scale)))
    text.append(" " * a)
    text.append("█" * (b - a), style=style)
    text.append(" " * (width - b))
    return text


def density_bar(density: tuple[int, ...], style: str) -> Text:
    """One character per column: how many items ran then, relative to the peak."""
    peak = max(density, default=0) or 1
    chars = "".join(
        DENSITY[0] if n == 0 else DENSITY[max(1, round(n / peak * (len(DENSITY) - 1)))]
        for n in density
    )
    return Text(chars, style=style)
