"""What a client does to a running execution, written once for every front end.

``fm pause/resume/cancel/signal`` (cli/control.py), ``POST /api/executions/<id>/signal``
(httpapi.py) and the TUI's p / r / c (tui/control.py) all send a signal through
:func:`send_signal`: refuse at once what the supervisor would refuse (no such
execution, one already finished, a type the workflow does not handle), write one
signal row, and follow it until a supervisor applied or refused it. Each front end
only words the result its own way (exit codes, HTTP statuses, notifications).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fm_local import signals as sigs
from fm_local.errors import FmError
from fm_local.status import TERMINAL_EXEC as TERMINAL
from fm_local.store import Store

POLL = 0.02  # seconds between reads of the signal row while waiting for its outcome


class SignalRefused(FmError):
    """Refused before any row was written. ``why``: ``missing`` (no such
    execution), ``finished`` (``status`` says how it ended) or ``unhandled`` (the
    workflow does not handle the type; ``message`` names the types it accepts)."""

    def __init__(
        self,
        why: Literal["missing", "finished", "unhandled"],
        message: str,
        status: str | None = None,
    ) -> None:
        super().__init__(message)
        self.why = why
        self.status = status


@dataclass(frozen=True)
class SignalSent:
    """A signal row and what became of it: ``applied`` or ``refused`` by the
    supervisor, or still ``pending`` (``served`` False: no supervisor serves the
    database, so the row waits until one starts)."""

    id: int
    execution: str
    type: str
    status: str
    outcome: str | None
    served: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "execution": self.execution,
            "type": self.type,
            "status": self.status,
            "outcome": self.outcome,
        }


def check_signal(store: Store, execution_id: str, type_: str) -> dict[str, Any]:
    """The execution's row, or :class:`SignalRefused` for what the supervisor would
    refuse. The workflow's signal types are read from its stored document (it
    passed validation when saved), without building the pydantic model."""
    row = store.get_execution(execution_id)
    if row is None:
        raise SignalRefused("missing", f"no execution '{execution_id}'")
    if row["status"] in TERMINAL:
        raise SignalRefused(
            "finished", f"execution {execution_id} is already {row['status']}", row["status"]
        )
    wrow = store.get_workflow(row["workflow_id"])
    if wrow is not None:
        why = sigs.document_refusal(json.loads(wrow["document"]), type_)
        if why is not None:
            raise SignalRefused("unhandled", why)
    return row


def send_signal(
    store: Store,
    execution_id: str,
    type_: str,
    reason: str | None,
    data: Any,
    *,
    wait: float,
    served: bool | None = None,
) -> SignalSent:
    """Check, write and follow one signal (see the module's docstring).

    ``wait``: seconds to wait for the outcome when a supervisor serves the file;
    ``served``: whether one does (None: look at the lock; the daemon's own HTTP API
    knows it does)."""
    check_signal(store, execution_id, type_)
    sid = store.add_signal(execution_id, type_, reason, data)
    if served is None:
        from fm_local.lock import is_served

        served = bool(is_served(Path(store.path)))
    sig = store.get_signal(sid)
    if served:
        deadline = time.monotonic() + wait
        while sig is not None and sig["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(POLL)
            sig = store.get_signal(sid)
    return SignalSent(
        id=sid,
        execution=execution_id,
        type=type_,
        status=sig["status"] if sig is not None else "pending",
        outcome=sig["outcome"] if sig is not None else None,
        served=served,
    )
