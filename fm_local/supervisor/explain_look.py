"""The parts of one explain answer (supervisor/explain.py): an entry per node
instance, what an answer gathers once (:class:`_Look`), and how times and
holders are worded."""

from __future__ import annotations

from typing import Any

from fm_local.explain.rows import clock as _clock
from fm_local.explain.rows import due_in as _in
from fm_local.explain.rows import err_text as _err_text
from fm_local.supervisor.state import Exec, Run

__all__ = ["BLOCKERS", "Entry", "_Look", "_clock", "_err_text", "_in", "_secs", "_who", "entry"]

BLOCKERS = 20  # paths named as blockers in one entry

Entry = dict[str, Any]


def entry(
    path: str,
    status: str,
    reason: str,
    detail: str,
    until: float | None = None,
    blockers: list[str] | None = None,
) -> Entry:
    """One explained node instance; ``until`` in epoch seconds (the client shows
    it as ISO time)."""
    return {
        "path": path,
        "status": status,
        "reason": reason,
        "detail": detail,
        "until": until,
        "blockers": blockers[:BLOCKERS] if blockers is not None else None,
    }


class _Look:
    """What one answer reads more than once, gathered once: which gate parks each
    run, each batch timer's due time, what every worker runs."""

    def __init__(
        self, parked: dict[int, Any], batch_due: dict[int, float], on_worker: dict[int, Run]
    ):
        self.parked = parked  # id(run) -> the limiter or pool it waits for
        self.batch_due = batch_due  # id(loop state) -> due time of its batch pause
        self.on_worker = on_worker  # pid -> the run its worker runs
        # Once the answer holds MAX_ENTRIES, the rest is only counted: no detail is
        # worked out for it (an answer about 20,000 queued items stays cheap).
        self.full = False
        self._index: dict[int, dict[int, int]] = {}  # id(ready deque) -> id(run) -> position
        self.memo: dict[tuple[Any, ...], Any] = {}  # per-execution figures, computed once

    def position(self, ready: Any, run: Run) -> int | None:
        """``run``'s place in the ready deque ``ready`` (None: not in it); each deque
        is indexed once per answer, not scanned once per run."""
        idx = self._index.get(id(ready))
        if idx is None:
            idx = self._index[id(ready)] = {id(r): i for i, r in enumerate(ready)}
        return idx.get(id(run))


def _who(run: Run | None, ex: Exec) -> str:
    """A run as a blocker: its path, with its execution's id when it is another's."""
    if run is None:
        return "?"
    return run.path if run.ex is ex else f"{run.ex.id}:{run.path}"


def _secs(seconds: float) -> str:
    return f"{seconds:g} s"
