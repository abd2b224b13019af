"""The TUI's only writes: signal rows, checked first as ``fm signal`` checks them.

A signal the supervisor would refuse (a finished execution, a type the workflow
does not handle) is refused here at once, without a row. Otherwise one row is
inserted (``Store.add_signal``); when a daemon serves the file we wait briefly for
its outcome, else the row waits in the table until a supervisor starts.
Runs in a background thread: a write may wait for the supervisor's lock.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fm_local import signals as sigs
from fm_local.errors import FmError
from fm_local.lock import is_served
from fm_local.model import Workflow
from fm_local.store import Store
from tui.records import TERMINAL_EXEC

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
    row = store.get_execution(eid)
    if row is None:
        return SignalOutcome(eid, type_, "refused", f"no execution '{eid}'")
    if row["status"] in TERMINAL_EXEC:
        return SignalOutcome(
            eid,
            type_,
            "refused",
            f"execution {eid} is already {row['status']}: signal '{type_}' refused",
        )
    wrow = store.get_workflow(row["workflow_id"])
    if wrow is not None:
        why = sigs.refusal(Workflow.model_validate(json.loads(wrow["document"])), type_)
        if why is not None:
            return SignalOutcome(eid, type_, "refused", f"execution {eid}: {why}")
    sid = store.add_signal(eid, type_, REASON, data)
    if not is_served(db):
        return SignalOutcome(
            eid,
            type_,
            "pending",
            f"signal {sid} ({type_}) waits in the signals table: no daemon serves {db}; "
            "it is applied when one starts (fm daemon)",
            sid,
        )
    deadline = time.monotonic() + wait
    sig = store.get_signal(sid)
    while sig is not None and sig["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
        sig = store.get_signal(sid)
    if sig is None or sig["status"] == "pending":
        return SignalOutcome(
            eid, type_, "pending", f"signal {sid} ({type_}) sent; not applied yet", sid
        )
    if sig["status"] == "refused":
        return SignalOutcome(
            eid, type_, "refused", f"signal '{type_}' refused: {sig['outcome']}", sid
        )
    return SignalOutcome(eid, type_, "applied", f"execution {eid}: {sig['outcome']}", sid)
