"""The supervisor's group commit: a :class:`Batch` of typed rows, the statements
that apply it, and what is rejected when one row's data cannot be stored."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from itertools import chain
from typing import Any


@dataclass
class Batch:
    """State changes coalesced per row between two group commits.

    Each dict maps a row's key to its latest full value, so a node that was queued,
    ran and finished between two commits costs one upsert, not three."""

    executions: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    node_runs: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    attempts: dict[tuple[str, str, int], tuple[Any, ...]] = field(default_factory=dict)
    queue: dict[tuple[str, str], tuple[Any, ...] | None] = field(default_factory=dict)
    signals: list[tuple[str, str | None, float, str | None, int]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    logs: list[tuple[Any, ...]] = field(default_factory=list)
    dead_letters: list[tuple[Any, ...]] = field(default_factory=list)
    notifications: list[tuple[Any, ...]] = field(default_factory=list)
    samples: list[tuple[Any, ...]] = field(default_factory=list)
    # The whole of queue_counts, when it changed: (status, priority, tasks) rows.
    queue_counts: list[tuple[str, int, int]] | None = None

    def __len__(self) -> int:
        return (
            (0 if self.queue_counts is None else 1 + len(self.queue_counts))
            + len(self.executions)
            + len(self.node_runs)
            + len(self.attempts)
            + len(self.queue)
            + len(self.signals)
            + len(self.events)
            + len(self.logs)
            + len(self.dead_letters)
            + len(self.notifications)
            + len(self.samples)
        )


# Column order of the tuples in a Batch.
EXEC_COLS = (
    "id",
    "status",
    "output",
    "error",
    "priority",
    "started_at",
    "finished_at",
    "deadline_at",
    "updated_at",
)
NODE_COLS = (
    "execution_id",
    "path",
    "node_id",
    "node_type",
    "status",
    "attempts",
    "recoveries",
    "output",
    "error",
    "port",
    "handled",
    "trace_id",
    "branch_id",
    "worker_pid",
    "queued_at",
    "started_at",
    "finished_at",
    "next_attempt_at",
    "item_index",
    "input",
    "code",
    "items",
    "lane",
)
ATTEMPT_COLS = (
    "execution_id",
    "path",
    "seq",
    "attempt",
    "kind",
    "status",
    "error",
    "worker_pid",
    "started_at",
    "finished_at",
)
QUEUE_COLS = (
    "execution_id",
    "path",
    "node_id",
    "status",
    "priority",
    "not_before",
    "enqueued_at",
    "worker_pid",
)


def _upsert_sql(table: str, cols: tuple[str, ...], key: tuple[str, ...]) -> str:
    placeholders = ",".join("?" * len(cols))
    updates = ",".join(f"{c}=excluded.{c}" for c in cols if c not in key)
    return (
        f"INSERT INTO {table} ({','.join(cols)}) VALUES ({placeholders}) "
        f"ON CONFLICT({','.join(key)}) DO UPDATE SET {updates}"
    )


_EXEC_UPDATE = (
    "UPDATE executions SET status=?2, output=?3, error=?4, priority=?5, started_at=?6, "
    "finished_at=?7, deadline_at=?8, updated_at=?9 WHERE id=?1"
)
_NODE_UPSERT = _upsert_sql("node_runs", NODE_COLS, ("execution_id", "path"))
_ATTEMPT_UPSERT = _upsert_sql("attempts", ATTEMPT_COLS, ("execution_id", "path", "seq"))
_QUEUE_UPSERT = _upsert_sql("queue", QUEUE_COLS, ("execution_id", "path"))


# Errors that come from one row's data, not from the storage: the batch is then
# applied row by row (see Store.commit_batch).
ROW_ERRORS = (
    UnicodeEncodeError,
    OverflowError,
    TypeError,
    ValueError,
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
)


@dataclass
class Rejected:
    """A batch row the database refused: whose it was, where, and why."""

    execution_id: str | None
    statement: str
    error: BaseException


def _clean_row(row: Any) -> Any:
    from fm_local.jsonio import clean

    if isinstance(row, (tuple, list)):
        return tuple(clean(v) for v in row)
    return row


def _first(row: Any) -> str | None:
    return row[0] if isinstance(row[0], str) else None


def _no_owner(row: Any) -> str | None:
    return None


# Rows per multi-row INSERT (run_rows): at most 23 columns × 200 = 4,600 bound
# values, far below SQLite's limit (32,766).
MULTI_ROWS = 200
_SPLIT: dict[str, tuple[str, str, str]] = {}


def _split_insert(sql: str) -> tuple[str, str, str]:
    """``INSERT INTO t (cols) VALUES (?,…)  rest`` as (head, one row's group, rest)."""
    parts = _SPLIT.get(sql)
    if parts is None:
        i = sql.index(" VALUES") + len(" VALUES")
        j = sql.index(")", i) + 1
        parts = _SPLIT[sql] = (sql[:i], sql[i:j].strip(), sql[j:])
    return parts


def run_rows(c: sqlite3.Connection, sql: str, rows: list[Any]) -> None:
    """``executemany(sql, rows)``; an INSERT goes as multi-row statements of up to
    MULTI_ROWS rows, each one call into SQLite: one pass for SQLite's work (and,
    in the commit process, one call) instead of one per row."""
    if len(rows) < 2 or not sql.startswith("INSERT INTO"):
        c.executemany(sql, rows)
        return
    head, group, rest = _split_insert(sql)
    full = None
    for k in range(0, len(rows), MULTI_ROWS):
        chunk = rows[k : k + MULTI_ROWS]
        if len(chunk) == MULTI_ROWS:
            if full is None:
                full = head + " " + ",".join([group] * MULTI_ROWS) + rest
            stmt = full
        else:
            stmt = head + " " + ",".join([group] * len(chunk)) + rest
        c.execute(stmt, list(chain.from_iterable(chunk)))


def _batch_steps(b: Batch) -> list[tuple[str, list[Any], Any]]:
    """The batch as (statement, rows, owner of a row) in the order they apply."""
    steps: list[tuple[str, list[Any], Any]] = []
    if b.executions:
        steps.append((_EXEC_UPDATE, list(b.executions.values()), _first))
    if b.node_runs:
        steps.append((_NODE_UPSERT, list(b.node_runs.values()), _first))
    if b.attempts:
        steps.append((_ATTEMPT_UPSERT, list(b.attempts.values()), _first))
    if b.queue:
        deletes = [k for k, v in b.queue.items() if v is None]
        upserts = [v for v in b.queue.values() if v is not None]
        if deletes:
            steps.append(("DELETE FROM queue WHERE execution_id=? AND path=?", deletes, _first))
        if upserts:
            steps.append((_QUEUE_UPSERT, upserts, _first))
    if b.queue_counts is not None:
        steps.append(("DELETE FROM queue_counts", [()], _no_owner))
        if b.queue_counts:
            steps.append(
                (
                    "INSERT INTO queue_counts(status, priority, tasks) VALUES(?,?,?)",
                    b.queue_counts,
                    _no_owner,
                )
            )
    if b.signals:
        steps.append(
            (
                "UPDATE signals SET status=?, outcome=?, applied_at=?, "
                "result=coalesce(?, result) WHERE id=?",
                b.signals,
                _no_owner,
            )
        )
    if b.events:
        steps.append(
            (
                "INSERT INTO events(execution_id, path, ts, kind, detail) VALUES(?,?,?,?,?)",
                b.events,
                _first,
            )
        )
    if b.logs:
        steps.append(
            (
                "INSERT INTO logs(execution_id, path, attempt, ts, stream, line) "
                "VALUES(?,?,?,?,?,?)",
                b.logs,
                _first,
            )
        )
    if b.dead_letters:
        steps.append(
            (
                "INSERT INTO dead_letters(execution_id, path, node_id, input, error, "
                "attempts, created_at) VALUES(?,?,?,?,?,?,?)",
                b.dead_letters,
                _first,
            )
        )
    if b.notifications:
        steps.append(
            (
                "INSERT INTO notifications(execution_id, signal_id, recipient, message, "
                "created_at) VALUES(?,?,?,?,?)",
                b.notifications,
                _first,
            )
        )
    if b.samples:
        steps.append(
            (
                "INSERT INTO resource_samples(ts, pid, role, cpu_percent, rss_bytes, "
                "execution_id, node_path) VALUES(?,?,?,?,?,?,?)",
                b.samples,
                _no_owner,
            )
        )
    return steps
