"""Failures and cancellation inside a frame: a failed attempt (retry or not), a
final failure and its error strategy, halting a frame, cancelling what is pending
or running."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from fm_local import errors, graph, retries
from fm_local.model import (
    RetryPolicy,
)
from fm_local.nodes.kinds import runs_on_worker
from fm_local.store import dumps
from fm_local.supervisor.state import (
    Exec,
    Frame,
    Part,
    Run,
    _failure_of,
)


class Failures(Part):
    def _attempt_failed(self, run: Run, err: dict[str, Any]) -> None:
        """An attempt failed: retry it, or fail the node for good."""
        policy: RetryPolicy = run.node.retry or run.ex.default_retry
        if (
            run.attempt < policy.max_attempts
            and retries.is_retryable(policy, err)
            and not run.frame.stopped()
        ):
            delay_ms = retries.retry_delay_ms(policy, run.attempt, err)
            run.status = "retry_wait"
            run.error = err
            run.next_attempt_at = self.clock.time() + delay_ms / 1000.0
            self._mark(run)
            self._timer(run.next_attempt_at, "retry", run)
            return
        run.frame.active -= 1
        self._final_failure(run, err)

    def _final_failure(self, run: Run, err: dict[str, Any]) -> None:
        """The node failed for good (its frame's ``active`` already released)."""
        node = run.node
        run.error = err
        run.finished_at = run.finished_at or self.clock.time()
        ex = run.ex
        frame = run.frame
        if (
            ex.workflow.settings.queue.dead_letter_queue
            and run.aux_kind is None
            and not run.fell_back
            and runs_on_worker(node)
        ):
            self.batch.dead_letters.append(
                (
                    ex.id,
                    run.path,
                    node.id,
                    run.input_json,
                    dumps(err),
                    run.attempt,
                    self.clock.time(),
                )
            )
        if node.error_strategy == "continue":
            run.status = "succeeded"
            run.set_output(node.output_on_error)
            self._mark(run)
            self._resolved(run)
            return
        if run.aux_kind is None and not run.fell_back and not frame.stopped():
            if node.error_strategy == "fallback" and node.fallback_node_id:
                target = self._aux_node(frame, node.fallback_node_id)
                if target is not None:
                    run.fell_back = True
                    frame.active += 1  # the node waits for its fallback
                    self._start_aux(run, target, {"error": err}, "fallback")
                    return
            if (
                node.error_strategy == "goto"
                and node.goto_node_id
                and node.goto_node_id not in frame.graph.nodes
            ):
                target = self._aux_node(frame, node.goto_node_id)
                if target is not None:
                    run.status = "failed"
                    run.handled = True
                    self._mark(run)
                    self._start_aux(run, target, {"error": err}, "goto")
                    self._resolved(run)
                    return
        if run.aux_kind is not None:
            # A node outside the graph failed: a fallback (its node fails, see
            # _aux_done), a goto handler (an unhandled failure of the execution), a
            # compensation or a signal handler (recorded; cancelling goes on).
            run.status = "failed"
            self._mark(run)
            if run.aux_kind == "goto" and frame.failure is None:
                frame.failure = _failure_of(run)
                self._halt(frame)
            self._resolved(run)
            return
        run.status = "failed"
        g = frame.graph
        has_error_edge = any(
            d.handle == graph.ERROR_HANDLE and d.source == node.id
            for dep in g.dependents[node.id]
            for d in g.deps[dep]
        )
        contained = False
        owner = g.section_owner.get(node.id)
        if owner is not None and not has_error_edge and run.aux_kind is None:
            st = self._section_state(frame, owner)
            if st.contains():
                contained = True
                self._section_failure(frame, st, node.id, err)
        run.handled = has_error_edge or contained
        self._mark(run)
        if not run.handled and run.aux_kind is None and frame.failure is None:
            frame.failure = _failure_of(run)
            default = ex.workflow.settings.parallel
            if default.fail_fast is not False and default.cancel_on_failure:
                self._cancel_running(frame, "cancelled: another node failed")
            self._halt(frame)
        self._resolved(run)

    def _drop_prefetched(self, pred: Callable[[Run], bool]) -> None:
        """Ask workers to hand back the selected tasks they hold but have not
        started (a task queued behind another on the same worker)."""
        executor = self.executor
        assert executor is not None
        ids = [tid for tid, r in self.tasks.items() if r.prefetched and pred(r)]
        if ids:
            executor.hand_back(ids)

    def _cancel_running(self, frame: Frame, reason: str) -> None:
        """Stop the nodes of ``frame`` (and below) that are running now."""
        self._kill_tasks(lambda r: r.frame.within(frame), "cancelled", reason)

    def _halt(self, frame: Frame) -> None:
        """Fail-fast in ``frame`` (and below): nothing new starts; queued and waiting
        nodes are cancelled; running nodes finish and record."""
        frame.halted = True
        self._drop_prefetched(lambda r: r.frame.within(frame))
        self._cancel_pending(
            frame.ex, lambda r: r.frame.within(frame), "not started: an earlier node failed"
        )
        self._recheck_up(frame)

    def _cancel_pending(
        self, ex: Exec, pred: Callable[[Run], bool], reason: str, status: str = "cancelled"
    ) -> None:
        """Cancel the selected runs of ``ex`` that wait to start or to finish
        without a worker: ready, parked by a limiter, timers, wait nodes."""
        for lane in ("ready", "ready_io"):
            keep: deque[Run] = deque()
            for run in getattr(ex, lane):
                if pred(run):
                    self._cancel_run(run, reason, status)
                    self.ready_count -= 1
                    self.ready_io_count -= lane == "ready_io"
                else:
                    keep.append(run)
            setattr(ex, lane, keep)
        for q in self.parked.values():
            for run in [r for r in q if pred(r)]:
                q.remove(run)
                self._cancel_run(run, reason, status)
        for _, _, kind, obj in self.timers:
            if kind in ("retry", "delay") and not obj.terminal and pred(obj):
                self._cancel_run(obj, reason, status)
        for waiting in list(ex.waits.values()):
            for w in [w for w in waiting if pred(w)]:
                waiting.remove(w)
                self._cancel_run(w, reason, status)

    def _recheck_up(self, frame: Frame) -> None:
        """A frame and its open descendants may be done now."""
        self.frames_to_check.append(frame)
        for run in list(frame.runs.values()):
            if run.loop is not None:
                run.loop.stopped = True
                for f in list(run.loop.open.values()):
                    self._recheck_up(f)
                self._loop_check(run.loop)

    def _cancel_run(self, run: Run, reason: str, status: str = "cancelled") -> None:
        if run.terminal:
            return
        if run.after is not None:
            self._unmake(run)  # a chained successor that never started: as if never made
            return
        run.status = status
        run.finished_at = self.clock.time()
        run.error = run.error or self._error(run, errors.CANCELLED, reason)
        if run.task_id is not None:
            self.tasks.pop(run.task_id, None)
            run.task_id = None
            run.ex.running -= 1
            self._release(run)
        if run.seq:
            self._attempt_row(run, status, run.error)
        self._mark(run)
        run.frame.active -= 1
        self._resolved(run)

    def _resolved(self, run: Run) -> None:
        """``run`` reached a terminal status: wake its dependents, check its frame."""
        frame = run.frame
        if run.aux_kind is not None:
            self._aux_done(run)
            self.frames_to_check.append(frame)
            return
        frame.resolved += 1
        if not frame.stopped():
            for dep in frame.graph.dependents[run.node.id]:
                if dep not in frame.runs:
                    self.work.append((frame, dep))
        self.frames_to_check.append(frame)
