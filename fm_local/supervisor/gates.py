"""Gates: whether a ready run may start now (rate limits, concurrency pools), and
the runs parked until a gate opens."""

from __future__ import annotations

from collections import deque

from fm_local.limits import Pool, RateLimiter
from fm_local.supervisor.state import (
    Part,
    Run,
)

# Seconds ahead of its turn under a rate limit an I/O task may be handed to its
# worker, which holds it until then (Gates._ahead).
LOOKAHEAD = 0.02


class Gates(Part):
    def _limited(self, run: Run) -> bool:
        node = run.node
        return bool(
            node.rate_limit is not None
            or node.pool is not None
            or run.frame.gated
            or run.ex.no_prefetch
        )

    def _run_limiters(self, run: Run) -> list[RateLimiter]:
        """The rate limiters a start of ``run`` must pass: its node's, and its loop's
        for an item's first start (also what ``fm explain`` reads)."""
        ex = run.ex
        node = run.node
        limiters: list[RateLimiter] = []
        lim = self._limiter(node.rate_limit, ex, ("node", ex.id, id(run.frame.graph), node.id))
        if lim is not None:
            limiters.append(lim)
        if run.frame.gated and run.frame.loop is not None and run.frame.loop.limiter is not None:
            limiters.append(run.frame.loop.limiter)
        return limiters

    def _run_pool(self, run: Run) -> Pool | None:
        """The concurrency pool ``run`` joins (sized as its workflow's settings say
        now), or None (also what ``fm explain`` reads)."""
        name = run.node.pool
        if name is None:
            return None
        size = run.ex.workflow.settings.concurrency_limits.get(name)
        if size is None:
            return None
        pool = self.pools.get(name)
        if pool is None or pool.size != size:
            pool = Pool(size, name) if pool is None else pool
            pool.size = size
            self.pools[name] = pool
        return pool

    def _gate(self, run: Run, now: float) -> bool:
        """Check and take every limit ``run`` is under; park it if one says wait."""
        limiters = self._run_limiters(run)
        start = now
        for lim in limiters:
            wait = lim.wait_time(now)
            if wait > 0:
                ahead = self._ahead(run, limiters, now) if wait <= LOOKAHEAD else None
                if ahead is None:
                    self.parked.setdefault(id(lim), deque()).append(run)
                    self._wake(lim, now + wait)
                    return False
                start = ahead
                break
        pool = self._run_pool(run)
        if pool is not None and not pool.available():
            self.parked.setdefault(id(pool), deque()).append(run)
            return False
        for lim in limiters:
            lim.acquire(start, catch_up=run.lane != "io")
        run.gate_marks = [(lim, start) for lim in limiters] if limiters else None
        run.not_before = (start, max(lim.per for lim in limiters)) if start > now else None
        if pool is not None:
            pool.acquire()
            run.held_pool = pool
        run.frame.gated = False
        return True

    def _ahead(self, run: Run, limiters: list[RateLimiter], now: float) -> float | None:
        """When an I/O task may start, if every limiter allows it within LOOKAHEAD:
        it is then handed over now and its worker holds it until that time. Each
        tick can so start several tasks of a fast limiter (1,000/s: one per ms)
        at their exact turns, where parking would start one per tick."""
        if run.lane != "io" or self.clock_is_stepped:
            return None
        start = now
        for _ in range(len(limiters) + 2):
            wait = max(lim.wait_time(start) for lim in limiters)
            if wait <= 0:
                return start
            start += wait
            if start - now > LOOKAHEAD:
                return None
        return None

    def _wake(self, lim: RateLimiter, at: float) -> None:
        if id(lim) not in self.wake_pending:
            self.wake_pending.add(id(lim))
            self._timer(at, "wake", lim)

    def _unpark(self, key: int) -> None:
        q = self.parked.pop(key, None)
        if q:
            for run in reversed(q):
                if not run.terminal and not run.frame.stopped():
                    self._enqueue(run, front=True)
        for ls in self.parked_loops.pop(key, set()):
            self.loops_to_open.append(ls)

    def _release(self, run: Run) -> None:
        pool = run.held_pool
        if pool is not None:
            run.held_pool = None
            pool.release()
            if id(pool) in self.parked:
                self._unpark(id(pool))
