"""The supervisor: the one writer of engine state, and the scheduling loop.

It keeps the ready set and the state of active executions in memory and treats
the database as its write-ahead record: changes are coalesced per row and written
in group commits (:class:`fm_local.store.Batch`). Node attempts are at-least-once:
after a crash, what was not committed is simply done again; what was committed
is never redone. Timers are due times, not sleeping threads. The loop takes the
time from the clock once per tick, so its parts can be reasoned about per tick.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fm_local import errors, expr, graph, retries
from fm_local.graph import CompiledGraph
from fm_local.lock import SupervisorLock
from fm_local.model import (
    ConditionNode,
    DelayNode,
    HttpNode,
    MergeNode,
    NodeBase,
    OutputNode,
    PythonNode,
    RetryPolicy,
    ShellNode,
    SwitchNode,
    TransformNode,
    Workflow,
)
from fm_local.nodes import condition, delay, merge, output, switch, transform
from fm_local.store import Batch, Store, dumps, loads
from fm_local.workers import ProcessPool, Slot

log = logging.getLogger("fm_local.supervisor")

WORKER_TYPES = (PythonNode, HttpNode, ShellNode)
FLUSH_INTERVAL = 0.004  # seconds between group commits while busy
FLUSH_MAX = 4000  # rows: commit sooner than the interval when this many are dirty
DB_POLL_INTERVAL = 0.05  # seconds between looks for new executions and signals
PREFETCH = 16  # tasks queued on one worker when the backlog is deep
DRAIN_TIMEOUT = 10.0  # seconds a graceful stop waits for running nodes
ACTIVE_STATUSES = frozenset({"queued", "running", "retry_wait"})


class Scope(Mapping[str, Any]):
    """Names an expression can read, looked up lazily (SPEC §7): frame variables,
    ``extra`` (branch, error…), node outputs, the input, execution, signals."""

    __slots__ = ("frame", "extra")

    def __init__(self, frame: Frame, extra: dict[str, Any] | None = None) -> None:
        self.frame = frame
        self.extra = extra

    def __getitem__(self, name: str) -> Any:
        extra = self.extra
        if extra is not None and name in extra:
            return extra[name]
        f: Frame | None = self.frame
        while f is not None:
            if name in f.vars:
                return f.vars[name]
            g = f.graph
            nid = name if name in g.nodes else g.aliases.get(name)
            if nid is not None:
                run = f.runs.get(nid)
                return run.value() if run is not None and run.status == "succeeded" else None
            f = f.parent
        ex = self.frame.ex
        if name == "input":
            return ex.input
        if name == "execution":
            return {"id": ex.id, "traceId": ex.trace_id, "workflow": ex.workflow.name}
        if name == "signals":
            return ex.signal_scope
        if isinstance(ex.input, dict) and name in ex.input:
            return ex.input[name]
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __contains__(self, name: object) -> bool:
        try:
            self[name]  # type: ignore[index]
        except KeyError:
            return False
        return True


class Run:
    """One node instance: its status, current attempt and result."""

    __slots__ = (
        "ex",
        "frame",
        "node",
        "path",
        "status",
        "attempt",
        "seq",
        "recoveries",
        "output_json",
        "_value",
        "error",
        "port",
        "handled",
        "trace_id",
        "branch",
        "worker_pid",
        "queued_at",
        "started_at",
        "finished_at",
        "next_attempt_at",
        "task_id",
        "in_queue_table",
        "attempt_kind",
    )

    def __init__(self, ex: Exec, frame: Frame, node: NodeBase, path: str) -> None:
        self.ex = ex
        self.frame = frame
        self.node = node
        self.path = path
        self.status = "pending"
        self.attempt = 0
        self.seq = 0
        self.recoveries = 0
        self.output_json: str | None = None
        self._value: Any = _UNSET
        self.error: dict[str, Any] | None = None
        self.port: str | None = None
        self.handled = False
        b = frame.graph.branches.get(node.id)
        self.branch = b
        self.trace_id = b.trace_id(frame.trace_root) if b is not None else frame.trace_root
        self.worker_pid: int | None = None
        self.queued_at: float | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.next_attempt_at: float | None = None
        self.task_id: int | None = None
        self.in_queue_table = False
        self.attempt_kind = "attempt"

    def value(self) -> Any:
        if self._value is _UNSET:
            self._value = loads(self.output_json)
        return self._value

    def set_output(self, value: Any, text: str | None = None) -> None:
        self._value = value
        self.output_json = text if text is not None else dumps(value)

    @property
    def terminal(self) -> bool:
        return self.status in graph.TERMINAL


_UNSET = object()


class Frame:
    """A graph being executed: the top level of an execution (loop items later)."""

    __slots__ = ("ex", "graph", "prefix", "parent", "vars", "runs", "trace_root", "resolved")

    def __init__(
        self,
        ex: Exec,
        g: CompiledGraph,
        prefix: str,
        parent: Frame | None,
        trace_root: str,
        variables: dict[str, Any] | None = None,
    ) -> None:
        self.ex = ex
        self.graph = g
        self.prefix = prefix
        self.parent = parent
        self.vars = variables or {}
        self.runs: dict[str, Run] = {}
        self.trace_root = trace_root
        self.resolved = 0  # nodes with a terminal run

    def path_of(self, node_id: str) -> str:
        return self.prefix + node_id


class Exec:
    """An active execution."""

    def __init__(self, row: dict[str, Any], workflow: Workflow, folder: str, g: CompiledGraph):
        self.id: str = row["id"]
        self.workflow = workflow
        self.folder = folder
        self.status: str = row["status"]
        self.input: Any = loads(row["input"])
        self.trace_id: str = row["trace_id"]
        self.priority: int = row["priority"]
        self.started_at: float | None = row["started_at"]
        self.finished_at: float | None = row["finished_at"]
        self.deadline_at: float | None = row["deadline_at"]
        self.output: Any = None
        self.error: dict[str, Any] | None = None
        self.top = Frame(self, g, "", None, self.trace_id)
        self.running = 0  # worker tasks held by workers
        self.active = 0  # runs queued, running, waiting for a retry or a timer
        self.failure: dict[str, Any] | None = None
        self.signal_scope: dict[str, Any] = {}
        self.ready: deque[Run] = deque()
        self.max_concurrency = workflow.settings.max_concurrency
        self.default_retry = workflow.settings.retry


class Supervisor:
    """Runs executions from one database with a pool of worker processes."""

    def __init__(
        self,
        db: str | Path,
        *,
        workers: int = 2,
        durability: str = "full",
        only_execution: str | None = None,
        drain_timeout: float = DRAIN_TIMEOUT,
    ) -> None:
        self.db = Path(db)
        self.n_workers = max(1, workers)
        self.durability = durability
        self.only_execution = only_execution
        self.drain_timeout = drain_timeout
        self.lock = SupervisorLock(self.db)
        self.store: Store | None = None
        self.pool: ProcessPool | None = None
        self.execs: dict[str, Exec] = {}
        self.rr: deque[str] = deque()  # executions with ready tasks, round robin
        self.tasks: dict[int, Run] = {}
        self.task_ids = itertools.count(1)
        self.timers: list[tuple[float, int, str, Run]] = []
        self.timer_seq = itertools.count()
        self.batch = Batch()
        self.dirty_runs: dict[int, Run] = {}
        self.dirty_execs: dict[str, Exec] = {}
        self.last_flush = 0.0
        self.last_poll = 0.0
        self.stopping = False
        self.stop_reason = ""
        self.finished: set[str] = set()
        self.workflows: dict[int, tuple[Workflow, str, CompiledGraph]] = {}
        self.ready_count = 0
        self.on_tick: Callable[[], None] | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        self.lock.acquire()
        try:
            self.store = Store(self.db, durability=self.durability)
            self.pool = ProcessPool(self.n_workers)
            self.pool.start()
            self._recover()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            if self.store is not None and (self.dirty_runs or self.dirty_execs or len(self.batch)):
                self.flush()
        finally:
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None
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
        assert self.store is not None and self.pool is not None
        while not self.stopping:
            self.tick()
            if until is not None and until():
                break
        self._drain()

    def run_execution(self, execution_id: str) -> None:
        """Serve until ``execution_id`` is finished (the embedded supervisor)."""
        self.serve(until=lambda: execution_id in self.finished)

    # --- the loop -----------------------------------------------------------------------

    def tick(self) -> None:
        pool = self.pool
        assert pool is not None
        now_m = time.monotonic()
        timeout = self._wait_time(now_m)
        for kind, slot, payload in pool.poll(timeout):
            if kind == "results":
                self._on_results(slot, payload)
            elif kind == "died":
                self._on_worker_died(slot, payload)
        now = time.time()
        self._fire_timers(now)
        self._check_deadlines(now)
        if time.monotonic() - self.last_poll >= DB_POLL_INTERVAL:
            self._poll_db()
        self._dispatch()
        if self.on_tick is not None:
            self.on_tick()
        self._maybe_flush()

    def _wait_time(self, now_m: float) -> float:
        t = DB_POLL_INTERVAL - (now_m - self.last_poll)
        if self.dirty_runs or self.dirty_execs or len(self.batch):
            t = min(t, FLUSH_INTERVAL - (now_m - self.last_flush))
        if self.timers:
            t = min(t, self.timers[0][0] - time.time())
        for slot in self.pool.slots if self.pool else ():
            if slot.inflight:
                run = self.tasks.get(slot.inflight[0]["id"])
                if run is not None and run.node.timeout:
                    t = min(t, slot.head_since + run.node.timeout / 1000.0 - now_m)
        return max(0.0, t)

    # --- recovery and intake ------------------------------------------------------------

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

    def _admit(self, row: dict[str, Any]) -> Exec | None:
        try:
            wf, folder, g = self._load_workflow(row["workflow_id"])
        except Exception as exc:  # a damaged row must not stop the daemon
            log.error("execution %s: cannot load its workflow: %s", row["id"], exc)
            ex_err = {"code": errors.VALIDATION_ERROR, "message": f"cannot load workflow: {exc}"}
            assert self.store is not None
            with self.store.atomic() as c:
                c.execute(
                    "UPDATE executions SET status='failed', error=?, finished_at=?, updated_at=? "
                    "WHERE id=?",
                    (dumps(ex_err), time.time(), time.time(), row["id"]),
                )
            self.finished.add(row["id"])
            return None
        ex = Exec(row, wf, folder, g)
        self.execs[ex.id] = ex
        return ex

    def _recover(self) -> None:
        """Load every unfinished execution; continue where the database says it was."""
        assert self.store is not None
        rows = self.store.active_executions()
        for row in rows:
            if self.only_execution and row["id"] != self.only_execution:
                continue
            ex = self._admit(row)
            if ex is None:
                continue
            if ex.status == "queued":
                self._start_execution(ex)
                continue
            self._event(ex, None, "recovered", None)
            self._restore_runs(ex)
            self._advance_frame(ex.top)
            self._maybe_finish(ex)
        self.last_poll = time.monotonic()

    def _restore_runs(self, ex: Exec) -> None:
        assert self.store is not None
        frame = ex.top
        now = time.time()
        settings = ex.workflow.settings
        for r in self.store.node_runs(ex.id):
            node = frame.graph.nodes.get(r["node_id"])
            if node is None or r["path"] != frame.path_of(node.id):
                continue
            run = Run(ex, frame, node, r["path"])
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
            run.in_queue_table = run.status in ACTIVE_STATUSES
            run.seq = self._max_seq(ex.id, run.path)
            frame.runs[node.id] = run
            if run.terminal:
                frame.resolved += 1
                continue
            ex.active += 1
            if run.status == "running" and isinstance(node, DelayNode):
                self._timer(run.next_attempt_at or now, "delay", run)
            elif run.status == "running":
                # The supervisor died while this node ran: an infrastructure
                # interruption, re-run without spending an attempt.
                run.recoveries += 1
                if run.recoveries > settings.recovery_attempts:
                    ex.active -= 1
                    run.status = "queued"
                    self._final_failure(
                        run,
                        self._error(
                            run,
                            errors.SUPERVISOR_CRASH,
                            f"the supervisor stopped while this node ran, "
                            f"{run.recoveries} times (settings.recoveryAttempts="
                            f"{settings.recovery_attempts})",
                        ),
                        retryable=False,
                    )
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

    def _max_seq(self, eid: str, path: str) -> int:
        assert self.store is not None
        row = self.store.conn.execute(
            "SELECT max(seq) FROM attempts WHERE execution_id=? AND path=?", (eid, path)
        ).fetchone()
        return int(row[0] or 0)

    def _poll_db(self) -> None:
        assert self.store is not None
        self.last_poll = time.monotonic()
        if self.stopping:
            return
        if self.only_execution:
            if self.only_execution in self.execs or self.only_execution in self.finished:
                return
            row = self.store.get_execution(self.only_execution)
            rows = [row] if row and row["status"] == "queued" else []
        else:
            rows = self.store.new_executions(set(self.execs) | self.finished)
        for row in rows:
            ex = self._admit(row)
            if ex is not None:
                self._start_execution(ex)

    def _start_execution(self, ex: Exec) -> None:
        now = time.time()
        ex.status = "running"
        ex.started_at = now
        timeout = ex.workflow.settings.timeout
        ex.deadline_at = now + timeout / 1000.0 if timeout else None
        self._mark_exec(ex)
        self._event(ex, None, "started", None)
        self._advance_frame(ex.top)
        self._maybe_finish(ex)

    # --- state transitions --------------------------------------------------------------

    def _advance_frame(self, frame: Frame) -> None:
        """Start or skip every node of ``frame`` whose dependencies are all finished."""
        for nid in frame.graph.order:
            if nid not in frame.runs:
                self._consider(frame, nid)

    def _consider(self, frame: Frame, nid: str) -> None:
        ex = frame.ex
        if nid in frame.runs or ex.failure is not None or ex.status != "running":
            return
        g = frame.graph
        runs = frame.runs
        deps = g.deps[nid]
        verdict = "run"
        if deps:
            taken = False
            for d in deps:
                r = runs.get(d.source)
                if r is None or not r.terminal:
                    return
                if not taken and graph.dep_taken(d, r.status, r.port):
                    taken = True
            verdict = "run" if taken else "skip"
        node = g.nodes[nid]
        run = Run(ex, frame, node, frame.path_of(nid))
        runs[nid] = run
        now = time.time()
        if verdict == "skip":
            run.status = "skipped"
            run.finished_at = now
            self._mark(run)
            self._resolved(run)
            return
        run.queued_at = now
        ex.active += 1
        if isinstance(node, WORKER_TYPES):
            run.status = "queued"
            self._mark(run)
            self._enqueue(run)
        else:
            self._run_inline(run)

    def _enqueue(self, run: Run) -> None:
        ex = run.ex
        if not ex.ready and ex.id not in self.rr:
            self.rr.append(ex.id)
        ex.ready.append(run)
        self.ready_count += 1

    def _scope(self, run: Run, extra: dict[str, Any] | None = None) -> Scope:
        b = run.branch
        if b is not None and b.id is not None:
            extra = dict(extra or {})
            extra.setdefault("branch", b.scope())
        return Scope(run.frame, extra)

    def _log_line(self, run: Run) -> Callable[[str], None]:
        def write(line: str) -> None:
            self.batch.logs.append((run.ex.id, run.path, run.seq, time.time(), "log", line))

        return write

    def _run_inline(self, run: Run) -> None:
        """Evaluate a supervisor-side node now (expressions, merges, timers)."""
        node = run.node
        run.seq += 1
        run.attempt += 1
        now = time.time()
        run.started_at = now
        if isinstance(node, DelayNode):
            try:
                ms = delay.duration_ms(node, self._scope(run))
            except (errors.NodeError, expr.ExpressionError) as exc:
                self._inline_failed(run, exc)
                return
            run.status = "running"
            run.next_attempt_at = now + ms / 1000.0
            self._mark(run)
            self._attempt_row(run, "running", None)
            self._timer(run.next_attempt_at, "delay", run)
            return
        try:
            value: Any
            port: str | None
            scope = self._scope(run)
            logger = self._log_line(run)
            if isinstance(node, TransformNode):
                value, port = transform.evaluate(node, scope, logger)
            elif isinstance(node, ConditionNode):
                value, port = condition.evaluate(node, scope, logger)
            elif isinstance(node, SwitchNode):
                value, port = switch.evaluate(node, scope, logger)
            elif isinstance(node, OutputNode):
                value, port = output.evaluate(node, scope, logger)
            elif isinstance(node, MergeNode):
                value, port = merge.automatic(self._predecessor_outputs(run))
            else:
                raise errors.NodeError(
                    f"node type '{getattr(node, 'type', '?')}' is not supported by this "
                    "version of fm_local",
                    errors.VALIDATION_ERROR,
                )
            text = dumps(value)
        except (errors.NodeError, expr.ExpressionError, ValueError, TypeError) as exc:
            self._inline_failed(run, exc)
            return
        run.port = port
        run.set_output(value, text)
        run.finished_at = time.time()
        self._attempt_row(run, "succeeded", None)
        self._succeeded(run)

    def _inline_failed(self, run: Run, exc: Exception) -> None:
        if isinstance(exc, expr.ExpressionError):
            src = getattr(exc, "expression", None)
            msg = f"expression {src!r} failed: {exc}" if src else f"expression failed: {exc}"
            err = self._error(run, errors.EXPRESSION_ERROR, msg)
        elif isinstance(exc, errors.NodeError):
            err = self._error(run, exc.code, str(exc))
        else:
            err = self._error(run, errors.OUTPUT_NOT_SERIALIZABLE, f"value is not JSON: {exc}")
        run.finished_at = time.time()
        self._attempt_row(run, "failed", err)
        self._attempt_failed(run, err)

    def _predecessor_outputs(self, run: Run) -> dict[str, Any]:
        frame = run.frame
        out: dict[str, Any] = {}
        for d in frame.graph.deps[run.node.id]:
            if d.is_ref:
                continue
            r = frame.runs.get(d.source)
            if r is not None and r.status == "succeeded" and graph.dep_taken(d, r.status, r.port):
                out[d.source] = r.value()
        return out

    def _error(self, run: Run, code: str, message: str, details: Any = None) -> dict[str, Any]:
        return {
            "code": code,
            "message": message,
            "nodeId": run.node.id,
            "nodePath": run.path,
            "attempt": run.attempt,
            "timestamp": int(time.time() * 1000),
            "details": details,
        }

    def _succeeded(self, run: Run) -> None:
        run.status = "succeeded"
        if run.finished_at is None:
            run.finished_at = time.time()
        run.ex.active -= 1
        self._mark(run)
        self._resolved(run)

    def _attempt_failed(self, run: Run, err: dict[str, Any]) -> None:
        """An attempt failed: retry it, or fail the node for good."""
        policy: RetryPolicy = run.node.retry or run.ex.default_retry
        if run.attempt < policy.max_attempts and retries.is_retryable(policy, err):
            delay_ms = retries.retry_delay_ms(policy, run.attempt, err)
            run.status = "retry_wait"
            run.error = err
            run.next_attempt_at = time.time() + delay_ms / 1000.0
            self._mark(run)
            self._timer(run.next_attempt_at, "retry", run)
            return
        run.ex.active -= 1
        self._final_failure(run, err, retryable=True)

    def _final_failure(self, run: Run, err: dict[str, Any], *, retryable: bool) -> None:
        """The node failed for good (``ex.active`` already released)."""
        node = run.node
        run.error = err
        run.finished_at = run.finished_at or time.time()
        ex = run.ex
        settings = ex.workflow.settings
        if settings.queue.dead_letter_queue:
            self.batch.dead_letters.append(
                (ex.id, run.path, node.id, None, dumps(err), run.attempt, time.time())
            )
        if node.error_strategy == "continue":
            run.status = "succeeded"
            run.set_output(node.output_on_error)
            self._mark(run)
            self._resolved(run)
            return
        run.status = "failed"
        g = run.frame.graph
        has_error_edge = any(
            d.handle == graph.ERROR_HANDLE
            for dep in g.dependents[node.id]
            for d in g.deps[dep]
            if d.source == node.id
        )
        run.handled = has_error_edge
        self._mark(run)
        if not has_error_edge and ex.failure is None:
            ex.failure = {
                "code": err.get("code"),
                "message": f"node '{run.path}' failed: {err.get('message')}",
                "nodePath": run.path,
                "nodeId": node.id,
                "details": err,
            }
            self._stop_starting(ex)
        self._resolved(run)

    def _stop_starting(self, ex: Exec) -> None:
        """Fail-fast (the execution default): nothing new starts; queued and waiting
        nodes are cancelled; running nodes finish and record."""
        for run in list(ex.ready):
            self._cancel_run(run, "not started: an earlier node failed")
        self.ready_count -= len(ex.ready)
        ex.ready.clear()
        for _, _, _, run in self.timers:
            if run.ex is ex and run.status in ("retry_wait", "running") and not run.task_id:
                self._cancel_run(run, "not started: an earlier node failed")

    def _cancel_run(self, run: Run, reason: str, status: str = "cancelled") -> None:
        if run.terminal:
            return
        run.status = status
        run.finished_at = time.time()
        run.error = run.error or self._error(run, errors.CANCELLED, reason)
        run.ex.active -= 1
        if run.seq:
            self._attempt_row(run, status, run.error)
        self._mark(run)
        run.frame.resolved += 1

    def _resolved(self, run: Run) -> None:
        """``run`` reached a terminal status: wake its dependents, maybe finish."""
        frame = run.frame
        frame.resolved += 1
        ex = frame.ex
        if ex.failure is None and ex.status == "running":
            for dep in frame.graph.dependents[run.node.id]:
                if dep not in frame.runs:
                    self._consider(frame, dep)
        self._maybe_finish(ex)

    def _maybe_finish(self, ex: Exec) -> None:
        if ex.active > 0 or ex.status not in ("running",):
            return
        if ex.failure is not None:
            self._finish_execution(ex, "failed", None, ex.failure)
            return
        top = ex.top
        if top.resolved < len(top.graph.nodes):
            return
        self._finish_execution(ex, "succeeded", self._execution_output(ex), None)

    def _execution_output(self, ex: Exec) -> Any:
        top = ex.top
        outs = [n for n in top.graph.nodes.values() if isinstance(n, OutputNode)]
        result: dict[str, Any] = {}
        if outs:
            for n in outs:
                r = top.runs.get(n.id)
                if r is not None and r.status == "succeeded":
                    result[n.key] = r.value()
            return result
        for sid in top.graph.sinks:
            r = top.runs.get(sid)
            if r is not None and r.status == "succeeded":
                result[sid] = r.value()
        return result

    def _finish_execution(
        self, ex: Exec, status: str, out: Any, error: dict[str, Any] | None
    ) -> None:
        ex.status = status
        ex.output = out
        ex.error = error
        ex.finished_at = time.time()
        self._mark_exec(ex)
        self._event(ex, None, status, error)
        # The result becomes observable only once committed.
        self.flush()
        self.finished.add(ex.id)
        self.execs.pop(ex.id, None)
        if ex.id in self.rr:
            self.rr.remove(ex.id)

    # --- workers ------------------------------------------------------------------------

    def _dispatch(self) -> None:
        pool = self.pool
        assert pool is not None
        if self.stopping or not self.ready_count:
            return
        deep = self.ready_count > 2 * len(pool.slots)
        cap = PREFETCH if deep else 1
        for slot in pool.slots:
            if not self.ready_count:
                return
            if not slot.ready or len(slot.inflight) >= cap:
                continue
            want = cap - len(slot.inflight)
            if deep:
                want = min(want, max(1, self.ready_count // len(pool.slots)))
            tasks = []
            while want > 0 and self.rr:
                run = self._next_ready()
                if run is None:
                    break
                task = self._make_task(run, slot)
                if task is not None:
                    tasks.append(task)
                    want -= 1
            if tasks:
                pool.submit(slot, tasks)
            if not self.rr:
                return

    def _next_ready(self) -> Run | None:
        """The next task in fair round-robin order across executions, within limits."""
        for _ in range(len(self.rr)):
            eid = self.rr[0]
            self.rr.rotate(-1)
            ex = self.execs.get(eid)
            if ex is None or not ex.ready:
                self.rr.remove(eid)
                continue
            if ex.status != "running":
                continue
            if ex.max_concurrency is not None and ex.running >= ex.max_concurrency:
                continue
            run = ex.ready.popleft()
            self.ready_count -= 1
            if not ex.ready:
                self.rr.remove(eid)
            return run
        return None

    def _make_task(self, run: Run, slot: Slot) -> dict[str, Any] | None:
        """Resolve the node's templates and build its task; None if that failed."""
        node = run.node
        ex = run.ex
        run.seq += 1
        if run.attempt_kind == "attempt":
            run.attempt += 1
        now = time.time()
        run.started_at = now
        run.finished_at = None
        try:
            spec = self._task_spec(run)
        except (expr.ExpressionError, errors.NodeError) as exc:
            self._inline_failed(run, exc)
            return None
        tid = next(self.task_ids)
        run.task_id = tid
        run.status = "running"
        run.worker_pid = slot.pid
        ex.running += 1
        self.tasks[tid] = run
        self._mark(run)
        self._attempt_row(run, "running", None)
        b = run.branch
        return {
            "id": tid,
            "type": node.type,  # type: ignore[attr-defined]
            "spec": spec,
            "folder": ex.folder,
            "ctx": {
                "executionId": ex.id,
                "nodePath": run.path,
                "attempt": run.attempt,
                "traceId": run.trace_id,
                "idempotencyKey": f"{ex.id}:{run.path}",
                "parallel": run.frame.vars.get("parallel"),
                "branch": b.scope() if b is not None else None,
            },
        }

    def _task_spec(self, run: Run) -> dict[str, Any]:
        node = run.node
        scope = self._scope(run)
        if isinstance(node, PythonNode):
            return {"call": node.call, "args": expr.render_value(node.args, scope)}
        if isinstance(node, HttpNode):
            return {
                "method": expr.render_value(node.method, scope),
                "url": expr.render_value(node.url, scope),
                "headers": expr.render_value(node.headers, scope),
                "query": expr.render_value(node.query, scope),
                "json": expr.render_value(node.json_body, scope),
                "body": expr.render_value(node.body, scope),
                "timeout": node.timeout,
            }
        if isinstance(node, ShellNode):
            return {
                "command": expr.render_value(node.command, scope),
                "env": expr.render_value(node.env, scope),
                "cwd": expr.render_value(node.cwd, scope),
                "allowFailure": node.allow_failure,
            }
        raise errors.NodeError(f"not a worker node: {node.type}")  # type: ignore[attr-defined]

    def _on_results(self, slot: Slot, done: list[tuple[dict[str, Any], tuple[Any, ...]]]) -> None:
        for task, result in done:
            run = self.tasks.pop(task["id"], None)
            if run is None or run.task_id != task["id"]:
                continue  # a late result of a stopped attempt: discarded
            run.task_id = None
            _, ok, out, err, logs, started, finished = result
            ex = run.ex
            ex.running -= 1
            run.started_at = started
            run.finished_at = finished
            if logs:
                eid, path, seq = ex.id, run.path, run.seq
                self.batch.logs.extend((eid, path, seq, ts, s, line) for ts, s, line in logs)
            if run.terminal:
                continue  # cancelled while it ran: the result is kept out
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

    def _on_worker_died(self, slot: Slot, held: list[dict[str, Any]]) -> None:
        for i, task in enumerate(held):
            run = self.tasks.pop(task["id"], None)
            if run is None or run.task_id != task["id"]:
                continue
            run.task_id = None
            run.ex.running -= 1
            if i > 0 or run.terminal:
                # Not started yet: back to the queue, nothing spent.
                self._requeue(run)
                continue
            self._interrupted(run, errors.WORKER_CRASH, f"worker process {slot.pid} died")

    def _interrupted(self, run: Run, code: str, message: str) -> None:
        """An infrastructure interruption: re-run without spending an attempt."""
        ex = run.ex
        limit = ex.workflow.settings.recovery_attempts
        run.recoveries += 1
        run.finished_at = time.time()
        err = self._error(run, code, message)
        self._attempt_row(run, "failed", err, kind=run.attempt_kind)
        if run.recoveries > limit:
            ex.active -= 1
            err["message"] += f" ({run.recoveries} times; settings.recoveryAttempts={limit})"
            self._final_failure(run, err, retryable=False)
            return
        run.attempt_kind = "recovery"
        self._requeue(run)

    def _requeue(self, run: Run) -> None:
        if run.seq and run.attempt_kind == "attempt":
            # The dispatch counted an attempt that never ran; give it back.
            run.attempt -= 1
        run.status = "queued"
        self._mark(run)
        self._enqueue(run)

    def _check_deadlines(self, now: float) -> None:
        pool = self.pool
        assert pool is not None
        now_m = time.monotonic()
        for slot in list(pool.slots):
            if not slot.inflight:
                continue
            run = self.tasks.get(slot.inflight[0]["id"])
            if run is None or not run.node.timeout:
                continue
            if now_m - slot.head_since < run.node.timeout / 1000.0:
                continue
            held = pool.stop_slot(slot)
            for i, task in enumerate(held):
                r = self.tasks.pop(task["id"], None)
                if r is None or r.task_id != task["id"]:
                    continue
                r.task_id = None
                r.ex.running -= 1
                if i == 0:
                    self._timed_out(r)
                else:
                    self._requeue(r)
        for ex in list(self.execs.values()):
            if ex.deadline_at is not None and now >= ex.deadline_at and ex.status == "running":
                self._execution_timed_out(ex)

    def _timed_out(self, run: Run) -> None:
        node = run.node
        run.finished_at = time.time()
        ms = node.timeout
        err = self._error(run, errors.TIMEOUT, f"timed out after {ms} ms (attempt {run.attempt})")
        if node.on_timeout == "cancel":
            self._attempt_row(run, "cancelled", err)
            run.error = err
            run.status = "cancelled"
            run.ex.active -= 1
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
        self._stop_execution(ex, "timed_out")
        err = {
            "code": errors.EXECUTION_TIMEOUT,
            "message": f"execution exceeded settings.timeout ({ms} ms)",
        }
        ex.failure = err
        self._finish_execution(ex, "timed_out", None, err)

    def _stop_execution(self, ex: Exec, node_status: str) -> None:
        """Stop everything of ``ex`` now: its running workers too."""
        pool = self.pool
        assert pool is not None
        ex.failure = ex.failure or {"code": errors.CANCELLED, "message": "stopped"}
        self._stop_starting(ex)
        for slot in list(pool.slots):
            if not any(
                self.tasks.get(t["id"]) and self.tasks[t["id"]].ex is ex for t in slot.inflight
            ):
                continue
            held = pool.stop_slot(slot)
            for _i, task in enumerate(held):
                r = self.tasks.pop(task["id"], None)
                if r is None or r.task_id != task["id"]:
                    continue
                r.task_id = None
                r.ex.running -= 1
                if r.ex is ex:
                    self._cancel_run(r, f"stopped: execution {node_status}", node_status)
                else:
                    self._requeue(r)
        for run in ex.top.runs.values():
            if not run.terminal:
                self._cancel_run(run, f"stopped: execution {node_status}", node_status)

    # --- timers -------------------------------------------------------------------------

    def _timer(self, due: float, kind: str, run: Run) -> None:
        heapq.heappush(self.timers, (due, next(self.timer_seq), kind, run))

    def _fire_timers(self, now: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, kind, run = heapq.heappop(timers)
            if run.terminal or run.ex.status != "running":
                continue
            if kind == "retry" and run.status == "retry_wait":
                run.status = "queued"
                run.next_attempt_at = None
                self._mark(run)
                self._enqueue(run)
            elif kind == "delay" and run.status == "running":
                run.set_output(None)
                run.finished_at = time.time()
                self._attempt_row(run, "succeeded", None)
                self._succeeded(run)

    # --- group commits ------------------------------------------------------------------

    def _mark(self, run: Run) -> None:
        self.dirty_runs[id(run)] = run

    def _mark_exec(self, ex: Exec) -> None:
        self.dirty_execs[ex.id] = ex

    def _attempt_row(
        self, run: Run, status: str, err: dict[str, Any] | None, kind: str | None = None
    ) -> None:
        ex = run.ex
        self.batch.attempts[(ex.id, run.path, run.seq)] = (
            ex.id,
            run.path,
            run.seq,
            run.attempt,
            kind or run.attempt_kind,
            status,
            None if err is None else dumps(err),
            run.worker_pid,
            run.started_at,
            None if status == "running" else run.finished_at,
        )

    def _event(self, ex: Exec, path: str | None, kind: str, detail: Any) -> None:
        self.batch.events.append(
            (ex.id, path, time.time(), kind, None if detail is None else dumps(detail))
        )

    def _maybe_flush(self) -> None:
        if not (self.dirty_runs or self.dirty_execs or len(self.batch)):
            return
        now_m = time.monotonic()
        if (
            now_m - self.last_flush >= FLUSH_INTERVAL
            or len(self.dirty_runs) + len(self.batch) >= FLUSH_MAX
        ):
            self.flush()

    def flush(self) -> None:
        """One group commit of everything changed since the last one."""
        assert self.store is not None
        b = self.batch
        for run in self.dirty_runs.values():
            ex = run.ex
            key = (ex.id, run.path)
            err = run.error
            b.node_runs[key] = (
                ex.id,
                run.path,
                run.node.id,
                run.node.type,  # type: ignore[attr-defined]
                run.status,
                run.attempt,
                run.recoveries,
                run.output_json if run.status == "succeeded" else None,
                None if err is None else dumps(err),
                run.port,
                int(run.handled),
                run.trace_id,
                run.branch.id if run.branch is not None else None,
                run.worker_pid,
                run.queued_at,
                run.started_at,
                run.finished_at,
                run.next_attempt_at,
            )
            status = run.status
            if status in ACTIVE_STATUSES:
                qstatus = "timer" if isinstance(run.node, DelayNode) else status
                b.queue[key] = (
                    ex.id,
                    run.path,
                    run.node.id,
                    qstatus,
                    run.node.priority if run.node.priority is not None else ex.priority,
                    run.next_attempt_at,
                    run.queued_at or time.time(),
                    run.worker_pid if status == "running" else None,
                )
                run.in_queue_table = True
            elif run.in_queue_table:
                b.queue[key] = None
                run.in_queue_table = False
        now = time.time()
        for ex in self.dirty_execs.values():
            b.executions[ex.id] = (
                ex.id,
                ex.status,
                None if ex.output is None and ex.status != "succeeded" else dumps(ex.output),
                None if ex.error is None else dumps(ex.error),
                ex.priority,
                ex.started_at,
                ex.finished_at,
                ex.deadline_at,
                now,
            )
        self.dirty_runs = {}
        self.dirty_execs = {}
        self.batch = Batch()
        if len(b):
            self.store.commit_batch(b)
        self.last_flush = time.monotonic()

    # --- stopping -----------------------------------------------------------------------

    def _drain(self) -> None:
        """Graceful stop: start nothing new, let running nodes finish (bounded)."""
        pool = self.pool
        if pool is None:
            return
        deadline = time.monotonic() + self.drain_timeout
        self.stopping = True
        while self.tasks and time.monotonic() < deadline:
            for kind, slot, payload in pool.poll(0.05):
                if kind == "results":
                    self._on_results(slot, payload)
                elif kind == "died":
                    self._on_worker_died(slot, payload)
            self._maybe_flush()
        # Whatever still runs is re-run by the next supervisor, not counted.
        for run in list(self.tasks.values()):
            run.task_id = None
            if not run.terminal:
                if run.attempt_kind == "attempt":
                    run.attempt -= 1
                run.status = "queued"
                self._mark(run)
        self.tasks.clear()
        self.flush()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
