"""Plain values read from the database: what the background readers hand to the UI.

Frozen dataclasses only; no Textual and no sqlite here, so widgets can be tested
on hand-made values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fm_local.status import ACTIVE_EXEC, TERMINAL_EXEC, TERMINAL_NODE

EXEC_STATUSES = (*ACTIVE_EXEC, *TERMINAL_EXEC)
QUEUE_STATES = ("queued", "running", "retry_wait", "timer")
WAITING = "waiting"  # loop items not started yet (no row in node_runs or queue)


@dataclass(frozen=True)
class Progress:
    """How far an execution got: ``done`` of ``total`` units. With loops the units
    are their items, and a loop's total is known when it starts; without, they
    are node instances (so far). ``started_at``/``ended_at`` bound the counting
    (for the rate): the first loop's start, the last loop's end (None while one runs)."""

    done: int
    total: int
    unit: str = "nodes"  # "items" | "nodes"
    started_at: float | None = None
    ended_at: float | None = None


class _HasProgress:
    """``done``/``total`` read through a record's ``progress``."""

    progress: Progress

    @property
    def done(self) -> int:
        return self.progress.done

    @property
    def total(self) -> int:
        return self.progress.total


@dataclass(frozen=True)
class ExecutionRow(_HasProgress):
    """One line of the executions table."""

    id: str
    workflow: str
    status: str
    priority: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: Progress

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_EXEC


@dataclass(frozen=True)
class ExecutionsSnapshot:
    rows: list[ExecutionRow]
    status_filter: str | None
    now: float
    query: str = ""  # the search it answers (tui.search)


@dataclass(frozen=True)
class LoopStats:
    """A loop's items: counts by status (of the items started so far), how many
    ran in each timeline column, and ``items``, the loop's item count, recorded
    when it starts (None in a file written before schema version 2)."""

    counts: dict[str, int]
    density: tuple[int, ...]
    items: int | None = None

    @property
    def started(self) -> int:
        return sum(self.counts.values())

    @property
    def total(self) -> int:
        return self.items if self.items is not None else self.started

    @property
    def done(self) -> int:
        return sum(n for s, n in self.counts.items() if s in TERMINAL_NODE)


@dataclass(frozen=True)
class ItemPage:
    """Which items of a loop are listed: indices ``first`` to ``last`` (inclusive)
    of ``total``; ``started`` of them have a row (the others have not started);
    ``failed`` items of the whole loop failed or timed out."""

    first: int
    last: int
    total: int
    started: int
    failed: int


@dataclass(frozen=True)
class Seek:
    """A request to move the cursor, answered by the reader: ``loop`` None = the
    execution's first failed node; else the next (``direction`` 1) or previous
    (-1) failed item of ``loop`` after / before item ``index``. ``serial`` ties
    the answer to the request."""

    serial: int
    loop: str | None = None
    index: int = -1
    direction: int = 1


@dataclass(frozen=True)
class TimelineRow:
    """One bar of the branch timeline: a node instance, a loop (aggregated), a
    loop item, or the "items [300]–[599] of 10,000" line above an expanded loop's page
    of items (kind ``page``)."""

    key: str
    path: str
    kind: str  # "node" | "loop" | "item" | "page"
    depth: int
    node_type: str
    status: str
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    expanded: bool = False
    loop: LoopStats | None = None
    page: ItemPage | None = None  # "page" rows

    @property
    def expandable(self) -> bool:
        return self.kind in ("loop", "item")


@dataclass(frozen=True)
class AttemptRow:
    seq: int
    attempt: int
    kind: str
    status: str
    error: Any
    worker_pid: int | None
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class LogLine:
    attempt: int
    ts: float
    stream: str
    line: str


@dataclass(frozen=True)
class NodeDetail:
    """The selected node instance: its definition, result, tries and log."""

    path: str
    node_id: str
    node_type: str
    status: str
    attempts_spent: int
    recoveries: int
    worker_pid: int | None
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    output: Any
    error: Any
    definition: dict[str, Any] | None
    attempts: list[AttemptRow]
    logs: list[LogLine]
    logs_dropped: int
    trace_id: str | None = None
    input: Any = None  # the resolved task input of a worker node, when recorded
    code: str | None = None  # python nodes: "tasks.py@<sha256 prefix>" of the code that ran
    lane: str | None = None  # where its task ran: process, io, dask@HOST:PORT (docs/lanes.md)
    items: int | None = None  # loops: the item count


@dataclass(frozen=True)
class ExecutionInfo(_HasProgress):
    id: str
    workflow: str
    status: str
    priority: int
    input: Any
    output: Any
    error: Any
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: Progress
    trace_id: str = ""


@dataclass(frozen=True)
class DetailSnapshot:
    execution: ExecutionInfo | None
    rows: list[TimelineRow]
    t0: float | None
    t1: float | None
    width: int
    node: NodeDetail | None
    now: float
    rows_truncated: bool = False
    # What was shown: the loops and items expanded and each loop's first item
    # index listed (a seek may have opened more), where the cursor goes (a seek's
    # answer), the seek answered and what to tell the user about it.
    expanded: frozenset[str] = frozenset()
    pages: tuple[tuple[str, int], ...] = ()
    focus: str | None = None
    seek: Seek | None = None
    note: str = ""


@dataclass(frozen=True)
class QueuedExecution:
    id: str
    workflow: str
    priority: int
    created_at: float


@dataclass(frozen=True)
class LoopProgress:
    """A loop still running in a running or paused execution: ``total`` items (known
    when it started), ``opened`` of them have a row so far, ``done`` finished."""

    execution_id: str
    workflow: str
    execution_status: str
    priority: int
    path: str
    total: int
    opened: int
    done: int
    started_at: float | None

    @property
    def waiting(self) -> int:
        """Items not started yet: they have no row in ``node_runs`` or ``queue``."""
        return max(0, self.total - self.opened)


@dataclass(frozen=True)
class QueueSnapshot:
    depth: list[tuple[str, int, int]]  # (state, priority, tasks); WAITING: loop items
    queued: list[QueuedExecution]
    throughput: list[int]  # node completions per second, oldest first, ending now
    dead_letters: int
    now: float
    loops: list[LoopProgress] = field(default_factory=list)

    def by_state(self) -> dict[str, int]:
        totals = dict.fromkeys((*QUEUE_STATES, WAITING), 0)
        for state, _, tasks in self.depth:
            totals[state] = totals.get(state, 0) + tasks
        return totals


# Sample roles counted as workers: process workers and I/O-lane workers.
WORKER_ROLES = ("worker", "io-worker")


@dataclass(frozen=True)
class Sample:
    ts: float
    pid: int | None
    role: str
    cpu_percent: float
    rss_bytes: int
    execution_id: str | None
    node_path: str | None


@dataclass(frozen=True)
class ResourceSnapshot:
    """The newest sample of each process, and per-second history for sparklines."""

    latest: list[Sample]
    newest_ts: float | None
    now: float
    history: dict[str, list[float]] = field(default_factory=dict)
    recent_seconds: float = 5.0

    @property
    def live(self) -> bool:
        return self.newest_ts is not None and self.now - self.newest_ts <= self.recent_seconds

    def current(self, key: str) -> float | None:
        """The newest value of a history series (``machine_cpu``, ``workers_rss``…)."""
        if not self.live:
            return None
        role, what = key.split("_", 1)
        roles = WORKER_ROLES if role == "workers" else (role,)
        chosen = [s for s in self.latest if s.role in roles]
        if not chosen:
            return None
        values = [s.cpu_percent if what == "cpu" else float(s.rss_bytes) for s in chosen]
        return sum(values)


@dataclass(frozen=True)
class LogEntry:
    """One line of the logs screen: a captured line (``kind`` "line": stdout,
    stderr, logging, ctx.log) or a failed try's error (``kind`` "error": code,
    message, traceback in ``line``), as ``fm logs`` prints them."""

    kind: str
    ts: float
    path: str
    attempt: int
    stream: str
    line: str


@dataclass(frozen=True)
class LogsSnapshot:
    """New entries since the last read (``after``), oldest first. ``earlier``:
    lines before the first ones read that are not shown (the first read keeps
    the newest ones only)."""

    execution_id: str
    path: str | None
    status: str | None  # the execution's, None: no such execution
    entries: list[LogEntry]
    last_line_id: int
    error_ids: frozenset[int]
    earlier: int
    generation: int = 0
