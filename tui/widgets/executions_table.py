"""The executions table: id, workflow, status, progress (done/total and percent),
rate and ETA, started, duration."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from tui import format as fmt
from tui.records import ExecutionRow, ExecutionsSnapshot
from tui.widgets.table_sync import cursor_key, sync_rows

# Fixed widths: the columns do not jump about as rows come and go.
COLUMNS = (  # (key, title, width)
    ("id", "id", 12),
    ("workflow", "workflow", 18),
    ("status", "status", 9),
    ("progress", "progress", 21),
    ("rate", "rate / ETA", 17),
    ("started", "started", 19),
    ("duration", "duration", 8),
)


class ExecutionsTable(DataTable[Any]):
    DEFAULT_CSS = "ExecutionsTable { height: 1fr; }"

    def __init__(self) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, id="executions")
        self.by_id: dict[str, ExecutionRow] = {}

    def on_mount(self) -> None:
        for key, title, width in COLUMNS:
            self.add_column(title, key=key, width=width)

    def show(self, snapshot: ExecutionsSnapshot) -> None:
        self.by_id = {r.id: r for r in snapshot.rows}
        sync_rows(self, [(r.id, cells(r, snapshot.now)) for r in snapshot.rows])

    @property
    def selected(self) -> ExecutionRow | None:
        key = cursor_key(self)
        return None if key is None else self.by_id.get(key)


def cells(r: ExecutionRow, now: float) -> tuple[Any, ...]:
    return (
        r.id,
        r.workflow,
        fmt.status_text(r.status),
        fmt.progress(r.done, r.total),
        pace(r, now),
        started(r),
        fmt.duration(fmt.span(r.started_at, r.finished_at, now)),
    )


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
