"""The SQL of ``fm retry`` (docs/retry.md): what a retry reads of the execution it
retries, and the one transaction that creates the new execution together with the
node results it reuses.

The reused results are rows of ``node_runs`` copied from the old execution into the
new one, each marked ``reused_from``, in the same transaction as the new
``executions`` row: a retry is never seen without its reused results, and they are
as durable as the execution itself. They are final rows (``succeeded``, or the
settled losers of a reused ``first_success`` merge), so the supervisor restores
them as it restores any committed result after a restart and never runs them.
That copy is the one write a client makes to ``node_runs``.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from fm_local.errors import UsageError
from fm_local.store.core import Store, client_retry
from fm_local.store.rows import dumps, new_execution_id, new_trace_id


class OldRow(NamedTuple):
    """What planning a retry reads of one node instance of the old execution."""

    path: str
    node_id: str
    node_type: str
    status: str
    clean: bool  # no error recorded (a success that was not a continued failure)
    port: str | None
    handled: bool
    items: int | None
    code: str | None


def old_rows(store: Store, execution_id: str) -> list[OldRow]:
    """Every node instance of an execution, without outputs (they stay in SQLite:
    the copy is ``INSERT … SELECT``)."""
    cur = store.conn.execute(
        "SELECT path, node_id, node_type, status, error IS NULL, port, handled, items, code "
        "FROM node_runs WHERE execution_id=?",
        (execution_id,),
    )
    return [
        OldRow(p, nid, nt, st, bool(clean), port, bool(h), items, code)
        for p, nid, nt, st, clean, port, h, items, code in cur
    ]


def compensated_paths(store: Store, execution_id: str) -> set[str]:
    """Node paths whose compensation ran (or started) in that execution: their side
    effects were undone, so their results cannot be reused."""
    rows = store.conn.execute(
        "SELECT path FROM node_runs WHERE execution_id=? AND path GLOB '*->compensate'",
        (execution_id,),
    ).fetchall()
    return {r[0][: -len("->compensate")] for r in rows}


def retries_of(store: Store, execution_id: str) -> list[str]:
    """Ids of the executions that retry this one, oldest first."""
    rows = store.conn.execute(
        "SELECT id FROM executions WHERE retry_of=? ORDER BY created_at", (execution_id,)
    ).fetchall()
    return [r[0] for r in rows]


class RetryGone(UsageError):
    """The execution to retry was pruned between the plan and the copy."""


@client_retry
def create_retry(
    store: Store, old: dict[str, Any], paths: list[str], how: dict[str, Any]
) -> tuple[str, int]:
    """Create the execution that retries ``old`` (its workflow document as recorded,
    its input, its priority), with the rows at ``paths`` copied from it in the same
    transaction. Returns (the new id, how many rows were copied)."""
    eid = new_execution_id()
    trace = new_trace_id()
    old_trace = old["trace_id"]
    now = time.time()
    with store.atomic() as c:
        made = c.execute(
            "INSERT INTO executions(id, workflow_id, workflow, status, input, trace_id, "
            "priority, created_at, updated_at, retry_of, retry) "
            "SELECT ?, workflow_id, workflow, 'queued', input, ?, priority, ?, ?, id, ? "
            "FROM executions WHERE id=?",
            (eid, trace, now, now, dumps(how), old["id"]),
        ).rowcount
        # A reused row keeps what it recorded (status, output, port, the code that
        # computed it, its input) and takes the new execution's trace id; it ran no
        # attempt here, and its time is the retry's creation. reused_from names the
        # execution that computed it (the first, through a chain of retries).
        cur = c.execute(
            "INSERT INTO node_runs(execution_id, path, node_id, node_type, status, attempts, "
            "recoveries, output, error, port, handled, trace_id, branch_id, worker_pid, "
            "queued_at, started_at, finished_at, next_attempt_at, item_index, input, code, "
            "items, lane, reused_from) "
            "SELECT ?, path, node_id, node_type, status, 0, 0, output, error, port, handled, "
            "CASE WHEN substr(trace_id, 1, ?) = ? THEN ? || substr(trace_id, ?) "
            "ELSE trace_id END, "
            "branch_id, NULL, NULL, NULL, ?, NULL, item_index, input, code, items, NULL, "
            "coalesce(reused_from, execution_id) "
            "FROM node_runs WHERE execution_id=? AND path IN (SELECT value FROM json_each(?)) "
            "ORDER BY id",  # the original's order: fm show lists loop items in it
            (
                eid,
                len(old_trace),
                old_trace,
                trace,
                len(old_trace) + 1,
                now,
                old["id"],
                dumps(paths),
            ),
        )
        copied = cur.rowcount
        if made != 1 or copied != len(paths):
            # fm prune deleted (part of) it since the plan was read: nothing is kept.
            raise RetryGone(
                f"execution {old['id']} was deleted (fm prune) while its retry was "
                "being created: nothing to retry"
            )
    from fm_local import wake

    wake.notify(store.path)  # committed: the supervisor may look now
    return eid, copied
