"""The TUI application: four screens (executions, detail, queue, resources) as
Textual modes, switched with 1-4 or the tabs; ``main(db)`` runs it (``fm tui``).

The app itself only watches whether a daemon serves the database (the lock)
and routes "open this execution"; each screen reads its own data.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import ClassVar

from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.worker import get_current_worker

from fm_local.errors import StorageError
from fm_local.lock import is_served
from fm_local.store import SCHEMA_VERSION, Store, schema_version
from tui.data import connect_readonly
from tui.messages import DaemonChanged, ExecutionChosen, LogsRequested
from tui.screens.base import PollingScreen
from tui.screens.detail import DetailScreen
from tui.screens.executions import ExecutionsScreen
from tui.screens.help import HelpScreen
from tui.screens.logs import LogsScreen
from tui.screens.queue import QueueScreen
from tui.screens.resources import ResourcesScreen
from tui.session import Session

SCREENS: dict[str, type[PollingScreen]] = {
    "executions": ExecutionsScreen,
    "detail": DetailScreen,
    "queue": QueueScreen,
    "resources": ResourcesScreen,
}


class FmApp(App[None]):
    TITLE = "fm"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "show('executions')", "Executions", show=False),
        Binding("2", "show('detail')", "Detail", show=False),
        Binding("3", "show('queue')", "Queue", show=False),
        Binding("4", "show('resources')", "Resources", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    daemon_pid: reactive[int | None] = reactive(None)

    def __init__(
        self,
        db: Path,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        watch_daemon: bool = True,
    ) -> None:
        super().__init__()
        self.session = Session(Path(db), interval, clock)
        self.watch_daemon = watch_daemon
        for mode, screen in SCREENS.items():
            self.add_mode(mode, partial(screen, self.session))

    def on_mount(self) -> None:
        self.switch_mode("executions")
        if self.watch_daemon:
            self.run_worker(self._watch_daemon, thread=True, group="daemon", exit_on_error=False)

    def _watch_daemon(self) -> None:
        """Poll the supervisor lock (a cheap flock test) in a thread."""
        worker = get_current_worker()
        last: int | None | str = "unknown"
        while not worker.is_cancelled:
            try:
                holder = is_served(self.session.db)
            except OSError:
                holder = None
            pid = int(holder["pid"]) if holder else None
            if pid != last:
                self.post_message(DaemonChanged(pid))
                last = pid
            worker.cancelled_event.wait(max(self.session.interval, 0.5))

    def on_daemon_changed(self, message: DaemonChanged) -> None:
        self.daemon_pid = message.pid

    def on_execution_chosen(self, message: ExecutionChosen) -> None:
        self.session.execution_id = message.execution_id
        self.switch_mode("detail")

    def on_logs_requested(self, message: LogsRequested) -> None:
        if isinstance(self.screen, LogsScreen):
            self.pop_screen()
        self.push_screen(LogsScreen(self.session, message.execution_id, message.path))

    def action_show(self, mode: str) -> None:
        if isinstance(self.screen, ModalScreen):
            return  # answer the dialog first
        if isinstance(self.screen, LogsScreen):
            self.pop_screen()  # the logs sit over a screen: leave them first
        if mode == "detail" and self.session.execution_id is None:
            self.notify(
                "no execution chosen yet: press Enter on one in the executions screen",
                severity="warning",
            )
            return
        self.switch_mode(mode)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """The command palette (ctrl+p): the app's actions, then Textual's own
        (theme, screenshot…). Each runs what its key runs on the screen shown."""
        for title, help_, action in commands_for(screen):
            yield SystemCommand(title, help_, partial(screen.run_action, action))
        for title, help_, mode in (
            ("Executions", "the executions list (1)", "executions"),
            ("Detail", "the chosen execution's detail (2)", "detail"),
            ("Queue", "the queue: depth, loops in progress, queued executions (3)", "queue"),
            ("Resources", "CPU and memory of the daemon and its workers (4)", "resources"),
        ):
            yield SystemCommand(f"Show {title.lower()}", help_, partial(self.action_show, mode))
        yield SystemCommand("Help", "every key (?)", self.action_help)
        yield from super().get_system_commands(screen)


# (title, help, action) of the commands each screen offers in the palette.
SIGNAL_COMMANDS = (
    ("Pause execution", "pause the highlighted execution (p)", "pause"),
    ("Resume execution", "resume it, with optional JSON data (r)", "resume"),
    ("Cancel execution", "cancel it, after a confirmation (c)", "cancel_execution"),
)
SCREEN_COMMANDS: dict[type, tuple[tuple[str, str, str], ...]] = {
    ExecutionsScreen: (
        ("Search executions", "by id, workflow, status, error text (/)", "search"),
        ("Clear the search", "show every execution again (escape)", "clear_search"),
        ("Next status filter", "all, active, then each status (f)", "next_filter"),
        ("Sort by the next column", "id, workflow, status, progress… (s)", "sort"),
        ("Reverse the sort", "ascending / descending (S)", "reverse_sort"),
        ("Open execution", "its detail: timeline and nodes (enter)", "open"),
        ("Logs of execution", "its log lines, followed while it runs (l)", "logs"),
        *SIGNAL_COMMANDS,
    ),
    DetailScreen: (
        ("Expand or collapse", "the loop or item under the cursor (enter)", "expand"),
        ("Next failed item", "of the loop the cursor is in (n)", "failed(1)"),
        ("Previous failed item", "of the loop the cursor is in (N)", "failed(-1)"),
        ("Next page of items", "of the loop the cursor is in (])", "page(1)"),
        ("Previous page of items", "of the loop the cursor is in ([)", "page(-1)"),
        ("Logs of node", "the selected node's log lines, followed (l)", "logs"),
        *SIGNAL_COMMANDS,
    ),
    LogsScreen: (
        ("Follow on/off", "keep to the newest lines as they come (f)", "toggle_follow"),
        ("Back", "leave the logs (escape)", "back"),
    ),
}


def commands_for(screen: Screen[object]) -> tuple[tuple[str, str, str], ...]:
    return SCREEN_COMMANDS.get(type(screen), ())  # type: ignore[arg-type]


def check_database(db: Path) -> None:
    """Refuse a missing, foreign or newer file; migrate an older one (as every fm
    process does)."""
    if not db.exists():
        raise StorageError(f"no database at {db}: run a workflow first, or pass --db PATH")
    try:
        conn = connect_readonly(db)
        try:
            version = schema_version(conn, db)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"{db}: not an fm_local database ({exc})") from None
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{db} has schema version {version}, newer than this fm_local "
            f"({SCHEMA_VERSION}): upgrade fm_local"
        )
    if version < SCHEMA_VERSION:
        Store(db, create=False).close()


def main(db: Path) -> None:
    """Run the TUI on ``db`` until the user quits."""
    db = Path(db)
    check_database(db)
    FmApp(db).run()
