"""Timeouts: node deadlines, queue timeouts, the execution's timeout; and the
timers that fire them (due times in a heap, not sleeping threads)."""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any

from fm_local import errors, jsonio
from fm_local.nodes.kinds import runs_on_worker
from fm_local.supervisor.state import (
    Exec,
    Frame,
    LoopState,
    Part,
    Run,
    _timer_owner,
)


class Timeouts(Part):
    def _check_deadlines(self, now: float) -> None:
        executor = self.executor
        assert executor is not None
        now_m = self.clock.monotonic()
        for task_id in self._due_tasks(now_m):
            for r, started in self._take_back(executor.stop([task_id])):
                if r.terminal:
                    continue
                with self._boundary(r.ex, f"timing out node '{r.path}'"):
                    if started:
                        self._timed_out(r)
                    else:
                        self._requeue(r)
        for ex in list(self.execs.values()):
            if ex.deadline_at is not None and now >= ex.deadline_at and ex.status == "running":
                with self._boundary(ex, "timing it out"):
                    self._execution_timed_out(ex)

    def _check_queue_timeouts(self, now: float) -> None:
        """A task waiting in the queue longer than ``settings.queue.timeout`` fails
        with QUEUE_TIMEOUT (then retries and error handling apply as usual)."""
        late: list[Run] = []
        for ex in self.execs.values():
            limit = ex.workflow.settings.queue.timeout
            if limit is None or ex.status != "running":
                continue
            horizon = now - limit / 1000.0
            for lane in ("ready", "ready_io"):
                ready: deque[Run] = getattr(ex, lane)
                if any(r.ready_at < horizon for r in ready):
                    keep: deque[Run] = deque()
                    for r in ready:
                        (late if r.ready_at < horizon else keep).append(r)
                    self.ready_count -= len(ready) - len(keep)
                    if lane == "ready_io":
                        self.ready_io_count -= len(ready) - len(keep)
                    setattr(ex, lane, keep)
        for q in self.parked.values():
            for r in [r for r in q if r.ex.status == "running"]:
                limit = r.ex.workflow.settings.queue.timeout
                if limit is not None and r.ready_at < now - limit / 1000.0:
                    q.remove(r)
                    late.append(r)
        for r in late:
            if r.terminal:
                continue
            with self._boundary(r.ex, f"timing out queued node '{r.path}'"):
                self._queue_timed_out(r, now)

    def _queue_timed_out(self, r: Run, now: float) -> None:
        if r.input_json is None and runs_on_worker(r.node):
            # The input it would have run with, for its dead letter and its record.
            try:
                r.input_json = jsonio.bounded_dumps(self._task_spec(r))
            except Exception:  # noqa: BLE001 - no input then: the timeout is what counts
                pass
        limit = r.ex.workflow.settings.queue.timeout
        r.seq += 1
        r.attempt += 1
        r.started_at = r.finished_at = now
        err = self._error(
            r, errors.QUEUE_TIMEOUT, f"waited in the queue over {limit} ms (settings.queue.timeout)"
        )
        self._attempt_row(r, "failed", err)
        self._attempt_failed(r, err)

    def _timed_out(self, run: Run) -> None:
        node = run.node
        run.finished_at = self.clock.time()
        err = self._error(
            run, errors.TIMEOUT, f"timed out after {node.timeout} ms (attempt {run.attempt})"
        )
        if node.on_timeout == "cancel":
            self._attempt_row(run, "cancelled", err)
            run.error = err
            run.status = "cancelled"
            run.frame.active -= 1
            self._mark(run)
            self._resolved(run)
        elif node.on_timeout == "continue":
            self._attempt_row(run, "timed_out", err)
            err["timedOut"] = True
            run.error = err
            run.set_output(node.output_on_error)
            self._succeeded(run)
        else:
            self._attempt_row(run, "failed", err)
            self._attempt_failed(run, err)

    def _execution_timed_out(self, ex: Exec) -> None:
        ms = ex.workflow.settings.timeout
        err = {
            "code": errors.EXECUTION_TIMEOUT,
            "message": f"execution exceeded settings.timeout ({ms} ms)",
        }
        ex.top.failure = err
        self._stop_frame(ex.top, "timed_out", "stopped: the execution timed out")
        self._stop_all_runs(ex.top, "timed_out")
        self._finish_execution(ex, "timed_out", None, err)

    def _stop_all_runs(self, frame: Frame, status: str) -> None:
        for run in list(frame.runs.values()):
            if run.loop is not None:
                for f in list(run.loop.open.values()):
                    self._stop_all_runs(f, status)
                    if f.item is not None and not f.item.terminal:
                        f.item.status = status
                        f.item.finished_at = self.clock.time()
                        self._mark(f.item)
            if not run.terminal:
                run.status = status
                run.finished_at = self.clock.time()
                self._mark(run)

    def _timer(self, due: float, kind: str, obj: Any) -> None:
        heapq.heappush(self.timers, (due, next(self.timer_seq), kind, obj))

    def _fire_timers(self, now: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, kind, obj = heapq.heappop(timers)
            try:
                self._fire(kind, obj)
            except Exception as exc:  # noqa: BLE001 - the per-execution error boundary
                self._contain(_timer_owner(kind, obj), exc, f"firing its {kind} timer")

    def _fire(self, kind: str, obj: Any) -> None:
        if kind == "wake":
            self.wake_pending.discard(id(obj))
            self._unpark(id(obj))
        elif kind == "batch":
            ls: LoopState = obj
            ls.batch_wait = False
            ls.batch_end = min(ls.n, ls.batch_end + (ls.batch_size or ls.n))
            self.loops_to_open.append(ls)
        elif kind == "item_timeout":
            self._item_timed_out(obj)
        elif kind == "total_timeout":
            self._total_timeout(obj)
        elif kind == "section_timeout":
            self._section_timeout(*obj)
        elif kind == "branch_timeout":
            self._branch_timeout(*obj)
        elif kind == "wait_timeout":
            self._wait_timed_out(obj)
        else:
            run: Run = obj
            if run.terminal or run.ex.status not in ("running", "paused"):
                return
            if kind == "retry" and run.status == "retry_wait":
                run.status = "queued"
                run.next_attempt_at = None
                self._mark(run)
                self._enqueue(run)
            elif kind == "delay" and run.status == "running":
                run.set_output(None)
                run.finished_at = self.clock.time()
                self._attempt_row(run, "succeeded", None)
                self._succeeded(run)
