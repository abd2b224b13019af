"""Messages: small dataclasses (Textual initialises a dataclass message itself) that carry what a background reader found (or a
signal's outcome) to the UI thread. Posting them is the only way data gets there.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from tui.control import SignalOutcome
from tui.records import (
    DetailSnapshot,
    ExecutionsSnapshot,
    LogsSnapshot,
    QueueSnapshot,
    ResourceSnapshot,
)


@dataclass(eq=False)
class ExecutionsLoaded(Message):
    snapshot: ExecutionsSnapshot


@dataclass(eq=False)
class DetailLoaded(Message):
    snapshot: DetailSnapshot
    generation: int  # the request it answers; older ones are dropped


@dataclass(eq=False)
class QueueLoaded(Message):
    snapshot: QueueSnapshot


@dataclass(eq=False)
class ResourcesLoaded(Message):
    snapshot: ResourceSnapshot


@dataclass(eq=False)
class ReadStatus(Message):
    """A read failed (file gone, newer schema…): ``error`` says why; the poller
    keeps trying, and posts an empty ``error`` once reads work again."""

    error: str


@dataclass(eq=False)
class DaemonChanged(Message):
    """Whether a supervisor holds the database's lock now (its pid), or not."""

    pid: int | None


@dataclass(eq=False)
class SignalFinished(Message):
    outcome: SignalOutcome


@dataclass(eq=False)
class ExecutionChosen(Message):
    """Open this execution's detail screen."""

    execution_id: str


@dataclass(eq=False)
class LogsRequested(Message):
    """Open the logs screen: an execution's log lines, or those at or under a node."""

    execution_id: str
    path: str | None


@dataclass(eq=False)
class LogsLoaded(Message):
    snapshot: LogsSnapshot
