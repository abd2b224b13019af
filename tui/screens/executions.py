"""Screen 1: the executions table, filtered by status; Enter opens one, p/r/c
signal the highlighted one."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import DataTable, Label, Select

from tui.data import Reader
from tui.messages import ExecutionChosen, ExecutionsLoaded
from tui.records import EXEC_STATUSES
from tui.screens.signalling import SignalScreen
from tui.widgets.executions_table import ExecutionsTable

FILTERS: list[tuple[str, str]] = [
    ("all statuses", "all"),
    ("active (queued, running, paused)", "active"),
    *[(s, s) for s in EXEC_STATUSES],
]


class ExecutionsScreen(SignalScreen):
    MODE = "executions"
    AUTO_FOCUS = "ExecutionsTable"
    DEFAULT_CSS = """
    ExecutionsScreen #filters { height: 3; padding: 0 1; }
    ExecutionsScreen #filters Label { padding: 1 1 0 0; }
    ExecutionsScreen #filters Select { width: 40; }
    ExecutionsScreen #count { padding: 1 0 0 2; color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open"),
        Binding("f", "next_filter", "Filter"),
    ]

    status_filter: str | None = None  # read by the polling thread

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        with Horizontal(id="filters"):
            yield Label("status")
            yield Select(FILTERS, value="all", allow_blank=False, id="filter")
            yield Label("", id="count")
        yield ExecutionsTable()
        yield from self.compose_footer()

    def fetch(self, reader: Reader, now: float) -> Message | None:
        return ExecutionsLoaded(reader.executions(self.status_filter, now))

    def on_executions_loaded(self, message: ExecutionsLoaded) -> None:
        snap = message.snapshot
        if snap.status_filter != self.status_filter:
            return  # read before the filter changed
        self.query_one(ExecutionsTable).show(snap)
        shown = f"{len(snap.rows)} executions" + (" (newest 200)" if len(snap.rows) >= 200 else "")
        self.query_one("#count", Label).update(shown)
        self.loaded = True

    def on_select_changed(self, event: Select.Changed) -> None:
        value = event.value if isinstance(event.value, str) else "all"
        self.status_filter = None if value == "all" else value
        self.request_refresh()

    def action_next_filter(self) -> None:
        select: Select[str] = self.query_one("#filter", Select)
        values = [v for _, v in FILTERS]
        current = select.value if isinstance(select.value, str) else "all"
        select.value = values[(values.index(current) + 1) % len(values)]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        row = self.query_one(ExecutionsTable).selected
        if row is None:
            self.notify("no execution selected", severity="warning")
            return
        self.post_message(ExecutionChosen(row.id))

    def target(self) -> tuple[str, str, str] | None:
        row = self.query_one(ExecutionsTable).selected
        return None if row is None else (row.id, row.workflow, row.status)
