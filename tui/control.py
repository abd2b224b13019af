"""The TUI's only writes: signal rows, sent as ``fm signal`` sends them
(``fm_local.client.send_signal``: refused at once when the supervisor would refuse
it, else one row, followed until a daemon applies it).

This module only words the result as a notification. Runs in a background thread:
a write may wait for the supervisor's lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fm_local import client
from fm_local.errors import FmError
from fm_local.store import Store

REASON = "sent from fm tui"


@dataclass(frozen=True)
class SignalOutcome:
    """What became of a signal: ``refused`` (at once or by the supervisor),
    ``applied``, or ``pending`` (no daemon, or not applied yet)."""

    execution_id: str
    type: str
    status: str
    message: str
    signal_id: int | None = None

    @property
    def severity(self) -> str:
        return {"refused": "error", "pending": "warning"}.get(self.status, "information")


def send_signal(
    db: Path, execution_id: str, type_: str, data: Any = None, *, wait: float = 3.0
) -> SignalOutcome:
    """Check, write and follow one signal; never raises for a refusal."""
    try:
        store = Store(db, create=False)
    except FmError as exc:
        return SignalOutcome(execution_id, type_, "refused", str(exc))
    try:
        return _send(store, db, execution_id, type_, data, wait)
    finally:
        store.close()


def _send(store: Store, db: Path, eid: str, type_: str, data: Any, wait: float) -> SignalOutcome:
    try:
        sent = client.send_signal(store, eid, type_, REASON, data, wait=wait)
    except client.SignalRefused as exc:
        if exc.why == "finished":
            return SignalOutcome(eid, type_, "refused", f"{exc}: signal '{type_}' refused")
        if exc.why == "unhandled":
            return SignalOutcome(eid, type_, "refused", f"execution {eid}: {exc}")
        return SignalOutcome(eid, type_, "refused", str(exc))
    sid = sent.id
    if not sent.served:
        return SignalOutcome(
            eid,
            type_,
            "pending",
            f"signal {sid} ({type_}) waits in the signals table: no daemon serves {db}; "
            "it is applied when one starts (fm daemon)",
            sid,
        )
    if sent.status == "pending":
        return SignalOutcome(
            eid, type_, "pending", f"signal {sid} ({type_}) sent; not applied yet", sid
        )
    if sent.status == "refused":
        return SignalOutcome(
            eid, type_, "refused", f"signal '{type_}' refused: {sent.outcome}", sid
        )
    return SignalOutcome(eid, type_, "applied", f"execution {eid}: {sent.outcome}", sid)
