"""The rows of ``fm explain``: a request is an internal signal row (type
``__explain``), answered by the supervisor in the row's ``result``
(:mod:`fm_local.supervisor.explain`); and the queue positions the database alone
can tell (:func:`queue_positions`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fm_local.store.core import client_retry

if TYPE_CHECKING:
    from fm_local.store.core import Store

EXPLAIN = "__explain"  # fm_local.signals.EXPLAIN: kept here too, the store imports no engine


def pending_explains(store: Store) -> list[dict[str, Any]]:
    """Unanswered explain requests, oldest first (the supervisor, every poll: the
    ``signals_pending`` index keeps it one short look)."""
    return store._all(
        "SELECT id, execution_id, data, created_at FROM signals "
        "WHERE status='pending' AND type=? ORDER BY id",
        (EXPLAIN,),
    )


def prune_explains(store: Store, before: float) -> None:
    """Forget answered requests older than ``before`` (clients delete their own;
    these are the ones a client left behind)."""
    with store.atomic() as c:
        c.execute(
            "DELETE FROM signals WHERE type=? AND status!='pending' AND applied_at < ?",
            (EXPLAIN, before),
        )


@client_retry
def delete_explain(store: Store, request_id: int) -> None:
    """A client is done with its request (answered or given up)."""
    with store.atomic() as c:
        c.execute("DELETE FROM signals WHERE id=? AND type=?", (request_id, EXPLAIN))


def queue_positions(store: Store, execution_id: str) -> dict[str, tuple[int, int]]:
    """path -> (position from 1, tasks) among the execution's ``queued`` rows of the
    ``queue`` table, in the order they were enqueued."""
    rows = store.conn.execute(
        "SELECT path FROM queue WHERE execution_id=? AND status='queued' "
        "ORDER BY priority DESC, enqueued_at, id",
        (execution_id,),
    ).fetchall()
    return {r[0]: (i + 1, len(rows)) for i, r in enumerate(rows)}
