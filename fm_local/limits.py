"""Rate and concurrency limits (SPEC §4): pure accounting on a given ``now``.

A :class:`RateLimiter` spaces starts evenly, ``per / rate`` apart (the generic cell
rate algorithm's theoretical arrival time), and keeps a sliding-window log as the
hard guarantee: no window of ``per`` seconds ever holds more than ``rate`` starts. A :class:`Pool` counts holders against a size.
Neither sleeps nor reads a clock; the supervisor passes the time in.
"""

from __future__ import annotations

from collections import deque
from typing import Any

# Starts are recorded by the supervisor but timed by the workers a moment later;
# this margin keeps the workers' own timestamps inside the limit too.
MARGIN = 0.003
# A start later than its turn by less than this keeps the schedule: the supervisor
# wakes every few milliseconds, so at rates whose spacing is shorter than that
# (300/s: 3.3 ms) it starts the ones that fell due meanwhile together, and the rate
# holds. Idle time longer than this is not banked (no burst after a pause).
CATCH_UP = 0.025


class RateLimiter:
    __slots__ = ("rate", "per", "interval", "tat", "starts", "name")

    def __init__(self, rate: int, per_ms: int, name: str = "") -> None:
        self.rate = int(rate)
        self.per = per_ms / 1000.0
        self.interval = self.per / self.rate
        self.tat = 0.0  # the earliest time the next start is due
        self.starts: deque[float] = deque()
        self.name = name

    def wait_time(self, now: float) -> float:
        """Seconds until one more start is allowed (0.0: allowed now)."""
        starts = self.starts
        while starts and now - starts[0] >= self.per + MARGIN:
            starts.popleft()
        wait = max(0.0, self.tat - now)
        if len(starts) >= self.rate:
            wait = max(wait, starts[0] + self.per + MARGIN - now)
        return wait

    def acquire(self, now: float, catch_up: bool = True) -> None:
        # A start that comes a little late keeps the schedule (the next one may
        # follow a little sooner), so wake-up latency does not slow the rate; the
        # window log above still bounds every window. Not for a task a worker
        # holds until its turn (``catch_up=False``: an I/O task handed over ahead,
        # whose real start the log learns only later): late ones then would go out
        # together and crowd the next window.
        late = max(self.interval, CATCH_UP) if catch_up else self.interval
        base = self.tat if now - self.tat < late else now
        self.tat = base + self.interval
        self.starts.append(now)

    def hold(self, until: float) -> None:
        """Start nothing before ``until`` (the API said to slow down: a 429)."""
        self.tat = max(self.tat, until)

    def correct(self, recorded: float, actual: float) -> None:
        """The start recorded at ``recorded`` really began at ``actual`` (the
        worker's clock): count it from then, so later starts keep their distance."""
        if actual <= recorded:
            return
        starts = self.starts
        try:
            i = starts.index(recorded)
        except ValueError:
            return
        starts[i] = actual
        if i + 1 < len(starts) and starts[i + 1] < actual:
            self.starts = deque(sorted(starts))


class Pool:
    __slots__ = ("size", "held", "name")

    def __init__(self, size: int, name: str = "") -> None:
        self.size = size
        self.held = 0
        self.name = name

    def available(self) -> bool:
        return self.held < self.size

    def acquire(self) -> None:
        self.held += 1

    def release(self) -> None:
        self.held = max(0, self.held - 1)


def rate_spec(value: Any) -> tuple[int, int] | None:
    """(rate, per_ms) of an inline rateLimit: a number of starts per second, or a
    ``{rate, per}`` spec; None for a limiter name (resolved by the caller)."""
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, (int, float)):
        # 20 -> 20 per 1000 ms; 2.5 -> 1 per 400 ms (never faster than asked).
        if float(value).is_integer():
            return int(value), 1000
        return 1, int(round(1000 / value))
    return int(value.rate), int(value.per)
