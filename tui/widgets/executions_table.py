"""The executions table: id, workflow, status, progress (done/total and percent),
rate and ETA, started, duration.

Sorted by any column (``s`` picks the next one, ``S`` reverses, or click a
header; an arrow marks it); newest first by default. It sorts the rows read (the
newest 200 that match), in place at every refresh. On a narrow terminal the
columns that matter least go first: started, then rate / ETA, then duration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import BindingType
from textual.events import Resize
from textual.widgets import DataTable

from tui import format as fmt
from tui.records import EXEC_STATUSES, ExecutionRow, ExecutionsSnapshot
from tui.widgets.table_sync import VI_KEYS, cursor_key, sync_rows


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    width: int


# Fixed widths: the columns do not jump about as rows come and go.
COLUMNS = (
    Column("id", "id", 12),
    Column("workflow", "workflow", 18),
    Column("status", "status", 9),
    Column("progress", "progress", 22),
    Column("rate", "rate / ETA", 17),
    Column("started", "started", 19),
    Column("duration", "duration", 10),
)
BY_KEY = {c.key: c for c in COLUMNS}
DROP_ORDER = ("started", "rate", "duration")  # the first to go when narrow
WORKFLOW_MIN = 12
PADDING = 1  # DataTable cell padding, each side
SCROLLBAR = 2

STATUS_ORDER = {s: i for i, s in enumerate(EXEC_STATUSES)}


def fit(width: int) -> list[Column]:
    """The columns shown in a table ``width`` cells wide, in their order: narrow
    the workflow (down to WORKFLOW_MIN), then drop the optional columns in
    DROP_ORDER, until they fit."""
    room = width - SCROLLBAR

    def need(cols: list[Column]) -> int:
        return sum(c.width + 2 * PADDING for c in cols)

    def narrowed(cols: list[Column]) -> list[Column]:
        over = need(cols) - room
        if over <= 0:
            return cols
        wf = BY_KEY["workflow"]
        narrower = Column(wf.key, wf.title, max(WORKFLOW_MIN, wf.width - over))
        return [narrower if c.key == "workflow" else c for c in cols]

    shown = narrowed(list(COLUMNS))
    for key in DROP_ORDER:
        if need(shown) <= room:
            break
        shown = narrowed([c for c in COLUMNS if c.key in {s.key for s in shown} - {key}])
    return shown


def pace(r: ExecutionRow, now: float) -> str:
    """Items per second and the time left, for an execution with loops (its node
    instances have no total known in advance, so no ETA)."""
    p = r.progress
    if p.unit != "items":
        return ""
    end = p.ended_at if p.ended_at is not None else (r.finished_at or now)
    going = r.status == "running" and p.ended_at is None
    return fmt.pace_text(fmt.pace(p.total, p.done, p.started_at, end), going)


def started(r: ExecutionRow) -> Text:
    """When it started; dimmed submission time while it is still queued."""
    if r.started_at is not None:
        return Text(fmt.clock(r.started_at))
    return Text(fmt.clock(r.created_at), style="dim")


CELLS: dict[str, Callable[[ExecutionRow, float], Any]] = {
    "id": lambda r, now: r.id,
    "workflow": lambda r, now: r.workflow,
    "status": lambda r, now: fmt.status_text(r.status),
    "progress": lambda r, now: fmt.progress(r.done, r.total),
    "rate": pace,
    "started": lambda r, now: started(r),
    "duration": lambda r, now: fmt.duration(fmt.span(r.started_at, r.finished_at, now)),
}


def _rate(r: ExecutionRow, now: float) -> float:
    p = r.progress
    if p.unit != "items":
        return -1.0
    end = p.ended_at if p.ended_at is not None else (r.finished_at or now)
    found = fmt.pace(p.total, p.done, p.started_at, end).rate
    return -1.0 if found is None else found


# What each column sorts by (ties keep the newest first).
SORT_KEYS: dict[str, Callable[[ExecutionRow, float], Any]] = {
    "id": lambda r, now: r.id,
    "workflow": lambda r, now: r.workflow.lower(),
    "status": lambda r, now: STATUS_ORDER.get(r.status, len(STATUS_ORDER)),
    "progress": lambda r, now: r.done / r.total if r.total else -1.0,
    "rate": _rate,
    "started": lambda r, now: r.started_at if r.started_at is not None else r.created_at,
    "duration": lambda r, now: fmt.span(r.started_at, r.finished_at, now) or -1.0,
}


def sort_rows(
    rows: list[ExecutionRow], column: str, descending: bool, now: float
) -> list[ExecutionRow]:
    """``rows`` (newest first) sorted by ``column``; a stable sort, so equal
    values stay newest first."""
    key = SORT_KEYS[column]
    return sorted(rows, key=lambda r: key(r, now), reverse=descending)


def cells(r: ExecutionRow, now: float, columns: list[Column] | None = None) -> tuple[Any, ...]:
    return tuple(CELLS[c.key](r, now) for c in (columns or list(COLUMNS)))


class ExecutionsTable(DataTable[Any]):
    DEFAULT_CSS = "ExecutionsTable { height: 1fr; }"
    BINDINGS: ClassVar[list[BindingType]] = VI_KEYS

    def __init__(self) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, id="executions")
        self.by_id: dict[str, ExecutionRow] = {}
        self.shown_columns: list[Column] = list(COLUMNS)
        self.sort_column = "started"
        self.sort_descending = True  # newest first
        self.snapshot: ExecutionsSnapshot | None = None

    def on_mount(self) -> None:
        self._columns()

    def _columns(self) -> None:
        self.clear(columns=True)
        for c in self.shown_columns:
            self.add_column(self._title(c), key=c.key, width=c.width)

    def _title(self, c: Column) -> Text:
        if c.key != self.sort_column:
            return Text(c.title)
        return Text(c.title + (" ▼" if self.sort_descending else " ▲"), style="bold")

    def on_resize(self, event: Resize) -> None:
        columns = fit(event.size.width)
        if columns != self.shown_columns:
            self.shown_columns = columns
            self._columns()
            if self.snapshot is not None:
                self.show(self.snapshot)

    def sort_by(self, column: str, descending: bool | None = None) -> None:
        """Sort by ``column``; ``descending`` None: a new column starts the way
        that column reads best (times and progress: highest first), the same
        column flips."""
        if descending is None:
            if column == self.sort_column:
                descending = not self.sort_descending
            else:
                descending = column in ("progress", "rate", "started", "duration")
        self.sort_column, self.sort_descending = column, descending
        for c in self.shown_columns:
            self.columns[c.key].label = self._title(c)  # type: ignore[index]
        self._require_update_dimensions = True
        self.refresh()
        if self.snapshot is not None:
            self.show(self.snapshot)

    def next_sort(self) -> None:
        keys = [c.key for c in COLUMNS]
        self.sort_by(keys[(keys.index(self.sort_column) + 1) % len(keys)])

    def reverse_sort(self) -> None:
        self.sort_by(self.sort_column, not self.sort_descending)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(str(event.column_key.value))

    def show(self, snapshot: ExecutionsSnapshot) -> None:
        self.snapshot = snapshot
        self.by_id = {r.id: r for r in snapshot.rows}
        rows = sort_rows(snapshot.rows, self.sort_column, self.sort_descending, snapshot.now)
        sync_rows(self, [(r.id, cells(r, snapshot.now, self.shown_columns)) for r in rows])

    @property
    def selected(self) -> ExecutionRow | None:
        key = cursor_key(self)
        return None if key is None else self.by_id.get(key)
