"""Loop progress: items done of a total known when the loop starts, a rate and an ETA.

Pure: every number is a function of the counts and times the caller passes (``now``
included), so ``fm ls``, ``fm show``, ``fm queue`` and the TUI show the same
figures and tests need no clock. The counts come from ``Store.loop_progress``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fm_local.status import ACTIVE_NODE

# Statuses of a loop (its node_runs row) that are not final: its items still run or wait.
ACTIVE_LOOP = ACTIVE_NODE


@dataclass(frozen=True)
class Progress:
    """Items of one loop (or of several, summed): ``done`` counts every item in a
    final status (succeeded, failed, cancelled, skipped, timed out); ``failed`` the
    failed and timed-out ones among them; ``running`` the items open now.
    ``total`` is None when the loop has not said its item count yet."""

    total: int | None
    done: int
    failed: int
    running: int
    percent: float | None
    rate_per_second: float | None
    eta_seconds: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "running": self.running,
            "percent": self.percent,
            "ratePerSecond": self.rate_per_second,
            "etaSeconds": self.eta_seconds,
        }

    def text(self) -> str:
        """``4,120/10,000 41% 812/s ETA 7s`` (with ``3 failed`` when some failed)."""
        total = "?" if self.total is None else f"{self.total:,}"
        parts = [f"{self.done:,}/{total}"]
        if self.percent is not None:
            # Never "100%" before the last item is done (9,999/10,000 is 99%).
            shown = math.floor(self.percent) if self.done != self.total else 100
            parts.append(f"{shown}%")
        if self.failed:
            parts.append(f"{self.failed:,} failed")
        if self.rate_per_second is not None:
            parts.append(f"{format_rate(self.rate_per_second)}/s")
        if self.eta_seconds is not None and self.total is not None and self.done < self.total:
            parts.append(f"ETA {format_seconds(self.eta_seconds)}")
        return " ".join(parts)


def progress(
    total: int | None,
    done: int,
    failed: int = 0,
    running: int = 0,
    first_start: float | None = None,
    *,
    now: float,
    last_end: float | None = None,
    finished: bool = False,
    paused: bool = False,
) -> Progress:
    """Progress of ``done`` items out of ``total``. The rate is the items done per
    second since the first item started (up to ``last_end`` once ``finished``);
    the ETA is what remains at that rate (None while paused, or with no rate yet)."""
    percent: float | None = None
    if total is not None:
        percent = 100.0 if total <= 0 else round(min(done, total) * 100.0 / total, 2)
    rate: float | None = None
    if first_start is not None:
        end = last_end if finished and last_end is not None else now
        elapsed = end - first_start
        if elapsed > 0:
            rate = round(done / elapsed, 3)
    eta: float | None = None
    if total is not None:
        remaining = max(total - done, 0)
        if finished or remaining == 0:
            eta = 0.0
        elif not paused and rate:
            eta = round(remaining / rate, 1)
    return Progress(total, done, failed, running, percent, rate, eta)


def of_row(row: Mapping[str, Any], now: float, paused: bool = False) -> Progress:
    """The progress of one row of ``Store.loop_progress``."""
    return progress(
        row["total"],
        row["done"] or 0,
        row["failed"] or 0,
        row["running"] or 0,
        row["first_start"],
        now=now,
        last_end=row["last_end"],
        finished=row["status"] not in ACTIVE_LOOP,
        paused=paused,
    )


def combined(
    rows: Iterable[Mapping[str, Any]], now: float, paused: bool = False
) -> Progress | None:
    """The summed progress of several loops (None for none); its total is unknown
    if one of theirs is."""
    rows = list(rows)
    if not rows:
        return None
    totals = [r["total"] for r in rows]
    starts = [r["first_start"] for r in rows if r["first_start"] is not None]
    ends = [r["last_end"] for r in rows if r["last_end"] is not None]
    return progress(
        None if any(t is None for t in totals) else sum(totals),
        sum(r["done"] or 0 for r in rows),
        sum(r["failed"] or 0 for r in rows),
        sum(r["running"] or 0 for r in rows),
        min(starts) if starts else None,
        now=now,
        last_end=max(ends) if ends else None,
        finished=all(r["status"] not in ACTIVE_LOOP for r in rows),
        paused=paused,
    )


def headline(
    rows: Iterable[Mapping[str, Any]], now: float, paused: bool = False
) -> Progress | None:
    """The one progress an execution shows in a list: its top-level loops that still
    run (summed), else None. Loops inside loop items are part of their item."""
    top = [r for r in rows if "[" not in r["loop"] and r["status"] in ACTIVE_LOOP]
    return combined(top, now, paused)


def not_started(rows: Iterable[Mapping[str, Any]]) -> int:
    """Items of loops still running that have no row yet (not materialised): they
    wait as surely as queued tasks do."""
    return sum(
        max((r["total"] or 0) - (r["materialised"] or 0), 0)
        for r in rows
        if r["status"] in ACTIVE_LOOP
    )


def format_rate(rate: float) -> str:
    if rate >= 100:
        return f"{rate:,.0f}"
    if rate >= 10:
        return f"{rate:.0f}"
    return f"{rate:.2g}"  # 3.2, 0.05


def format_seconds(seconds: float) -> str:
    """``7s``, ``3m05s``, ``2h04m``, ``3d02h``."""
    s = max(int(math.ceil(seconds)), 0)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"
