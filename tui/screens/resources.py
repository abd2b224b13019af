"""Screen 4: CPU and memory of the supervisor, its workers and the machine,
from the newest ``resource_samples`` rows the supervisor writes about once a
second; "no daemon running" when there are none recent."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import Label

from tui.data import HISTORY_SECONDS, Reader
from tui.messages import ResourcesLoaded
from tui.screens.base import PollingScreen
from tui.widgets.resource_panels import History, MachineLine, ProcessTable, StateLine


class ResourcesScreen(PollingScreen):
    MODE = "resources"
    AUTO_FOCUS = "ProcessTable"
    DEFAULT_CSS = "ResourcesScreen .title { padding: 0 1; text-style: bold; }"

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        yield StateLine("reading …")
        yield ProcessTable()
        yield MachineLine()
        yield Label(f"last {HISTORY_SECONDS} s", classes="title")
        yield History()
        yield from self.compose_footer()

    def fetch(self, reader: Reader, now: float) -> Message | None:
        return ResourcesLoaded(reader.resources(now))

    def on_resources_loaded(self, message: ResourcesLoaded) -> None:
        snap = message.snapshot
        self.query_one(StateLine).show(snap)
        self.query_one(ProcessTable).show(snap)
        self.query_one(MachineLine).show(snap)
        self.query_one(History).show(snap)
        self.loaded = True
