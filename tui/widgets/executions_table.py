"""The executions table: id, workflow, status, progress, started, duration."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from tui import format as fmt
from tui.records import ExecutionRow, ExecutionsSnapshot
from tui.widgets.table_sync import cursor_key, sync_rows

# Fixed widths: the columns do not jump about as rows come and go.
COLUMNS = (
    ("id", 12),
    ("workflow", 22),
    ("status", 9),
    ("progress", 22),
    ("started", 19),
    ("duration", 8),
)


class ExecutionsTable(DataTable[Any]):
    DEFAULT_CSS = "ExecutionsTable { height: 1fr; }"

    def __init__(self) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, id="executions")
        self.by_id: dict[str, ExecutionRow] = {}

    def on_mount(self) -> None:
        for name, width in COLUMNS:
            self.add_column(name, key=name, width=width)

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
        started(r),
        fmt.duration(fmt.span(r.started_at, r.finished_at, now)),
    )


def started(r: ExecutionRow) -> Text:
    """When it started; dimmed submission time while it is still queued."""
    if r.started_at is not None:
        return Text(fmt.clock(r.started_at))
    return Text(fmt.clock(r.created_at), style="dim")
