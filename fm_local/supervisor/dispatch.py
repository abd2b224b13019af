"""Dispatch: choosing the next ready run (fair between workflows), prefetch by
expected duration, and the task a worker receives."""

from __future__ import annotations

import time
from typing import Any

from fm_local import errors, jsonio
from fm_local.nodes.kinds import kind_of
from fm_local.supervisor.state import (
    PREFETCH,
    PREFETCH_HOLD,
    PREFETCH_WINDOW,
    Frame,
    Part,
    Run,
    _exec_order,
)
from fm_local.workers import Slot


class Dispatch(Part):
    def _dispatch(self) -> None:
        """Hand ready tasks to workers: one to each idle worker; behind a running
        task only when the backlog is deep and only tasks whose expected duration
        fits the worker's window (:data:`PREFETCH_WINDOW`)."""
        pool = self.pool
        assert pool is not None
        if self.stopping or not self.ready_count:
            return
        n_slots = len(pool.slots)
        deep = self.ready_count > 2 * n_slots
        now = time.time()
        now_m = time.monotonic()
        for slot in pool.slots:
            if not self.ready_count:
                return
            if not slot.ready:
                continue
            idle = not slot.inflight
            if not idle and not deep:
                continue
            want = PREFETCH - len(slot.inflight) if deep else 1
            if deep:
                want = min(want, max(1, self.ready_count // n_slots))
            budget = 0.0 if idle else self._window_left(slot, now_m)
            tasks: list[dict[str, Any]] = []
            while want > 0 and self.rr:
                head = idle and not tasks
                if head:
                    run = self._next_ready(now, True)
                else:
                    if budget <= 0.0:
                        break
                    run = self._next_ready(now, False, budget)
                if run is None:
                    break
                if head:
                    est = self.durations.get(id(run.node))
                    budget = PREFETCH_WINDOW - est if est is not None else 0.0
                else:
                    budget -= self.durations.get(id(run.node), PREFETCH_WINDOW)
                try:
                    task = self._make_task(run, slot, head=head)
                except Exception as exc:  # noqa: BLE001 - the per-execution error boundary
                    self._contain(run.ex, exc, f"dispatching node '{run.path}'")
                    continue
                if task is not None:
                    tasks.append(task)
                    want -= 1
            if tasks:
                for task, why in pool.submit(slot, tasks):
                    self._not_sent(task, why)
            if not self.rr:
                return

    def _window_left(self, slot: Slot, now_m: float) -> float:
        """Seconds of prefetch window a busy worker has left: the window minus the
        expected rest of its running task and of the tasks queued behind it."""
        durations = self.durations
        held = 0.0
        for i, t in enumerate(slot.inflight):
            run = self.tasks.get(t["id"])
            est = durations.get(id(run.node)) if run is not None else None
            if est is None:
                return 0.0  # unknown work ahead: do not queue behind it
            if i == 0:
                ran = now_m - slot.head_since
                if ran > est:
                    return 0.0  # running longer than expected: its end is unknown
                held += est - ran
            else:
                held += est
        return PREFETCH_WINDOW - held

    def _hold(self, head: Run | None) -> float:
        """How long a worker's running task may take before the tasks queued behind
        it are taken back: twice what it is expected to take, at least PREFETCH_HOLD."""
        est = self.durations.get(id(head.node), 0.0) if head is not None else 0.0
        return max(PREFETCH_HOLD, 2 * est)

    def _reclaim(self, now_m: float) -> None:
        """A worker whose running task takes much longer than expected hands back
        the tasks queued behind it, so they run elsewhere now."""
        pool = self.pool
        assert pool is not None
        for slot in pool.slots:
            inflight = slot.inflight
            if len(inflight) < 2:
                continue
            if now_m - slot.head_since <= self._hold(self.tasks.get(inflight[0]["id"])):
                continue
            ids = [
                t["id"]
                for t in list(inflight)[1:]
                if (r := self.tasks.get(t["id"])) is not None and r.prefetched
            ]
            if ids:
                pool.drop(slot, ids)

    def _not_sent(self, task: dict[str, Any], exc: BaseException) -> None:
        """A task that could not be sent to a worker: undo its dispatch, fail the node."""
        run = self.tasks.pop(task["id"], None)
        if run is None:
            return
        with self._boundary(run.ex, f"sending node '{run.path}' to a worker"):
            run.task_id = None
            run.prefetched = False
            run.ex.running -= 1
            self._release(run)
            self._inline_failed(
                run, exc if isinstance(exc, Exception) else RuntimeError(exc), "input"
            )

    def _next_ready(
        self, now: float, allow_limited: bool, budget: float | None = None
    ) -> Run | None:
        """The next task: workflows in turn (fair sharing), within a workflow the
        executions in queue-policy order, within an execution its ready queue.
        With a ``budget`` (prefetch), only a task expected to take no longer."""
        for _ in range(len(self.rr)):
            key = self.rr[0]
            self.rr.rotate(-1)
            execs = self.wf_execs.get(key)
            if not execs:
                continue
            order = execs if len(execs) == 1 else sorted(execs, key=_exec_order)
            for ex in order:
                if not ex.ready:
                    self._unlist_ready(ex)
                    continue
                if ex.status != "running":
                    continue
                if ex.max_concurrency is not None and ex.running >= ex.max_concurrency:
                    continue
                while ex.ready:
                    run = ex.ready[0]
                    if budget is not None:
                        est = self.durations.get(id(run.node))
                        if est is None or est > budget:
                            break
                    if self._limited(run):
                        if not allow_limited:
                            break
                        if not self._gate(run, now):
                            ex.ready.popleft()
                            self.ready_count -= 1
                            continue  # parked until its limiter allows it
                    ex.ready.popleft()
                    self.ready_count -= 1
                    if not ex.ready:
                        self._unlist_ready(ex)
                    return run
                if not ex.ready:
                    self._unlist_ready(ex)
        return None

    def _make_task(self, run: Run, slot: Slot, head: bool = True) -> dict[str, Any] | None:
        """Resolve the node's templates and build its task; None if that failed.

        Only the ``head`` task of a worker is recorded ``running``; tasks queued
        behind it on the same worker stay ``queued`` until they reach the head, so
        a restart does not charge them a recovery."""
        ex = run.ex
        run.seq += 1
        if run.attempt_kind == "attempt":
            run.attempt += 1
        run.started_at = time.time()
        run.finished_at = None
        if not run.frame.started:
            self._item_started(run.frame, run.started_at)
        if run.frame.graph.sections:
            self._section_started(run, run.started_at)
        try:
            spec = self._task_spec(run)
            # Bounded in size and depth, so it can be recorded and sent to a worker.
            run.input_json = jsonio.bounded_dumps(spec)
        except Exception as exc:  # noqa: BLE001 - fails this node only (_inline_failed)
            self._release(run)
            self._inline_failed(run, exc, "input")
            return None
        tid = next(self.task_ids)
        run.task_id = tid
        run.status = "running" if head else "queued"
        run.prefetched = not head
        run.worker_pid = slot.pid
        ex.running += 1
        self.tasks[tid] = run
        self._mark(run)
        if head:
            self._attempt_row(run, "running", None)
        b = run.branch
        return {
            "id": tid,
            "type": run.ntype,
            "spec": spec,
            "folder": ex.folder,
            "ctx": {
                "executionId": ex.id,
                "nodePath": run.path,
                "attempt": run.attempt,
                "traceId": run.trace_id,
                "idempotencyKey": f"{ex.id}:{run.path}",
                "parallel": self._parallel_info(run.frame),
                "branch": b.scope() if b is not None else None,
            },
        }

    @staticmethod
    def _parallel_info(frame: Frame) -> Any:
        f: Frame | None = frame
        while f is not None:
            if "parallel" in f.vars:
                return f.vars["parallel"]
            f = f.parent
        return None

    def _task_spec(self, run: Run) -> dict[str, Any]:
        task = kind_of(run.node).task
        if task is not None:
            return task(run.node, self._scope(run))
        raise errors.NodeError(f"not a worker node: {run.ntype}")
