"""The schema of the SQLite file: its tables, views and triggers, as numbered
migrations (``MIGRATIONS[i]`` takes a file from version ``i`` to ``i + 1``)."""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 7
# The oldest version the read commands read as it is (they never migrate): the
# migrations after it only add indexes, so its queries give the same rows there.
MIN_READ_VERSION = 5


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
    # 2: which code a python node ran ("tasks.py@<sha256 prefix>"), how many
    # items a loop has (known when it starts: progress is done / items), and what
    # validating a workflow document said (fm_local.prepare: a known document is
    # not validated again at submit).
    """
    ALTER TABLE node_runs ADD COLUMN code TEXT;
    ALTER TABLE node_runs ADD COLUMN items INTEGER;
    ALTER TABLE workflows ADD COLUMN checked TEXT;
    """,
    # 3: terminal is final (fm_local.status): a finished node run or execution
    # never changes status again, whoever writes.
    """
    CREATE TRIGGER node_run_terminal_is_final BEFORE UPDATE OF status ON node_runs
    WHEN OLD.status IN ('cancelled','failed','skipped','succeeded','timed_out')
        AND NEW.status IS NOT OLD.status
    BEGIN
        SELECT RAISE(ABORT, 'a finished node run is final');
    END;
    CREATE TRIGGER execution_terminal_is_final BEFORE UPDATE OF status ON executions
    WHEN OLD.status IN ('cancelled','failed','succeeded','timed_out')
        AND NEW.status IS NOT OLD.status
        AND NOT (OLD.status = 'succeeded' AND NEW.status = 'failed')
    BEGIN
        SELECT RAISE(ABORT, 'a finished execution is final');
    END;
    """,
    # 4: where a node's task ran (SPEC §11): 'process' (a worker process of its
    # own) or 'io' (the I/O lane's event loop); NULL for nodes no worker runs.
    """
    ALTER TABLE node_runs ADD COLUMN lane TEXT;
    """,
    # 5: fm retry (docs/retry.md): an execution that retries another names it
    # (retry_of) and keeps how it was asked (retry: JSON); a node instance whose
    # result was copied from an earlier execution instead of run names where it
    # was computed (reused_from).
    """
    ALTER TABLE executions ADD COLUMN retry_of TEXT;
    ALTER TABLE executions ADD COLUMN retry TEXT;
    ALTER TABLE node_runs ADD COLUMN reused_from TEXT;
    CREATE INDEX executions_retry_of ON executions(retry_of);
    """,
    # 6: fm ls newest first, and its --workflow and --since filters, read an index
    # instead of sorting the whole table. Indexes only (MIN_READ_VERSION).
    """
    CREATE INDEX IF NOT EXISTS executions_created ON executions(created_at);
    CREATE INDEX IF NOT EXISTS executions_workflow ON executions(workflow, created_at);
    """,
    # 7: first writes wait (docs/schema.md, "What is written when"): a task the
    # supervisor holds without a queue row yet is counted here instead, by status
    # and priority (rewritten about twice a second while it changes), and
    # queue_depth adds both. Read commands read a version 6 file as it is
    # (queries.queue_depth counts its queue table alone).
    """
    CREATE TABLE queue_counts (
        status TEXT NOT NULL CHECK (status IN ('queued','running')),
        priority INTEGER NOT NULL,
        tasks INTEGER NOT NULL,
        PRIMARY KEY (status, priority)
    ) WITHOUT ROWID;
    DROP VIEW IF EXISTS queue_depth;
    CREATE VIEW queue_depth AS
        SELECT status, priority, sum(tasks) AS tasks FROM (
            SELECT status, priority, count(*) AS tasks FROM queue GROUP BY status, priority
            UNION ALL SELECT status, priority, tasks FROM queue_counts
        ) GROUP BY status, priority;
    """,
]


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (a trigger's body is one statement with
    its own semicolons: SQLite's ``complete_statement`` tells where one ends)."""
    out: list[str] = []
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                out.append(buf.strip())
            buf = ""
    if buf.strip(" \n;"):
        out.append(buf.strip())
    return out
