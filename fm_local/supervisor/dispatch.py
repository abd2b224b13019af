"""Dispatch: choosing the next ready run (fair between workflows), prefetch by
expected duration, and the task a worker receives."""

from __future__ import annotations

from typing import Any

from fm_local import errors, jsonio
from fm_local.nodes.kinds import kind_of
from fm_local.supervisor.state import (
    Frame,
    Part,
    Run,
    _exec_order,
)


class Dispatch(Part):
    def _dispatch(self) -> None:
        """Fill the executor's offers with ready tasks: a task that starts at once
        may be held by a limiter gate; one that would wait behind a running task
        (prefetch) must be expected to fit the offer's budget."""
        executor = self.executor
        assert executor is not None
        if self.stopping or not self.ready_count:
            return
        now = self.clock.time()
        durations = self.durations
        for offer in executor.offers(lambda: self.ready_count):
            if not self.ready_count:
                return
            while self.rr and offer.wants():
                budget = offer.budget()
                head = budget is None
                run = self._next_ready(now, head, budget)
                if run is None:
                    break
                offer.charge(durations.get(id(run.node)))
                try:
                    task = self._make_task(run, offer.worker, head=head)
                except Exception as exc:  # noqa: BLE001 - the per-execution error boundary
                    self._contain(run.ex, exc, f"dispatching node '{run.path}'")
                    continue
                if task is not None:
                    offer.add(task)
            for task, why in executor.submit(offer):
                self._not_sent(task, why)
            if not self.rr:
                return

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

    def _make_task(self, run: Run, worker: int | None, head: bool = True) -> dict[str, Any] | None:
        """Resolve the node's templates and build its task; None if that failed.

        Only the ``head`` task of a worker is recorded ``running``; tasks queued
        behind it on the same worker stay ``queued`` until they reach the head, so
        a restart does not charge them a recovery."""
        ex = run.ex
        run.seq += 1
        if run.attempt_kind == "attempt":
            run.attempt += 1
        run.started_at = self.clock.time()
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
        run.worker_pid = worker
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
