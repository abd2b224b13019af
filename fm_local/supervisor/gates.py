"""Gates: whether a ready run may start now (rate limits, concurrency pools), and
the runs parked until a gate opens."""

from __future__ import annotations

from collections import deque

from fm_local.limits import Pool, RateLimiter
from fm_local.supervisor.state import (
    Part,
    Run,
)


class Gates(Part):
    def _limited(self, run: Run) -> bool:
        node = run.node
        return bool(
            node.rate_limit is not None
            or node.pool is not None
            or run.frame.gated
            or run.ex.no_prefetch
        )

    def _gate(self, run: Run, now: float) -> bool:
        """Check and take every limit ``run`` is under; park it if one says wait."""
        ex = run.ex
        node = run.node
        limiters: list[RateLimiter] = []
        lim = self._limiter(node.rate_limit, ex, ("node", ex.id, id(run.frame.graph), node.id))
        if lim is not None:
            limiters.append(lim)
        if run.frame.gated and run.frame.loop is not None and run.frame.loop.limiter is not None:
            limiters.append(run.frame.loop.limiter)
        for lim in limiters:
            wait = lim.wait_time(now)
            if wait > 0:
                self.parked.setdefault(id(lim), deque()).append(run)
                self._wake(lim, now + wait)
                return False
        pool = None
        if node.pool is not None:
            size = ex.workflow.settings.concurrency_limits.get(node.pool)
            if size is not None:
                pool = self.pools.get(node.pool)
                if pool is None or pool.size != size:
                    pool = Pool(size, node.pool) if pool is None else pool
                    pool.size = size
                    self.pools[node.pool] = pool
                if not pool.available():
                    self.parked.setdefault(id(pool), deque()).append(run)
                    return False
        for lim in limiters:
            lim.acquire(now)
        run.gate_marks = [(lim, now) for lim in limiters] if limiters else None
        if pool is not None:
            pool.acquire()
            run.held_pool = pool
        run.frame.gated = False
        return True

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
