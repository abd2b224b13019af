"""The supervisor's time: every part reads ``self.clock`` instead of the ``time``
module, so a test can step the engine (``Supervisor.tick(now)``) through timers,
retries, rate limits and timeouts without waiting for them."""

from __future__ import annotations

import time as _time


class SystemClock:
    """Wall time and monotonic time, as the machine tells them."""

    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)


class StepClock:
    """Time that moves only when told (``Supervisor.tick(now)`` sets it): wall and
    monotonic time move together, from the wall time it was made at."""

    def __init__(self, now: float | None = None) -> None:
        self.now = _time.time() if now is None else now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def set(self, now: float) -> None:
        if now < self.now:
            raise ValueError(f"time does not go back: {now} < {self.now}")
        self.now = now
