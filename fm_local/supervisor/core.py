"""The supervisor: the one writer of engine state, and the scheduling loop.

It keeps the ready set and the state of active executions in memory and treats
the database as its write-ahead record: changes are coalesced per row and written
in group commits (:class:`fm_local.store.Batch`). Node attempts are at-least-once:
after a crash, what was not committed is simply done again; what was committed
is never redone. Timers are due times, not sleeping threads.

Structure: an execution is a tree of *frames* — its top-level graph, and one frame
per running loop item (the loop's body). A frame counts its unfinished runs; when
that count reaches zero it is done, and its owner (the execution, or the loop) is
told. State changes never recurse into the next node: newly ready nodes go on a
work queue that the loop drains, so a chain of any length costs no stack.

Layout: this module is the loop (open, serve, tick, the error boundary, stopping);
the state is in :mod:`.state`, and each concept is a part in its own module
(recovery, advance, failures, loops, signals, sections, dispatch, gates, results,
timeouts, commit, explain), all of them one :class:`Supervisor` object.
"""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fm_local import errors
from fm_local.checkd import CheckService
from fm_local.executors import Event, Finished, Logs, Lost, Started
from fm_local.executors.process import ProcessExecutor
from fm_local.resources import KEEP_SECONDS, Sampler
from fm_local.status import EXEC_TERMINAL
from fm_local.store import Store
from fm_local.store.writer import Writer
from fm_local.supervisor.advance import Advance
from fm_local.supervisor.clock import StepClock
from fm_local.supervisor.commit import Commit
from fm_local.supervisor.dispatch import Dispatch
from fm_local.supervisor.explain import Explain
from fm_local.supervisor.failures import Failures
from fm_local.supervisor.gates import Gates
from fm_local.supervisor.loops import Loops
from fm_local.supervisor.recovery import Recovery
from fm_local.supervisor.results import Results
from fm_local.supervisor.sections import Sections
from fm_local.supervisor.signals import Signals
from fm_local.supervisor.state import (
    DB_POLL_INTERVAL,
    FLUSH_INTERVAL,
    WORKER_START_TIMEOUT,
    Exec,
    _internal,
    log,
)
from fm_local.supervisor.timeouts import Timeouts
from fm_local.wake import Listener

# The collector's thresholds while a supervisor serves (Supervisor._tune_gc).
GC_THRESHOLDS = (20_000, 10, 10)


class Supervisor(
    Recovery,
    Advance,
    Failures,
    Loops,
    Signals,
    Sections,
    Dispatch,
    Gates,
    Results,
    Timeouts,
    Commit,
    Explain,
):
    """Runs executions from one database; node tasks run on an executor (worker
    processes: fm_local.executors.process)."""

    def open(self) -> None:
        self.lock.acquire()
        try:
            self.store = Store(self.db, durability=self.durability)
            self.writer = Writer(
                self.db,
                durability=self.durability,
                keep_fds=(self.lock.fd,) if self.lock.fd is not None else (),
            )
            make = self.make_executor or ProcessExecutor
            self.executor = make(
                self.n_workers,
                max_rss_mb=self.max_worker_memory_mb,
                subreaper=self.subreaper,
                monotonic=self.clock.monotonic,
                io_concurrency=self.io_concurrency,
            )
            self.io_lane = "io" in getattr(self.executor, "lanes", ())
            self.executor_lane = getattr(self.executor, "lane_name", None)
            self.defer_writes = getattr(self.executor, "adoptable", None) is None
            self.executor.start()
            self.executor.wait_ready(WORKER_START_TIMEOUT)
            self.sampler = Sampler()
            self.wake = Listener(self.db)
            self.checks = CheckService(self.db)
            self._recover()
        except BaseException:
            self.close()
            raise
        self._tune_gc()

    def _tune_gc(self) -> None:
        """What exists after start-up (modules, workflows, the recovered state) is
        moved out of the collector's sight, and collections come less often: a
        long loop's items are many young objects, and with Python's defaults
        collecting them cost the supervisor about 100 µs per item (measured,
        benchmarks/writes.py). Undone at close (an embedding process gets its
        collector back as it was)."""
        if self.gc_was is None:
            self.gc_was = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)

    def close(self) -> None:
        if self.gc_was is not None:
            gc.set_threshold(*self.gc_was)
            gc.unfreeze()
            self.gc_was = None
        try:
            dirty = self.dirty_runs or self.young or self.dirty_execs or len(self.batch)
            if self.store is not None and dirty and not self.storage_failed:
                self.flush(everything=True)
        finally:
            if self.writer is not None:
                try:
                    self.writer.close()
                finally:
                    self.writer = None
            if self.wake is not None:
                self.wake.close()
                self.wake = None
            if self.checks is not None:
                self.checks.close()
                self.checks = None
            if self.executor is not None:
                self.executor.shutdown()
                self.executor = None
            if self.store is not None:
                self.store.close()
                self.store = None
            self.lock.release()

    def request_stop(self, reason: str = "stop requested") -> None:
        self.stopping = True
        self.stop_reason = reason

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def serve(self, until: Callable[[], bool] | None = None) -> None:
        """The main loop. Returns when stopped, or when ``until()`` is true."""
        assert self.store is not None and self.executor is not None
        failures = 0
        while not self.stopping:
            try:
                self.tick()
                failures = 0
            except errors.StorageError:
                raise
            except Exception:  # noqa: BLE001 - a bug no execution can be blamed for
                failures += 1
                log.exception("internal error in the scheduling loop (it goes on)")
                time.sleep(min(1.0, 0.01 * failures))
            if until is not None and until():
                break
        self._drain()

    def run_execution(self, execution_id: str) -> None:
        """Serve until ``execution_id`` is finished (the embedded supervisor)."""
        self.serve(until=lambda: execution_id in self.finished)

    def tick(self, now: float | None = None) -> None:
        """One turn of the loop: take what happened, fire timers and deadlines,
        take new executions and signals, dispatch, commit when due.

        ``now`` steps a supervisor made with ``clock=StepClock()`` to that time and
        does not wait for anything: a test steps through timers, retries, rate
        limits and timeouts without sleeping (the executor still runs tasks)."""
        executor = self.executor
        assert executor is not None
        if now is None:
            timeout = self._wait_time(self.clock.monotonic())
        else:
            if not isinstance(self.clock, StepClock):
                raise TypeError("tick(now) steps a Supervisor(..., clock=StepClock())")
            self.clock.set(now)
            timeout = 0.0
        self._check_writer()
        self._take_events(executor.poll(timeout, self.wake))
        if self.wake is not None:
            woke, waiting = self.wake.drain()
            if woke:
                self.last_poll = 0.0  # a client committed something: look now
            for eid in waiting:
                if eid in self.finished:
                    self.wake.ended(eid)  # it ended before the waiter registered
        self._settle()
        now = self.clock.time()
        self._fire_timers(now)
        self._check_deadlines(now)
        self._settle()
        if self.clock.monotonic() - self.last_poll >= DB_POLL_INTERVAL:
            self._poll_db()
            self._check_queue_timeouts(now)
            self._settle()
        executor.reclaim(self.clock.monotonic())
        self._dispatch()
        self._settle()
        if self.on_tick is not None:
            self.on_tick()
        if self.sampler is not None and self.sampler.due():
            self._sample_resources()
        self._maybe_flush()

    def _take_events(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Finished):
                self._on_results(event.results)
            elif isinstance(event, Started):
                self._on_started(event.task_id)
            elif isinstance(event, Lost):
                self._on_lost(event.tasks, event.reason)
            elif isinstance(event, Logs):
                self._on_logs(event.task_id, event.lines)

    def _settle(self) -> None:
        """Drain the work queues until nothing more follows from what happened.

        The error boundary of the engine's bookkeeping: an exception while handling
        one execution's work fails that execution (see :meth:`_contain`)."""
        ex: Exec | None = None
        while self.work or self.frames_to_check or self.loops_to_open:
            try:
                while self.work:
                    frame, nid = self.work.popleft()
                    ex = frame.ex
                    self._consider(frame, nid)
                while self.loops_to_open and not self.work:
                    ls = self.loops_to_open.popleft()
                    ex = ls.run.ex
                    self._open_items(ls)
                while self.frames_to_check and not self.work and not self.loops_to_open:
                    frame = self.frames_to_check.popleft()
                    ex = frame.ex
                    self._check_frame(frame)
            except errors.StorageError:
                raise
            except Exception as exc:  # noqa: BLE001 - the per-execution error boundary
                self._contain(ex, exc, "advancing it")
        if self.rejected:
            self._take_rejections()

    def _contain(self, ex: Exec | None, exc: BaseException, doing: str) -> None:
        """An unexpected exception while handling one execution's data: log it once
        with its traceback, fail that execution with INTERNAL_ERROR naming the cause,
        and let every other execution go on. Storage errors are not data errors:
        they stop the daemon (nothing committed is lost)."""
        if isinstance(exc, errors.StorageError):
            raise exc
        if ex is None:
            log.error("internal error while %s (no execution to blame)", doing, exc_info=exc)
            return
        log.error("execution %s: internal error while %s", ex.id, doing, exc_info=exc)
        self._fail_execution(ex, _internal(exc, doing))

    def _fail_execution(self, ex: Exec, err: dict[str, Any]) -> None:
        """Fail ``ex`` now, whatever state its bookkeeping is in."""
        if ex.status in EXEC_TERMINAL:
            return
        ex.top.failure = err
        try:
            self._stop_frame(ex.top, "cancelled", "stopped: internal error")
        except Exception:  # noqa: BLE001 - its state is suspect: stop its tasks directly
            log.exception("execution %s: could not stop its nodes cleanly", ex.id)
            try:
                self._kill_tasks(lambda r: r.ex is ex, "cancelled", "stopped: internal error")
            except Exception:  # noqa: BLE001
                log.exception("execution %s: could not stop its running tasks", ex.id)
        ex.status = "running"  # a paused execution fails too
        self._finish_execution(ex, "failed", None, err)

    @contextmanager
    def _boundary(self, ex: Exec | None, doing: str) -> Iterator[None]:
        """``with self._boundary(ex, "doing x"):`` contains what goes wrong inside."""
        try:
            yield
        except errors.StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - the per-execution error boundary
            self._contain(ex, exc, doing)

    def _take_rejections(self) -> None:
        """Rows the database refused in the last group commit: fail their executions
        (the rest of each batch was committed)."""
        rejected, self.rejected = self.rejected, []
        for r in rejected:
            ex = self.execs.get(r.execution_id) if r.execution_id else None
            doing = f"committing a row ({r.statement.strip()})"
            if ex is not None:
                self._contain(ex, r.error, doing)
                continue
            log.error(
                "a row of execution %s was refused by the database while %s: %s",
                r.execution_id,
                doing,
                r.error,
            )
            if r.execution_id and r.execution_id in self.finished:
                self.store_failed(r.execution_id, _internal(r.error, doing))

    def store_failed(self, execution_id: str, err: dict[str, Any]) -> None:
        """Record a finished execution as failed directly (its own row was refused)."""
        assert self.store is not None
        try:
            self.store.unmake_success(execution_id, err)
        except errors.StorageError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("execution %s: could not record its failure", execution_id)

    def _wait_time(self, now_m: float) -> float:
        t = DB_POLL_INTERVAL - (now_m - self.last_poll)
        if self.dirty_runs or self.dirty_execs or len(self.batch):
            t = min(t, FLUSH_INTERVAL - (now_m - self.last_flush))
        if self.young:
            t = min(t, (self.young[0].dirty_at or 0.0) + self.defer_first_write - now_m)
        if self.timers:
            t = min(t, self.timers[0][0] - self.clock.time())
        if self.node_deadlines:
            t = min(t, self.node_deadlines[0][0] - now_m)
        executor = self.executor
        if executor is not None:
            due = executor.next_check(now_m)
            if due is not None:
                t = min(t, due - now_m)
        return max(0.0, t)

    def _sample_resources(self) -> None:
        """About once a second: CPU and RSS of the supervisor, workers, machine."""
        assert self.executor is not None and self.sampler is not None and self.store is not None
        workers = []
        for pid, task_id in self.executor.workers():
            run = self.tasks.get(task_id) if task_id is not None else None
            workers.append((pid, run.ex.id if run else None, run.path if run else None))
        io = [(pid, f"{n} tasks") for pid, n in self.executor.io_workers()]
        helpers = [(self.writer.pid, "commit", "group commits")] if self.writer else []
        try:
            samples = self.sampler.sample(workers, io, helpers)
            cluster = getattr(self.executor, "status", None)
            if cluster is not None and samples:
                # A remote executor's state (the Dask scheduler: connected or not).
                samples.append((samples[-1][0], None, "dask", 0.0, 0, None, cluster()))
            self.batch.samples.extend(samples)
        except Exception:  # noqa: BLE001 - sampling must never stop the engine
            log.exception("resource sampling failed")
        # Housekeeping in the world's time, as the sampler's own schedule.
        if time.monotonic() - self.sampler.last_prune > 60:
            self.sampler.last_prune = time.monotonic()
            self.flush()
            self.store.prune_samples(self.clock.time() - KEEP_SECONDS)

    def _drain(self) -> None:
        """Graceful stop: start nothing new, let running nodes finish (bounded)."""
        executor = self.executor
        if executor is None:
            return
        # Real time: a stop is bounded in the world's seconds, stepped or not.
        deadline = time.monotonic() + self.drain_timeout
        self.stopping = True
        self._unchain()  # they have not started: the next supervisor makes them again
        while self.tasks and time.monotonic() < deadline:
            self._take_events(executor.poll(0.05))
            self._settle()
            self._maybe_flush()
        # Whatever still runs is re-run by the next supervisor, not counted.
        for run in list(self.tasks.values()):
            run.task_id = None
            if not run.terminal:
                if not run.prefetched:
                    run.finished_at = self.clock.time()
                    self._attempt_row(run, "interrupted", None)
                if run.attempt_kind == "attempt":
                    run.attempt -= 1
                run.prefetched = False
                run.status = "queued"
                self._mark(run)
        self.tasks.clear()
        self.flush(everything=True)
