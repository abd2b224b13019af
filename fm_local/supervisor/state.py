"""The supervisor's state: an execution (:class:`Exec`), its frames, runs, loops
and sections; the settings every part reads; and :class:`Part`, the fields the
parts of the supervisor share (set up once, in ``Part.__init__``)."""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fm_local import errors, graph, jsonio
from fm_local.checkd import CheckService
from fm_local.executors import DEFAULT_IO_CONCURRENCY, Executor
from fm_local.graph import CompiledGraph
from fm_local.limits import Pool, RateLimiter
from fm_local.lock import SupervisorLock
from fm_local.model import NodeBase, SectionPolicy, Workflow
from fm_local.nodes.loop import LoopNode
from fm_local.nodes.merge import MergeNode
from fm_local.resources import Sampler
from fm_local.status import NODE_MOVES, NODE_TERMINAL, NodeStatus, check_exec, check_node
from fm_local.store import Batch, Rejected, Store, loads
from fm_local.store.writer import Writer
from fm_local.supervisor.clock import StepClock, SystemClock
from fm_local.supervisor.scope import FINISHED_KEEP, RecentIds
from fm_local.wake import Listener

log = logging.getLogger("fm_local.supervisor")

FLUSH_INTERVAL = 0.004  # seconds between group commits while busy
FLUSH_MAX = 4000  # rows: commit sooner than the interval when this many are dirty
# A worker node's or loop item's first row waits this long (seconds): one that
# ends sooner is written once, as it ended (docs/guarantees.md, "first writes").
DEFER_FIRST_WRITE = 0.25
# Seconds between two counts of the tasks held without a queue row (queue_counts).
QUEUE_COUNT_INTERVAL = 0.5
DB_POLL_INTERVAL = 0.05  # seconds between looks for new executions and signals
# Prefetch: when the backlog is deep, a worker may hold tasks behind the one it
# runs (saving a round trip each), but only as much work as it will finish soon,
# so that no task waits long behind another execution's long node.
DRAIN_TIMEOUT = 10.0  # seconds a graceful stop waits for running nodes
WORKER_START_TIMEOUT = 10.0  # seconds to wait for the pool before serving
ACTIVE_STATUSES = frozenset({"queued", "running", "retry_wait"})
_UNSET = object()


class Run:
    """One node instance (or one loop item): its status, attempt and result."""

    __slots__ = (
        "ex",
        "frame",
        "node",
        "path",
        "ntype",
        "item_index",
        "_status",
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
        "lane",
        "not_before",
        "written",
        "deferrable",
        "dirty_at",
        "after",
    )

    def __init__(self, ex: Exec, frame: Frame, node: NodeBase, path: str) -> None:
        self.ex = ex
        self.frame = frame
        self.node = node
        self.path = path
        self.ntype: str = node.type  # type: ignore[attr-defined]
        self.item_index: int | None = None
        self._status: str = NodeStatus.PENDING
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
        # Where its task runs (SPEC §11): "process" or "io"; None until it is ready.
        self.lane: str | None = None
        # A rate-limited I/O task handed over ahead of its turn: when it may start,
        # and the longest window of its limiters.
        self.not_before: tuple[float, float] | None = None
        # Its row is in the database (or in a batch on its way there).
        self.written = False
        # Its first row may wait until it ends or is DEFER_FIRST_WRITE old (see
        # Commit.flush), and since when it has waited.
        self.deferrable = False
        self.dirty_at: float | None = None
        # Sent to its worker behind this run, its one predecessor, before that one
        # ended (Dispatch._chain): it starts there only if that one succeeds.
        self.after: Run | None = None

    def value(self) -> Any:
        if self._value is _UNSET:
            self._value = loads(self.output_json)
        return self._value

    def share_output(self, other: Run) -> None:
        """The output of ``other``, as it stands (its JSON text is not built again,
        nor parsed if it was not yet)."""
        self._value = other._value
        self.output_json = other.output_json

    def set_output(self, value: Any, text: str | None = None) -> None:
        self._value = value
        self.output_json = text if text is not None else jsonio.bounded_dumps(value)

    @property
    def status(self) -> str:
        return self._status

    @status.setter
    def status(self, new: str) -> None:
        """Every change goes through the table of fm_local.status."""
        old = self._status
        if new != old:
            if new not in NODE_MOVES[old]:
                check_node(old, new, f"execution {self.ex.id}, node {self.path}")
            self._status = new

    @property
    def terminal(self) -> bool:
        return self._status in NODE_TERMINAL


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
        "partial",
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
        # A retry's items that run again with results reused inside their body:
        # opened from their rows (docs/retry.md); None for every other loop.
        self.partial: set[int] | None = None


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


def at_capacity(ex: Exec) -> bool:
    """``settings.maxConcurrency`` says ``ex`` may start no more tasks now (the
    dispatcher and ``fm explain`` ask this)."""
    return ex.max_concurrency is not None and ex.running >= ex.max_concurrency


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
        self._status: str = row["status"]
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
        # Runs ready to start, per lane: a worker process each, and the I/O lane.
        self.ready: deque[Run] = deque()
        self.ready_io: deque[Run] = deque()
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
        # fm retry (docs/retry.md): the execution this one retries, whose results
        # it reuses (rows copied in when it was created); and, per loop that runs
        # again with some items reused, its item count then.
        self.retry_of: str | None = row.get("retry_of")
        self.retry_loops: dict[str, int] = {}
        if self.retry_of is not None:
            how = loads(row.get("retry"))
            if isinstance(how, dict) and isinstance(how.get("loops"), dict):
                self.retry_loops = how["loops"]

    def has_ready(self) -> bool:
        return bool(self.ready or self.ready_io)

    @property
    def status(self) -> str:
        return self._status

    @status.setter
    def status(self, new: str) -> None:
        """Every change goes through the table of fm_local.status."""
        check_exec(self._status, new, f"execution {self.id}")
        self._status = new


class Part:
    """The supervisor's fields. Each part of the supervisor (recovery, advance,
    failures, loops, signals, sections, dispatch, gates, results, timeouts,
    commit) is a class deriving from this one, and :class:`Supervisor` derives
    from all of them: one object, its methods filed by concept."""

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
        executor: Callable[..., Executor] | None = None,
        clock: SystemClock | StepClock | None = None,
        io_concurrency: int = DEFAULT_IO_CONCURRENCY,
    ) -> None:
        self.db = Path(db)
        # Makes the executor at open(): called like ProcessExecutor(workers,
        # max_rss_mb=..., subreaper=..., monotonic=<this clock>); InlineExecutor
        # runs tasks in this process.
        self.make_executor = executor
        # Where every part reads the time; a StepClock makes the engine steppable.
        self.clock = clock or SystemClock()
        self.clock_is_stepped = isinstance(self.clock, StepClock)
        self.subreaper = subreaper  # this process is ours (fm daemon, fm run): see workers
        self.max_worker_memory_mb = max_worker_memory_mb
        self.n_workers = max(1, workers)
        # I/O tasks in flight at once on the I/O lane (0: no I/O lane, every task
        # takes a worker process).
        self.io_concurrency = max(0, io_concurrency)
        self.io_lane = False  # the executor has one (set at open)
        # First writes may be deferred (DEFER_FIRST_WRITE); not on an executor that
        # adopts a running attempt's result after a restart (Dask), which needs the
        # running row committed before the task is sent.
        self.defer_writes = True
        # Chained successors not started yet (Dispatch._chain), by id of their run.
        self.chained_runs: dict[int, Run] = {}
        self.defer_first_write = DEFER_FIRST_WRITE  # seconds
        self.executor_lane: str | None = None  # every task's lane, if the executor says
        self.durability = durability
        self.only_execution = only_execution
        self.drain_timeout = drain_timeout
        self.lock = SupervisorLock(self.db)
        self.store: Store | None = None
        # The collector's thresholds before open (Supervisor._tune_gc), or None.
        self.gc_was: tuple[int, int, int] | None = None
        # Group commits in a process of their own (set at open; None: on this thread).
        self.writer: Writer | None = None
        self.executor: Executor | None = None
        self.execs: dict[str, Exec] = {}
        # Workflows with ready tasks, served round robin (fair sharing between
        # workflows); within a workflow, executions in queue-policy order.
        self.rr: deque[int] = deque()
        self.wf_execs: dict[int, list[Exec]] = {}
        self.tasks: dict[int, Run] = {}
        # (monotonic time before which it cannot time out, task id) of each task whose
        # node has a timeout, a heap; an entry whose task ended is dropped when due.
        self.node_deadlines: list[tuple[float, int]] = []
        self.task_ids = itertools.count(1)
        self.timers: list[tuple[float, int, str, Any]] = []
        self.timer_seq = itertools.count()
        self.batch = Batch()
        self.dirty_runs: dict[int, Run] = {}
        # The queue_counts rows last written (Commit._count_unrecorded); [] at start,
        # when the table is emptied of what a previous supervisor left.
        self.queue_counts: list[tuple[str, int, int]] | None = None
        self.last_count = 0.0
        # Runs whose first row waits (DEFER_FIRST_WRITE), oldest first.
        self.young: deque[Run] = deque()
        self.dirty_execs: dict[str, Exec] = {}
        self.last_flush = 0.0
        self.last_poll = 0.0
        self.stopping = False
        self.stop_reason = ""
        self.finished = RecentIds(FINISHED_KEEP)
        self.workflows: dict[int, tuple[Workflow, str, CompiledGraph]] = {}
        self.bodies: dict[int, CompiledGraph] = {}
        self.ready_count = 0
        self.ready_io_count = 0  # of which on the I/O lane
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
        # Told the id of each execution whose end is committed (fm daemon --otlp-endpoint).
        self.on_finished: Callable[[str], None] | None = None
        self.rejected: list[Rejected] = []  # rows the last group commit refused
        self.wake: Listener | None = None  # nudged by clients after they commit
        self.checks: CheckService | None = None  # validates documents for clients
        # Expected run time per node (by node object: a loop body's node is one
        # object for every item), an average of what workers reported.
        self.durations: dict[int, float] = {}
        self.storage_failed = False  # a commit failed for the storage's sake
        self._signal_applying = False  # the signal being handled has changed state

    if TYPE_CHECKING:
        # A part calls the methods of the others through ``self``: the type
        # checker sees them as Any here, and checks them in their own part.
        def __getattr__(self, name: str) -> Any: ...
