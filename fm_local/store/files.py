"""The file itself: where it is, opening it (read-only for read commands), the
journal mode, and one line naming the file, the condition and what to do for any
sqlite3 or OS error met on it (:func:`storage_error`)."""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path

from fm_local.errors import StorageError


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
