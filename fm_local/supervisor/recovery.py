"""Recovery after a restart, and the intake of new executions: load a
workflow, admit an execution, rebuild frames, loops and rate limiters from the
database."""

from __future__ import annotations

import json
from typing import Any

from fm_local import errors, graph
from fm_local.graph import CompiledGraph
from fm_local.limits import RateLimiter
from fm_local.model import Workflow
from fm_local.nodes.kinds import Runs, kind_of
from fm_local.nodes.loop import LoopNode
from fm_local.store import loads
from fm_local.supervisor.state import (
    ACTIVE_STATUSES,
    Exec,
    Frame,
    Part,
    Run,
    _failure_of,
    log,
)


class Recovery(Part):
    def _load_workflow(self, workflow_id: int) -> tuple[Workflow, str, CompiledGraph]:
        cached = self.workflows.get(workflow_id)
        if cached is None:
            assert self.store is not None
            row = self.store.get_workflow(workflow_id)
            if row is None:
                raise errors.StorageError(f"workflow {workflow_id} is missing from the database")
            wf = Workflow.model_validate(json.loads(row["document"]))
            cached = (wf, row["folder"], graph.compile_graph(wf.nodes, wf.edges))
            self.workflows[workflow_id] = cached
        return cached

    def _body(self, node: LoopNode) -> CompiledGraph:
        g = self.bodies.get(id(node))
        if g is None:
            g = graph.compile_graph(node.body.nodes, node.body.edges)
            self.bodies[id(node)] = g
        return g

    def _admit(self, row: dict[str, Any]) -> Exec | None:
        try:
            wf, folder, g = self._load_workflow(row["workflow_id"])
            ex = Exec(row, wf, folder, g)
        except errors.StorageError:
            raise
        except Exception as exc:  # a damaged row must not stop the daemon
            log.error("execution %s: cannot load its workflow: %s", row["id"], exc)
            ex_err = {"code": errors.VALIDATION_ERROR, "message": f"cannot load workflow: {exc}"}
            assert self.store is not None
            self.store.fail_unloadable(row["id"], ex_err)
            self.finished.add(row["id"])
            return None
        self.execs[ex.id] = ex
        return ex

    def _recover(self) -> None:
        """Load every unfinished execution; continue where the database says it was."""
        assert self.store is not None
        for row in self.store.active_executions():
            if self.only_execution and row["id"] != self.only_execution:
                continue
            ex = self._admit(row)
            if ex is None:
                continue
            with self._boundary(ex, "recovering it after a restart"):
                if ex.status == "queued":
                    self._start_execution(ex)
                    continue
                self._event(ex, None, "recovered", None)
                self._rebuild_signal_scope(ex)
                self._restore_frame(ex.top)
                err = loads(row["error"])
                if isinstance(err, dict) and err.get("code") == errors.CANCELLED:
                    self._resume_cancelling(ex, err)
        # Signals sent while no supervisor ran apply before anything is dispatched.
        self._poll_signals()
        self._settle()
        self.last_poll = self.clock.monotonic()

    def _restore_frame(self, frame: Frame) -> None:
        """Rebuild a frame's runs from its committed rows, then continue it."""
        assert self.store is not None
        ex = frame.ex
        now = self.clock.time()
        limit = ex.workflow.settings.recovery_attempts
        last = self._last_attempts(ex.id, frame.prefix)
        loops: list[Run] = []
        exhausted: list[tuple[Run, dict[str, Any]]] = []
        adopted: list[tuple[dict[str, Any], tuple[Any, ...]]] = []
        adoptable = getattr(self.executor, "adoptable", None) or {}
        for r in self.store.frame_rows(ex.id, frame.prefix):
            node = frame.graph.nodes.get(r["node_id"])
            if node is None or r["path"] != frame.path_of(node.id):
                continue
            run = Run(ex, frame, node, r["path"])
            run.written = True
            run.status = r["status"]
            run.attempt = r["attempts"]
            run.recoveries = r["recoveries"]
            run.output_json = r["output"]
            run.error = loads(r["error"])
            run.port = r["port"]
            run.handled = bool(r["handled"])
            run.queued_at = r["queued_at"]
            run.started_at = r["started_at"]
            run.finished_at = r["finished_at"]
            run.next_attempt_at = r["next_attempt_at"]
            run.worker_pid = r["worker_pid"]
            run.input_json = r["input"]
            run.code = r.get("code")
            run.items = r.get("items")
            run.in_queue_table = run.status in ACTIVE_STATUSES
            run.seq, kind = last.get(run.path, (0, "attempt"))
            frame.runs[node.id] = run
            if run.terminal:
                frame.resolved += 1
                if run.status == "failed" and not run.handled and frame.failure is None:
                    # It failed before the crash and nothing handled it: the frame
                    # was already failing fast; it still is.
                    frame.failure = _failure_of(run)
                continue
            frame.active += 1
            runs = kind_of(node).runs
            if runs is Runs.LOOP:
                loops.append(run)
            elif runs is Runs.DELAY and run.status == "running":
                self._timer(run.next_attempt_at or now, "delay", run)
            elif runs is Runs.WAIT and run.status == "running":
                self._start_wait(run, restoring=True)
            elif run.status == "running" and (ex.id, run.path, run.seq) in adoptable:
                # The supervisor died while this node ran on a remote executor, which
                # kept the result of this very attempt (its key: execution, path, seq,
                # committed before the task was sent): record it as the attempt's.
                tid = next(self.task_ids)
                run.task_id = tid
                run.attempt_kind = kind
                ex.running += 1
                self.tasks[tid] = run
                adopted.append(({"id": tid}, adoptable.pop((ex.id, run.path, run.seq))))
            elif run.status == "running":
                # The supervisor died while this node ran: an infrastructure
                # interruption, re-run without spending an attempt.
                run.recoveries += 1
                run.attempt_kind = kind
                run.finished_at = now
                err = self._error(
                    run, errors.SUPERVISOR_CRASH, "the supervisor stopped while this node ran"
                )
                self._attempt_row(run, "failed", err)
                if run.recoveries > limit:
                    err["message"] += (
                        f", {run.recoveries} times (settings.recoveryAttempts={limit})"
                    )
                    exhausted.append((run, err))
                    continue
                run.status = "queued"
                run.attempt_kind = "recovery"
                self._mark(run)
                self._enqueue(run)
            elif run.status == "retry_wait":
                self._timer(run.next_attempt_at or now, "retry", run)
            else:  # queued or pending
                run.status = "queued"
                self._mark(run)
                self._enqueue(run)
        for node in frame.graph.nodes.values():
            if node.rate_limit is not None:
                key = ("node", ex.id, id(frame.graph), node.id)
                if key not in self.limiters:
                    lim = self._limiter(node.rate_limit, ex, key)
                    self._seed_limiter(lim, self._recent_starts(ex.id, node.id))
        for run in loops:
            self._restore_loop(run)
        if frame.failure is not None:
            self._halt(frame)
        for run, err in exhausted:
            frame.active -= 1
            self._final_failure(run, err)
        if adopted:
            self._on_results(adopted)
        self._advance_frame(frame)
        self.frames_to_check.append(frame)

    def _recent_starts(self, eid: str, node_id: str) -> list[float]:
        assert self.store is not None
        return self.store.recent_starts(eid, node_id, self.clock.time() - 120)

    def _last_attempts(self, eid: str, prefix: str) -> dict[str, tuple[int, str]]:
        """Per node path under ``prefix``: the latest attempt's seq and kind."""
        assert self.store is not None
        return self.store.last_attempts(eid, prefix)

    def _seed_limiter(self, lim: RateLimiter | None, times: list[float]) -> None:
        """Give a fresh limiter the starts committed before a restart, so the
        limit holds across it."""
        if lim is None:
            return
        now = self.clock.time()
        for t in sorted(t for t in times if t and t > now - lim.per - 1.0):
            lim.starts.append(t)
            lim.tat = max(lim.tat, t + lim.interval)

    def _restore_loop(self, run: Run) -> None:
        assert self.store is not None and isinstance(run.node, LoopNode)
        ls = self._loop_state(run)
        if ls is None:
            return
        rows = self.store.item_rows(run.ex.id, run.path)
        if run.ex.retry_of is not None:
            _, inside = self.store.reused_items(run.ex.id, run.path)
            ls.partial = (inside - {r[0] for r in rows}) or None
        self._seed_limiter(ls.limiter, [r[2] for r in rows if r[2] is not None])
        lowest_open = ls.n
        last_end = 0.0
        for idx, status, started_at, finished_at in rows:
            if idx >= ls.n:
                continue
            ls.started[idx] = 1
            last_end = max(last_end, finished_at or 0.0)
            if status == "succeeded":
                ls.succeeded += 1
            elif status == "failed":
                ls.failed += 1
            elif status in ("cancelled", "skipped", "timed_out"):
                ls.cancelled += 1
            else:
                f = self._new_item_frame(ls, idx, restoring=True, started_at=started_at)
                self._restore_frame(f)
                lowest_open = min(lowest_open, idx)
        first_free = next((i for i in range(ls.n) if not ls.started[i]), ls.n)
        bs = ls.batch_size
        if bs:
            ls.batch_end = min(ls.n, (min(lowest_open, first_free) // bs + 1) * bs)
            between = not ls.open and 0 < first_free < ls.n and first_free % bs == 0
            if between and ls.node.delay_between_batches:
                # Stopped during the pause between two batches: the pause is a
                # durable timer, due when the previous batch ended plus the delay.
                ls.batch_end = first_free
                ls.batch_wait = True
                due = last_end + ls.node.delay_between_batches / 1000.0
                self._timer(due, "batch", ls)
        if ls.failed and ls.policy.fail_fast:
            ls.stopped = True
        self.loops_to_open.append(ls)
        self._schedule_loop_timers(ls)

    def _poll_db(self) -> None:
        assert self.store is not None
        self.last_poll = self.clock.monotonic()
        if self.stopping:
            return
        self._poll_explains()
        if self.only_execution:
            if self.only_execution in self.execs or self.only_execution in self.finished:
                # fm run's own execution runs: signals sent to it (fm pause in
                # another terminal) still apply.
                self._poll_signals()
                return
            row = self.store.get_execution(self.only_execution)
            rows = [row] if row and row["status"] == "queued" else []
        else:
            # An ended execution's committed status is not 'queued' (it was
            # committed before it was added to self.finished): only those running
            # now can be listed and already known.
            rows = self.store.new_executions(self.execs.keys())
        for row in rows:
            ex = self._admit(row)
            if ex is not None:
                with self._boundary(ex, "starting it"):
                    self._start_execution(ex)
        self._poll_signals()

    def _start_execution(self, ex: Exec) -> None:
        now = self.clock.time()
        ex.status = "running"
        ex.started_at = now
        timeout = ex.workflow.settings.timeout
        ex.deadline_at = now + timeout / 1000.0 if timeout else None
        self._mark_exec(ex)
        self._event(ex, None, "started", None)
        if ex.retry_of is not None:
            # A retry starts from the results it reuses, committed with it: as a
            # restart continues from what is committed (docs/retry.md).
            self._rebuild_signal_scope(ex)
            self._restore_frame(ex.top)
            return
        self._advance_frame(ex.top)
        self.frames_to_check.append(ex.top)
