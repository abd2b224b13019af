"""Dispatch: choosing the next ready run (fair between workflows), prefetch by
expected duration, and the task a worker receives."""

from __future__ import annotations

import heapq
from typing import Any

from fm_local import errors, jsonio
from fm_local.nodes.kinds import kind_of
from fm_local.supervisor.state import (
    Frame,
    Part,
    Run,
    _exec_order,
    at_capacity,
)

# Most successors sent behind a running node on its worker (Dispatch._chain).
CHAIN_DEPTH = 4


class Dispatch(Part):
    def _dispatch(self) -> None:
        """Fill the executor's offers with ready tasks: a task that starts at once
        may be held by a limiter gate; one that would wait behind a running task
        (prefetch) must be expected to fit the offer's budget."""
        executor = self.executor
        assert executor is not None
        if self.stopping or not self.ready_count:
            return
        if self.chained_runs and self.ready_count > self.ready_io_count:
            self._unchain()  # others wait for a worker: fairness first
        now = self.clock.time()
        durations = self.durations
        heads: list[Run] = []
        for offer in executor.offers(lambda: self.ready_count):
            if not self.ready_count:
                return
            io = offer.lane == "io"
            if io and not self.ready_io_count:
                continue  # nothing ready for the I/O lane: nothing to send
            while self.rr and offer.wants():
                budget = offer.budget()
                head = budget is None
                run = self._next_ready(now, head, budget, io)
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
                    if head:
                        heads.append(run)
            for task, why in executor.submit(offer):
                self._not_sent(task, why)
            for run in heads:
                if run.task_id is not None and run.frame.graph.chained:
                    with self._boundary(run.ex, f"sending the node after '{run.path}'"):
                        self._chain(run)
            heads.clear()
            if not self.rr:
                return

    def _chain(self, run: Run) -> None:
        """Send the successors of ``run`` (graph.chained), up to CHAIN_DEPTH of them,
        to ``run``'s worker now, each to start there as soon as the one before it
        succeeds, without waiting for the supervisor (docs/architecture.md, "Chained
        successors"). Each is made as a ready run is made, and is a prefetched task
        until it starts: a pause, cancel or fail-fast takes it back like one. The
        worker hands one back unstarted if the one before it did not succeed; then
        it is forgotten (Results._unmake) and considered again in its turn."""
        frame = run.frame
        chained = frame.graph.chained
        ex = run.ex
        executor = self.executor
        if (
            self.stopping
            or self.ready_count > self.ready_io_count  # others wait for a worker: fairness
            or run.aux_kind is not None  # a fallback, handler or compensation
            or frame.runs.get(run.node.id) is not run
            or not self.defer_writes
            or executor is None
            or frame.done
            or frame.stopped()
            or ex.status != "running"
            or ex.cancel_error is not None
        ):
            return
        tail = run
        for _ in range(CHAIN_DEPTH):
            nid = chained.get(tail.node.id)
            if nid is None:
                return
            succ = frame.runs.get(nid)
            if succ is not None:
                if succ.after is not tail:
                    return
                tail = succ  # already sent behind it
                continue
            if tail.task_id is None or at_capacity(ex) or not executor.can_follow(tail.task_id):
                return
            node = frame.graph.nodes[nid]
            succ = Run(ex, frame, node, frame.prefix + nid)
            if self._limited(succ) or self._lane_of(succ) != "process":
                return
            frame.runs[nid] = succ
            frame.active += 1
            self.chained_runs[id(succ)] = succ
            succ.after = tail
            succ.lane = "process"
            succ.deferrable = True  # no row while it waits: a restart makes it again
            succ.queued_at = succ.ready_at = self.clock.time()
            succ.status = "queued"
            task = self._make_task(succ, tail.worker_pid, head=False)
            if task is None:
                return  # its input could not be resolved: made again in its turn
            if not executor.follow(tail.task_id, task):
                self._unmake(succ)
                return
            tail = succ

    def _unchain(self) -> None:
        """Ask back the chained successors that have not started (others wait for
        a worker now, or the supervisor stops): each is made again in its turn."""
        assert self.executor is not None
        ids = [r.task_id for r in self.chained_runs.values() if r.task_id is not None]
        if ids:
            self.executor.hand_back(ids)

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
        self, now: float, allow_limited: bool, budget: float | None = None, io: bool = False
    ) -> Run | None:
        """The next task: workflows in turn (fair sharing), within a workflow the
        executions in queue-policy order, within an execution its ready queue
        (of the I/O lane, with ``io``). With a ``budget`` (prefetch), only a task
        expected to take no longer."""
        for _ in range(len(self.rr)):
            key = self.rr[0]
            self.rr.rotate(-1)
            execs = self.wf_execs.get(key)
            if not execs:
                continue
            order = execs if len(execs) == 1 else sorted(execs, key=_exec_order)
            for ex in order:
                ready = ex.ready_io if io else ex.ready
                if not ready:
                    if not ex.has_ready():
                        self._unlist_ready(ex)
                    continue
                if ex.status != "running":
                    continue
                if at_capacity(ex):
                    continue
                while ready:
                    run = ready[0]
                    if budget is not None:
                        est = self.durations.get(id(run.node))
                        if est is None or est > budget:
                            break
                    if self._limited(run):
                        if not allow_limited:
                            break
                        if not self._gate(run, now):
                            ready.popleft()
                            self.ready_count -= 1
                            self.ready_io_count -= io
                            continue  # parked until its limiter allows it
                    ready.popleft()
                    self.ready_count -= 1
                    self.ready_io_count -= io
                    if not ready and not ex.has_ready():
                        self._unlist_ready(ex)
                    return run
                if not ex.has_ready():
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
            if run.after is not None:
                self._unmake(run)  # sent in its turn instead (and fails then)
                return None
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
        if run.node.timeout:
            # It cannot time out before this (it starts at dispatch or later).
            due = self.clock.monotonic() + run.node.timeout / 1000.0
            heapq.heappush(self.node_deadlines, (due, tid))
        self._mark(run)
        if head:
            self._attempt_row(run, "running", None)
        b = run.branch
        task: dict[str, Any] = {
            "id": tid,
            "seq": run.seq,  # with ctx's execution and path: this attempt's key
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
        if run.node.timeout:
            # An executor that batches tasks (Dask) sends this one alone, so that its
            # time counts from when it was handed over.
            task["timeout"] = run.node.timeout
        if run.not_before is not None:
            # The worker holds it until then (and keeps the spacing if it runs late).
            task["notBefore"], task["holdWindow"] = run.not_before
            run.not_before = None
        return task

    def _due_tasks(self, now_m: float) -> list[int]:
        """The running tasks whose node's timeout has passed. Looks only at deadlines
        due by now (a heap), so a thousand calls in flight cost nothing here until
        one may be late; a task that started after its dispatch (it waited behind
        another) is put back with the deadline of its real start."""
        heap = self.node_deadlines
        if not heap or heap[0][0] > now_m:
            return []
        due: list[int] = []
        starts: dict[int, float] | None = None
        while heap and heap[0][0] <= now_m:
            _, tid = heapq.heappop(heap)
            run = self.tasks.get(tid)
            if run is None or run.task_id != tid or not run.node.timeout:
                continue  # ended, stopped or given back since
            if starts is None:
                assert self.executor is not None
                starts = dict(self.executor.running())
            since = starts.get(tid)
            if since is None:
                since = now_m  # not started yet: it has its whole timeout ahead
            deadline = since + run.node.timeout / 1000.0
            if deadline <= now_m:
                due.append(tid)
            else:
                heapq.heappush(heap, (deadline, tid))
        return due

    def _lane_of(self, run: Run) -> str:
        """Where the run's task goes: the I/O lane for a type whose kind says so (an
        http or shell node, an ``async def`` python function), else a process."""
        if self.executor_lane is not None:
            return self.executor_lane  # an executor of one kind (Dask)
        if not self.io_lane:
            return "process"
        lane = kind_of(run.node).lane
        return lane(run.node, run.ex.folder) if lane is not None else "process"

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
