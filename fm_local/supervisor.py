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
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import signal
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fm_local import errors, expr, graph, jsonio, retries
from fm_local import signals as sigs
from fm_local.checkd import CheckService
from fm_local.graph import CompiledGraph
from fm_local.limits import Pool, RateLimiter, rate_spec
from fm_local.lock import SupervisorLock
from fm_local.model import (
    ConditionNode,
    DelayNode,
    HttpNode,
    LoopNode,
    MergeNode,
    NodeBase,
    OutputNode,
    PythonNode,
    RetryPolicy,
    SectionPolicy,
    ShellNode,
    SwitchNode,
    TransformNode,
    WaitNode,
    Workflow,
)
from fm_local.nodes import condition, delay, loop, merge, output, switch, transform
from fm_local.resources import KEEP_SECONDS, Sampler
from fm_local.store import Batch, Rejected, Store, dumps, loads, storage_error
from fm_local.wake import Listener
from fm_local.workers import ProcessPool, Slot

log = logging.getLogger("fm_local.supervisor")

WORKER_TYPES = (PythonNode, HttpNode, ShellNode)
FLUSH_INTERVAL = 0.004  # seconds between group commits while busy
FLUSH_MAX = 4000  # rows: commit sooner than the interval when this many are dirty
DB_POLL_INTERVAL = 0.05  # seconds between looks for new executions and signals
# Prefetch: when the backlog is deep, a worker may hold tasks behind the one it
# runs (saving a round trip each), but only as much work as it will finish soon,
# so that no task waits long behind another execution's long node.
PREFETCH = 16  # most tasks queued on one worker
PREFETCH_WINDOW = 0.005  # seconds of expected work a worker may hold behind its head
PREFETCH_HOLD = 0.02  # a head running longer than this (and 2x its estimate): take back
DRAIN_TIMEOUT = 10.0  # seconds a graceful stop waits for running nodes
WORKER_START_TIMEOUT = 10.0  # seconds to wait for the pool before serving
ACTIVE_STATUSES = frozenset({"queued", "running", "retry_wait"})
_UNSET = object()


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
    """One node instance (or one loop item): its status, attempt and result."""

    __slots__ = (
        "ex",
        "frame",
        "node",
        "path",
        "ntype",
        "item_index",
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
        "loop",
        "held_pool",
        "gate_marks",
        "prefetched",
        "parent",
        "extra",
        "fell_back",
        "aux_kind",
        "ready_at",
        "input_json",
        "code",
        "items",
    )

    def __init__(self, ex: Exec, frame: Frame, node: NodeBase, path: str) -> None:
        self.ex = ex
        self.frame = frame
        self.node = node
        self.path = path
        self.ntype: str = node.type  # type: ignore[attr-defined]
        self.item_index: int | None = None
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
        self.loop: LoopState | None = None
        self.held_pool: Pool | None = None
        self.gate_marks: list[tuple[RateLimiter, float]] | None = None
        self.prefetched = False  # handed to a worker behind another task
        self.parent: Run | None = None  # the failed node this fallback/handler serves
        self.extra: dict[str, Any] | None = None  # scope additions (error, signal)
        self.fell_back = False  # its fallback node already ran
        self.aux_kind: str | None = None  # fallback, goto, compensate, handler
        self.ready_at = 0.0  # when it last entered the ready queue
        self.input_json: str | None = None  # the resolved task input (worker nodes)
        self.code: str | None = None  # which module file (and its hash) a python node ran
        self.items: int | None = None  # a loop's item count

    def value(self) -> Any:
        if self._value is _UNSET:
            self._value = loads(self.output_json)
        return self._value

    def set_output(self, value: Any, text: str | None = None) -> None:
        self._value = value
        self.output_json = text if text is not None else jsonio.bounded_dumps(value)

    @property
    def terminal(self) -> bool:
        return self.status in graph.TERMINAL


class Frame:
    """A graph being executed: an execution's top level, or one loop item's body."""

    __slots__ = (
        "ex",
        "graph",
        "prefix",
        "parent",
        "vars",
        "runs",
        "trace_root",
        "resolved",
        "active",
        "failure",
        "halted",
        "done",
        "loop",
        "index",
        "item",
        "gated",
        "started",
        "sections",
    )

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
        self.active = 0  # runs not yet terminal
        self.failure: dict[str, Any] | None = None  # first unhandled failure
        self.halted = False  # nothing new starts here (failure, stop, cancel)
        self.done = False
        self.loop: LoopState | None = None  # the loop this frame is an item of
        self.index: int | None = None
        self.item: Run | None = None  # the item's own record
        self.gated = False  # the item's first start still needs the loop's rate limit
        self.started = parent is None  # an item starts when its first node does
        self.sections: dict[str, SectionState] = {}

    def path_of(self, node_id: str) -> str:
        return self.prefix + node_id

    def within(self, other: Frame) -> bool:
        f: Frame | None = self
        while f is not None:
            if f is other:
                return True
            f = f.parent
        return False

    def stopped(self) -> bool:
        f: Frame | None = self
        while f is not None:
            if f.halted:
                return True
            f = f.parent
        return self.ex.status not in ("running", "paused")


class LoopState:
    """A running loop: which items are open, counts, batches, its limits."""

    __slots__ = (
        "run",
        "node",
        "body",
        "items",
        "n",
        "next_index",
        "open",
        "started",
        "succeeded",
        "failed",
        "cancelled",
        "batch_size",
        "batch_end",
        "batch_wait",
        "limiter",
        "gate_inline",
        "stopped",
        "policy",
        "window",
        "first_error",
        "errors",
        "timed_out",
        "finished",
    )

    def __init__(
        self, run: Run, node: LoopNode, body: CompiledGraph, items: list[Any] | None, n: int
    ):
        self.run = run
        self.node = node
        self.body = body
        self.items = items
        self.n = n
        self.next_index = 0
        self.open: dict[int, Frame] = {}
        self.started = bytearray(n)
        self.succeeded = 0
        self.failed = 0
        self.cancelled = 0
        self.batch_size = node.batch_size
        self.batch_end = min(n, node.batch_size) if node.batch_size else n
        self.batch_wait = False
        self.limiter: RateLimiter | None = None
        self.gate_inline = False
        self.stopped = False
        self.policy: SectionPolicy = SectionPolicy()
        self.window = 1
        self.first_error: dict[str, Any] | None = None
        self.errors: list[dict[str, Any]] = []
        self.timed_out = False
        self.finished = False


class SectionState:
    """A merge's section at run time: its branches' failures, timeouts, winner."""

    __slots__ = (
        "sec",
        "node",
        "policy",
        "failures",
        "overrides",
        "absent",
        "halted",
        "first_start",
        "branch_start",
        "timed_out",
        "done",
    )

    def __init__(self, sec: graph.Section, node: MergeNode, policy: SectionPolicy) -> None:
        self.sec = sec
        self.node = node
        self.policy = policy
        self.failures: dict[str, dict[str, Any]] = {}  # branch -> error
        self.overrides: dict[str, Any] = {}  # branch -> value (onTimeout "continue")
        self.absent: set[str] = set()  # branches cancelled (onTimeout "cancel", losers)
        self.halted = False  # start nothing new in the section
        self.first_start: float | None = None
        self.branch_start: dict[str, float] = {}
        self.timed_out = False
        self.done = False

    def contains(self) -> bool:
        """A failure in a merge's section is the merge's business: its policy
        decides, and the merge fails (then the graph) when the policy says so."""
        return True


def _priority(run: Run) -> int:
    p = run.node.priority
    return p if p is not None else run.ex.priority


def _exec_order(ex: Exec) -> tuple[float, float]:
    """Sort key of a workflow's executions by its queue policy."""
    if ex.policy == "lifo":
        return (0.0, -ex.created_at)
    if ex.policy == "priority":
        return (-float(ex.priority), ex.created_at)
    return (0.0, ex.created_at)


def _error_list(fails: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "branch": b,
            "code": e.get("code"),
            "message": e.get("message"),
            "attempt": e.get("attempt"),
        }
        for b, e in fails.items()
    ]


def _failure_of(run: Run) -> dict[str, Any]:
    """The frame failure a failed run stands for (as ``_final_failure`` builds it)."""
    err = run.error or {}
    return {
        "code": err.get("code"),
        "message": f"node '{run.path}' failed: {err.get('message')}",
        "nodePath": run.path,
        "nodeId": run.node.id,
        "attempt": run.attempt,
        "details": err,
    }


def _internal(exc: BaseException, doing: str) -> dict[str, Any]:
    """The INTERNAL_ERROR record of an exception met while ``doing`` something."""
    text = jsonio.clean_text(str(exc))[:500]
    return {
        "code": errors.INTERNAL_ERROR,
        "message": f"internal error in the supervisor while {doing}: "
        f"{type(exc).__name__}{': ' + text if text else ''}",
    }


def _timer_owner(kind: str, obj: Any) -> Exec | None:
    """The execution a timer belongs to (None for a shared limiter's wake-up)."""
    if isinstance(obj, Run) or isinstance(obj, Frame):
        return obj.ex
    if isinstance(obj, LoopState):
        return obj.run.ex
    if isinstance(obj, tuple) and obj and isinstance(obj[0], Frame):
        return obj[0].ex
    return None


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
        self.signal_scope: dict[str, Any] = {}
        self.ready: deque[Run] = deque()
        self.max_concurrency = workflow.settings.max_concurrency
        self.default_retry = workflow.settings.retry
        self.wf_key: int = row["workflow_id"]
        self.created_at: float = row["created_at"]
        self.policy = workflow.settings.queue.priority
        self.queued = False  # listed among its workflow's executions with ready tasks
        # Tasks are handed to a busy worker ahead of time only where that cannot
        # break an order or a limit (fifo, no wait limit, no concurrency cap).
        self.no_prefetch = (
            self.policy != "fifo"
            or workflow.settings.queue.timeout is not None
            or workflow.settings.max_concurrency is not None
        )
        self.cancel_error: dict[str, Any] | None = None  # set by a cancel signal
        self.deferred_work: list[tuple[Frame, str]] = []  # held while paused
        self.deferred_loops: list[LoopState] = []
        self.waits: dict[str, list[Run]] = {}  # signal type -> waiting wait nodes
        self.unconsumed: dict[str, Any] = {}  # signal data no wait node took yet
        self.signal_latest: dict[str, int] = {}  # type -> id of the newest signal
        self.compensations: deque[Run] = deque()


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
        max_worker_memory_mb: int | None = None,
        subreaper: bool = False,
    ) -> None:
        self.db = Path(db)
        self.subreaper = subreaper  # this process is ours (fm daemon, fm run): see workers
        self.max_worker_memory_mb = max_worker_memory_mb
        self.n_workers = max(1, workers)
        self.durability = durability
        self.only_execution = only_execution
        self.drain_timeout = drain_timeout
        self.lock = SupervisorLock(self.db)
        self.store: Store | None = None
        self.pool: ProcessPool | None = None
        self.execs: dict[str, Exec] = {}
        # Workflows with ready tasks, served round robin (fair sharing between
        # workflows); within a workflow, executions in queue-policy order.
        self.rr: deque[int] = deque()
        self.wf_execs: dict[int, list[Exec]] = {}
        self.tasks: dict[int, Run] = {}
        self.task_ids = itertools.count(1)
        self.timers: list[tuple[float, int, str, Any]] = []
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
        self.bodies: dict[int, CompiledGraph] = {}
        self.ready_count = 0
        self.work: deque[tuple[Frame, str]] = deque()
        self.frames_to_check: deque[Frame] = deque()
        self.loops_to_open: deque[LoopState] = deque()
        self.limiters: dict[Any, RateLimiter] = {}
        self.pools: dict[str, Pool] = {}
        self.parked: dict[int, deque[Run]] = {}
        self.parked_loops: dict[int, set[LoopState]] = {}
        self.signals_in_progress: set[int] = set()  # custom handlers still running
        self.sampler: Sampler | None = None
        self.wake_pending: set[int] = set()
        self.on_tick: Callable[[], None] | None = None
        self.rejected: list[Rejected] = []  # rows the last group commit refused
        self.wake: Listener | None = None  # nudged by clients after they commit
        self.checks: CheckService | None = None  # validates documents for clients
        # Expected run time per node (by node object: a loop body's node is one
        # object for every item), an average of what workers reported.
        self.durations: dict[int, float] = {}
        self.storage_failed = False  # a commit failed for the storage's sake
        self._signal_applying = False  # the signal being handled has changed state

    # --- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        self.lock.acquire()
        try:
            self.store = Store(self.db, durability=self.durability)
            self.pool = ProcessPool(
                self.n_workers, max_rss_mb=self.max_worker_memory_mb, subreaper=self.subreaper
            )
            self.pool.start()
            self.pool.wait_ready(WORKER_START_TIMEOUT)
            self.sampler = Sampler()
            self.wake = Listener(self.db)
            self.checks = CheckService(self.db)
            self._recover()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            dirty = self.dirty_runs or self.dirty_execs or len(self.batch)
            if self.store is not None and dirty and not self.storage_failed:
                self.flush()
        finally:
            if self.wake is not None:
                self.wake.close()
                self.wake = None
            if self.checks is not None:
                self.checks.close()
                self.checks = None
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

    # --- the loop -----------------------------------------------------------------------

    def tick(self) -> None:
        pool = self.pool
        assert pool is not None
        timeout = self._wait_time(time.monotonic())
        self._take_events(pool.poll(timeout, self.wake))
        if self.wake is not None:
            woke, waiting = self.wake.drain()
            if woke:
                self.last_poll = 0.0  # a client committed something: look now
            for eid in waiting:
                if eid in self.finished:
                    self.wake.ended(eid)  # it ended before the waiter registered
        self._settle()
        now = time.time()
        self._fire_timers(now)
        self._check_deadlines(now)
        self._settle()
        if time.monotonic() - self.last_poll >= DB_POLL_INTERVAL:
            self._poll_db()
            self._check_queue_timeouts(now)
            self._settle()
        self._reclaim(time.monotonic())
        self._dispatch()
        self._settle()
        if self.on_tick is not None:
            self.on_tick()
        if self.sampler is not None and self.sampler.due():
            self._sample_resources()
        self._maybe_flush()

    def _take_events(self, events: list[tuple[str, Slot, Any]]) -> None:
        for kind, slot, payload in events:
            if kind == "results":
                self._on_results(slot, payload)
            elif kind == "died":
                self._on_worker_died(slot, payload)

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

    # --- the error boundary ---------------------------------------------------------

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
        if ex.status in ("succeeded", "failed", "cancelled", "timed_out"):
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
            with self.store.atomic() as c:
                c.execute(
                    "UPDATE executions SET status='failed', error=?, updated_at=? "
                    "WHERE id=? AND status='succeeded'",
                    (dumps(err), time.time(), execution_id),
                )
        except errors.StorageError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("execution %s: could not record its failure", execution_id)

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
                if len(slot.inflight) > len(slot.dropping) + 1:
                    # Look again when the tasks queued behind it are due to be taken back.
                    t = min(t, slot.head_since + self._hold(run) - now_m)
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
            with self.store.atomic() as c:
                c.execute(
                    "UPDATE executions SET status='failed', error=?, finished_at=?, updated_at=? "
                    "WHERE id=?",
                    (dumps(ex_err), time.time(), time.time(), row["id"]),
                )
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
        self.last_poll = time.monotonic()

    def _restore_frame(self, frame: Frame) -> None:
        """Rebuild a frame's runs from its committed rows, then continue it."""
        assert self.store is not None
        ex = frame.ex
        now = time.time()
        limit = ex.workflow.settings.recovery_attempts
        last = self._last_attempts(ex.id, frame.prefix)
        loops: list[Run] = []
        exhausted: list[tuple[Run, dict[str, Any]]] = []
        for r in self.store.frame_rows(ex.id, frame.prefix):
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
            if isinstance(node, LoopNode):
                loops.append(run)
            elif isinstance(node, DelayNode) and run.status == "running":
                self._timer(run.next_attempt_at or now, "delay", run)
            elif isinstance(node, WaitNode) and run.status == "running":
                self._start_wait(run, restoring=True)
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
        self._advance_frame(frame)
        self.frames_to_check.append(frame)

    def _recent_starts(self, eid: str, node_id: str) -> list[float]:
        assert self.store is not None
        rows = self.store.conn.execute(
            "SELECT started_at FROM attempts WHERE execution_id=? AND started_at > ? AND "
            "(path = ? OR path GLOB ?)",
            (eid, time.time() - 120, node_id, "*." + node_id),
        ).fetchall()
        return [r[0] for r in rows]

    def _last_attempts(self, eid: str, prefix: str) -> dict[str, tuple[int, str]]:
        """Per node path under ``prefix``: the latest attempt's seq and kind."""
        assert self.store is not None
        from fm_local.store import glob_escape

        rows = self.store.conn.execute(
            "SELECT path, max(seq), kind FROM attempts WHERE execution_id=? AND path GLOB ? "
            "GROUP BY path",
            (eid, glob_escape(prefix) + "*"),
        ).fetchall()
        return {r[0]: (int(r[1] or 0), r[2] or "attempt") for r in rows}

    def _seed_limiter(self, lim: RateLimiter | None, times: list[float]) -> None:
        """Give a fresh limiter the starts committed before a restart, so the
        limit holds across it."""
        if lim is None:
            return
        now = time.time()
        for t in sorted(t for t in times if t and t > now - lim.per - 1.0):
            lim.starts.append(t)
            lim.tat = max(lim.tat, t + lim.interval)

    def _restore_loop(self, run: Run) -> None:
        assert self.store is not None and isinstance(run.node, LoopNode)
        ls = self._loop_state(run)
        if ls is None:
            return
        rows = self.store.item_rows(run.ex.id, run.path)
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
                with self._boundary(ex, "starting it"):
                    self._start_execution(ex)
        self._poll_signals()

    def _start_execution(self, ex: Exec) -> None:
        now = time.time()
        ex.status = "running"
        ex.started_at = now
        timeout = ex.workflow.settings.timeout
        ex.deadline_at = now + timeout / 1000.0 if timeout else None
        self._mark_exec(ex)
        self._event(ex, None, "started", None)
        self._advance_frame(ex.top)
        self.frames_to_check.append(ex.top)

    # --- state transitions --------------------------------------------------------------

    def _advance_frame(self, frame: Frame) -> None:
        """Queue every node of ``frame`` that has no run yet for consideration."""
        for nid in frame.graph.order:
            if nid not in frame.runs:
                self.work.append((frame, nid))

    def _consider(self, frame: Frame, nid: str) -> None:
        """Start or skip ``nid`` if all its dependencies are finished."""
        if nid in frame.runs or frame.done or frame.stopped():
            return
        if frame.ex.status == "paused":
            frame.ex.deferred_work.append((frame, nid))
            return
        runs = frame.runs
        g = frame.graph
        deps = g.deps[nid]
        node = g.nodes[nid]
        verdict: str | None = "run"
        if isinstance(node, MergeNode) and nid in g.sections:
            verdict = self._merge_readiness(frame, nid)
            if verdict is None:
                return
        elif deps:
            # Explicit edges decide whether a node runs; a reference only orders it
            # (unless the node has no edges at all). SPEC §2, docs/semantics.md.
            explicit = g.has_edges[nid]
            taken = False
            for d in deps:
                r = runs.get(d.source)
                if r is None or not r.terminal:
                    return
                if (
                    not taken
                    and (not explicit or not d.is_ref)
                    and graph.dep_taken(d, r.status, r.port)
                ):
                    taken = True
            verdict = "run" if taken else "skip"
        if verdict == "run" and frame.sections and self._in_halted_section(frame, nid):
            verdict = "skip"
        ex = frame.ex
        run = Run(ex, frame, node, frame.prefix + nid)
        runs[nid] = run
        now = time.time()
        if verdict == "skip":
            run.status = "skipped"
            run.finished_at = now
            self._mark(run)
            self._resolved(run)
            return
        run.queued_at = now
        frame.active += 1
        if isinstance(node, WORKER_TYPES):
            run.status = "queued"
            self._mark(run)
            self._enqueue(run)
        elif isinstance(node, LoopNode):
            self._start_loop(run)
        else:
            self._run_inline(run)

    def _enqueue(self, run: Run, front: bool = False) -> None:
        """Put ``run`` in its execution's ready queue, in queue-policy order."""
        ex = run.ex
        run.ready_at = time.time()
        if not ex.queued:
            self._list_ready(ex)
        ready = ex.ready
        policy = ex.policy
        if front or policy == "lifo":
            ready.appendleft(run)
        elif policy == "priority" and ready:
            p = _priority(run)
            if _priority(ready[-1]) >= p:
                ready.append(run)
            else:
                i = 0
                while _priority(ready[i]) >= p:
                    i += 1
                ready.insert(i, run)
        else:
            ready.append(run)
        self.ready_count += 1

    def _list_ready(self, ex: Exec) -> None:
        ex.queued = True
        execs = self.wf_execs.get(ex.wf_key)
        if execs is None:
            execs = self.wf_execs[ex.wf_key] = []
        execs.append(ex)
        if len(execs) == 1:
            self.rr.append(ex.wf_key)

    def _unlist_ready(self, ex: Exec) -> None:
        if not ex.queued:
            return
        ex.queued = False
        execs = self.wf_execs.get(ex.wf_key)
        if execs is not None and ex in execs:
            execs.remove(ex)
            if not execs:
                del self.wf_execs[ex.wf_key]
                if ex.wf_key in self.rr:
                    self.rr.remove(ex.wf_key)

    def _scope(self, run: Run, extra: dict[str, Any] | None = None) -> Scope:
        b = run.branch
        if b is not None and b.id is not None:
            extra = dict(extra or {})
            extra.setdefault("branch", b.scope())
        if run.extra:
            extra = {**(extra or {}), **run.extra}
        frame = run.frame
        for d in frame.graph.deps.get(run.node.id, ()):
            if d.handle == graph.ERROR_HANDLE:
                src = frame.runs.get(d.source)
                if src is not None and src.status == "failed":
                    extra = {**(extra or {}), "error": src.error}
        return Scope(frame, extra)

    def _log_line(self, run: Run) -> Callable[[str], None]:
        def write(line: str) -> None:
            line = jsonio.clean_text(str(line))[:4000]
            self.batch.logs.append((run.ex.id, run.path, run.seq, time.time(), "log", line))

        return write

    def _run_inline(self, run: Run) -> None:
        """Evaluate a supervisor-side node now (expressions, merges, timers)."""
        node = run.node
        run.seq += 1
        run.attempt += 1
        now = time.time()
        run.started_at = now
        if not run.frame.started:
            self._item_started(run.frame, now)
        if run.frame.graph.sections:
            self._section_started(run, now)
        if isinstance(node, WaitNode):
            self._start_wait(run)
            return
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
                if node.id in run.frame.graph.sections and run.aux_kind is None:
                    value, port = self._merge_value(run)
                else:
                    value, port = merge.automatic(self._predecessor_outputs(run))
            else:
                raise errors.NodeError(
                    f"node type '{run.ntype}' is not supported by this version of fm_local",
                    errors.VALIDATION_ERROR,
                )
            text = jsonio.bounded_dumps(value)
        except Exception as exc:  # noqa: BLE001 - fails this node only (_inline_failed)
            self._inline_failed(run, exc)
            return
        run.port = port
        run.set_output(value, text)
        run.finished_at = time.time()
        self._attempt_row(run, "succeeded", None)
        if isinstance(node, MergeNode) and node.id in run.frame.graph.sections:
            self._merge_done(run)
        self._succeeded(run)

    def _inline_failed(self, run: Run, exc: Exception, making: str = "output") -> None:
        """A supervisor-side step of ``run`` failed (its evaluation, its output, or
        its task input when ``making`` is "input"): the node fails with a code that
        says which; an unexpected exception is INTERNAL_ERROR, logged once."""
        if isinstance(exc, errors.StorageError):
            raise exc
        if isinstance(exc, expr.ExpressionError):
            src = getattr(exc, "expression", None)
            msg = f"expression {src!r} failed: {exc}" if src else f"expression failed: {exc}"
            err = self._error(run, errors.EXPRESSION_ERROR, msg)
        elif isinstance(exc, errors.NodeError):
            err = self._error(run, exc.code, str(exc), exc.details)
        elif isinstance(exc, jsonio.ValueTooLarge):
            code = errors.INPUT_TOO_LARGE if making == "input" else errors.OUTPUT_TOO_LARGE
            err = self._error(
                run,
                code,
                f"node '{run.path}': its {making} is {exc} (FM_MAX_OUTPUT_BYTES); "
                "pass smaller values, e.g. a file path instead of the data",
            )
        elif isinstance(exc, (jsonio.ValueTooDeep, RecursionError)):
            code = errors.INPUT_TOO_DEEP if making == "input" else errors.OUTPUT_NOT_SERIALIZABLE
            err = self._error(
                run,
                code,
                f"node '{run.path}': its {making} is nested deeper than {jsonio.MAX_DEPTH} levels",
            )
        elif isinstance(exc, (ValueError, TypeError)) and making == "output":
            err = self._error(run, errors.OUTPUT_NOT_SERIALIZABLE, f"value is not JSON: {exc}")
        else:
            log.error("execution %s: internal error at node %s", run.ex.id, run.path, exc_info=exc)
            err = _internal(exc, f"making the {making} of node '{run.path}'")
            err = self._error(run, err["code"], err["message"])
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
        run.frame.active -= 1
        self._mark(run)
        self._resolved(run)

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
            run.next_attempt_at = time.time() + delay_ms / 1000.0
            self._mark(run)
            self._timer(run.next_attempt_at, "retry", run)
            return
        run.frame.active -= 1
        self._final_failure(run, err)

    def _final_failure(self, run: Run, err: dict[str, Any]) -> None:
        """The node failed for good (its frame's ``active`` already released)."""
        node = run.node
        run.error = err
        run.finished_at = run.finished_at or time.time()
        ex = run.ex
        frame = run.frame
        if (
            ex.workflow.settings.queue.dead_letter_queue
            and run.aux_kind is None
            and not run.fell_back
            and isinstance(node, WORKER_TYPES)
        ):
            self.batch.dead_letters.append(
                (
                    ex.id,
                    run.path,
                    node.id,
                    run.input_json,
                    dumps(err),
                    run.attempt,
                    time.time(),
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
        pool = self.pool
        assert pool is not None
        for slot in pool.slots:
            ids = [
                t["id"]
                for t in list(slot.inflight)[1:]
                if (r := self.tasks.get(t["id"])) is not None and r.prefetched and pred(r)
            ]
            if ids:
                pool.drop(slot, ids)

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
        keep: deque[Run] = deque()
        for run in ex.ready:
            if pred(run):
                self._cancel_run(run, reason, status)
                self.ready_count -= 1
            else:
                keep.append(run)
        ex.ready = keep
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
        run.status = status
        run.finished_at = time.time()
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

    def _check_frame(self, frame: Frame) -> None:
        if frame.done or frame.active > 0:
            return
        if not frame.stopped() and frame.resolved < len(frame.graph.nodes):
            return
        frame.done = True
        if frame.loop is None:
            self._finish_top(frame.ex)
        else:
            self._item_done(frame)

    def _finish_top(self, ex: Exec) -> None:
        if ex.status != "running":
            return
        top = ex.top
        if ex.cancel_error is not None:
            self._finish_execution(ex, "cancelled", None, ex.cancel_error)
        elif top.failure is not None:
            self._finish_execution(ex, "failed", None, top.failure)
        else:
            out = self._execution_output(ex)
            try:
                jsonio.json_size(out, jsonio.MAX_OUTPUT_BYTES)
            except (jsonio.ValueTooLarge, jsonio.ValueTooDeep) as exc:
                err = {
                    "code": errors.OUTPUT_TOO_LARGE,
                    "message": f"the execution's output is {exc} (FM_MAX_OUTPUT_BYTES)",
                }
                self._finish_execution(ex, "failed", None, err)
                return
            self._finish_execution(ex, "succeeded", out, None)

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
        if self.wake is not None:
            self.wake.ended(ex.id)
        self.execs.pop(ex.id, None)
        self._unlist_ready(ex)
        self.ready_count -= len(ex.ready)
        ex.ready.clear()

    # --- loops --------------------------------------------------------------------------

    def _section_policy(self, ex: Exec, own: SectionPolicy | None) -> SectionPolicy:
        """A loop's or merge's policy: its own keys over ``settings.parallel``."""
        base = ex.workflow.settings.parallel
        merged = base.model_dump()
        own_keys = own.model_fields_set if own is not None else set()
        if own is not None:
            merged.update(own.model_dump(include=own_keys))
            if "on_partial_failure" in own_keys and "fail_fast" not in own_keys:
                # A section that says its own mode does not inherit failFast.
                merged["fail_fast"] = None
        if merged.get("fail_fast") is None:
            # SPEC §6: failFast defaults to true only under "fail"; continue and
            # collect exist to run every item.
            merged["fail_fast"] = merged["on_partial_failure"] == "fail"
        return SectionPolicy.model_validate(merged)

    def _limiter(self, spec: Any, ex: Exec, key: Any) -> RateLimiter | None:
        """The rate limiter for a rateLimit value: named ones are shared by every
        node and execution naming them; inline ones belong to ``key``."""
        if spec is None:
            return None
        if isinstance(spec, str):
            named = ex.workflow.settings.rate_limits.get(spec)
            if named is None:
                return None
            lk: Any = ("named", spec)
            lim = self.limiters.get(lk)
            if lim is None or (lim.rate, lim.per) != (named.rate, named.per / 1000.0):
                lim = RateLimiter(named.rate, named.per, spec)
                self.limiters[lk] = lim
            return lim
        rp = rate_spec(spec)
        assert rp is not None
        lim = self.limiters.get(key)
        if lim is None:
            lim = RateLimiter(rp[0], rp[1], str(key))
            self.limiters[key] = lim
        return lim

    def _loop_state(self, run: Run) -> LoopState | None:
        """Evaluate a loop's items and build its state; fails the run on error."""
        node = run.node
        assert isinstance(node, LoopNode)
        try:
            items, n = loop.items_of(node, self._scope(run))
        except Exception as exc:  # noqa: BLE001 - fails this node only (_inline_failed)
            self._inline_failed(run, exc, "items")
            return None
        body = self._body(node)
        ls = LoopState(run, node, body, items, n)
        if run.items != n:
            run.items = n  # the total is known from the start: progress is done / items
            self._mark(run)
        ex = run.ex
        ls.policy = self._section_policy(ex, node.section_policy)
        if node.is_parallel:
            ls.window = min(node.max_concurrency or n or 1, ex.workflow.settings.queue.max_size)
        ls.window = max(1, ls.window)
        ls.limiter = self._limiter(node.rate_limit, ex, ("loop", ex.id, run.path))
        ls.gate_inline = not any(isinstance(body.nodes[r], WORKER_TYPES) for r in body.roots)
        run.loop = ls
        return ls

    def _start_loop(self, run: Run) -> None:
        run.seq += 1
        run.attempt += 1
        run.started_at = time.time()
        if not run.frame.started:
            self._item_started(run.frame, run.started_at)
        if run.frame.graph.sections:
            self._section_started(run, run.started_at)
        run.status = "running"
        self._mark(run)
        self._attempt_row(run, "running", None)
        ls = self._loop_state(run)
        if ls is None:
            return
        self._schedule_loop_timers(ls)
        self.loops_to_open.append(ls)

    def _schedule_loop_timers(self, ls: LoopState) -> None:
        total = ls.policy.total_timeout
        if total and ls.run.started_at:
            self._timer(ls.run.started_at + total / 1000.0, "total_timeout", ls)

    def _new_item_frame(
        self, ls: LoopState, i: int, *, restoring: bool = False, started_at: float | None = None
    ) -> Frame:
        """Open item ``i`` (``restoring``: an item the database says is open)."""
        run = ls.run
        node = ls.node
        item = ls.items[i] if ls.items is not None else i
        bs = node.batch_size
        info = {"index": i, "total": ls.n, "batchId": i // bs if bs else 0}
        variables = {
            node.item_variable: item,
            node.index_variable: i,
            "parallel": info,
            "loop": {
                "item": item,
                "index": i,
                "length": ls.n,
                "isFirst": i == 0,
                "isLast": i == ls.n - 1,
            },
        }
        f = Frame(
            run.ex,
            ls.body,
            f"{run.path}[{i}].",
            run.frame,
            f"{run.trace_id}-{i + 1:03d}",
            variables,
        )
        f.loop = ls
        f.index = i
        item = Run(run.ex, f, node, f"{run.path}[{i}]")
        item.ntype = "item"
        item.item_index = i
        item.attempt = 1
        item.trace_id = f.trace_root
        item.branch = None
        item.status = "running"
        item.queued_at = time.time()
        f.item = item
        # A restored item's re-run is a start too: it goes through the limiter.
        f.gated = ls.limiter is not None and not ls.gate_inline
        ls.open[i] = f
        ls.started[i] = 1
        self._mark(item)
        if restoring and started_at is not None:
            self._item_started(f, started_at)
        return f

    def _item_started(self, f: Frame, now: float) -> None:
        """The first node of an item (or of an item it is inside) started: the
        item's clock starts now, and with it the loop's per-item timeout."""
        while f is not None and not f.started:
            f.started = True
            item = f.item
            ls = f.loop
            if item is not None and ls is not None:
                item.started_at = now
                self._mark(item)
                if ls.node.timeout:
                    self._timer(now + ls.node.timeout / 1000.0, "item_timeout", f)
            f = f.parent  # type: ignore[assignment]

    def _open_items(self, ls: LoopState) -> None:
        """Open as many items as the window, batches and rate allow."""
        run = ls.run
        if ls.finished or run.terminal:
            return
        if ls.stopped or run.frame.stopped():
            self._loop_check(ls)
            return
        if run.ex.status == "paused":
            run.ex.deferred_loops.append(ls)
            return
        now = time.time()
        while len(ls.open) < ls.window and ls.next_index < ls.n:
            i = ls.next_index
            if ls.started[i]:
                ls.next_index += 1
                continue
            if ls.batch_size and i >= ls.batch_end:
                if ls.open or ls.batch_wait:
                    return
                delay_ms = ls.node.delay_between_batches
                if delay_ms:
                    ls.batch_wait = True
                    self._timer(now + delay_ms / 1000.0, "batch", ls)
                    return
                ls.batch_end = min(ls.n, ls.batch_end + ls.batch_size)
            if ls.limiter is not None and ls.gate_inline:
                wait = ls.limiter.wait_time(now)
                if wait > 0:
                    self._wake(ls.limiter, now + wait)
                    self._park_loop(ls)
                    return
                ls.limiter.acquire(now)
            ls.next_index = i + 1
            f = self._new_item_frame(ls, i)
            self._advance_frame(f)
            self.frames_to_check.append(f)
        self._loop_check(ls)

    def _park_loop(self, ls: LoopState) -> None:
        assert ls.limiter is not None
        self.parked_loops.setdefault(id(ls.limiter), set()).add(ls)

    def _item_done(self, f: Frame) -> None:
        ls = f.loop
        item = f.item
        assert ls is not None and item is not None and f.index is not None
        ls.open.pop(f.index, None)
        now = time.time()
        item.finished_at = now
        if item.status == "running":
            if f.failure is not None:
                item.status = "failed"
                item.error = f.failure
            elif f.halted or f.resolved < len(f.graph.nodes):
                item.status = "cancelled"
                item.error = item.error or {
                    "code": errors.CANCELLED,
                    "message": "stopped before it finished",
                    "nodePath": item.path,
                }
            else:
                item.status = "succeeded"
                item.set_output(self._item_result(f))
        if item.status == "succeeded":
            ls.succeeded += 1
        elif item.status == "failed":
            ls.failed += 1
            err = item.error or {}
            if ls.first_error is None:
                ls.first_error = err
            if ls.policy.collect_errors and len(ls.errors) < 1000:
                ls.errors.append(
                    {
                        "index": f.index,
                        "code": err.get("code"),
                        "message": err.get("message"),
                        "attempt": err.get("attempt"),
                    }
                )
            if ls.policy.fail_fast:
                ls.stopped = True
                if ls.policy.cancel_on_failure:
                    for other in list(ls.open.values()):
                        self._stop_frame(other, "cancelled", "cancelled: another item failed")
        else:
            ls.cancelled += 1
        self._mark(item)
        f.runs.clear()
        self.loops_to_open.append(ls)

    def _item_result(self, f: Frame) -> Any:
        sinks = f.graph.sinks
        if len(sinks) == 1:
            r = f.runs.get(sinks[0])
            return r.value() if r is not None and r.status == "succeeded" else None
        out: dict[str, Any] = {}
        for sid in sinks:
            r = f.runs.get(sid)
            if r is not None and r.status == "succeeded":
                out[sid] = r.value()
        return out

    def _loop_check(self, ls: LoopState) -> None:
        if ls.finished or ls.open or ls.batch_wait:
            return
        if not ls.stopped and not ls.run.frame.stopped() and ls.next_index < ls.n:
            if any(not ls.started[i] for i in range(ls.next_index, ls.n)):
                return
        self._finish_loop(ls)

    def _finish_loop(self, ls: LoopState) -> None:
        ls.finished = True
        run = ls.run
        if run.terminal:
            return
        if run.frame.stopped() and not ls.timed_out and not all(ls.started):
            self._cancel_run(run, "stopped before all its items ran")
            return
        self.flush()  # the item records are what the output is assembled from
        assert self.store is not None
        text, ok, err = loop.assemble(
            self.store.loop_results(run.ex.id, run.path),
            ls.n,
            ls.policy,
            succeeded=ls.succeeded,
            failed=ls.failed,
            timed_out=ls.timed_out,
            errors_list=ls.errors,
            first_error=ls.first_error,
            loop_path=run.path,
            not_started=ls.n - ls.started.count(1),
        )
        run.finished_at = time.time()
        if ok:
            run._value = _UNSET
            run.output_json = text
            run.error = None
            self._attempt_row(run, "succeeded", None)
            self._succeeded(run)
        else:
            assert err is not None
            error = self._error(run, err["code"], err["message"], err.get("details"))
            self._attempt_row(run, "failed", error)
            run.frame.active -= 1
            self._final_failure(run, error)

    def _stop_frame(self, f: Frame, status: str, reason: str) -> None:
        """Stop everything in ``f`` now, running workers included."""
        f.halted = True
        self._kill_tasks(lambda r: r.frame.within(f), status, reason)
        self._cancel_pending(f.ex, lambda r: r.frame.within(f), reason, status)
        self._recheck_up(f)

    def _item_timed_out(self, f: Frame) -> None:
        ls = f.loop
        item = f.item
        if f.done or ls is None or item is None or item.terminal:
            return
        node = ls.node
        err = {
            "code": errors.TIMEOUT,
            "message": f"item {f.index} timed out after {node.timeout} ms",
            "nodePath": item.path,
            "nodeId": node.id,
            "attempt": 1,
        }
        item.error = err
        if node.on_timeout == "cancel":
            item.status = "cancelled"
        elif node.on_timeout == "continue":
            item.status = "succeeded"
            err["timedOut"] = True
            item.set_output(node.output_on_error)
        else:
            item.status = "failed"
            f.failure = err
        self._stop_frame(f, "cancelled", f"cancelled: item {f.index} timed out")

    def _total_timeout(self, ls: LoopState) -> None:
        if ls.finished or ls.run.terminal:
            return
        ls.timed_out = True
        ls.stopped = True
        for f in list(ls.open.values()):
            item = f.item
            if item is not None and not item.terminal:
                item.status = "cancelled"
                item.error = {
                    "code": errors.TOTAL_TIMEOUT,
                    "message": "the loop's totalTimeout passed first",
                    "nodePath": item.path,
                }
            self._stop_frame(f, "cancelled", "cancelled: the loop's totalTimeout passed")
        self._loop_check(ls)

    # --- signals (SPEC §8) --------------------------------------------------------------

    def _poll_signals(self) -> None:
        assert self.store is not None
        # Applied or refused, but not committed yet: the file still says pending.
        uncommitted = {entry[4] for entry in self.batch.signals}
        for row in self.store.pending_signals(0):
            if self.only_execution and row["execution_id"] != self.only_execution:
                continue
            if row["id"] in self.signals_in_progress or row["id"] in uncommitted:
                continue
            ex = self.execs.get(row["execution_id"])
            self._signal_applying = False
            try:
                self._apply_signal(row, ex)
            except errors.StorageError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bad signal must not stop the daemon
                if self._signal_applying and ex is not None:
                    # It was being applied: it is applied, and its execution failed.
                    err = _internal(exc, f"applying signal {row['id']} ({row['type']})")
                    self.batch.signals.append(
                        ("applied", err["message"], time.time(), None, row["id"])
                    )
                    self._contain(ex, exc, f"applying signal {row['id']}")
                else:
                    log.exception("signal %s: internal error", row["id"])
                    msg = jsonio.clean_text(f"internal error: {type(exc).__name__}: {exc}")
                    self.batch.signals.append(("refused", msg, time.time(), None, row["id"]))
            self._settle()
        # Applied signals are acknowledged only once committed.
        if self.batch.signals:
            self.flush()

    def _refuse(self, row: dict[str, Any], why: str) -> None:
        self.batch.signals.append(("refused", why, time.time(), None, row["id"]))

    def _apply_signal(self, row: dict[str, Any], ex: Exec | None) -> None:
        """Check a signal (refusing it changes nothing), then apply it. Once
        ``_signal_applying`` is set, a failure fails the execution instead."""
        assert self.store is not None
        sid, eid, typ = row["id"], row["execution_id"], row["type"]
        if ex is None:
            st = self.store.get_execution(eid)
            if st is None:
                self._refuse(row, f"no execution '{eid}'")
            elif st["status"] in ("succeeded", "failed", "cancelled", "timed_out"):
                self._refuse(row, f"execution {eid} is already {st['status']}")
            return  # queued, not admitted yet: it waits for the next poll
        why = sigs.refusal(ex.workflow, typ)
        if why is None and row["reason"] is not None and "\0" in row["reason"]:
            why = "the reason contains a NUL character"
        if why is not None:
            self._refuse(row, why)
            return
        data = loads(row["data"])
        if typ == sigs.REPLAY:
            self._replay_in_place(ex, row, data)
            return
        handler = sigs.handler_for(ex.workflow, typ)
        action = handler.action if handler is not None else None
        prio = None
        if action == "set_priority":
            prio = data.get("priority") if isinstance(data, dict) else data
            if isinstance(prio, bool) or not isinstance(prio, int):
                self._refuse(row, 'set_priority needs data {"priority": <integer>}')
                return
            if not jsonio.INT64_MIN <= prio <= jsonio.INT64_MAX:
                self._refuse(row, "set_priority: the priority must fit in 64 bits")
                return
        node = None
        if action == "custom":
            assert handler is not None
            node = sigs.handler_node(ex.workflow, handler)
            if node is None:
                self._refuse(row, f"handler '{handler.handler}' is not in the workflow's handlers")
                return
        self._signal_applying = True
        now = time.time()
        ex.signal_scope[typ] = {
            "data": data,
            "reason": row["reason"],
            "receivedAt": int(row["created_at"] * 1000),
            "result": None,
        }
        ex.signal_latest[typ] = sid
        outcome: list[str] = []
        waiting = ex.waits.pop(typ, [])
        for w in waiting:
            self._complete_wait(w, data)
            outcome.append(f"completed wait node '{w.path}'")
        if not waiting and typ in sigs.wait_types(ex.workflow):
            # No wait node of this type is waiting yet: keep it for the one that will.
            ex.unconsumed[typ] = data
            outcome.append("kept for the wait node that will ask for it")
        if handler is None:
            pass  # a wait node's type: handled above
        elif action == "pause":
            outcome.append(self._pause(ex, handler.cleanup))
        elif action == "resume":
            outcome.append(self._resume(ex))
        elif action == "cancel":
            outcome.append(self._cancel(ex, handler, row))
        elif action == "set_priority":
            assert prio is not None
            ex.priority = prio
            self._mark_exec(ex)
            outcome.append(f"priority set to {prio}")
        elif action == "custom":
            assert node is not None
            sig = {"id": sid, "type": typ, "data": data, "reason": row["reason"]}
            # Applied when the handler has run (a crash before re-runs it).
            self.signals_in_progress.add(sid)
            self._start_aux(
                None,
                node,
                {"signal": sig},
                "handler",
                frame=ex.top,
                path=f"signal:{typ}#{sid}->{node.id}",
            )
            return  # applied (and its event written) when the handler has run
        self.batch.signals.append(("applied", "; ".join(outcome) or "applied", now, None, sid))
        self._event(ex, None, f"signal:{typ}", {"signal": sid, "outcome": outcome})

    def _replay_in_place(self, ex: Exec, row: dict[str, Any], data: Any) -> None:
        """``fm dlq replay`` of a node whose execution still runs: run it again,
        with its recorded input, as ``<path>->replay#<dead letter>`` there."""
        from fm_local import replay

        data = data if isinstance(data, dict) else {}
        path = str(data.get("path") or "")
        node = replay.model_node(list(ex.workflow.nodes), path)
        if node is None or not isinstance(node, WORKER_TYPES):
            self._refuse(
                row, f"no python/http/shell node at '{path}' in workflow '{ex.workflow.name}'"
            )
            return
        copy = replay.node_with_input(node, data.get("input"))
        run = self._start_aux(
            None, copy, {}, "replay", frame=ex.top, path=f"{path}->replay#{data.get('deadLetter')}"
        )
        self.batch.signals.append(
            ("applied", f"replaying {path} as {run.path}", time.time(), None, row["id"])
        )

    def _rebuild_signal_scope(self, ex: Exec) -> None:
        """After a restart: ``signals.<type>`` from the signals already applied."""
        assert self.store is not None
        for row in self.store.applied_signals(ex.id):
            ex.signal_latest[row["type"]] = row["id"]
            ex.signal_scope[row["type"]] = {
                "data": loads(row["data"]),
                "reason": row["reason"],
                "receivedAt": int(row["created_at"] * 1000),
                "result": loads(row["result"]) if row.get("result") else None,
            }

    def _pause(self, ex: Exec, cleanup: bool) -> str:
        if ex.status == "paused":
            return "already paused"
        ex.status = "paused"
        self._mark_exec(ex)
        self._drop_prefetched(lambda r: r.ex is ex)
        if cleanup:
            n = self._interrupt_tasks(lambda r: r.ex is ex)
            return f"paused; {n} running nodes stopped, to run again on resume"
        return "paused; running nodes finish, nothing new starts"

    def _resume(self, ex: Exec) -> str:
        if ex.status != "paused":
            return f"not paused ({ex.status})"
        ex.status = "running"
        self._mark_exec(ex)
        self.work.extend(ex.deferred_work)
        self.loops_to_open.extend(ex.deferred_loops)
        ex.deferred_work = []
        ex.deferred_loops = []
        if ex.ready and not ex.queued:
            self._list_ready(ex)
        return "resumed"

    def _interrupt_tasks(self, pred: Callable[[Run], bool]) -> int:
        """Stop the workers running selected tasks; the tasks go back to the queue
        without spending an attempt (pause with cleanup)."""
        pool = self.pool
        assert pool is not None
        count = 0
        for slot in list(pool.slots):
            if not any(
                (r := self.tasks.get(t["id"])) is not None and pred(r) for t in slot.inflight
            ):
                continue
            for i, r in enumerate(self._take_back(pool.stop_slot(slot))):
                if r.terminal:
                    continue
                if i == 0 and pred(r):
                    count += 1
                    r.finished_at = time.time()
                    self._attempt_row(r, "interrupted", None)
                self._requeue(r)
        return count

    def _cancel(self, ex: Exec, handler: Any, row: dict[str, Any]) -> str:
        reason = row["reason"]
        ex.cancel_error = {
            "code": errors.CANCELLED,
            "message": "cancelled" + (f": {reason}" if reason else " by a signal"),
        }
        if ex.status == "paused":
            ex.status = "running"
            ex.deferred_work = []
            ex.deferred_loops = []
        # Recorded now (status still running while compensations run), so a
        # restart knows the execution is being cancelled.
        ex.error = ex.cancel_error
        self._mark_exec(ex)
        top = ex.top
        top.failure = top.failure or ex.cancel_error
        done = [
            r
            for r in top.runs.values()
            if r.status == "succeeded" and r.node.compensate is not None
        ]
        self._stop_frame(top, "cancelled", "stopped: the execution was cancelled")
        notes = []
        for who in handler.notify:
            self.batch.notifications.append(
                (ex.id, row["id"], who, ex.cancel_error["message"], time.time())
            )
            self._notify(ex, who, ex.cancel_error["message"])
        if handler.notify:
            notes.append(f"{len(handler.notify)} notifications")
        if handler.rollback and done:
            done.sort(key=lambda r: r.finished_at or 0.0, reverse=True)
            ex.compensations = deque(done)
            self._next_compensation(ex)
            notes.append(f"compensating {len(done)} nodes, newest first")
        self.frames_to_check.append(top)
        return "cancelled" + (f" ({', '.join(notes)})" if notes else "")

    def _resume_cancelling(self, ex: Exec, err: dict[str, Any]) -> None:
        """After a restart: an execution that was being cancelled goes on with the
        compensations that had not finished, newest first."""
        assert self.store is not None
        ex.cancel_error = err
        top = ex.top
        top.failure = top.failure or err
        self._halt(top)
        done = {
            row[0]
            for row in self.store.conn.execute(
                "SELECT path FROM node_runs WHERE execution_id=? AND status='succeeded' "
                "AND path LIKE '%->compensate'",
                (ex.id,),
            ).fetchall()
        }
        todo = [
            r
            for r in top.runs.values()
            if r.status == "succeeded"
            and r.node.compensate is not None
            and f"{r.path}->compensate" not in done
        ]
        todo.sort(key=lambda r: r.finished_at or 0.0, reverse=True)
        ex.compensations = deque(todo)
        self._next_compensation(ex)
        self.frames_to_check.append(top)

    def _next_compensation(self, ex: Exec) -> None:
        """Run the next compensation of a cancelled execution (one at a time)."""
        while ex.compensations:
            run = ex.compensations.popleft()
            node = run.node.compensate
            if node is None:
                continue
            extra = {
                "compensated": {"nodeId": run.node.id, "path": run.path, "output": run.value()}
            }
            self._start_aux(run, node, extra, "compensate", path=f"{run.path}->compensate")
            return

    def _notify(self, ex: Exec, recipient: str, message: str) -> None:
        cmd = ex.workflow.settings.notify_command
        if not cmd:
            return
        import subprocess

        def env_text(value: str) -> str:  # an environment value can hold neither
            return jsonio.clean_text(value).replace("\0", "\\0")  # NUL nor a surrogate

        env = dict(
            os.environ,
            FM_EXECUTION_ID=ex.id,
            FM_WORKFLOW=env_text(ex.workflow.name),
            FM_RECIPIENT=env_text(recipient),
            FM_MESSAGE=env_text(message),
        )
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        try:
            subprocess.Popen(
                argv,
                env=env,
                cwd=ex.folder,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            log.error("execution %s: notifyCommand failed: %s", ex.id, exc)

    def _start_wait(self, run: Run, restoring: bool = False) -> None:
        node = run.node
        assert isinstance(node, WaitNode)
        ex = run.ex
        if not restoring:
            run.status = "running"
            self._mark(run)
            self._attempt_row(run, "running", None)
        if node.signal in ex.unconsumed:
            self._complete_wait(run, ex.unconsumed.pop(node.signal))
            return
        ex.waits.setdefault(node.signal, []).append(run)
        if node.timeout:
            self._timer(
                (run.started_at or time.time()) + node.timeout / 1000.0, "wait_timeout", run
            )

    def _complete_wait(self, run: Run, data: Any) -> None:
        if run.terminal:
            return
        run.set_output(data)
        run.finished_at = time.time()
        self._attempt_row(run, "succeeded", None)
        self._succeeded(run)

    def _wait_timed_out(self, run: Run) -> None:
        if run.terminal:
            return
        ex = run.ex
        waiting = ex.waits.get(run.node.signal, [])  # type: ignore[attr-defined]
        if run in waiting:
            waiting.remove(run)
        run.finished_at = time.time()
        self._timed_out(run)

    # --- merges: sections, first success, fallbacks ------------------------------------

    def _section_state(self, frame: Frame, mid: str) -> SectionState:
        st = frame.sections.get(mid)
        if st is None:
            node = frame.graph.nodes[mid]
            assert isinstance(node, MergeNode)
            policy = self._section_policy(frame.ex, node.policy)
            st = SectionState(frame.graph.sections[mid], node, policy)
            frame.sections[mid] = st
        return st

    def _in_halted_section(self, frame: Frame, nid: str) -> bool:
        return any(st.halted and nid in st.sec.members for st in frame.sections.values())

    def _merge_readiness(self, frame: Frame, nid: str) -> str | None:
        """When a merge runs: ``first_success`` as soon as a branch succeeded;
        otherwise when every branch finished — also if some failed, so that its
        policy decides (a merge whose branches were all skipped is skipped)."""
        st = self._section_state(frame, nid)
        runs = frame.runs
        deps = [d for d in frame.graph.deps[nid] if not d.is_ref]
        if st.node.mode == "first_success":
            for d in deps:
                r = runs.get(d.source)
                if r is not None and r.terminal and graph.dep_taken(d, r.status, r.port):
                    return "run"
            if any(p in st.overrides for p in st.sec.branches):
                return "run"
        taken = False
        for d in frame.graph.deps[nid]:
            r = runs.get(d.source)
            if r is None or not r.terminal:
                return None
            if not d.is_ref and graph.dep_taken(d, r.status, r.port):
                taken = True
        if taken or st.failures or st.overrides or st.timed_out:
            return "run"
        if any(runs[d.source].status == "failed" for d in deps):
            return "run"
        return "skip"

    def _section_started(self, run: Run, now: float) -> None:
        frame = run.frame
        nid = run.node.id
        for mid, sec in frame.graph.sections.items():
            if nid not in sec.members:
                continue
            st = self._section_state(frame, mid)
            if st.first_start is None:
                st.first_start = now
                if st.policy.total_timeout:
                    due = now + st.policy.total_timeout / 1000.0
                    self._timer(due, "section_timeout", (frame, mid))
            if st.node.timeout:
                for p, members in sec.branches.items():
                    if nid in members and p not in st.branch_start:
                        st.branch_start[p] = now
                        due = now + st.node.timeout / 1000.0
                        self._timer(due, "branch_timeout", (frame, mid, p))

    def _section_failure(
        self, frame: Frame, st: SectionState, nid: str, err: dict[str, Any]
    ) -> None:
        for p, members in st.sec.branches.items():
            if nid in members:
                st.failures.setdefault(p, err)
        if st.node.mode != "first_success" and st.policy.fail_fast:
            st.halted = True
            if st.policy.cancel_on_failure:
                self._stop_section(frame, st, st.sec.members, "cancelled: another branch failed")

    def _top_node(self, frame: Frame, run: Run) -> str | None:
        """The id, in ``frame``, of the node ``run`` is (or is inside of)."""
        f = run.frame
        nid = run.node.id
        while f is not frame:
            if f.loop is None:
                return None
            nid = f.loop.run.node.id
            f = f.loop.run.frame
        return None if run.aux_kind is not None else nid

    def _stop_section(
        self, frame: Frame, st: SectionState, targets: frozenset[str] | set[str], reason: str
    ) -> None:
        """Stop the section nodes ``targets`` now: running workers too."""

        def hit(r: Run) -> bool:
            return r.frame.within(frame) and self._top_node(frame, r) in targets

        self._kill_tasks(hit, "cancelled", reason)
        self._cancel_pending(frame.ex, hit, reason)
        for nid in targets:
            lr = frame.runs.get(nid)
            if lr is not None and lr.loop is not None and not lr.terminal:
                lr.loop.stopped = True
                for f in list(lr.loop.open.values()):
                    self._stop_frame(f, "cancelled", reason)
                self._cancel_run(lr, reason)

    def _section_timeout(self, frame: Frame, mid: str) -> None:
        st = frame.sections.get(mid)
        merge_run = frame.runs.get(mid)
        if st is None or st.done or (merge_run is not None and merge_run.terminal):
            return
        st.timed_out = True
        st.halted = True
        self._stop_section(
            frame, st, st.sec.members, "cancelled: the section's totalTimeout passed"
        )
        self.work.append((frame, mid))

    def _branch_timeout(self, frame: Frame, mid: str, branch: str) -> None:
        st = frame.sections.get(mid)
        r = frame.runs.get(branch)
        if st is None or st.done or (r is not None and r.terminal):
            return
        node = st.node
        if node.on_timeout == "cancel":
            st.absent.add(branch)
        elif node.on_timeout == "continue":
            st.overrides[branch] = node.output_on_error
        else:
            st.failures[branch] = {
                "code": errors.TIMEOUT,
                "message": f"branch '{branch}' timed out after {node.timeout} ms",
                "nodeId": branch,
                "nodePath": frame.path_of(branch),
                "attempt": 1,
                "timestamp": int(time.time() * 1000),
                "details": None,
            }
        members = st.sec.branches[branch]
        self._stop_section(frame, st, members, f"cancelled: branch '{branch}' timed out")
        self.work.append((frame, mid))

    def _merge_value(self, run: Run) -> tuple[Any, str | None]:
        """The merge's output by mode and policy (SPEC §5, §6); raises NodeError."""
        frame = run.frame
        node = run.node
        assert isinstance(node, MergeNode)
        st = self._section_state(frame, node.id)
        policy = st.policy
        oks: dict[str, Any] = {}
        fails: dict[str, dict[str, Any]] = {}
        finished: dict[str, float] = {}
        for d in frame.graph.deps[node.id]:
            p = d.source
            if d.is_ref or p in oks or p in fails:
                continue
            r = frame.runs.get(p)
            if p in st.overrides:
                oks[p] = st.overrides[p]
                finished[p] = time.time()
            elif p in st.absent:
                continue
            elif r is not None and r.status == "succeeded" and graph.dep_taken(d, r.status, r.port):
                oks[p] = r.value()
                finished[p] = r.finished_at or time.time()
            elif p in st.failures:
                fails[p] = st.failures[p]
            elif r is not None and r.status == "failed":
                fails[p] = r.error or {"code": errors.NODE_ERROR, "message": "failed"}
            elif st.timed_out:
                fails[p] = {
                    "code": errors.TOTAL_TIMEOUT,
                    "message": "the section's totalTimeout passed first",
                }
            elif st.halted and r is not None and r.status in ("skipped", "cancelled"):
                fails[p] = r.error or {
                    "code": errors.CANCELLED,
                    "message": "not run: failFast stopped the section after a failure",
                    "nodeId": p,
                    "nodePath": frame.path_of(p),
                }
        name = run.path
        if node.mode == "first_success":
            if oks:
                winner = min(oks, key=lambda k: finished[k])
                self._log_line(run)(f"winner: branch '{winner}'")
                return oks[winner], winner
            first = next(iter(fails.values()), {})
            raise errors.NodeError(
                f"all {len(fails)} branches of merge '{name}' failed; first: "
                f"{first.get('nodePath', '?')}: {first.get('message')}",
                first.get("code") or errors.NODE_ERROR,
                {"errors": _error_list(fails)},
            )
        total = len(oks) + len(fails)
        if st.timed_out and policy.on_timeout == "fail":
            raise errors.NodeError(
                f"the section of merge '{name}' passed its totalTimeout ({policy.total_timeout} ms)",
                errors.TOTAL_TIMEOUT,
            )
        collect = policy.on_partial_failure == "collect" or st.timed_out
        if policy.on_partial_failure == "fail" and fails and not st.timed_out:
            first = next(iter(fails.values()))
            details: dict[str, Any] = {"failedCount": len(fails), "total": total}
            if policy.collect_errors:
                details["errors"] = _error_list(fails)
            raise errors.NodeError(
                f"{len(fails)} of {total} branches of merge '{name}' failed; first: "
                f"{first.get('nodePath', '?')}: {first.get('message')}",
                first.get("code") or errors.NODE_ERROR,
                details,
            )
        rate = policy.min_success_rate
        if rate is not None and total and len(oks) / total < rate:
            raise errors.NodeError(
                f"only {len(oks)} of {total} branches of merge '{name}' succeeded "
                f"({len(oks) / total:.0%}); minSuccessRate is {rate:.0%}",
                "PARTIAL_FAILURE",
                {"successCount": len(oks), "failureCount": len(fails)},
            )
        if collect:
            results: dict[str, Any] = {}
            for d in frame.graph.deps[node.id]:
                p = d.source
                if p in oks:
                    results[p] = {"success": True, "data": oks[p]}
                elif p in fails:
                    results[p] = {"success": False, "error": fails[p]}
            out: dict[str, Any] = {
                "results": results,
                "successCount": len(oks),
                "failureCount": len(fails),
            }
            if st.timed_out:
                out["timedOut"] = True
            if policy.collect_errors:
                out["errors"] = _error_list(fails)
            return out, None
        value: dict[str, Any] = dict(oks)
        if policy.collect_errors and fails:
            value["errors"] = _error_list(fails)
        return value, None

    def _merge_done(self, run: Run) -> None:
        frame = run.frame
        st = self._section_state(frame, run.node.id)
        st.done = True
        if st.node.mode == "first_success" and run.port is not None:
            # The others lost the race: stop them now.
            losers = st.sec.members - st.sec.branches.get(run.port, frozenset())
            st.halted = True
            for p in st.sec.branches:
                if p != run.port:
                    st.absent.add(p)
            self._stop_section(frame, st, losers, "cancelled: another branch succeeded first")

    def _aux_node(self, frame: Frame, nid: str) -> NodeBase | None:
        node = frame.graph.nodes.get(nid)
        if node is not None:
            return node
        for h in frame.ex.workflow.handlers:
            if h.id == nid:
                return h
        return None

    def _start_aux(
        self,
        parent: Run | None,
        node: NodeBase,
        extra: dict[str, Any],
        kind: str,
        frame: Frame | None = None,
        path: str | None = None,
    ) -> Run:
        """Run a node outside the graph: a fallback or goto target (``error`` in
        scope), a compensation, or a signal handler (``signal`` in scope)."""
        if frame is None:
            assert parent is not None
            frame = parent.frame
        aux = Run(frame.ex, frame, node, path or f"{parent.path if parent else ''}->{node.id}")
        aux.parent = parent
        aux.aux_kind = kind
        aux.extra = extra
        if parent is not None:
            aux.trace_id = parent.trace_id
            aux.branch = parent.branch
        aux.queued_at = time.time()
        frame.active += 1
        if isinstance(node, WORKER_TYPES):
            aux.status = "queued"
            self._mark(aux)
            self._enqueue(aux)
        elif isinstance(node, LoopNode):
            aux.status = "queued"
            self._inline_failed(
                aux,
                errors.NodeError(
                    "a loop cannot be a fallback or goto target", errors.VALIDATION_ERROR
                ),
            )
        else:
            self._run_inline(aux)
        return aux

    def _aux_done(self, aux: Run) -> None:
        kind = aux.aux_kind
        ex = aux.ex
        if kind == "handler":
            sig = (aux.extra or {}).get("signal") or {}
            typ, sid = str(sig.get("type")), sig.get("id")
            ok = aux.status == "succeeded"
            value = aux.value() if ok else None
            entry = ex.signal_scope.get(typ)
            if entry is not None and ex.signal_latest.get(typ) == sid:
                entry["result"] = value  # only the newest signal of a type shows
            if sid is not None:
                self.signals_in_progress.discard(sid)
                outcome = f"handler '{aux.node.id}' {aux.status}"
                self._event(ex, None, f"signal:{typ}", {"signal": sid, "outcome": [outcome]})
                result = value if ok else {"error": aux.error}
                self.batch.signals.append(
                    (
                        "applied",
                        f"handler '{aux.node.id}' {aux.status}",
                        time.time(),
                        dumps(result),
                        sid,
                    )
                )
            return
        if kind == "compensate":
            self._next_compensation(ex)
            return
        if kind == "replay":
            return  # a dead letter replayed in place: recorded, it serves no node
        parent = aux.parent
        assert parent is not None
        if parent.terminal:
            return  # a goto handler: the node had already failed (handled)
        if aux.status == "succeeded":
            parent.set_output(aux.value())
            self._succeeded(parent)
            return
        parent.frame.active -= 1
        err = aux.error or parent.error or {"code": errors.NODE_ERROR, "message": "fallback failed"}
        self._final_failure(parent, err)

    # --- workers ------------------------------------------------------------------------

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

    def _limited(self, run: Run) -> bool:
        node = run.node
        return bool(
            node.rate_limit is not None
            or node.pool is not None
            or run.frame.gated
            or run.ex.no_prefetch
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
                # A string is a shell script: template values are quoted (expr.render_shell).
                "command": expr.render_shell(node.command, scope),
                "env": expr.render_value(node.env, scope),
                "cwd": expr.render_value(node.cwd, scope),
                "allowFailure": node.allow_failure,
            }
        raise errors.NodeError(f"not a worker node: {run.ntype}")

    def _on_results(self, slot: Slot, done: list[tuple[dict[str, Any], tuple[Any, ...]]]) -> None:
        for task, result in done:
            run = self.tasks.pop(task["id"], None)
            if run is None or run.task_id != task["id"]:
                continue  # a late result of a stopped attempt: discarded
            try:
                self._on_result(run, result)
            except Exception as exc:  # noqa: BLE001 - the per-execution error boundary
                self._contain(run.ex, exc, f"handling the result of node '{run.path}'")
        if slot.inflight:
            head = self.tasks.get(slot.inflight[0]["id"])
            if head is not None and head.status == "queued":
                head.status = "running"
                head.prefetched = False
                head.started_at = time.time()
                self._mark(head)
                self._attempt_row(head, "running", None)

    def _on_result(self, run: Run, result: tuple[Any, ...]) -> None:
        run.task_id = None
        ok, out, err, logs, started, finished = result[1:7]
        if len(result) > 7 and result[7] is not None:
            run.code = result[7]
        ex = run.ex
        ex.running -= 1
        self._release(run)
        if ok is None:
            # Handed back unstarted (pause, fail-fast): nothing was spent.
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
        if run.gate_marks is not None:
            for lim, recorded in run.gate_marks:
                lim.correct(recorded, started)
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

    def _take_back(self, held: list[dict[str, Any]]) -> list[Run]:
        """Runs of tasks a stopped/dead worker held, in order, detached from it."""
        runs = []
        for task in held:
            run = self.tasks.pop(task["id"], None)
            if run is None or run.task_id != task["id"]:
                continue
            run.task_id = None
            run.prefetched = False
            run.ex.running -= 1
            self._release(run)
            runs.append(run)
        return runs

    def _on_worker_died(self, slot: Slot, held: list[dict[str, Any]]) -> None:
        for i, run in enumerate(self._take_back(held)):
            if run.terminal:
                continue
            try:
                if i > 0:
                    self._requeue(run)  # never started: nothing spent
                    continue
                self._interrupted(run, errors.WORKER_CRASH, f"worker process {slot.pid} died")
            except Exception as exc:  # noqa: BLE001 - the per-execution error boundary
                self._contain(run.ex, exc, f"recovering node '{run.path}' from a worker crash")

    def _interrupted(self, run: Run, code: str, message: str) -> None:
        """An infrastructure interruption: re-run without spending an attempt."""
        limit = run.ex.workflow.settings.recovery_attempts
        run.recoveries += 1
        run.finished_at = time.time()
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
        if not spent and run.seq and run.attempt_kind == "attempt":
            # The dispatch counted an attempt that never ran; give it back.
            run.attempt -= 1
        run.status = "queued"
        self._mark(run)
        self._enqueue(run, front=True)

    def _kill_tasks(self, pred: Callable[[Run], bool], status: str, reason: str) -> None:
        """Stop every worker running a task that ``pred`` selects; the selected
        runs end with ``status``, the other tasks those workers held are requeued."""
        pool = self.pool
        assert pool is not None
        for slot in list(pool.slots):
            hit = False
            for t in slot.inflight:
                r = self.tasks.get(t["id"])
                if r is not None and pred(r):
                    hit = True
                    break
            if not hit:
                continue
            for r in self._take_back(pool.stop_slot(slot)):
                if pred(r):
                    self._cancel_run(r, reason, status)
                elif not r.terminal:
                    self._requeue(r)

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
            for i, r in enumerate(self._take_back(pool.stop_slot(slot))):
                if r.terminal:
                    continue
                with self._boundary(r.ex, f"timing out node '{r.path}'"):
                    if i == 0:
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
            if any(r.ready_at < horizon for r in ex.ready):
                keep: deque[Run] = deque()
                for r in ex.ready:
                    (late if r.ready_at < horizon else keep).append(r)
                self.ready_count -= len(ex.ready) - len(keep)
                ex.ready = keep
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
        if r.input_json is None and isinstance(r.node, WORKER_TYPES):
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
        run.finished_at = time.time()
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
                        f.item.finished_at = time.time()
                        self._mark(f.item)
            if not run.terminal:
                run.status = status
                run.finished_at = time.time()
                self._mark(run)

    def _sample_resources(self) -> None:
        """About once a second: CPU and RSS of the supervisor, workers, machine."""
        assert self.pool is not None and self.sampler is not None and self.store is not None
        workers = []
        for slot in self.pool.slots:
            run = self.tasks.get(slot.inflight[0]["id"]) if slot.inflight else None
            workers.append((slot.pid, run.ex.id if run else None, run.path if run else None))
        try:
            self.batch.samples.extend(self.sampler.sample(workers))
        except Exception:  # noqa: BLE001 - sampling must never stop the engine
            log.exception("resource sampling failed")
        if time.monotonic() - self.sampler.last_prune > 60:
            self.sampler.last_prune = time.monotonic()
            self.flush()
            self.store.prune_samples(time.time() - KEEP_SECONDS)

    # --- timers -------------------------------------------------------------------------

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
            status = run.status
            b.node_runs[key] = (
                ex.id,
                run.path,
                run.node.id,
                run.ntype,
                status,
                # A prefetched task has not begun: its attempt is not spent yet.
                run.attempt - 1
                if run.prefetched and run.attempt_kind == "attempt"
                else run.attempt,
                run.recoveries,
                run.output_json if status == "succeeded" else None,
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
                run.item_index,
                run.input_json,
                run.code,
                run.items,
            )
            if status in ACTIVE_STATUSES and run.ntype != "item" and run.ntype != "loop":
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
            try:
                self.rejected.extend(self.store.commit_batch(b))
            except (sqlite3.Error, OSError) as exc:
                # The storage itself failed: stop serving (what was committed stays).
                self.storage_failed = True
                raise storage_error(exc, self.db, "write") from exc
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
            self._take_events(pool.poll(0.05))
            self._settle()
            self._maybe_flush()
        # Whatever still runs is re-run by the next supervisor, not counted.
        for run in list(self.tasks.values()):
            run.task_id = None
            if not run.terminal:
                if not run.prefetched:
                    run.finished_at = time.time()
                    self._attempt_row(run, "interrupted", None)
                if run.attempt_kind == "attempt":
                    run.attempt -= 1
                run.prefetched = False
                run.status = "queued"
                self._mark(run)
        self.tasks.clear()
        self.flush()
