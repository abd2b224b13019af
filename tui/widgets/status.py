"""The line above the footer: which database, whether a daemon serves it, and
the last read error. Every screen has one; the app keeps ``daemon_pid``."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static


class StatusLine(Static):
    DEFAULT_CSS = """
    StatusLine { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """

    daemon_pid: reactive[int | None] = reactive(None)
    error: reactive[str] = reactive("")

    def __init__(self, db: Path) -> None:
        super().__init__()
        self.db = db

    def on_mount(self) -> None:
        self.watch(self.app, "daemon_pid", self._daemon_changed, init=True)

    def _daemon_changed(self, pid: int | None) -> None:
        self.daemon_pid = pid

    def render(self) -> Text:
        text = Text(f"{self.db}  ")
        if self.daemon_pid is not None:
            text.append(f"daemon pid {self.daemon_pid} serves it", style="green")
        else:
            text.append(
                "no daemon: offline view (signals wait for one)",
                style="yellow",
            )
        if self.error:
            text.append(f"  {self.error}", style="bold red")
        return text
