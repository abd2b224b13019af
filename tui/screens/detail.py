"""Screen 2: one execution — header, branch timeline (live while it runs), and
the selected node's input, output, error, attempts and log. Enter on a loop row
expands its items (and on an item, its body)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable

from tui.data import Reader
from tui.messages import DetailLoaded
from tui.records import DetailSnapshot
from tui.screens.signalling import SignalScreen
from tui.widgets.execution_header import ExecutionHeader
from tui.widgets.node_panel import NodePanel
from tui.widgets.timeline import TimelineAxis, TimelineTable


class DetailScreen(SignalScreen):
    MODE = "detail"
    AUTO_FOCUS = "TimelineTable"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "expand", "Expand/collapse"),
        Binding("escape", "back", "Back"),
    ]

    # The view's parameters; the polling thread reads them (immutable values).
    execution_id: str | None = None
    expanded: frozenset[str] = frozenset()
    selected: str | None = None
    generation = 0
    bar_width = 40  # the timeline's bar column, copied here for the thread
    snapshot: DetailSnapshot | None = None

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        yield ExecutionHeader("no execution chosen: press 1, then Enter on an execution")
        yield TimelineAxis()
        yield TimelineTable()
        yield NodePanel()
        yield from self.compose_footer()

    def on_screen_resume(self) -> None:
        if self.session.execution_id != self.execution_id:
            self._reset(self.session.execution_id)
        super().on_screen_resume()

    def _reset(self, execution_id: str | None) -> None:
        self.execution_id = execution_id
        self.expanded = frozenset()
        self.selected = None
        self.snapshot = None
        self.generation += 1
        self.loaded = False
        self.query_one(TimelineTable).clear()
        self.query_one(NodePanel).show(None, 0.0)
        self.query_one(TimelineAxis).update("")
        self.query_one(ExecutionHeader).update(f"loading {execution_id} …")

    def fetch(self, reader: Reader, now: float) -> Message | None:
        eid, generation = self.execution_id, self.generation
        if eid is None:
            return None
        snapshot = reader.detail(
            eid,
            expanded=self.expanded,
            selected=self.selected,
            width=self.bar_width,
            now=now,
        )
        return DetailLoaded(snapshot, generation)

    def on_detail_loaded(self, message: DetailLoaded) -> None:
        if message.generation != self.generation:
            return
        snap = self.snapshot = message.snapshot
        table = self.query_one(TimelineTable)
        self.query_one(ExecutionHeader).show(snap.execution, snap.now)
        self.query_one(TimelineAxis).show(snap, table.widths)
        table.show(snap)
        self.query_one(NodePanel).show(snap.node or snap.execution, snap.now)
        if snap.rows_truncated:
            self.query_one(TimelineAxis).update(
                "too many rows: collapse some loops (only the first rows are shown)"
            )
        self.loaded = True

    def on_timeline_table_width_changed(self, _: TimelineTable.WidthChanged) -> None:
        self.bar_width = self.query_one(TimelineTable).widths.bar
        self.request_refresh()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = None if event.row_key is None else str(event.row_key.value)
        if key != self.selected:
            self.selected = key
            self.request_refresh()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_expand()

    def action_expand(self) -> None:
        row = self.query_one(TimelineTable).selected
        if row is None or not row.expandable:
            return
        if row.key in self.expanded:
            # Collapsing a loop also forgets its expanded items.
            self.expanded = frozenset(
                k for k in self.expanded if k != row.key and not k.startswith(row.key + "[")
            )
        else:
            self.expanded = self.expanded | {row.key}
        self.request_refresh()

    def action_back(self) -> None:
        self.call_later(self.app.run_action, "show('executions')")

    def target(self) -> tuple[str, str, str] | None:
        info = self.snapshot.execution if self.snapshot else None
        return None if info is None else (info.id, info.workflow, info.status)
