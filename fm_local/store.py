"""All SQL lives here: schema, migrations, client verbs and the supervisor's batches.

Invariants: every write transaction is ``BEGIN IMMEDIATE`` (so the busy timeout
applies); the supervisor writes engine state only through :meth:`Store.commit_batch`,
one transaction per batch, applied in order, so the file always holds a prefix of
the supervisor's history. Connections are opened after a process starts and never
cross a fork. A sqlite3 or OS error met on the file becomes one line naming the file,
the condition and what to do (:func:`storage_error`); read commands open the file
read-only and never change it (:func:`connect_readonly`).
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import retry, retry_if_exception, stop_after_delay, wait_random_exponential

from fm_local.errors import QueueFull, StorageError, UsageError
from fm_local.jsonio import INT64_MAX, INT64_MIN, clean_text, find_problem, format_path

SCHEMA_VERSION = 3


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
]


def _at_or_under(path: str) -> tuple[str, tuple[Any, ...]]:
    """SQL (and its arguments) for "``path`` itself, or a node instance inside it":
    ``a`` matches ``a``, ``a.b`` and ``a[3].b``, not ``ab``."""
    return "(path=? OR substr(path, 1, ?) IN (?, ?))", (
        path,
        len(path) + 1,
        path + ".",
        path + "[",
    )


def _switch_to_wal(conn: sqlite3.Connection) -> str:
    """``PRAGMA journal_mode=WAL``, waiting out other processes that open a new file
    at the same moment: SQLite answers this pragma "database is locked" at once,
    without its busy handler, while another connection switches the journal mode.
    Gives up after the busy timeout, as any other write would."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    delay = 0.002
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def default_db_path() -> Path:
    """``$FM_DB``, else ``$XDG_DATA_HOME/fm_local/fm.db`` (~/.local/share/fm_local/fm.db)."""
    env = os.environ.get("FM_DB")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fm_local" / "fm.db"


# --- storage problems -------------------------------------------------------------------

BUSY_TIMEOUT = 30.0  # seconds a connection waits for another one's write lock

# `fm submit`/`fm run` check an existing file before writing into it. PRAGMA quick_check
# reads every page: on the development machine ~0.2 s for 100,000 node_runs rows
# (21 MB), ~0.3 s with their attempts and events (41 MB), 0.03-0.05 s at this size. A file
# up to this size gets it whole, a bigger one the partial check (~1 ms whatever its
# size; see Store.check_integrity).
FULL_CHECK_MAX_BYTES = 4 * 2**20
# What a partial check covers: the tables fm submit writes and the supervisor's small
# hot tables (PRAGMA quick_check(TABLE) checks a table and its indexes, ~1 ms each).
CHECKED_TABLES = ("meta", "workflows", "executions", "queue", "signals")

_NOTHING_LOST = "; nothing committed was lost"
# Result codes (the low byte of sqlite3.Error.sqlite_errorcode).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 11, 13, 14
_SQLITE_NOTADB = 26
_READONLY_DIRECTORY = _SQLITE_READONLY | (6 << 8)
_READONLY_DBMOVED = _SQLITE_READONLY | (4 << 8)
# Codes of a read-only open that could not create or use the -shm beside the file.
_NO_SHM = frozenset(
    {
        _SQLITE_CANTOPEN,
        _READONLY_DIRECTORY,
        _SQLITE_READONLY | (1 << 8),  # READONLY_RECOVERY
        _SQLITE_READONLY | (2 << 8),  # READONLY_CANTLOCK
        _SQLITE_READONLY | (5 << 8),  # READONLY_CANTINIT
        _SQLITE_IOERR | (18 << 8),  # IOERR_SHMOPEN
        _SQLITE_IOERR | (19 << 8),  # IOERR_SHMSIZE: no room to grow it (disk full)
        _SQLITE_IOERR | (21 << 8),  # IOERR_SHMMAP
    }
)
# Below this much free space, an I/O error is the disk being full: SQLite reports a
# -shm it cannot grow as an I/O error, not as SQLITE_FULL.
_NEARLY_FULL = 2**20
# For an error without a code: the text SQLite gives each condition.
_TEXT_CODES = (
    ("database or disk is full", _SQLITE_FULL),
    ("readonly database", _SQLITE_READONLY),
    ("file is not a database", _SQLITE_NOTADB),
    ("malformed", _SQLITE_CORRUPT),
    ("disk i/o error", _SQLITE_IOERR),
    ("locked", _SQLITE_BUSY),
    ("unable to open", _SQLITE_CANTOPEN),
)


class StorageProblem(StorageError):
    """A storage condition named as what it is, for the file it concerns.

    ``condition`` is one of: ``missing``, ``disk_full``, ``read_only``, ``permission``,
    ``not_a_directory``, ``is_a_directory``, ``corrupt``, ``io``, ``busy``,
    ``cannot_open``, ``schema``, ``other``."""

    def __init__(self, message: str, condition: str, path: Path) -> None:
        super().__init__(message)
        self.condition = condition
        self.path = path


def storage_error(exc: BaseException, path: str | Path, action: str = "write") -> StorageProblem:
    """The one line for ``exc`` (a sqlite3 or OS error) met on the database at ``path``:
    the file, the condition and what to do. ``action`` is the verb of the attempt
    ("open", "read", "write", "create"). The supervisor wraps its commit failures with
    it: ``raise storage_error(exc, db, "write") from exc``."""
    path = Path(path)
    if isinstance(exc, StorageProblem):
        return exc
    if isinstance(exc, OSError):
        where = Path(os.fsdecode(exc.filename)) if exc.filename else path
        if exc.errno in (errno.ENOTDIR, errno.EEXIST) and _file_in_the_way(path) is not None:
            where = path  # mkdir's error names the blocking file: name the database
        return _os_problem(exc.errno, exc.strerror or str(exc), where, action)
    if isinstance(exc, sqlite3.Error):
        return _sqlite_problem(exc, path, action)
    return StorageProblem(f"cannot {action} {path}: {exc}", "other", path)


def _sqlite_code(exc: sqlite3.Error) -> int:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code
    text = str(exc).lower()
    return next((c for needle, c in _TEXT_CODES if needle in text), 0)


def _sqlite_problem(exc: sqlite3.Error, path: Path, action: str) -> StorageProblem:
    code = _sqlite_code(exc)
    primary = code & 0xFF
    if primary == _SQLITE_FULL:
        return _disk_full(path, action)
    if primary == _SQLITE_READONLY:
        if code == _READONLY_DBMOVED:
            return StorageProblem(
                f"cannot {action} {path}: the file was moved or deleted while open — "
                f"put it back and retry{_NOTHING_LOST}",
                "other",
                path,
            )
        return _read_only(path, action, _read_only_part(path, code))
    if primary in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
        return corrupt(path, action, str(exc), foreign=primary == _SQLITE_NOTADB)
    if primary == _SQLITE_IOERR:
        if _free_bytes(path) < _NEARLY_FULL:
            return _disk_full(path, action)
        return StorageProblem(
            f"cannot {action} {path}: I/O error ({exc}) — check the disk (dmesg) and retry; "
            "the last commit is intact unless the disk itself is failing",
            "io",
            path,
        )
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StorageProblem(
            f"cannot {action} {path}: another process kept the database locked beyond the "
            f"{BUSY_TIMEOUT:g} s busy timeout — retry; if it persists, find it with "
            f"`fuser {path}`{_NOTHING_LOST}",
            "busy",
            path,
        )
    if primary == _SQLITE_PERM:
        return _os_problem(errno.EACCES, str(exc), path, action)
    if primary == _SQLITE_CANTOPEN:
        return _cannot_open(path, action, str(exc))
    return StorageProblem(f"cannot {action} {path}: {exc}", "other", path)


def _os_problem(err: int | None, text: str, where: Path, action: str) -> StorageProblem:
    if err in (errno.ENOSPC, errno.EDQUOT):
        return _disk_full(where, action, "disk quota exceeded" if err == errno.EDQUOT else "")
    if err == errno.EROFS:
        return _read_only(where, action, "its file system is mounted read-only")
    if err in (errno.EACCES, errno.EPERM):
        return StorageProblem(
            f"cannot {action} {where}: permission denied — run fm as the owner of the file "
            f"and its directory, fix their permissions, or pass --db PATH"
            + (_NOTHING_LOST if action == "write" else ""),
            "permission",
            where,
        )
    if err in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(where)
        if blocker is not None:
            return StorageProblem(
                f"cannot {action} {where}: {blocker} is a file, not a directory — "
                "pass --db with a path inside a directory",
                "not_a_directory",
                where,
            )
    if err == errno.EISDIR:
        return StorageProblem(
            f"cannot {action} {where}: it is a directory — pass --db with a file path, "
            f"e.g. {where / 'fm.db'}",
            "is_a_directory",
            where,
        )
    if err == errno.EIO:
        if _free_bytes(where) < _NEARLY_FULL:
            return _disk_full(where, action)
        return StorageProblem(
            f"cannot {action} {where}: I/O error — check the disk (dmesg) and retry; "
            "the last commit is intact unless the disk itself is failing",
            "io",
            where,
        )
    if err == errno.ENOENT and action in ("open", "read"):
        return missing(where)
    return StorageProblem(f"cannot {action} {where}: {text}", "other", where)


def missing(path: Path) -> StorageProblem:
    return StorageProblem(
        f"no database at {path}: run a workflow first, or pass --db PATH", "missing", path
    )


def corrupt(path: Path, action: str, what: str, *, foreign: bool = False) -> StorageProblem:
    """``foreign``: SQLite does not recognize the file at all (a damaged header and
    someone else's file look the same)."""
    if foreign:
        return StorageProblem(
            f"cannot {action} {path}: not an fm_local database, or a corrupt one ({what}) — "
            "fm writes nothing into it; pass --db with the right file, or move it aside or "
            "restore a backup",
            "corrupt",
            path,
        )
    return StorageProblem(
        f"cannot {action} {path}: the file is corrupt ({what}) — fm writes nothing into "
        f"it; move it aside or restore a backup (`sqlite3 {path} .recover` salvages what "
        "it can)",
        "corrupt",
        path,
    )


def _disk_full(path: Path, action: str, what: str = "") -> StorageProblem:
    return StorageProblem(
        f"cannot {action} {path}: {what or 'disk full'} — free space and retry{_NOTHING_LOST}",
        "disk_full",
        path,
    )


def _read_only(path: Path, action: str, part: str) -> StorageProblem:
    return StorageProblem(
        f"cannot {action} {path}: {part} — fm ls/show/tui still read it; to write, make it "
        f"writable or copy it elsewhere and pass --db{_NOTHING_LOST}",
        "read_only",
        path,
    )


def _read_only_part(path: Path, code: int = 0) -> str:
    """Which part is read-only: the mount, the directory or the file."""
    folder = path.parent
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "its file system is mounted read-only"
    except OSError:
        pass
    if code == _READONLY_DIRECTORY or not os.access(folder, os.W_OK):
        return (
            f"its directory {folder} is read-only (SQLite keeps {path.name}-wal and "
            f"{path.name}-shm beside the file)"
        )
    return "the file is read-only"


def _free_bytes(path: Path) -> int:
    """Free space where ``path`` lives, as this user may use it (root: the reserve too)."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return _NEARLY_FULL
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


def _file_in_the_way(path: Path) -> Path | None:
    """The first ancestor of ``path`` that exists and is not a directory."""
    for p in reversed(path.parents):
        if p.exists() and not p.is_dir():
            return p
    return None


def _cannot_open(path: Path, action: str, text: str) -> StorageProblem:
    """SQLite says only "unable to open database file": find out why."""
    blocker = _file_in_the_way(path)
    if blocker is not None:
        return _os_problem(errno.ENOTDIR, text, path, action)
    if path.is_dir():
        return _os_problem(errno.EISDIR, text, path, action)
    if not path.parent.is_dir():
        return missing(path)
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists() and not os.access(p, os.R_OK):
            return _os_problem(errno.EACCES, text, p, action)
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return _read_only(path, action, _read_only_part(path))
    return StorageProblem(
        f"cannot {action} {path}: SQLite cannot open it or its -wal/-shm beside it — check "
        "that you may read and write the file and its directory",
        "cannot_open",
        path,
    )


def _create_private(path: Path) -> None:
    """Create the database file 0600 if it is missing, before SQLite opens it: SQLite
    gives -wal, -shm and -journal the main file's mode, so all of them stay private
    (like the API token). An existing file is never opened here: closing any
    descriptor of a database file drops every POSIX lock this process holds on it,
    SQLite's included (a daemon's HTTP thread opening the file would strip the
    supervisor's locks). Its access is checked instead, for the OS's own reason
    (EACCES, EROFS, EISDIR) that SQLite would hide behind "unable to open"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        _check_access(path, os.R_OK | os.W_OK)
        return
    os.fchmod(fd, 0o600)  # whatever the umask
    os.close(fd)


def _check_access(path: Path, mode: int) -> None:
    """Raise the OSError opening ``path`` with ``mode`` would meet, without opening it."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not os.access(path, mode):
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        if mode & os.W_OK and os.access(path, os.R_OK):
            try:
                if os.statvfs(path).f_flag & os.ST_RDONLY:
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            except AttributeError:
                pass
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


def connect_readonly(
    path: str | Path, *, timeout: float = BUSY_TIMEOUT, check_same_thread: bool = False
) -> sqlite3.Connection:
    """A read-only connection that never changes the file: ``mode=ro`` (no journal-mode
    change, no migration) and ``query_only``. Raises :class:`StorageProblem`.

    A WAL reader needs ``<db>-shm``; when SQLite cannot create or use it (a read-only
    directory or mount, or a copy owned by someone else) the file is opened with
    ``immutable=1`` instead. The trade-off: SQLite then takes no locks and assumes
    nobody changes the file, so a writer working on it at the same time could show
    this reader a torn state, and commits still in ``<db>-wal`` would be invisible —
    hence a non-empty ``-wal`` (or ``-journal``) beside the file is refused rather
    than silently ignored. A directory nobody may write is one no supervisor writes
    in either, so neither can happen unnoticed."""
    path = Path(path)
    try:
        # The OS's own reason if it cannot be read (never by opening it: see
        # _create_private on POSIX locks).
        path.stat()
        _check_access(path, os.R_OK)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if _file_in_the_way(path) is not None:
            raise storage_error(exc, path, "read") from None
        raise missing(path) from None
    except OSError as exc:
        raise storage_error(exc, path, "read") from None
    uri = path.resolve().as_uri()
    try:
        return _open_uri(uri + "?mode=ro", timeout, check_same_thread)
    except sqlite3.Error as exc:
        if _sqlite_code(exc) not in _NO_SHM:
            raise storage_error(exc, path, "read") from exc
    for suffix in ("-wal", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists() and side.stat().st_size > 0:
            raise StorageProblem(
                f"cannot read {path}: commits wait in {side.name}, and SQLite cannot create "
                f"{path.name}-shm in {path.parent} to read them — copy {path.name} and "
                f"{side.name} to a writable directory and pass --db",
                "read_only",
                path,
            )
    try:
        return _open_uri(uri + "?mode=ro&immutable=1", timeout, check_same_thread)
    except sqlite3.Error as exc:
        raise storage_error(exc, path, "read") from exc


def _open_uri(uri: str, timeout: float, check_same_thread: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(
        uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=check_same_thread
    )
    try:
        conn.execute("PRAGMA query_only=1")
        # SQLite opens -wal/-shm, and reads the header, at the first read.
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; refuses a file that is not an fm_local database."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        if tables == 0:
            raise StorageProblem(
                f"{path} is empty: no fm_local schema yet — run a workflow first "
                "(fm run/fm submit create it), or pass --db PATH",
                "schema",
                path,
            ) from None
        raise StorageProblem(
            f"{path} is not an fm_local database (it has no meta table) — pass --db PATH",
            "schema",
            path,
        ) from None
    return int(row[0]) if row else 0


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


def _check_value(value: Any, what: str) -> None:
    """Refuse a value that is not storable JSON (exit 2, naming where)."""
    problem = find_problem(value)
    if problem is not None:
        raise UsageError(f"{format_path(problem[0], what)}: {problem[1]}")


def _check_int64(value: int, what: str) -> None:
    if not INT64_MIN <= value <= INT64_MAX:
        raise UsageError(f"{what} {value} does not fit in 64 bits")


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def new_execution_id() -> str:
    import uuid  # here, not at the top: commands that only read start faster

    return uuid.uuid4().hex[:12]


def new_trace_id() -> str:
    import secrets  # here, not at the top: commands that only read start faster

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
    "code",
    "items",
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
        if version < SCHEMA_VERSION:
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

    def data_version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

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

    def known_workflow(self, digest: str) -> dict[str, Any] | None:
        """The saved workflow with this hash (``prepare.document_hash``): id, name,
        checked; None if there is none."""
        return self._one("SELECT id, name, checked FROM workflows WHERE hash=?", (digest,))

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
            under, args = _at_or_under(path)
            return self._all(
                f"SELECT * FROM node_runs WHERE execution_id=? AND {under} ORDER BY id",
                (execution_id, *args),
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

    def loop_progress(self, execution_id: str) -> list[dict[str, Any]]:
        """Per loop instance, in the order the loops started: ``loop`` (its path),
        ``status``, ``total`` (its item count, set when it starts; NULL before),
        ``materialised`` (item rows that exist), ``done`` (items in a final status),
        ``failed`` (failed or timed out), ``running`` (items open now), and the
        ``first_start`` and ``last_end`` of its items. See fm_local.progress."""
        return self._all(
            "WITH agg AS (SELECT loop, count(*) AS materialised, "
            "sum(status IN ('succeeded','failed','cancelled','skipped','timed_out')) AS done, "
            "sum(status IN ('failed','timed_out')) AS failed, "
            "sum(status = 'running') AS running, "
            "min(started_at) AS first_start, max(finished_at) AS last_end "
            "FROM (SELECT rtrim(rtrim(path, '0123456789]'), '[') AS loop, status, "
            "started_at, finished_at FROM node_runs "
            "WHERE execution_id=? AND node_type='item') GROUP BY loop) "
            "SELECT l.path AS loop, l.status, l.items AS total, "
            "coalesce(a.materialised, 0) AS materialised, coalesce(a.done, 0) AS done, "
            "coalesce(a.failed, 0) AS failed, coalesce(a.running, 0) AS running, "
            "a.first_start, a.last_end FROM node_runs l LEFT JOIN agg a ON a.loop = l.path "
            "WHERE l.execution_id=? AND l.node_type='loop' ORDER BY l.id",
            (execution_id, execution_id),
        )

    def node_runs_in(
        self, execution_id: str, statuses: tuple[str, ...], limit: int | None = None
    ) -> list[dict[str, Any]]:
        """node_runs rows in one of ``statuses`` (``fm show --status``), in the order
        of :meth:`node_runs`; at most ``limit`` of them."""
        marks = ",".join("?" * len(statuses))
        return self._all(
            f"SELECT * FROM node_runs WHERE execution_id=? AND status IN ({marks}) "
            "ORDER BY coalesce(started_at, queued_at, finished_at), id LIMIT ?",
            (execution_id, *statuses, -1 if limit is None else limit),
        )

    def count_node_runs_in(self, execution_id: str, statuses: tuple[str, ...]) -> int:
        marks = ",".join("?" * len(statuses))
        return int(
            self.conn.execute(
                f"SELECT count(*) FROM node_runs WHERE execution_id=? AND status IN ({marks})",
                (execution_id, *statuses),
            ).fetchone()[0]
        )

    def failed_with_traceback(
        self, execution_id: str, under: str | None = None, limit: int = 1
    ) -> list[dict[str, Any]]:
        """Failed node instances whose error records a python traceback, at or under
        the path ``under``: unhandled ones first, then the earliest to fail."""
        where = ""
        args: tuple[Any, ...] = (execution_id,)
        if under:
            sql, more = _at_or_under(under)
            where, args = f"AND {sql} ", args + more
        return self._all(
            "SELECT * FROM node_runs WHERE execution_id=? AND status='failed' "
            + where
            + "AND json_extract(error, '$.details.traceback') IS NOT NULL "
            "ORDER BY handled, finished_at, id LIMIT ?",
            (*args, limit),
        )

    def failed_attempts(self, execution_id: str, path: str | None = None) -> list[dict[str, Any]]:
        """Tries that ended in an error (failed or timed out), with their error, at or
        under ``path`` (``fm logs``)."""
        where = ""
        args: tuple[Any, ...] = (execution_id,)
        if path:
            sql, more = _at_or_under(path)
            where, args = f"AND {sql} ", args + more
        return self._all(
            "SELECT * FROM attempts WHERE execution_id=? AND status IN ('failed','timed_out') "
            + where
            + "AND error IS NOT NULL ORDER BY id",
            args,
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
            under, args = _at_or_under(path)
            return self._all(
                f"SELECT * FROM logs WHERE execution_id=? AND {under} ORDER BY id",
                (execution_id, *args),
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

    def recent_starts(self, execution_id: str, node_id: str, since: float) -> list[float]:
        """Start times after ``since`` of node ``node_id``'s attempts, wherever it is
        (a loop body's node in every item): a rate limiter's memory across restarts."""
        rows = self.conn.execute(
            "SELECT started_at FROM attempts WHERE execution_id=? AND started_at > ? AND "
            "(path = ? OR path GLOB ?)",
            (execution_id, since, node_id, "*." + glob_escape(node_id)),
        ).fetchall()
        return [r[0] for r in rows]

    def last_attempts(self, execution_id: str, prefix: str) -> dict[str, tuple[int, str]]:
        """Per node path under ``prefix``: the latest attempt's seq and kind."""
        rows = self.conn.execute(
            "SELECT path, max(seq), kind FROM attempts WHERE execution_id=? AND path GLOB ? "
            "GROUP BY path",
            (execution_id, glob_escape(prefix) + "*"),
        ).fetchall()
        return {r[0]: (int(r[1] or 0), r[2] or "attempt") for r in rows}

    def compensated(self, execution_id: str) -> set[str]:
        """Paths of the compensation runs that succeeded (``<path>->compensate``)."""
        return {
            row[0]
            for row in self.conn.execute(
                "SELECT path FROM node_runs WHERE execution_id=? AND status='succeeded' "
                "AND path LIKE '%->compensate'",
                (execution_id,),
            ).fetchall()
        }

    def signals_of(self, execution_id: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM signals WHERE execution_id=? ORDER BY id", (execution_id,))

    def pending_signals(self, after_id: int) -> list[dict[str, Any]]:
        return self._all(
            "SELECT * FROM signals WHERE status='pending' AND id>? ORDER BY id", (after_id,)
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
                    c.executemany(sql, rows)
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


def glob_escape(text: str) -> str:
    """Escape GLOB's special characters so ``text`` matches itself."""
    return "".join(f"[{c}]" if c in "[*?" else c for c in text)


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
