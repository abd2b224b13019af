"""Pure tests of rate limiters and pools: a given ``now``, no clocks, no sleeps."""

from __future__ import annotations

import random

import pytest

from fm_local.limits import MARGIN, Pool, RateLimiter, rate_spec
from fm_local.model import RateSpec


def simulate(lim: RateLimiter, n: int, jitter: float = 0.0, seed: int = 1) -> list[float]:
    """Start ``n`` tasks as early as the limiter allows; return actual start times."""
    rng = random.Random(seed)
    now, actual = 0.0, []
    for _ in range(n):
        # Like the supervisor: wait as told, then ask again (a second, shorter
        # wait may follow when the window, not the spacing, was binding).
        for _ in range(10):
            wait = lim.wait_time(now)
            if wait <= 0:
                break
            now += wait + 1e-9
        else:
            raise AssertionError("the limiter kept asking to wait")
        lim.acquire(now)
        real = now + rng.uniform(0, jitter)
        lim.correct(now, real)
        actual.append(real)
    return actual


def max_in_window(starts: list[float], window: float) -> int:
    starts = sorted(starts)
    best = j = 0
    for i, s in enumerate(starts):
        while starts[j] <= s - window:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.mark.parametrize("rate,per_ms", [(50, 1000), (10, 500), (1, 100), (7, 3000)])
def test_no_window_exceeds_rate_even_with_start_jitter(rate, per_ms):
    lim = RateLimiter(rate, per_ms)
    starts = simulate(lim, rate * 6, jitter=0.002)
    assert max_in_window(starts, per_ms / 1000) <= rate


def test_starts_are_evenly_spaced_at_the_rate():
    lim = RateLimiter(50, 1000)
    starts = simulate(lim, 500)
    measured = (len(starts) - 1) / (starts[-1] - starts[0])
    assert measured == pytest.approx(50, rel=0.02)


def test_first_start_is_immediate_and_idle_time_is_not_banked():
    lim = RateLimiter(10, 1000)
    assert lim.wait_time(100.0) == 0.0
    lim.acquire(100.0)
    assert lim.wait_time(100.0) == pytest.approx(0.1)
    # After a long idle period only one start is free at once (no burst).
    lim.acquire(100.1)
    assert lim.wait_time(200.0) == 0.0
    lim.acquire(200.0)
    assert lim.wait_time(200.0) == pytest.approx(0.1)


def test_correct_moves_a_start_later_only():
    lim = RateLimiter(2, 1000)
    lim.acquire(0.0)
    lim.acquire(0.5)
    lim.correct(0.0, 0.3)
    assert list(lim.starts) == [0.3, 0.5]
    assert lim.wait_time(1.0) == pytest.approx(0.3 + 1.0 + MARGIN - 1.0)
    lim.correct(0.5, 0.4)  # earlier: ignored
    assert list(lim.starts) == [0.3, 0.5]


def test_pool():
    p = Pool(2)
    p.acquire()
    p.acquire()
    assert not p.available()
    p.release()
    assert p.available()
    p.release()
    p.release()
    assert p.held == 0


def test_rate_spec_forms():
    assert rate_spec(20) == (20, 1000)
    assert rate_spec(2.5) == (1, 400)
    assert rate_spec(RateSpec(rate=5, per=200)) == (5, 200)
    assert rate_spec("github") is None


@pytest.mark.parametrize("rate", [150, 300, 1000])
def test_a_high_rate_holds_when_the_supervisor_wakes_late(rate):
    """The supervisor looks every few ms, later than a 300/s spacing (3.3 ms): at
    each look it starts what fell due meanwhile, so the rate is reached (it was
    ~1 start per look: 125/s at 8 ms), and no window holds more than the rate."""
    lim = RateLimiter(rate, 1000)
    now, starts = 0.0, []
    while now < 6.0:
        while lim.wait_time(now) <= 0:
            lim.acquire(now)
            starts.append(now)
        now += 0.008  # the supervisor's next look
    assert len(starts) / 6.0 == pytest.approx(rate, rel=0.02)
    assert max_in_window(starts, 1.0) <= rate


def test_a_late_start_catches_up_unless_a_worker_holds_it_to_its_turn() -> None:
    """At 1,000/s a start 5 ms late keeps the schedule (the supervisor's wake-up
    latency does not slow the rate); a task held by its worker until its turn (an
    I/O task handed over ahead) does not, or late ones would go out together."""
    from fm_local.limits import RateLimiter

    lim = RateLimiter(100, 100)
    lim.acquire(10.0)
    lim.acquire(10.006)
    assert lim.tat == pytest.approx(10.002)  # behind schedule: the next may go now
    held = RateLimiter(100, 100)
    held.acquire(10.0, catch_up=False)
    held.acquire(10.006, catch_up=False)
    assert held.tat == pytest.approx(10.007)  # spaced from the late start
