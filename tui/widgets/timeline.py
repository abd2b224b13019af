"""The branch timeline: one row per node instance with a bar on a shared time
axis, coloured by status. A loop is one aggregated row, two lines high: its
items done / total (the total known when it started), percent, rate and ETA, and
a density bar (how many of its items ran in each column); Enter expands it into
its items, and an item into its body's nodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import BindingType
from textual.events import Resize
from textual.message import Message
from textual.widgets import DataTable, Static

from tui import format as fmt
from tui.data import ITEMS_LIMIT as PAGE_SIZE
from tui.records import DetailSnapshot, ItemPage, TimelineRow
from tui.widgets.table_sync import VI_KEYS, cursor_key, sync_rows

PADDING = 1  # DataTable cell padding, each side
TIME_W = 9
SCROLLBAR = 2
LOOP_HEIGHT = 2  # a loop row's second line: percent, rate, ETA


@dataclass(frozen=True)
class Widths:
    """Column widths for a table ``width`` cells wide; the bar takes what is left."""

    label: int
    status: int
    bar: int

    @classmethod
    def fit(cls, width: int) -> Widths:
        room = width - SCROLLBAR - 8 * PADDING - TIME_W
        label = max(16, min(34, int(room * 0.3)))
        status = 22 if room >= 100 else 16
        return cls(label, status, max(10, room - label - status))

    @property
    def bar_offset(self) -> int:
        """Cells left of the bar column's first character."""
        return self.label + self.status + TIME_W + 7 * PADDING


def label(row: TimelineRow, width: int) -> Text:
    indent = "  " * row.depth
    if row.page is not None:
        page = row.page
        pages = max(1, -(-page.total // PAGE_SIZE))
        text = Text(f"{indent}  page {page.first // PAGE_SIZE + 1}/{pages}", style="bold cyan")
        text.truncate(width, overflow="ellipsis")
        return text
    marker = ("▾ " if row.expanded else "▸ ") if row.expandable else "  "
    if row.kind == "item":
        name = row.path[row.path.rfind("[") :]
    elif row.depth:
        name = row.path.rsplit(".", 1)[-1]
    else:
        name = row.path
    text = Text().append(indent + marker, style="bold")
    text.append(name, style="bold" if row.kind == "loop" else "")
    if row.kind == "loop":
        text.append(" loop", style="dim")
    text.truncate(width, overflow="ellipsis")
    return text


def page_text(page: ItemPage, width: int) -> str:
    """``items [300]–[599] of 10,000`` (and how many of them have not started),
    shortened to fit ``width``; the indexes the item rows show."""
    waiting = page.last - page.first + 1 - page.started
    span = f"[{page.first}]–[{page.last}] of {page.total:,}"
    for text in (
        f"items {span}" + (f", {waiting:,} not started" if waiting > 0 else ""),
        f"items {span}",
        span,
    ):
        if len(text) <= width:
            return text
    return span[:width]


def loop_pace(row: TimelineRow, snapshot: DetailSnapshot) -> str:
    """``95% 123/s ETA 4m05s`` while the loop runs; ``100% 28.0/s`` once it ended."""
    assert row.loop is not None
    done, total = row.loop.done, row.loop.total
    end = row.finished_at if row.finished_at is not None else snapshot.now
    info = snapshot.execution
    going = row.status == "running" and (info is None or info.status == "running")
    pace = fmt.pace_text(fmt.pace(total, done, row.started_at, end), going)
    return f"{fmt.percent(done, total)} {pace}".rstrip()


def status_cell(row: TimelineRow, snapshot: DetailSnapshot) -> Text:
    if row.page is not None:
        text = Text("[ ] pages", style="dim")
        if row.page.failed:
            text = Text("[ ] ", style="dim").append(f"✗{row.page.failed}", style="red")
            text.append(" n/N", style="dim")
        return text
    text = fmt.status_text(row.status)
    if row.loop is not None:
        text.append(f" {row.loop.done}/{row.loop.total}")
        failed = sum(n for s, n in row.loop.counts.items() if s in ("failed", "timed_out"))
        if failed:
            text.append(f" ✗{failed}", style="red")
        text.append("\n" + loop_pace(row, snapshot))
    elif row.attempts > 1:
        text.append(f" ×{row.attempts}", style="magenta")
    return text


def bar_cell(row: TimelineRow, snapshot: DetailSnapshot, width: int) -> Text:
    style = fmt.STATUS_STYLE.get(row.status, "")
    if row.page is not None:
        return Text(page_text(row.page, width).ljust(width), style="cyan")
    if row.loop is not None and any(row.loop.density):
        density = (row.loop.density + (0,) * width)[:width]
        return fmt.density_bar(density, style)
    return fmt.bar(row.started_at, row.finished_at, snapshot.t0, snapshot.t1, width, style)


def cells(row: TimelineRow, snapshot: DetailSnapshot, widths: Widths) -> tuple[Any, ...]:
    took = fmt.span(row.started_at, row.finished_at, snapshot.t1 or snapshot.now)
    return (
        label(row, widths.label),
        status_cell(row, snapshot),
        fmt.duration(took) if row.kind != "page" else "",
        bar_cell(row, snapshot, widths.bar),
    )


class TimelineTable(DataTable[Any]):
    """Rows are keyed by node path (``page:<loop>`` for the line above a loop's
    page of items)."""

    DEFAULT_CSS = "TimelineTable { height: 1fr; }"
    BINDINGS: ClassVar[list[BindingType]] = VI_KEYS

    class WidthChanged(Message):
        """The bar column got a new width: the densities must be read again."""

    def __init__(self) -> None:
        super().__init__(cursor_type="row", id="timeline", cell_padding=PADDING)
        self.widths = Widths.fit(120)
        self.rows_by_key: dict[str, TimelineRow] = {}

    def on_mount(self) -> None:
        self._columns()

    def _columns(self) -> None:
        self.clear(columns=True)
        self.add_column("node", width=self.widths.label, key="node")
        self.add_column("status", width=self.widths.status, key="status")
        self.add_column("took", width=TIME_W, key="took")
        self.add_column("timeline", width=self.widths.bar, key="bar")

    def on_resize(self, event: Resize) -> None:
        widths = Widths.fit(event.size.width)
        if widths != self.widths:
            self.widths = widths
            self._columns()
            self.post_message(self.WidthChanged())

    def show(self, snapshot: DetailSnapshot) -> None:
        self.rows_by_key = {r.key: r for r in snapshot.rows}
        # A snapshot read for another width is drawn at this one (and read again).
        sync_rows(
            self,
            [(r.key, cells(r, snapshot, self.widths)) for r in snapshot.rows],
            {r.key: LOOP_HEIGHT for r in snapshot.rows if r.loop is not None},
        )

    @property
    def selected(self) -> TimelineRow | None:
        key = cursor_key(self)
        return None if key is None else self.rows_by_key.get(key)


class TimelineAxis(Static):
    """The time axis above the bars: where they start, how long the axis is; on
    its left, which items of the loop the cursor is in are listed (the page line
    itself may be scrolled out of view)."""

    DEFAULT_CSS = "TimelineAxis { height: 1; color: $text-muted; }"

    def show(self, snapshot: DetailSnapshot, widths: Widths, where: Text | None = None) -> None:
        left = Text(" " * widths.bar_offset)
        if where is not None:
            where = where[: max(0, widths.bar_offset - 1)]
            left = where.append(" " * (widths.bar_offset - len(where)))
        if snapshot.t0 is None or snapshot.t1 is None:
            self.update(left.append("no node has started yet"))
            return
        total = snapshot.t1 - snapshot.t0
        bar_width = widths.bar
        left.append("0")
        right = fmt.duration(total)
        middle = f" one column = {fmt.duration(total / max(bar_width, 1))} "
        gap = max(1, bar_width - 1 - len(middle) - len(right))
        left.append("─" * (gap // 2) + middle + "─" * (gap - gap // 2) + right)
        self.update(left)


def where_text(loop: str, page: ItemPage) -> Text:
    """``each: items [900]–[1199] of 10,000 ✗11``: the page of the loop the cursor is in."""
    text = Text(f"{loop}: ", style="bold").append(
        f"items [{page.first}]–[{page.last}] of {page.total:,}", style="cyan"
    )
    if page.failed:
        text.append(f" ✗{page.failed}", style="red")
    return text
