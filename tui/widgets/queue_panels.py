"""The queue screen's areas: depth by state and priority (with the loop items
not started yet as ``waiting``), throughput sparkline, loops in progress,
queued executions."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Label, Sparkline, Static

from tui import format as fmt
from tui.records import QUEUE_STATES, WAITING, LoopProgress, QueueSnapshot
from tui.widgets.table_sync import VI_KEYS, sync_rows


def depth_line(snapshot: QueueSnapshot) -> Text:
    text = Text()
    for state, n in snapshot.by_state().items():
        text.append(f"{state} ", style=fmt.STATUS_STYLE.get(state, ""))
        text.append(f"{n}", style="bold")
        if state == WAITING:
            text.append(" (loop items not started)", style="dim")
        text.append("   ")
    text.append("dead letters ", style="red" if snapshot.dead_letters else "")
    text.append(str(snapshot.dead_letters), style="bold")
    if snapshot.dead_letters:
        text.append(" (fm dlq ls)", style="dim")
    return text


class DepthSummary(Static):
    DEFAULT_CSS = "DepthSummary { height: auto; padding: 0 1; }"  # wraps when narrow

    def show(self, snapshot: QueueSnapshot) -> None:
        self.update(depth_line(snapshot))


class DepthTable(DataTable[Any]):
    """One row per (state, priority) with its number of tasks."""

    DEFAULT_CSS = "DepthTable { width: 40; height: 1fr; }"
    BINDINGS: ClassVar[list[BindingType]] = VI_KEYS

    def on_mount(self) -> None:
        self.cursor_type = "none"
        for name in ("state", "priority", "tasks"):
            self.add_column(name, key=name)

    def show(self, snapshot: QueueSnapshot) -> None:
        order = {s: i for i, s in enumerate((*QUEUE_STATES, WAITING))}
        rows = sorted(snapshot.depth, key=lambda r: (order.get(r[0], 9), -r[1]))
        sync_rows(
            self,
            [(f"{s}:{p}", (fmt.status_text(s), str(p), str(n))) for s, p, n in rows],
        )


class Throughput(Vertical):
    """Node completions per second over the last minute."""

    DEFAULT_CSS = """
    Throughput { height: 1fr; padding: 0 1; }
    Throughput Sparkline { height: 1fr; }
    Throughput Label { width: 100%; }
    """

    def compose(self) -> ComposeResult:
        yield Label("throughput", id="throughput-label")
        yield Sparkline([], id="throughput")

    def show(self, snapshot: QueueSnapshot) -> None:
        data = snapshot.throughput
        now = data[-1] if data else 0
        peak = max(data, default=0)
        total = sum(data)
        self.query_one("#throughput-label", Label).update(
            f"node completions per second, last {len(data)} s: "
            f"now {now}/s, peak {peak}/s, {total} in all"
        )
        self.query_one(Sparkline).data = [float(x) for x in data]


LOOP_COLUMNS = (  # (key, title); at 80 columns what is cut off is the workflow
    ("execution", "execution"),
    ("loop", "loop"),
    ("progress", "progress"),
    ("waiting", "not started"),
    ("rate", "rate / ETA"),
    ("workflow", "workflow"),
)


class LoopsTable(DataTable[Any]):
    """Loops running in running or paused executions: items done / total (known
    when the loop started), percent, rate, ETA, and items not started yet."""

    DEFAULT_CSS = "LoopsTable { height: 1fr; }"
    BINDINGS: ClassVar[list[BindingType]] = VI_KEYS

    def on_mount(self) -> None:
        self.cursor_type = "row"
        for key, title in LOOP_COLUMNS:
            self.add_column(title, key=key)

    def show(self, snapshot: QueueSnapshot) -> None:
        sync_rows(
            self,
            [
                (f"{lp.execution_id}:{lp.path}", loop_cells(lp, snapshot.now))
                for lp in snapshot.loops
            ],
        )


def loop_cells(lp: LoopProgress, now: float) -> tuple[Any, ...]:
    pace = fmt.pace(lp.total, lp.done, lp.started_at, now)
    going = lp.execution_status == "running"
    rate = fmt.pace_text(pace, going) if going else f"{fmt.rate(pace.rate)} (paused)"
    return (
        lp.execution_id,
        lp.path,
        fmt.progress(lp.done, lp.total),
        f"{lp.waiting:,}",
        rate,
        lp.workflow,
    )


class QueuedTable(DataTable[Any]):
    """Executions waiting for a supervisor to start them, first to start first."""

    DEFAULT_CSS = "QueuedTable { height: 1fr; }"
    BINDINGS: ClassVar[list[BindingType]] = VI_KEYS

    def on_mount(self) -> None:
        self.cursor_type = "row"
        for name in ("id", "workflow", "priority", "submitted", "waiting"):
            self.add_column(name, key=name)

    def show(self, snapshot: QueueSnapshot) -> None:
        sync_rows(
            self,
            [
                (
                    q.id,
                    (
                        q.id,
                        q.workflow,
                        str(q.priority),
                        fmt.clock(q.created_at),
                        fmt.duration(snapshot.now - q.created_at),
                    ),
                )
                for q in snapshot.queued
            ],
        )
