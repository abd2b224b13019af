"""A screen that reads its data in a background thread while it is shown.

One thread worker per shown screen loops: read a snapshot with its own
read-only connection, post it as a message, wait about ``interval`` seconds.
It reads only when the database changed (``PRAGMA data_version``), when the
screen asked for it, or every few seconds (times move on); a slow read spaces
the next ones out, so a huge database cannot make the UI hog the machine.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer
from textual.worker import Worker, get_current_worker

from tui.data import Reader
from tui.messages import ReadStatus
from tui.session import Session
from tui.widgets.nav import ScreenTabs
from tui.widgets.status import StatusLine

STALE = 2.0  # re-read at least this often, even when nothing was committed
SLOW_FACTOR = 10.0  # wait at least this many times the last read's duration


class PollingScreen(Screen[None]):
    """Subclasses set ``MODE`` and implement :meth:`fetch` (runs in the thread)."""

    MODE: ClassVar[str] = ""
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+r", "reload", "Reload", show=False)]

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self._wake = threading.Event()
        self._dirty = True
        self._worker: Worker[None] | None = None
        self.loaded = False  # a snapshot has been shown (tests wait for it)

    def compose_frame(self) -> ComposeResult:
        yield ScreenTabs(self.MODE)

    def compose_footer(self) -> ComposeResult:
        yield StatusLine(self.session.db)
        yield Footer(compact=True)  # more keys fit at 80 columns

    def fetch(self, reader: Reader, now: float) -> Message | None:
        raise NotImplementedError

    # --- life cycle ----------------------------------------------------------------

    def on_screen_resume(self) -> None:
        self.start_polling()

    def on_screen_suspend(self) -> None:
        self.stop_polling()

    def on_unmount(self) -> None:
        self.stop_polling()

    def start_polling(self) -> None:
        self.stop_polling()
        self._dirty = True
        self._wake.clear()
        self._worker = self.run_worker(
            self._poll, thread=True, group="poll", name=f"poll {self.MODE}", exit_on_error=False
        )

    def stop_polling(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._wake.set()

    def request_refresh(self) -> None:
        """Read again now (the view's parameters changed, or a signal was sent)."""
        self._dirty = True
        self._wake.set()

    def action_reload(self) -> None:
        self.request_refresh()

    def on_read_status(self, message: ReadStatus) -> None:
        self.query_one(StatusLine).error = message.error

    # --- the thread ----------------------------------------------------------------

    def _poll(self) -> None:
        worker = get_current_worker()
        session = self.session
        reader: Reader | None = None
        last_read = 0.0
        failing = False
        try:
            while not worker.is_cancelled:
                cost = 0.0
                try:
                    if reader is None:
                        reader = Reader(session.db)
                    due = time.monotonic() - last_read >= STALE
                    if reader.changed() or self._dirty or due:
                        self._dirty = False
                        started = time.monotonic()
                        message = self.fetch(reader, session.clock())
                        last_read = time.monotonic()
                        cost = last_read - started
                        if message is not None and not worker.is_cancelled:
                            self.post_message(message)
                        if failing:
                            failing = False
                            self.post_message(ReadStatus(""))
                except (sqlite3.Error, OSError) as exc:
                    if reader is not None:
                        reader.close()
                        reader = None
                    failing = True
                    self.post_message(ReadStatus(f"cannot read {session.db}: {exc}"))
                except Exception as exc:  # noqa: BLE001 - a bug must not stop the refreshes
                    failing = True
                    self.post_message(ReadStatus(f"internal error: {type(exc).__name__}: {exc}"))
                self._sleep(worker, max(session.interval, cost * SLOW_FACTOR))
        finally:
            if reader is not None:
                reader.close()

    def _sleep(self, worker: Worker[None], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not worker.is_cancelled:
            left = deadline - time.monotonic()
            if left <= 0 or self._wake.wait(min(left, 0.25)):
                break
        self._wake.clear()
