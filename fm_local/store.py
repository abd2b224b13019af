"""All SQL lives here: schema, migrations, client verbs and the supervisor's batches.

Invariants: every write transaction is ``BEGIN IMMEDIATE`` (so the busy timeout
applies); the supervisor writes engine state only through :meth:`Store.commit_batch`,
one transaction per batch, applied in order, so the file always holds a prefix of
the supervisor's history. Connections are opened after a process starts and never
cross a fork.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import retry, retry_if_exception, stop_after_delay, wait_random_exponential

from fm_local.errors import QueueFull, StorageError

SCHEMA_VERSION = 1

TERMINAL_EXEC = ("succeeded", "failed", "cancelled", "timed_out")
ACTIVE_EXEC = ("queued", "running", "paused")

MIGRATIONS: list[str] = [
    # 1: the initial schema. Table and column names are a public interface
    # (docs/schema.md); change them only through a new migration.
    """
    CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT
    );
    CREATE TABLE workflows (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        document TEXT NOT NULL,
        path TEXT,
        folder TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        workflow_id INTEGER NOT NULL REFERENCES workflows(id),
        workflow TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN
            ('queued','running','paused','succeeded','failed','cancelled','timed_out')),
        input TEXT,
        output TEXT,
        error TEXT,
        trace_id TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        deadline_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX executions_status ON executions(status, created_at);
    CREATE TABLE node_runs (
        id INTEGER PRIMARY KEY,
        execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        node_id TEXT NOT NULL,
        node_type TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending','queued','running','retry_wait',
            'succeeded','failed','cancelled','skipped','timed_out')),
        attempts INTEGER NOT NULL DEFAULT 0,
        recoveries INTEGER NOT NULL DEFAULT 0,
        output TEXT,
        error TEXT,
        port TEXT,
        handled INTEGER NOT NULL DEFAULT 0,
        trace_id TEXT,
        branch_id TEXT,
        worker_pid INTEGER,
        queued_at REAL,
        started_at REAL,
        finished_at REAL,
        next_attempt_at REAL,
        item_index INTEGER,
        input TEXT,
        UNIQUE (execution_id, path)
    );
    CREATE INDEX node_runs_status ON node_runs(status);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        seq INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        kind TEXT NOT NULL DEFAULT 'attempt',
        status TEXT NOT NULL,
        error TEXT,
        worker_pid INTEGER,
        started_at REAL,
        finished_at REAL,
        UNIQUE (execution_id, path, seq)
    );
    CREATE TABLE queue (
        id INTEGER PRIMARY KEY,
        execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        node_id TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued','running','retry_wait','timer')),
        priority INTEGER NOT NULL DEFAULT 0,
        not_before REAL,
        enqueued_at REAL NOT NULL,
        worker_pid INTEGER,
        UNIQUE (execution_id, path)
    );
    CREATE INDEX queue_status ON queue(status, priority);
    CREATE TABLE signals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        execution_id TEXT NOT NULL,
        type TEXT NOT NULL,
        reason TEXT,
        data TEXT,
        created_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','applied','refused')),
        applied_at REAL,
        outcome TEXT,
        result TEXT
    );
    CREATE INDEX signals_pending ON signals(status, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        execution_id TEXT,
        path TEXT,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX events_execution ON events(execution_id, id);
    CREATE TABLE logs (
        id INTEGER PRIMARY KEY,
        execution_id TEXT NOT NULL,
        path TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        ts REAL NOT NULL,
        stream TEXT NOT NULL,
        line TEXT NOT NULL
    );
    CREATE INDEX logs_execution ON logs(execution_id, path, id);
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        execution_id TEXT NOT NULL,
        path TEXT NOT NULL,
        node_id TEXT NOT NULL,
        input TEXT,
        error TEXT,
        attempts INTEGER NOT NULL,
        created_at REAL NOT NULL,
        replayed_as TEXT
    );
    CREATE TABLE resource_samples (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        pid INTEGER,
        role TEXT NOT NULL,
        cpu_percent REAL,
        rss_bytes INTEGER,
        execution_id TEXT,
        node_path TEXT
    );
    CREATE INDEX resource_samples_ts ON resource_samples(ts);
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY,
        execution_id TEXT NOT NULL,
        signal_id INTEGER,
        recipient TEXT NOT NULL,
        message TEXT,
        created_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'recorded'
    );
    CREATE VIEW execution_summary AS
        SELECT e.id, e.workflow, e.status, e.priority, e.trace_id,
               datetime(e.created_at, 'unixepoch') AS created,
               datetime(e.started_at, 'unixepoch') AS started,
               datetime(e.finished_at, 'unixepoch') AS finished,
               round(coalesce(e.finished_at, (julianday('now') - 2440587.5) * 86400.0) - e.started_at, 3) AS seconds,
               (SELECT count(*) FROM node_runs n WHERE n.execution_id = e.id) AS nodes,
               (SELECT count(*) FROM node_runs n WHERE n.execution_id = e.id
                   AND n.status = 'succeeded') AS succeeded,
               (SELECT count(*) FROM node_runs n WHERE n.execution_id = e.id
                   AND n.status = 'failed') AS failed,
               json_extract(e.error, '$.message') AS error
        FROM executions e;
    CREATE VIEW node_timeline AS
        SELECT n.execution_id, n.path, n.node_type, n.status, n.attempts, n.trace_id,
               n.worker_pid, n.started_at, n.finished_at,
               round((n.finished_at - n.started_at) * 1000, 1) AS duration_ms,
               json_extract(n.error, '$.code') AS error_code
        FROM node_runs n ORDER BY n.execution_id, n.started_at;
    CREATE VIEW queue_depth AS
        SELECT status, priority, count(*) AS tasks FROM queue GROUP BY status, priority;
    """,
]


def default_db_path() -> Path:
    """``$FM_DB``, else ``$XDG_DATA_HOME/fm_local/fm.db`` (~/.local/share/fm_local/fm.db)."""
    env = os.environ.get("FM_DB")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fm_local" / "fm.db"


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


# Clients retry briefly on "database is locked" beyond the busy timeout.
client_retry = retry(
    retry=retry_if_exception(_is_busy),
    wait=wait_random_exponential(multiplier=0.01, max=0.5),
    stop=stop_after_delay(30),
    reraise=True,
)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def new_execution_id() -> str:
    return uuid.uuid4().hex[:12]


def new_trace_id() -> str:
    return "trace-" + secrets.token_hex(6)


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

    def __len__(self) -> int:
        return (
            len(self.executions)
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


class Store:
    """One connection to the database file, and the verbs on it."""

    def __init__(self, path: str | Path, *, durability: str = "full", create: bool = True):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise StorageError(
                f"no database at {self.path}: run a workflow first, or pass --db PATH"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                str(self.path), isolation_level=None, timeout=30.0, check_same_thread=False
            )
            self.conn.execute("PRAGMA busy_timeout=30000")
            mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StorageError(f"{self.path}: could not switch the database to WAL mode")
            sync = "NORMAL" if durability == "normal" else "FULL"
            self.conn.execute(f"PRAGMA synchronous={sync}")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: cannot open the database: {exc}") from exc
        except OSError as exc:
            raise StorageError(
                f"{self.path}: cannot create the database: {exc.strerror or exc}"
            ) from exc

    def close(self) -> None:
        self.conn.close()

    # --- transactions ---------------------------------------------------------------

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction; rolls back on any exception and re-raises."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self.atomic() as c:
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path} has schema version {current}, newer than this fm_local "
                f"({SCHEMA_VERSION}): upgrade fm_local"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self.atomic() as c:
                for stmt in _split_sql(MIGRATIONS[version - 1]):
                    c.execute(stmt)
                c.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES('schema_version', ?)",
                    (str(version),),
                )
                c.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES('created_at', ?)",
                    (str(time.time()),),
                )

    def data_version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    # --- client verbs ------------------------------------------------------------------

    @client_retry
    def save_workflow(
        self, name: str, document: dict[str, Any], path: str | None, folder: str
    ) -> int:
        doc = json.dumps(document, sort_keys=True, separators=(",", ":"))
        import hashlib

        digest = hashlib.sha256((doc + "\0" + folder).encode()).hexdigest()
        with self.atomic() as c:
            row = c.execute("SELECT id FROM workflows WHERE hash=?", (digest,)).fetchone()
            if row:
                return int(row[0])
            cur = c.execute(
                "INSERT INTO workflows(name, hash, document, path, folder, created_at) "
                "VALUES(?,?,?,?,?,?)",
                (name, digest, doc, path, folder, time.time()),
            )
            return int(cur.lastrowid or 0)

    @client_retry
    def create_execution(
        self,
        workflow_id: int,
        workflow_name: str,
        input_value: Any,
        *,
        priority: int = 0,
        execution_id: str | None = None,
        max_queued: int | None = None,
    ) -> str:
        eid = execution_id or new_execution_id()
        now = time.time()
        with self.atomic() as c:
            if max_queued is not None:
                n = c.execute(
                    "SELECT count(*) FROM executions WHERE workflow=? AND status='queued'",
                    (workflow_name,),
                ).fetchone()[0]
                if n >= max_queued:
                    raise QueueFull(
                        f"queue full: workflow '{workflow_name}' already has {n} queued "
                        f"executions (settings.queue.maxSize={max_queued}); retry later "
                        "or pass --wait-for-room"
                    )
            c.execute(
                "INSERT INTO executions(id, workflow_id, workflow, status, input, trace_id, "
                "priority, created_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?)",
                (
                    eid,
                    workflow_id,
                    workflow_name,
                    "queued",
                    dumps(input_value),
                    new_trace_id(),
                    priority,
                    now,
                    now,
                ),
            )
        return eid

    @client_retry
    def add_signal(
        self, execution_id: str, type_: str, reason: str | None = None, data: Any = None
    ) -> int:
        with self.atomic() as c:
            cur = c.execute(
                "INSERT INTO signals(execution_id, type, reason, data, created_at) "
                "VALUES(?,?,?,?,?)",
                (execution_id, type_, reason, None if data is None else dumps(data), time.time()),
            )
            return int(cur.lastrowid or 0)

    def get_signal(self, signal_id: int) -> dict[str, Any] | None:
        return self._one("SELECT * FROM signals WHERE id=?", (signal_id,))

    def get_execution(self, execution_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM executions WHERE id=?", (execution_id,))

    def find_execution(self, prefix: str) -> dict[str, Any] | None:
        """An execution by id or unique id prefix."""
        row = self.get_execution(prefix)
        if row or len(prefix) < 4:
            return row
        rows = self._all(
            "SELECT * FROM executions WHERE substr(id, 1, ?) = ? ORDER BY created_at LIMIT 2",
            (len(prefix), prefix),
        )
        return rows[0] if len(rows) == 1 else None

    def get_workflow(self, workflow_id: int) -> dict[str, Any] | None:
        return self._one("SELECT * FROM workflows WHERE id=?", (workflow_id,))

    def list_executions(
        self, status: str | None = None, limit: int = 50, workflow: str | None = None
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if status:
            where.append("status=?")
            args.append(status)
        if workflow:
            where.append("workflow=?")
            args.append(workflow)
        sql = "SELECT * FROM executions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        return self._all(sql, tuple(args))

    def node_runs(self, execution_id: str, path: str | None = None) -> list[dict[str, Any]]:
        if path:
            return self._all(
                "SELECT * FROM node_runs WHERE execution_id=? AND (path=? OR "
                "substr(path, 1, ?) IN (?, ?)) ORDER BY id",
                (execution_id, path, len(path) + 1, path + ".", path + "["),
            )
        return self._all(
            "SELECT * FROM node_runs WHERE execution_id=? ORDER BY coalesce(started_at, "
            "queued_at, finished_at), id",
            (execution_id,),
        )

    def count_node_runs(self, execution_id: str) -> int:
        return int(
            self.conn.execute(
                "SELECT count(*) FROM node_runs WHERE execution_id=?", (execution_id,)
            ).fetchone()[0]
        )

    def loop_summaries(self, execution_id: str) -> list[dict[str, Any]]:
        """Per loop (by path): item counts by status, first start, last end."""
        return self._all(
            "SELECT rtrim(rtrim(path, '0123456789]'), '[') AS loop, status, count(*) AS items, "
            "min(started_at) AS first_start, max(finished_at) AS last_end FROM node_runs "
            "WHERE execution_id=? AND node_type='item' GROUP BY loop, status ORDER BY loop",
            (execution_id,),
        )

    def item_intervals(
        self, execution_id: str
    ) -> list[tuple[str, str, float | None, float | None]]:
        """(path, status, started_at, finished_at) of every loop item."""
        return self.conn.execute(
            "SELECT path, status, started_at, finished_at FROM node_runs "
            "WHERE execution_id=? AND node_type='item'",
            (execution_id,),
        ).fetchall()

    def top_level_runs(self, execution_id: str) -> list[dict[str, Any]]:
        return self.frame_rows(execution_id, "")

    def node_counts(self, execution_id: str) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT status, count(*) FROM node_runs WHERE execution_id=? GROUP BY status",
            (execution_id,),
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def attempts(self, execution_id: str, path: str | None = None) -> list[dict[str, Any]]:
        if path:
            return self._all(
                "SELECT * FROM attempts WHERE execution_id=? AND path=? ORDER BY seq",
                (execution_id, path),
            )
        return self._all(
            "SELECT * FROM attempts WHERE execution_id=? ORDER BY path, seq", (execution_id,)
        )

    def logs(self, execution_id: str, path: str | None = None) -> list[dict[str, Any]]:
        if path:
            return self._all(
                "SELECT * FROM logs WHERE execution_id=? AND (path=? OR "
                "substr(path, 1, ?) IN (?, ?)) ORDER BY id",
                (execution_id, path, len(path) + 1, path + ".", path + "["),
            )
        return self._all("SELECT * FROM logs WHERE execution_id=? ORDER BY id", (execution_id,))

    def frame_rows(self, execution_id: str, prefix: str) -> list[dict[str, Any]]:
        """node_runs rows of the direct children of a frame (``""`` = top level,
        ``"loop[3]."`` = the body of item 3), items excluded."""
        n = len(prefix)
        return self._all(
            "SELECT * FROM node_runs WHERE execution_id=? AND path GLOB ? "
            "AND instr(substr(path, ?), '.') = 0 AND instr(substr(path, ?), '[') = 0",
            (execution_id, glob_escape(prefix) + "*", n + 1, n + 1),
        )

    def item_rows(
        self, execution_id: str, loop_path: str
    ) -> list[tuple[int, str, float | None, float | None]]:
        """(item_index, status, started_at, finished_at) of every recorded item of a loop."""
        rows = self.conn.execute(
            "SELECT item_index, status, started_at, finished_at FROM node_runs WHERE execution_id=? AND path GLOB ? "
            "AND node_type='item' AND instr(substr(path, ?), '.') = 0",
            (execution_id, glob_escape(loop_path) + "[[]*]", len(loop_path) + 1),
        ).fetchall()
        return [(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def loop_results(self, execution_id: str, loop_path: str) -> Iterator[tuple[Any, ...]]:
        """(item_index, status, output, error) of a loop's items, in item order."""
        return iter(
            self.conn.execute(
                "SELECT item_index, status, output, error FROM node_runs "
                "WHERE execution_id=? AND path GLOB ? AND node_type='item' "
                "AND instr(substr(path, ?), '.') = 0 ORDER BY item_index",
                (execution_id, glob_escape(loop_path) + "[[]*]", len(loop_path) + 1),
            )
        )

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM dead_letters ORDER BY id DESC LIMIT ?", (limit,))

    def dead_letter(self, dl_id: int) -> dict[str, Any] | None:
        return self._one("SELECT * FROM dead_letters WHERE id=?", (dl_id,))

    @client_retry
    def mark_replayed(self, dl_id: int, execution_id: str) -> None:
        with self.atomic() as c:
            c.execute("UPDATE dead_letters SET replayed_as=? WHERE id=?", (execution_id, dl_id))

    @client_retry
    def purge_dead_letters(self, ids: list[int] | None = None) -> int:
        with self.atomic() as c:
            if ids:
                cur = c.execute(
                    f"DELETE FROM dead_letters WHERE id IN ({','.join('?' * len(ids))})", ids
                )
            else:
                cur = c.execute("DELETE FROM dead_letters")
            return cur.rowcount

    def dead_letter_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0])

    def prune_samples(self, before: float) -> None:
        with self.atomic() as c:
            c.execute("DELETE FROM resource_samples WHERE ts < ?", (before,))

    def latest_samples(self, max_age: float = 5.0) -> list[dict[str, Any]]:
        """The newest resource sample of each process (and the machine), if recent."""
        return self._all(
            "SELECT * FROM resource_samples WHERE ts = (SELECT max(ts) FROM resource_samples) "
            "AND ts > ? ORDER BY role DESC, pid",
            (time.time() - max_age,),
        )

    def queue_depth(self) -> list[dict[str, Any]]:
        return self._all(
            "SELECT status, priority, count(*) AS tasks FROM queue GROUP BY status, priority "
            "ORDER BY status, priority DESC"
        )

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        cur = self.conn.execute(sql, args)
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row, strict=True))

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = self.conn.execute(sql, args)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    # --- supervisor verbs --------------------------------------------------------------

    def active_executions(self) -> list[dict[str, Any]]:
        return self._all(
            "SELECT * FROM executions WHERE status IN ('queued','running','paused') "
            "ORDER BY created_at"
        )

    def new_executions(self, known: set[str]) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT * FROM executions WHERE status='queued' ORDER BY priority DESC, created_at"
        )
        return [r for r in rows if r["id"] not in known]

    def applied_signals(self, execution_id: str) -> list[dict[str, Any]]:
        return self._all(
            "SELECT * FROM signals WHERE execution_id=? AND status='applied' ORDER BY id",
            (execution_id,),
        )

    def signals_of(self, execution_id: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM signals WHERE execution_id=? ORDER BY id", (execution_id,))

    def pending_signals(self, after_id: int) -> list[dict[str, Any]]:
        return self._all(
            "SELECT * FROM signals WHERE status='pending' AND id>? ORDER BY id", (after_id,)
        )

    def commit_batch(self, b: Batch) -> None:
        """Apply one batch in one transaction (the group commit)."""
        with self.atomic() as c:
            if b.executions:
                c.executemany(_EXEC_UPDATE, list(b.executions.values()))
            if b.node_runs:
                c.executemany(_NODE_UPSERT, list(b.node_runs.values()))
            if b.attempts:
                c.executemany(_ATTEMPT_UPSERT, list(b.attempts.values()))
            if b.queue:
                deletes = [k for k, v in b.queue.items() if v is None]
                upserts = [v for v in b.queue.values() if v is not None]
                if deletes:
                    c.executemany("DELETE FROM queue WHERE execution_id=? AND path=?", deletes)
                if upserts:
                    c.executemany(_QUEUE_UPSERT, upserts)
            if b.signals:
                c.executemany(
                    "UPDATE signals SET status=?, outcome=?, applied_at=?, "
                    "result=coalesce(?, result) WHERE id=?",
                    b.signals,
                )
            if b.events:
                c.executemany(
                    "INSERT INTO events(execution_id, path, ts, kind, detail) VALUES(?,?,?,?,?)",
                    b.events,
                )
            if b.logs:
                c.executemany(
                    "INSERT INTO logs(execution_id, path, attempt, ts, stream, line) "
                    "VALUES(?,?,?,?,?,?)",
                    b.logs,
                )
            if b.dead_letters:
                c.executemany(
                    "INSERT INTO dead_letters(execution_id, path, node_id, input, error, "
                    "attempts, created_at) VALUES(?,?,?,?,?,?,?)",
                    b.dead_letters,
                )
            if b.notifications:
                c.executemany(
                    "INSERT INTO notifications(execution_id, signal_id, recipient, message, "
                    "created_at) VALUES(?,?,?,?,?)",
                    b.notifications,
                )
            if b.samples:
                c.executemany(
                    "INSERT INTO resource_samples(ts, pid, role, cpu_percent, rss_bytes, "
                    "execution_id, node_path) VALUES(?,?,?,?,?,?,?)",
                    b.samples,
                )


def glob_escape(text: str) -> str:
    """Escape GLOB's special characters so ``text`` matches itself."""
    return "".join(f"[{c}]" if c in "[*?" else c for c in text)


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (our migrations have no ';' in literals)."""
    return [s.strip() for s in script.split(";") if s.strip()]
