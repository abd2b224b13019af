"""What workers report: results, a worker's death, interrupted and requeued runs,
and killing the tasks of a run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fm_local import errors
from fm_local.executors import Task
from fm_local.retries import retry_after_ms
from fm_local.supervisor.state import (
    _UNSET,
    Part,
    Run,
)


class Results(Part):
    def _on_results(self, done: list[tuple[Task, tuple[Any, ...]]]) -> None:
        for task, result in done:
            run = self.tasks.pop(task["id"], None)
            if run is None or run.task_id != task["id"]:
                continue  # a late result of a stopped attempt: discarded
            try:
                self._on_result(run, result)
            except Exception as exc:  # noqa: BLE001 - the per-execution error boundary
                self._contain(run.ex, exc, f"handling the result of node '{run.path}'")

    def _on_started(self, task_id: int) -> None:
        """A task that waited behind another on its worker now runs."""
        head = self.tasks.get(task_id)
        if head is not None and head.status == "queued":
            after = head.after
            if after is not None:
                if after.status != "succeeded":
                    return  # its worker hands it back (Dispatch._chain)
                head.after = None
                self.chained_runs.pop(id(head), None)
                # Ready when the node before it ended (as it would be, not chained).
                if after.finished_at is not None:
                    head.queued_at = head.ready_at = after.finished_at
            head.status = "running"
            head.prefetched = False
            head.started_at = self.clock.time()
            self._mark(head)
            self._attempt_row(head, "running", None)
            if head.frame.graph.chained:
                with self._boundary(head.ex, f"sending the node after '{head.path}'"):
                    self._chain(head)

    def _unmake(self, run: Run) -> None:
        """A chained successor (Dispatch._chain) back unstarted, or not sent: it
        is forgotten as if never made (it has no row) and considered again, which
        makes it in its turn once its predecessor has ended."""
        if run.task_id is not None:
            self.tasks.pop(run.task_id, None)
            run.task_id = None
            run.ex.running -= 1
            self._release(run)
        run.after = None
        self.chained_runs.pop(id(run), None)
        # Never started: nothing of it is written (a start it was thought to have
        # made, had its worker died first, is not either).
        self.dirty_runs.pop(id(run), None)
        run.dirty_at = None
        self.batch.attempts.pop((run.ex.id, run.path, run.seq), None)
        frame = run.frame
        nid = run.node.id
        if frame.runs.get(nid) is run:
            del frame.runs[nid]
            frame.active -= 1
            self.work.append((frame, nid))
        self.frames_to_check.append(frame)

    def _on_logs(self, task_id: int, lines: list[tuple[float, str, str]]) -> None:
        """Lines a running task printed so far: written with the next group commit,
        under the attempt they belong to (its result brings only the rest)."""
        run = self.tasks.get(task_id)
        if run is None:
            return  # ended or taken back meanwhile: its attempt is settled
        eid, path, seq = run.ex.id, run.path, run.seq
        self.batch.logs.extend((eid, path, seq, ts, s, line) for ts, s, line in lines)
        if not run.written and run.deferrable:
            # Lines of a try are read beside its node's row: it is written with them.
            self._promote(run)

    def _on_result(self, run: Run, result: tuple[Any, ...]) -> None:
        run.task_id = None
        ok, out, err, logs, started, finished = result[1:7]
        if len(result) > 7 and result[7] is not None:
            run.code = result[7]
        if len(result) > 9:
            # Where a remote executor ran it: "dask@HOST:PORT", and its process there.
            run.lane = result[8] or run.lane
            run.worker_pid = result[9]
        ex = run.ex
        ex.running -= 1
        self._release(run)
        if ok is None:
            # Handed back unstarted (pause, fail-fast): nothing was spent.
            if run.after is not None:
                self._unmake(run)
                return
            if run.gate_marks is not None:
                run.gate_marks = None
            if run.terminal:
                return
            if run.frame.stopped():
                run.prefetched = False
                self._cancel_run(run, "not started: an earlier node failed")
            else:
                self._requeue(run)
                run.prefetched = False
            return
        run.prefetched = False
        if run.after is not None:
            if run.after.finished_at is not None:
                run.queued_at = run.ready_at = run.after.finished_at
            run.after = None
            self.chained_runs.pop(id(run), None)
        if self.clock_is_stepped:
            # The worker's times are the world's; a stepped engine's are its own.
            finished = self.clock.time()
            started = min(run.started_at or finished, finished)
        if run.gate_marks is not None:
            for lim, recorded in run.gate_marks:
                lim.correct(recorded, started)
            if not ok and err.get("code") == errors.RATE_LIMIT:
                self._slow_down(run, err, finished)
            run.gate_marks = None
        run.started_at = started
        run.finished_at = finished
        key = id(run.node)
        took = max(0.0, finished - started)
        est = self.durations.get(key)
        self.durations[key] = took if est is None else est + 0.25 * (took - est)
        if logs:
            eid, path, seq = ex.id, run.path, run.seq
            self.batch.logs.extend((eid, path, seq, ts, s, line) for ts, s, line in logs)
        if run.terminal:
            return  # cancelled while it ran: the result is kept out
        if ok:
            run._value = _UNSET
            run.output_json = out
            run.error = None
            self._attempt_row(run, "succeeded", None)
            run.attempt_kind = "attempt"
            self._succeeded(run)
        else:
            error = self._error(run, err["code"], err["message"], err.get("details"))
            self._attempt_row(run, "failed", error)
            run.attempt_kind = "attempt"
            self._attempt_failed(run, error)

    def _take_back(self, given_up: list[tuple[Task, bool]]) -> list[tuple[Run, bool]]:
        """(run, had started) of tasks the executor gave up (stopped, or lost with
        their worker), in order, detached from it."""
        runs = []
        for task, started in given_up:
            run = self.tasks.pop(task["id"], None)
            if run is None or run.task_id != task["id"]:
                continue
            run.task_id = None
            run.prefetched = False
            run.ex.running -= 1
            self._release(run)
            # A chained successor still waiting for its predecessor's result has
            # not started, whatever its place on the worker (Started clears after).
            runs.append((run, started and run.after is None))
        return runs

    def _on_lost(self, lost: list[tuple[Task, bool]], reason: str) -> None:
        for run, started in self._take_back(lost):
            if run.terminal:
                continue
            try:
                if not started:
                    self._requeue(run)  # never started: nothing spent
                    continue
                self._interrupted(run, errors.WORKER_CRASH, reason)
            except Exception as exc:  # noqa: BLE001 - the per-execution error boundary
                self._contain(run.ex, exc, f"recovering node '{run.path}' from a worker crash")

    def _interrupted(self, run: Run, code: str, message: str) -> None:
        """An infrastructure interruption: re-run without spending an attempt."""
        limit = run.ex.workflow.settings.recovery_attempts
        run.recoveries += 1
        run.finished_at = self.clock.time()
        err = self._error(run, code, message)
        self._attempt_row(run, "failed", err, kind=run.attempt_kind)
        if run.recoveries > limit:
            run.frame.active -= 1
            err["message"] += f" ({run.recoveries} times; settings.recoveryAttempts={limit})"
            self._final_failure(run, err)
            return
        run.attempt_kind = "recovery"
        self._requeue(run, spent=True)

    def _requeue(self, run: Run, spent: bool = False) -> None:
        if run.after is not None:
            self._unmake(run)  # a chained successor: made again in its turn
            return
        if not spent and run.seq and run.attempt_kind == "attempt":
            # The dispatch counted an attempt that never ran; give it back.
            run.attempt -= 1
        run.status = "queued"
        self._mark(run)
        self._enqueue(run, front=True)

    def _kill_tasks(self, pred: Callable[[Run], bool], status: str, reason: str) -> None:
        """Stop every worker running a task that ``pred`` selects; the selected
        runs end with ``status``, the other tasks those workers held are requeued."""
        executor = self.executor
        assert executor is not None
        ids = [tid for tid, r in self.tasks.items() if pred(r)]
        if not ids:
            return
        for r, started in self._take_back(executor.stop(ids)):
            if pred(r):
                self._cancel_run(r, reason, status)
            elif not r.terminal:
                self._interrupted_aside(r, started)

    def _interrupted_aside(self, run: Run, started: bool) -> None:
        """A run stopped only because it shared a worker with one that was: its
        attempt (if it had started) ends ``interrupted``, and it goes back to the
        queue without spending one."""
        if started:
            run.finished_at = self.clock.time()
            self._attempt_row(run, "interrupted", None)
        self._requeue(run)

    def _slow_down(self, run: Run, err: dict[str, Any], finished: float) -> None:
        """A 429 went through shared limiters: none of them starts anything until its
        Retry-After has passed (one interval of the limiter without one), so the
        rest of a loop does not hammer the API meanwhile."""
        ra = retry_after_ms(err)
        for lim, _ in run.gate_marks or ():
            pause = ra / 1000.0 if ra is not None else lim.interval
            lim.hold(max(finished, self.clock.time()) + pause)
