"""The :class:`Store`: a connection to the file, opening, migrating and checking
it, the clients' write verbs (workflows, executions, signals, dead letters) and the
supervisor's group commit (:meth:`Store.commit_batch`). Its read queries are
:class:`fm_local.store.queries.Queries`, a part of it."""

from __future__ import annotations

import functools
import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from fm_local.errors import FmError, QueueFull, StorageError, UsageError
from fm_local.jsonio import clean_text
from fm_local.store.batch import (
    ROW_ERRORS,
    Batch,
    Rejected,
    _batch_steps,
    _clean_row,
    run_rows,
)
from fm_local.store.files import (
    BUSY_TIMEOUT,
    CHECKED_TABLES,
    FULL_CHECK_MAX_BYTES,
    StorageProblem,
    _create_private,
    _switch_to_wal,
    connect_readonly,
    corrupt,
    missing,
    schema_version,
    storage_error,
)
from fm_local.store.queries import Queries
from fm_local.store.rows import (
    _check_int64,
    _check_value,
    dumps,
    new_execution_id,
    new_trace_id,
)
from fm_local.store.schema import MIGRATIONS, MIN_READ_VERSION, SCHEMA_VERSION, _split_sql

_F = TypeVar("_F", bound=Callable[..., Any])


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


# Clients retry on "database is locked" beyond the busy timeout, for up to this long.
CLIENT_RETRY_FOR = 30.0


def client_retry(fn: _F) -> _F:
    """Retry ``fn`` while SQLite says the file is busy or locked, for up to
    CLIENT_RETRY_FOR seconds, sleeping a random time that doubles each try (from
    10 ms, at most 0.5 s); then the last error is raised. (Written here rather than
    with tenacity, whose import alone took two thirds of this module's.)"""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + CLIENT_RETRY_FOR
        tries = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            tries += 1
            ceiling = min(0.5, 0.01 * 2.0**tries)
            time.sleep(min(random.uniform(0.0, ceiling), max(0.0, deadline - time.monotonic())))

    return call  # type: ignore[return-value]


class Store(Queries):
    """One connection to the database file, and the verbs on it."""

    def __init__(
        self,
        path: str | Path,
        *,
        durability: str = "full",
        create: bool = True,
        readonly: bool = False,
        check: bool = False,
    ):
        """Open (or create, 0600) the database and migrate it to this schema version.

        ``readonly``: open it read-only (see :func:`connect_readonly`): no journal-mode
        change, no migration; a file of another schema version is refused. ``check``:
        refuse an existing file that fails :meth:`check_integrity` before anything is
        written into it. Every failure is a :class:`StorageProblem`."""
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            self.conn = connect_readonly(self.path)
            try:
                self._check_version()
            except sqlite3.Error as exc:
                self.conn.close()
                raise storage_error(exc, self.path, "read") from exc
            except BaseException:
                self.conn.close()
                raise
            return
        if not create and not self.path.exists():
            raise missing(self.path)
        action = "open" if self.path.exists() else "create"
        conn: sqlite3.Connection | None = None
        try:
            existed = self.path.exists() and self.path.stat().st_size > 0
            _create_private(self.path)
            action = "open"
            conn = self.conn = sqlite3.connect(
                str(self.path),
                isolation_level=None,
                timeout=BUSY_TIMEOUT,
                check_same_thread=False,
            )
            self.conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
            if check and existed:
                self.check_integrity()
            if not existed:
                # A new file gives freed pages back in steps (fm prune): the mode must
                # be set before the first table and before WAL (docs/maintenance.md).
                self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = _switch_to_wal(self.conn)
            if mode.lower() != "wal":
                raise StorageError(f"{self.path}: could not switch the database to WAL mode")
            sync = "NORMAL" if durability == "normal" else "FULL"
            self.conn.execute(f"PRAGMA synchronous={sync}")
            self.conn.execute("PRAGMA foreign_keys=ON")
            action = "write"
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            raise storage_error(exc, self.path, action) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def check_integrity(self) -> None:
        """Refuse a corrupt file before writing into it (``fm submit``, ``fm run``).

        A file up to FULL_CHECK_MAX_BYTES gets the whole ``PRAGMA quick_check``. A
        bigger one gets a partial check that costs ~1 ms whatever its size: SQLite
        itself refuses a damaged header or a truncated file, and ``quick_check(TABLE)``
        walks CHECKED_TABLES and their indexes. Damage confined to the pages of the big
        tables (node_runs, attempts, events, logs) is then not seen here; the
        supervisor meets it when it reads or writes those pages and stops with the
        same one line. ``PRAGMA quick_check`` (or ``sqlite3 FILE 'PRAGMA
        integrity_check'``) checks everything."""
        size = self.path.stat().st_size
        try:
            size += self.path.with_name(self.path.name + "-wal").stat().st_size
        except FileNotFoundError:
            pass
        try:
            if size <= FULL_CHECK_MAX_BYTES:
                results = [r[0] for r in self.conn.execute("PRAGMA quick_check(3)")]
            else:
                present = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_schema")} | {
                    "sqlite_schema"
                }
                results = []
                for table in ("sqlite_schema", *CHECKED_TABLES):
                    if table in present:
                        results += [r[0] for r in self.conn.execute(f"PRAGMA quick_check({table})")]
        except sqlite3.DatabaseError as exc:
            raise storage_error(exc, self.path, "write") from exc
        problems = [r for r in results if r != "ok"]
        if problems:
            raise corrupt(self.path, "write", "quick_check: " + "; ".join(problems)[:200])

    def _check_version(self) -> None:
        """A read-only open does not migrate: it says what to do about another version."""
        version = schema_version(self.conn, self.path)
        if version > SCHEMA_VERSION:
            raise StorageProblem(
                f"{self.path} has schema version {version}, newer than this fm_local "
                f"({SCHEMA_VERSION}): upgrade fm_local",
                "schema",
                self.path,
            )
        if version < MIN_READ_VERSION:
            raise StorageProblem(
                f"{self.path} has schema version {version}, older than this fm_local "
                f"({SCHEMA_VERSION}), and read commands do not upgrade it — run fm daemon "
                "(or fm submit) once with write access to upgrade it",
                "schema",
                self.path,
            )

    # --- transactions ---------------------------------------------------------------

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction; rolls back on any exception and re-raises."""
        if self.readonly:
            raise StorageProblem(
                f"{self.path} is open read-only here; this is a bug in fm (a read "
                "command tried to write)",
                "read_only",
                self.path,
            )
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR, ...): a
            # second ROLLBACK would hide the error that says why.
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        else:
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                # A COMMIT that fails (disk full, I/O) may leave the transaction open;
                # end it, so the connection can write again once the cause is gone.
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

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
                # Read again inside the write transaction: another process (a client
                # and a starting daemon) may have applied this step meanwhile.
                row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row and int(row[0]) >= version:
                    continue
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

    # --- client verbs ------------------------------------------------------------------

    @client_retry
    def save_workflow(
        self,
        name: str,
        document: dict[str, Any],
        path: str | None,
        folder: str,
        *,
        checked: dict[str, Any] | None = None,
    ) -> int:
        """The id of this document (in this folder), saved if new. ``checked``: what
        its validation said (``fm_local.prepare``), kept for the next submit."""
        from fm_local.prepare import document_hash

        for what, text in (("path", path), ("folder", folder)):
            if text is not None and clean_text(text) != text:
                raise UsageError(
                    f"the workflow's {what} {text!r} is not valid UTF-8: rename it to use it"
                )
        name = clean_text(name)
        doc, digest = document_hash(document, folder)
        note = None if checked is None else json.dumps(checked, separators=(",", ":"))
        with self.atomic() as c:
            row = c.execute("SELECT id, checked FROM workflows WHERE hash=?", (digest,)).fetchone()
            if row:
                if note is not None and row[1] != note:
                    c.execute("UPDATE workflows SET checked=? WHERE id=?", (note, row[0]))
                return int(row[0])
            cur = c.execute(
                "INSERT INTO workflows(name, hash, document, path, folder, created_at, checked) "
                "VALUES(?,?,?,?,?,?,?)",
                (name, digest, doc, path, folder, time.time(), note),
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
        _check_value(input_value, "input")
        _check_int64(priority, "priority")
        workflow_name = clean_text(workflow_name)
        with self.atomic() as c:
            if c.execute("SELECT 1 FROM workflows WHERE id=?", (workflow_id,)).fetchone() is None:
                # fm prune deleted it (no execution used it) between its save and now.
                raise FmError(
                    f"workflow '{workflow_name}' was deleted from {self.path} while this "
                    "execution was being submitted (fm prune); submit it again"
                )
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
        from fm_local import wake

        wake.notify(self.path)  # committed: the supervisor may look now
        return eid

    @client_retry
    def add_signal(
        self, execution_id: str, type_: str, reason: str | None = None, data: Any = None
    ) -> int:
        _check_value(data, "data")
        if reason is not None and "\0" in reason:
            raise UsageError("the reason contains a NUL character; leave it out")
        type_ = clean_text(type_)
        reason = None if reason is None else clean_text(reason)
        with self.atomic() as c:
            cur = c.execute(
                "INSERT INTO signals(execution_id, type, reason, data, created_at) "
                "VALUES(?,?,?,?,?)",
                (execution_id, type_, reason, None if data is None else dumps(data), time.time()),
            )
            sid = int(cur.lastrowid or 0)
        from fm_local import wake

        wake.notify(self.path)  # committed: the supervisor may look now
        return sid

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

    def prune_samples(self, before: float) -> None:
        with self.atomic() as c:
            c.execute("DELETE FROM resource_samples WHERE ts < ?", (before,))

    # --- supervisor verbs --------------------------------------------------------------

    def fail_unloadable(self, execution_id: str, err: dict[str, Any]) -> None:
        """An execution the supervisor cannot load (its workflow is damaged): failed."""
        now = time.time()
        with self.atomic() as c:
            c.execute(
                "UPDATE executions SET status='failed', error=?, finished_at=?, updated_at=? "
                "WHERE id=?",
                (dumps(err), now, now, execution_id),
            )

    def unmake_success(self, execution_id: str, err: dict[str, Any]) -> None:
        """A succeeded execution some of whose rows the database refused: failed
        (the one change of a finished execution the schema allows)."""
        with self.atomic() as c:
            c.execute(
                "UPDATE executions SET status='failed', error=?, updated_at=? "
                "WHERE id=? AND status='succeeded'",
                (dumps(err), time.time(), execution_id),
            )

    def commit_batch(self, b: Batch) -> list[Rejected]:
        """Apply one batch in one transaction (the group commit).

        A row the database refuses for its own data (a lone surrogate, an integer
        beyond 64 bits, a constraint) must not lose the rest of the batch: the batch
        is then applied row by row, text rows are cleaned (valid UTF-8) and tried
        again, and the rows still refused are skipped and returned, each with the
        execution it belongs to, so the supervisor can fail that execution alone.
        A storage problem (disk full, read-only, I/O) is raised: nothing of the batch
        is committed then."""
        steps = _batch_steps(b)
        try:
            with self.atomic() as c:
                for sql, rows, _ in steps:
                    run_rows(c, sql, rows)
            return []
        except ROW_ERRORS:
            pass  # rolled back: find the rows at fault below
        rejected: list[Rejected] = []
        with self.atomic() as c:
            for sql, rows, owner in steps:
                for row in rows:
                    c.execute("SAVEPOINT fm_row")
                    try:
                        try:
                            c.execute(sql, row)
                        except UnicodeEncodeError:
                            c.execute(sql, _clean_row(row))
                    except ROW_ERRORS as exc:
                        c.execute("ROLLBACK TO fm_row")
                        rejected.append(Rejected(owner(row), sql.split("(")[0][:40], exc))
                    c.execute("RELEASE fm_row")
        return rejected
