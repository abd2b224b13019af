"""Screen 2: one execution — header, branch timeline (live while it runs), and
the selected node's input, output, error, attempts and log. Enter on a loop row
expands its items (and on an item, its body), one page of ITEMS_LIMIT items at a
time: ``[`` / ``]`` turn the page, ``n`` / ``N`` jump to the next / previous
failed item. It opens with the cursor on the first failed node, if any."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable

from tui import paths
from tui.data import ITEMS_LIMIT, Reader
from tui.messages import DetailLoaded, LogsRequested
from tui.records import DetailSnapshot, Seek, TimelineRow
from tui.screens.signalling import SignalScreen
from tui.widgets.execution_header import ExecutionHeader
from tui.widgets.node_panel import NodePanel
from tui.widgets.timeline import TimelineAxis, TimelineTable, where_text


class DetailScreen(SignalScreen):
    MODE = "detail"
    AUTO_FOCUS = "TimelineTable"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "expand", "Expand"),
        Binding("escape", "back", "Back"),
        Binding("left_square_bracket", "page(-1)", "Prev page", show=False),
        Binding("right_square_bracket", "page(1)", "Next page", show=False),
        Binding("n", "failed(1)", "Failed"),
        Binding("N", "failed(-1)", "Prev failed", show=False),
        Binding("l", "logs", "Logs"),
    ]

    # The view's parameters; the polling thread reads them (immutable values).
    execution_id: str | None = None
    expanded: frozenset[str] = frozenset()
    pages: dict[str, int] = {}  # noqa: RUF012 - replaced, never changed in place
    seek: Seek | None = None  # a cursor move the reader must work out (a failed node)
    selected: str | None = None
    cursor_to: str | None = None  # the row the cursor goes to once it is shown
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
        self.pages = {}
        self.selected = None
        self.cursor_to = None
        self.snapshot = None
        self.generation += 1
        # Open on the first failed node, if there is one.
        self.seek = Seek(self.generation) if execution_id is not None else None
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
            pages=self.pages,
            seek=self.seek,
        )
        return DetailLoaded(snapshot, generation)

    def on_detail_loaded(self, message: DetailLoaded) -> None:
        if message.generation != self.generation:
            return
        snap = self.snapshot = message.snapshot
        table = self.query_one(TimelineTable)
        if snap.seek is not None and snap.seek == self.seek:
            # The answer to a seek: take the loops and pages it opened.
            self.seek = None
            self.expanded, self.pages = snap.expanded, dict(snap.pages)
            if snap.focus is not None:
                self.cursor_to = self.selected = snap.focus
            if snap.note and snap.seek.loop is not None:
                self.notify(snap.note, severity="warning" if snap.focus is None else "information")
        self.query_one(ExecutionHeader).show(snap.execution, snap.now)
        table.show(snap)
        if self.cursor_to is not None and self.cursor_to in table.rows_by_key:
            table.move_cursor(row=table.get_row_index(self.cursor_to))
            self.cursor_to = None
        self._axis()
        self.query_one(NodePanel).show(snap.node or snap.execution, snap.now)
        self.loaded = True

    def _axis(self) -> None:
        """The axis line, and on its left the page of the loop the cursor is in."""
        if self.snapshot is None:
            return
        if self.snapshot.rows_truncated:
            self.query_one(TimelineAxis).update(
                "too many rows: collapse some loops (only the first rows are shown)"
            )
            return
        table = self.query_one(TimelineTable)
        where = None
        here = self._loop_here(fallback=False)
        if here is not None:
            row = table.rows_by_key.get(f"page:{here[0]}")
            if row is not None and row.page is not None:
                where = where_text(here[0], row.page)
        self.query_one(TimelineAxis).show(self.snapshot, table.widths, where)

    def on_timeline_table_width_changed(self, _: TimelineTable.WidthChanged) -> None:
        self.bar_width = self.query_one(TimelineTable).widths.bar
        self.request_refresh()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = None if event.row_key is None else str(event.row_key.value)
        self._axis()
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

    # --- pages of items and failed items ---------------------------------------------

    def _loop_here(self, fallback: bool = True) -> tuple[str, int] | None:
        """The loop the cursor is in (or on) and the item index it stands at;
        outside loops (``fallback``), the timeline's first loop."""
        table = self.query_one(TimelineTable)
        row = table.selected
        if row is not None and row.page is not None:
            return row.path, row.page.first - 1
        found = None if row is None else paths.enclosing_loop(row.path, row.kind)
        if found is None and fallback:
            # Outside any loop: the first loop of the timeline, from its start.
            first = next((r for r in table.rows_by_key.values() if r.kind == "loop"), None)
            found = None if first is None else (first.path, -1)
        return found

    def _loop_row(self, loop: str) -> TimelineRow | None:
        return self.query_one(TimelineTable).rows_by_key.get(loop)

    def action_page(self, step: int) -> None:
        here = self._loop_here()
        if here is None:
            self.notify("this execution has no loop", severity="warning")
            return
        loop = here[0]
        row = self._loop_row(loop)
        total = row.loop.total if row is not None and row.loop is not None else 0
        last = paths.page_of(total - 1, ITEMS_LIMIT) if total else 0
        first = self.pages.get(loop, 0)
        new = min(last, max(0, first + step * ITEMS_LIMIT))
        if new == first and loop in self.expanded:
            self.notify(f"{'last' if step > 0 else 'first'} page of {loop}", timeout=2)
            return
        self.pages = {**self.pages, loop: new}
        self.expanded = self.expanded | {loop}
        self.cursor_to = f"page:{loop}"
        self.request_refresh()

    def action_failed(self, direction: int) -> None:
        here = self._loop_here()
        if here is None:
            self.notify("this execution has no loop", severity="warning")
            return
        loop, index = here
        if direction < 0 and index < 0:
            index = 1 << 62  # from a loop row, back to its last failed item
        self.generation += 1
        self.seek = Seek(self.generation, loop, index, direction)
        self.request_refresh()

    def action_logs(self) -> None:
        if self.execution_id is None:
            self.notify("no execution chosen", severity="warning")
            return
        row = self.query_one(TimelineTable).selected
        path = None if row is None else row.path
        self.app.post_message(LogsRequested(self.execution_id, path))

    def action_back(self) -> None:
        self.call_later(self.app.run_action, "show('executions')")

    def target(self) -> tuple[str, str, str] | None:
        info = self.snapshot.execution if self.snapshot else None
        return None if info is None else (info.id, info.workflow, info.status)
