"""Screen 1: the executions table, filtered by status and searched (``/``:
tui.search), sorted by any column; Enter opens one, ``l`` follows its logs,
p/r/c signal the highlighted one."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.events import Key
from textual.message import Message
from textual.widgets import DataTable, Input, Label, Select

from tui.data import Reader
from tui.messages import ExecutionChosen, ExecutionsLoaded, LogsRequested
from tui.records import EXEC_STATUSES
from tui.screens.signalling import SignalScreen
from tui.widgets.executions_table import ExecutionsTable

FILTERS: list[tuple[str, str]] = [
    ("all statuses", "all"),
    ("active", "active"),  # queued, running, paused
    *[(s, s) for s in EXEC_STATUSES],
]


class ExecutionsScreen(SignalScreen):
    MODE = "executions"
    AUTO_FOCUS = "ExecutionsTable"
    DEFAULT_CSS = """
    ExecutionsScreen #filters { height: 3; padding: 0 1; }
    ExecutionsScreen #filters Label { padding: 1 1 0 0; }
    ExecutionsScreen #filters Select { width: 24; }
    ExecutionsScreen #search { width: 1fr; }
    ExecutionsScreen #count { padding: 1 0 0 1; color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open"),
        Binding("slash", "search", "Search"),
        Binding("escape", "clear_search", "Clear search", show=False),
        Binding("f", "next_filter", "Filter", show=False),  # the list shows it
        Binding("s", "sort", "Sort"),
        Binding("S", "reverse_sort", "Reverse", show=False),
        Binding("l", "logs", "Logs"),
    ]

    # The view's parameters, read by the polling thread (immutable values).
    status_filter: str | None = None
    search_text: str = ""

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        with Horizontal(id="filters"):
            yield Label("status")
            yield Select(FILTERS, value="all", allow_blank=False, id="filter")
            yield Input(placeholder="/ search: text status:failed wf:name error:text", id="search")
            yield Label("", id="count")
        yield ExecutionsTable()
        yield from self.compose_footer()

    def fetch(self, reader: Reader, now: float) -> Message | None:
        return ExecutionsLoaded(reader.executions(self.status_filter, now, self.search_text))

    def on_executions_loaded(self, message: ExecutionsLoaded) -> None:
        snap = message.snapshot
        if snap.status_filter != self.status_filter or snap.query != self.search_text:
            return  # read before the filter or the search changed
        self.query_one(ExecutionsTable).show(snap)
        self.query_one("#count", Label).update(self.count_text(len(snap.rows)))
        self.loaded = True

    def count_text(self, n: int) -> str:
        table = self.query_one(ExecutionsTable)
        arrow = "▼" if table.sort_descending else "▲"
        found = f"{n} found" if self.search_text else f"{n} shown"
        return f"{found}{' (newest)' if n >= 200 else ''}, by {table.sort_column} {arrow}"

    def on_select_changed(self, event: Select.Changed) -> None:
        value = event.value if isinstance(event.value, str) else "all"
        self.status_filter = None if value == "all" else value
        self.request_refresh()

    def action_next_filter(self) -> None:
        select: Select[str] = self.query_one("#filter", Select)
        values = [v for _, v in FILTERS]
        current = select.value if isinstance(select.value, str) else "all"
        select.value = values[(values.index(current) + 1) % len(values)]

    # --- search ----------------------------------------------------------------------

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "search":
            return
        event.stop()
        self.search_text = event.value.strip()
        self.request_refresh()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "search":
            event.stop()
            self.query_one(ExecutionsTable).focus()

    def on_key(self, event: Key) -> None:
        # Escape in the search field clears it and goes back to the table (the
        # field would otherwise keep it).
        search = self.query_one("#search", Input)
        if event.key == "escape" and search.has_focus:
            event.stop()
            event.prevent_default()
            self.action_clear_search()

    def action_clear_search(self) -> None:
        self.query_one("#search", Input).value = ""
        self.search_text = ""
        self.request_refresh()
        self.query_one(ExecutionsTable).focus()

    # --- sort ------------------------------------------------------------------------

    def action_sort(self) -> None:
        self.query_one(ExecutionsTable).next_sort()
        self._sorted()

    def action_reverse_sort(self) -> None:
        self.query_one(ExecutionsTable).reverse_sort()
        self._sorted()

    def on_data_table_header_selected(self, _: DataTable.HeaderSelected) -> None:
        self._sorted()

    def _sorted(self) -> None:
        table = self.query_one(ExecutionsTable)
        if table.snapshot is not None:
            self.query_one("#count", Label).update(self.count_text(len(table.snapshot.rows)))

    # --- the highlighted execution ---------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        row = self.query_one(ExecutionsTable).selected
        if row is None:
            self.notify("no execution selected", severity="warning")
            return
        self.post_message(ExecutionChosen(row.id))

    def action_logs(self) -> None:
        row = self.query_one(ExecutionsTable).selected
        if row is None:
            self.notify("no execution selected", severity="warning")
            return
        self.app.post_message(LogsRequested(row.id, None))

    def target(self) -> tuple[str, str, str] | None:
        row = self.query_one(ExecutionsTable).selected
        return None if row is None else (row.id, row.workflow, row.status)
