"""The logs screen (``l``): what ``fm logs ID [--node PATH]`` prints — the
captured lines of an execution's node tries (stdout, stderr, logging, ctx.log)
and each failed try's error with its traceback — followed like ``tail -f``.

A running node's lines reach the database every half second (in a worker
process of its own) or when its try ends (the I/O lane, Dask). Following (``f``) keeps the view at the bottom as they come;
scrolling up pauses it, ``end`` / ``G`` jumps back down and follows again. The
reader asks only for the lines after the last one read (by log row id), so a
long log costs one read, then only what is new.
"""

from __future__ import annotations

import threading
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import RichLog, Static

from tui import format as fmt
from tui.data import LOGS_TAIL, Reader
from tui.messages import LogsLoaded
from tui.records import TERMINAL_EXEC, LogEntry, LogsSnapshot
from tui.screens.base import PollingScreen
from tui.session import Session

MAX_LINES = 20_000  # lines the screen keeps (the oldest go first)


def entry_text(e: LogEntry) -> Text:
    """``12:03:04.120 each[3].work#1 stdout: text``, as ``fm logs`` prints it;
    a failed try's error in red, its traceback dimmed."""
    text = Text(fmt.short_clock(e.ts) + " ", style="dim")
    if e.kind == "line":
        text.append(f"{e.path}#{e.attempt} ", style="bold")
        text.append(f"{e.stream}: ", style="cyan")
        text.append(e.line, style="red" if e.stream == "stderr" else "")
        return text
    first, *rest = e.line.split("\n")
    text.append(f"{e.path}#{e.attempt} ", style="bold")
    text.append(f"{e.stream}: {first}", style="bold red")
    for line in rest:
        text.append("\n" + line, style="dim")
    return text


class LogView(RichLog):
    """A RichLog that tells when the user scrolls up (which pauses following)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "scroll_down", "Down", show=False),
        Binding("k", "scroll_up", "Up", show=False),
        Binding("g", "scroll_home", "Top", show=False),
    ]

    class ScrolledBack(Message):
        """The user moved up: stop following."""

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new < old and new < self.max_scroll_y:
            self.post_message(self.ScrolledBack())


class LogsScreen(PollingScreen):
    """Pushed over the executions or detail screen; escape goes back to it."""

    MODE = "logs"
    AUTO_FOCUS = "LogView"
    DEFAULT_CSS = """
    LogsScreen #logs-head { height: auto; padding: 0 1; background: $boost; }
    LogsScreen LogView { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("f", "toggle_follow", "Follow on/off"),
        Binding("end,G", "follow_end", "End + follow"),
    ]

    def __init__(self, session: Session, execution_id: str, path: str | None = None) -> None:
        super().__init__(session)
        self.execution_id = execution_id
        self.path = path
        self.following = True
        self.status: str | None = None
        self.lines = 0
        # What was read already (the polling thread's own state).
        self._reading = threading.Lock()
        self.after: int | None = None
        self.seen_errors: frozenset[int] = frozenset()

    def compose(self) -> ComposeResult:
        yield Static("reading …", id="logs-head")
        yield LogView(max_lines=MAX_LINES, wrap=True, markup=False, highlight=False)
        yield from self.compose_footer()

    def fetch(self, reader: Reader, now: float) -> Message | None:
        # Only the polling thread reads and moves the read position (under a lock:
        # a cancelled poller may still be finishing a read), so no line is read twice.
        with self._reading:
            snap = reader.logs(self.execution_id, self.path, self.after, self.seen_errors)
            self.after, self.seen_errors = snap.last_line_id, snap.error_ids
        return LogsLoaded(snap)

    def on_logs_loaded(self, message: LogsLoaded) -> None:
        snap: LogsSnapshot = message.snapshot
        view = self.query_one(LogView)
        self.status = snap.status
        if snap.earlier:
            view.write(
                Text(
                    f"… {snap.earlier} earlier lines not shown (the newest {LOGS_TAIL} are): "
                    f"fm logs {self.execution_id} prints them all",
                    style="dim italic",
                ),
                scroll_end=self.following,
            )
        for entry in snap.entries:
            view.write(entry_text(entry), scroll_end=self.following)
        self.lines += len(snap.entries)
        self._head()
        self.loaded = True

    def _head(self) -> None:
        where = f"{self.execution_id}" + (f"  node {self.path}" if self.path else "")
        text = Text("logs of ", style="bold").append(where, style="bold")
        text.append("  ")
        if self.status is None:
            text.append("no such execution", style="red")
        else:
            text.append_text(fmt.status_text(self.status))
        text.append(f"  {self.lines} {'entry' if self.lines == 1 else 'entries'}  ")
        if self.following:
            text.append("● following", style="green")
            if self.status in TERMINAL_EXEC:
                text.append(" (finished: nothing more will come)", style="dim")
        else:
            text.append("‖ paused", style="yellow").append(" (f or end: follow again)", style="dim")
        self.query_one("#logs-head", Static).update(text)

    # --- following -------------------------------------------------------------------

    def on_log_view_scrolled_back(self, _: LogView.ScrolledBack) -> None:
        if self.following:
            self.following = False
            self._head()

    def action_toggle_follow(self) -> None:
        self.following = not self.following
        if self.following:
            self.query_one(LogView).scroll_end(animate=False)
        self._head()

    def action_follow_end(self) -> None:
        self.following = True
        self.query_one(LogView).scroll_end(animate=False)
        self._head()

    def action_back(self) -> None:
        self.dismiss(None)
