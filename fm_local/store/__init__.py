"""The SQLite file, and all the SQL there is: :class:`Store` (a connection, the
write verbs, the supervisor's group commit and, through
:class:`~fm_local.store.queries.Queries`, every read query), the schema and its
migrations, and the one line a storage error says.

Invariants: every write transaction is ``BEGIN IMMEDIATE`` (so the busy timeout
applies); the supervisor writes engine state only through :meth:`Store.commit_batch`,
one transaction per batch, applied in order, so the file always holds a prefix of
the supervisor's history. Connections are opened after a process starts and never
cross a fork. A sqlite3 or OS error met on the file becomes one line naming the file,
the condition and what to do (:func:`storage_error`); read commands open the file
read-only and never change it (:func:`connect_readonly`).

| module | holds |
|---|---|
| ``core`` | :class:`Store`: opening, migrating, checking; the client and supervisor writes |
| ``queries`` | the read queries (CLI, HTTP API, TUI, supervisor) |
| ``batch`` | the group commit's typed rows and statements |
| ``schema`` | tables, views, triggers, as numbered migrations |
| ``files`` | the file: its path, read-only connections, storage problems |
| ``rows`` | JSON text, checked integers, new ids, shared SQL fragments |
"""

from __future__ import annotations

from fm_local.store.batch import Batch, Rejected
from fm_local.store.core import Store, client_retry
from fm_local.store.files import (
    BUSY_TIMEOUT,
    FULL_CHECK_MAX_BYTES,
    StorageProblem,
    connect_readonly,
    corrupt,
    default_db_path,
    missing,
    schema_version,
    storage_error,
)
from fm_local.store.rows import dumps, glob_escape, loads, new_execution_id, new_trace_id
from fm_local.store.schema import MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "BUSY_TIMEOUT",
    "FULL_CHECK_MAX_BYTES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Batch",
    "Rejected",
    "StorageProblem",
    "Store",
    "client_retry",
    "connect_readonly",
    "corrupt",
    "default_db_path",
    "dumps",
    "glob_escape",
    "loads",
    "missing",
    "new_execution_id",
    "new_trace_id",
    "schema_version",
    "storage_error",
]
