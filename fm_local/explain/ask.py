"""The client's end of an explain round trip: write the request, nudge the
supervisor, wait (bounded) for its answer, remove the request.

The request is an internal signal row (type ``__explain``, data ``{"path": ...}``):
the database stays the one channel between clients and the supervisor. The
supervisor answers in the row's ``result`` at its next look at the file (at once
when the nudge arrives). No answer within the deadline — a supervisor busy or
gone, a file this process cannot write — is ``None``: the caller then says what
the rows alone can say, and says so.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from fm_local.errors import FmError
from fm_local.store import Store
from fm_local.store.explain import EXPLAIN, delete_explain

POLL = 0.01  # seconds between reads of the request row
ASK_TIMEOUT = 3.0  # seconds a client waits for the supervisor's answer


def ask(store: Store, execution_id: str, path: str | None, timeout: float) -> dict[str, Any] | None:
    """The supervisor's answer (``{"ok": true, ...}`` or ``{"ok": false, "error"}``),
    or None when none came in ``timeout`` seconds or the request could not be written."""
    try:
        rid = store.add_signal(execution_id, EXPLAIN, None, {"path": path})
    except (FmError, sqlite3.Error, OSError):
        return None
    try:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            row = store.get_signal(rid)
            if row is None:
                return None
            if row["status"] != "pending":
                try:
                    answer = json.loads(row["result"]) if row.get("result") else None
                except ValueError:
                    return None
                return answer if isinstance(answer, dict) else None
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL)
    finally:
        try:
            delete_explain(store, rid)
        except (FmError, sqlite3.Error, OSError):
            pass  # the supervisor prunes answered requests; a stale one is refused
