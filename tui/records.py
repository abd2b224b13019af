"""Plain values read from the database: what the background readers hand to the UI.

Frozen dataclasses only; no Textual and no sqlite here, so widgets can be tested
on hand-made values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL_EXEC = ("succeeded", "failed", "cancelled", "timed_out")
TERMINAL_NODE = ("succeeded", "failed", "cancelled", "skipped", "timed_out")
ACTIVE_EXEC = ("queued", "running", "paused")
EXEC_STATUSES = (*ACTIVE_EXEC, *TERMINAL_EXEC)
QUEUE_STATES = ("queued", "running", "retry_wait", "timer")


@dataclass(frozen=True)
class ExecutionRow:
    """One line of the executions table."""

    id: str
    workflow: str
    status: str
    priority: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    done: int
    total: int

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_EXEC


@dataclass(frozen=True)
class ExecutionsSnapshot:
    rows: list[ExecutionRow]
    status_filter: str | None
    now: float


@dataclass(frozen=True)
class LoopStats:
    """A loop's items: counts by status and how many ran in each timeline column."""

    counts: dict[str, int]
    density: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(n for s, n in self.counts.items() if s in TERMINAL_NODE)


@dataclass(frozen=True)
class TimelineRow:
    """One bar of the branch timeline: a node instance, a loop (aggregated), a
    loop item, or a "more items" marker."""

    key: str
    path: str
    kind: str  # "node" | "loop" | "item" | "more"
    depth: int
    node_type: str
    status: str
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    expanded: bool = False
    loop: LoopStats | None = None
    hidden: int = 0  # "more" rows: items not listed

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


@dataclass(frozen=True)
class ExecutionInfo:
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
    done: int
    total: int
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


@dataclass(frozen=True)
class QueuedExecution:
    id: str
    workflow: str
    priority: int
    created_at: float


@dataclass(frozen=True)
class QueueSnapshot:
    depth: list[tuple[str, int, int]]  # (state, priority, tasks)
    queued: list[QueuedExecution]
    throughput: list[int]  # node completions per second, oldest first, ending now
    dead_letters: int
    now: float

    def by_state(self) -> dict[str, int]:
        totals = dict.fromkeys(QUEUE_STATES, 0)
        for state, _, tasks in self.depth:
            totals[state] = totals.get(state, 0) + tasks
        return totals


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
        chosen = [s for s in self.latest if s.role == role.rstrip("s")]
        if not chosen:
            return None
        values = [s.cpu_percent if what == "cpu" else float(s.rss_bytes) for s in chosen]
        return sum(values)
