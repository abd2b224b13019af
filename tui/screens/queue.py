"""Screen 3: the durable queue — depth by state and priority (loop items not
started yet count as waiting), throughput over the last minute, loops in
progress (done / total, percent, rate, ETA), queued executions, dead letters."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Label

from tui.data import Reader
from tui.messages import QueueLoaded
from tui.screens.base import PollingScreen
from tui.widgets.queue_panels import (
    DepthSummary,
    DepthTable,
    LoopsTable,
    QueuedTable,
    Throughput,
)


class QueueScreen(PollingScreen):
    MODE = "queue"
    AUTO_FOCUS = "QueuedTable"
    DEFAULT_CSS = """
    QueueScreen #top { height: 1fr; min-height: 4; max-height: 12; }
    QueueScreen .title { padding: 0 1; text-style: bold; }
    """

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        yield DepthSummary("reading …")
        with Horizontal(id="top"):
            yield DepthTable()
            yield Throughput()
        yield Label("loops in progress", classes="title", id="loops-title")
        yield LoopsTable()
        yield Label("queued executions (next to start first)", classes="title", id="queued-title")
        yield QueuedTable()
        yield from self.compose_footer()

    def fetch(self, reader: Reader, now: float) -> Message | None:
        return QueueLoaded(reader.queue(now))

    def on_queue_loaded(self, message: QueueLoaded) -> None:
        snap = message.snapshot
        self.query_one(DepthSummary).show(snap)
        self.query_one(DepthTable).show(snap)
        self.query_one(Throughput).show(snap)
        self.query_one(QueuedTable).show(snap)
        self.query_one(LoopsTable).show(snap)
        loops = f"loops in progress: {len(snap.loops)}" + (
            " (first 100)" if len(snap.loops) >= 100 else ""
        )
        self.query_one("#loops-title", Label).update(loops)
        title = f"queued executions: {len(snap.queued)}" + (
            " (first 100)" if len(snap.queued) >= 100 else ""
        )
        if not snap.queued:
            title += " — nothing waits for a supervisor"
        self.query_one("#queued-title", Label).update(title)
        self.loaded = True
