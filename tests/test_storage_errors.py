"""Storage problems are named as what they are (docs/schema.md, "Storage problems").

Every condition is produced for real: a disk filled up (a tmpfs when we may mount
one, else SQLite's ``max_page_count``), a read-only mount, a parent path that is a
file, bytes written over the file, a lock held by another connection, and a
read-only copy read by another user. The CLI runs in-process through ``main()``
(exit codes) or ``CliRunner``; only the other-user tests need a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import HERE, ROOT

from fm_local import api
from fm_local.cli import cli, main
from fm_local.lock import is_served
from fm_local.store import (
    FULL_CHECK_MAX_BYTES,
    StorageProblem,
    Store,
    connect_readonly,
    storage_error,
)

GOOD = {
    "name": "good",
    "nodes": [{"id": "a", "type": "python", "call": "fmtasks:add", "args": {"a": 1, "b": 2}}],
}
NOBODY = 65534


# --- helpers ----------------------------------------------------------------------------


def fm_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(args)`` in-process: (exit code, stdout, stderr)."""
    code: Any = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return (0 if code is None else int(code)), out.out, out.err


def one_line(err: str) -> str:
    """The single error line of a storage problem (no traceback, no internal error)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert lines[0].startswith("error: "), err
    return lines[0]


def digest(folder: Path) -> dict[str, str]:
    """Every file of ``folder`` and its bytes' hash."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def page_of(db: Path, table: str) -> tuple[int, int]:
    """(offset, page size) of ``table``'s root page in the file."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?immutable=1", uri=True)
    try:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_schema WHERE name=?", (table,)).fetchone()
    finally:
        conn.close()
    return (root[0] - 1) * size, size


def spoil(db: Path, offset: int, length: int) -> None:
    """Write garbage over ``length`` bytes of the file at ``offset``."""
    with open(db, "r+b") as f:
        f.seek(offset)
        f.write(bytes((i * 37 + 11) % 251 for i in range(length)))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A database with one real finished execution (an embedded supervisor with real
    workers ran it), closed, so the file holds everything and no -wal is left."""
    folder = tmp_path_factory.mktemp("template")
    (folder / "fmtasks.py").write_text((HERE / "fmtasks.py").read_text())
    (folder / "good.json").write_text(json.dumps(GOOD))
    db = folder / "fm.db"
    result = api.run(folder / "good.json", {}, db=db, workers=1)
    assert result["status"] == "succeeded"
    assert not db.with_name("fm.db-wal").exists()
    return db, result["id"]


@pytest.fixture
def copy_db(template: tuple[Path, str], tmp_path: Path) -> Callable[[Path], Path]:
    def copy(folder: Path = tmp_path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "fm.db"
        shutil.copyfile(template[0], target)
        return target

    return copy


@pytest.fixture
def workflow(tmp_path: Path) -> Path:
    (tmp_path / "fmtasks.py").write_text((HERE / "fmtasks.py").read_text())
    path = tmp_path / "good.json"
    path.write_text(json.dumps(GOOD))
    return path


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a small tmpfs (root only; skipped where mounting is not allowed)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root")
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` up; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
    return filler


# --- files are private ----------------------------------------------------------------


def test_database_wal_and_shm_are_created_0600(tmp_path: Path) -> None:
    db = tmp_path / "new" / "fm.db"
    old = os.umask(0)  # whatever the umask: not 0666
    try:
        store = Store(db)
        store.save_workflow("w", {"name": "w", "nodes": []}, None, str(tmp_path))
        # While a connection is open, SQLite keeps -wal and -shm beside the file.
        files = [db, db.with_name("fm.db-wal"), db.with_name("fm.db-shm")]
        assert [mode(p) for p in files] == [0o600, 0o600, 0o600]
        store.close()
    finally:
        os.umask(old)


def test_fm_submit_creates_a_private_database(workflow: Path, tmp_path: Path) -> None:
    db = tmp_path / "data" / "fm.db"
    res = CliRunner().invoke(cli, ["--db", str(db), "submit", str(workflow)])
    assert res.exit_code == 0, res.output
    assert mode(db) == 0o600


def test_an_existing_file_keeps_its_mode(copy_db: Callable[..., Path]) -> None:
    db = copy_db()
    db.chmod(0o640)
    Store(db).close()
    assert mode(db) == 0o640


# --- a parent path that is a file, a directory as --db --------------------------------


@pytest.mark.parametrize("below", ["fm.db", "sub/fm.db"])
@pytest.mark.parametrize("command", ["submit", "ls"])
def test_parent_path_is_a_file(
    workflow: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], below: str, command: str
) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a directory\n")
    db = blocker / below
    args = ["--db", str(db), command] + ([str(workflow)] if command == "submit" else [])
    code, _, err = fm_main(args, capsys)
    assert code == 3
    line = one_line(err)
    assert str(db) in line and f"{blocker} is a file, not a directory" in line, line
    assert "pass --db" in line
    assert blocker.read_text() == "a file, not a directory\n"


def test_db_path_is_a_directory(
    workflow: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = fm_main(["--db", str(tmp_path), "submit", str(workflow)], capsys)
    assert code == 3
    assert "it is a directory — pass --db with a file path" in one_line(err)


# --- disk full ------------------------------------------------------------------------


def test_disk_full_with_max_page_count(copy_db: Callable[..., Path], template: Any) -> None:
    """SQLITE_FULL for real: the writing connection may not grow the file."""
    db = copy_db()
    store = Store(db)
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count={pages}")
    big = {"name": "big", "nodes": [], "description": "x" * 200_000}
    with pytest.raises(sqlite3.OperationalError) as info:
        store.save_workflow("big", big, None, "/tmp")
    problem = storage_error(info.value, db, "write")
    assert problem.condition == "disk_full"
    assert str(problem) == (
        f"cannot write {db}: disk full — free space and retry; nothing committed was lost"
    )
    assert problem.exit_code == 3
    # The failed transaction was ended: with room again, the same connection writes.
    assert not store.conn.in_transaction
    store.conn.execute(f"PRAGMA max_page_count={pages * 100}")
    store.save_workflow("big", big, None, "/tmp")
    assert store.get_execution(template[1])["status"] == "succeeded"
    store.close()


@pytest.mark.parametrize("holder", [False, True], ids=["fresh", "wal-held-open"])
def test_disk_full_on_a_full_file_system(
    tmpfs: Callable[[str], Path],
    workflow: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    holder: bool,
) -> None:
    """A real full disk: ``fm submit`` exits 3 with the disk-full line; what was
    committed is still there once space is freed. ``fresh``: SQLite cannot even grow
    the -shm (an I/O error to SQLite); ``wal-held-open``: another connection keeps the
    -wal/-shm, and the write fails at COMMIT with SQLITE_FULL."""
    mnt = tmpfs("1m")
    db = mnt / "fm.db"
    first = api.submit(workflow, {}, db=db)  # closed: no -wal/-shm left
    other = sqlite3.connect(db, isolation_level=None) if holder else None
    if other is not None:
        other.execute("SELECT count(*) FROM executions").fetchone()
    filler = fill(mnt)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"blob": "x" * 200_000}))
    code, _, err = fm_main(
        ["--db", str(db), "submit", str(workflow), "--input-file", str(big)], capsys
    )
    assert code == 3
    assert one_line(err) == (
        f"error: cannot write {db}: disk full — free space and retry; nothing committed was lost"
    )
    # Reading still works on the full disk.
    code, out, err = fm_main(["--db", str(db), "ls", "--json"], capsys)
    assert code == 0, err
    assert [r["id"] for r in json.loads(out)] == [first]
    if other is not None:
        other.close()
    filler.unlink()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT id FROM executions").fetchall() == [(first,)]
    conn.close()
    code, _, err = fm_main(["--db", str(db), "submit", str(workflow)], capsys)
    assert code == 0, err


# --- a read-only mount ----------------------------------------------------------------


def test_read_only_mount(
    tmpfs: Callable[[str], Path],
    copy_db: Callable[..., Path],
    template: Any,
    workflow: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mnt = tmpfs("4m")
    db = copy_db(mnt)
    res = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot remount read-only: {res.stderr.strip()}")
    before = digest(mnt)
    code, out, err = fm_main(["--db", str(db), "show", template[1], "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["output"] == {"a": 3}
    code, _, err = fm_main(["--db", str(db), "submit", str(workflow)], capsys)
    assert code == 3
    line = one_line(err)
    assert f"cannot open {db}: its file system is mounted read-only" in line, line
    assert line.endswith("nothing committed was lost")
    code, _, err = fm_main(["--db", str(db), "daemon", "--workers", "1"], capsys)
    assert code == 3
    assert f"cannot create the lock file {db}.lock: its file system is mounted read-only" in (
        one_line(err)
    )
    assert digest(mnt) == before


# --- corrupt files --------------------------------------------------------------------


def test_submit_refuses_a_file_with_a_spoiled_header(
    copy_db: Callable[..., Path], workflow: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = copy_db()
    spoil(db, 0, 100)
    before = digest(db.parent)
    code, out, err = fm_main(["--db", str(db), "submit", str(workflow)], capsys)
    assert code == 3 and out == ""
    line = one_line(err)
    assert str(db) in line and "corrupt" in line and "move it aside" in line, line
    assert digest(db.parent) == before
    code, out, err = fm_main(["--db", str(db), "ls"], capsys)
    assert code == 3
    assert "corrupt" in one_line(err)
    assert digest(db.parent) == before


def test_submit_refuses_a_truncated_file(
    copy_db: Callable[..., Path], workflow: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = copy_db()
    size = db.stat().st_size
    os.truncate(db, size - 3 * 4096)
    before = digest(db.parent)
    code, _, err = fm_main(["--db", str(db), "run", str(workflow)], capsys)
    assert code == 3
    assert "corrupt" in one_line(err)
    assert digest(db.parent) == before


def test_submit_refuses_a_spoiled_page_found_by_quick_check(
    copy_db: Callable[..., Path],
    template: Any,
    workflow: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Damage in a table fm submit never touches (node_runs) is still found: a small
    file gets the whole PRAGMA quick_check. A read command that reaches the damaged
    page says so in one line too (the error is raised by a query, caught by main())."""
    db = copy_db()
    assert db.stat().st_size <= FULL_CHECK_MAX_BYTES
    offset, size = page_of(db, "node_runs")
    spoil(db, offset, size // 2)
    before = digest(db.parent)
    code, _, err = fm_main(["--db", str(db), "submit", str(workflow)], capsys)
    assert code == 3
    line = one_line(err)
    assert f"cannot write {db}: the file is corrupt (" in line, line
    assert digest(db.parent) == before
    # Below, the readers leave an empty fm.db-wal and fm.db-shm in this writable
    # directory (a read-only connection may not delete them); fm.db stays as it was.
    before = digest(db.parent)["fm.db"]
    code, out, err = fm_main(["--db", str(db), "ls"], capsys)  # ls reads no node_runs
    assert code == 0 and template[1] in out
    code, _, err = fm_main(["--db", str(db), "show", template[1]], capsys)
    assert code == 3
    assert f"cannot read {db}: the file is corrupt" in one_line(err)
    code, _, err = fm_main(["--db", str(db), "--debug", "show", template[1]], capsys)
    assert code == 3 and "Traceback" in err
    assert digest(db.parent)["fm.db"] == before


def test_big_file_partial_check_refuses_a_spoiled_executions_page(
    copy_db: Callable[..., Path], workflow: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file over FULL_CHECK_MAX_BYTES gets the partial check, which covers the
    tables fm submit writes."""
    db = copy_db()
    store = Store(db)
    with store.atomic() as c:
        c.executemany(
            "INSERT INTO logs(execution_id, path, attempt, ts, stream, line) "
            "VALUES('e', 'p', 1, 0, 'stdout', ?)",
            [("x" * 1000,)] * (FULL_CHECK_MAX_BYTES // 1000 + 500),
        )
    store.close()
    assert db.stat().st_size > FULL_CHECK_MAX_BYTES
    code, _, err = fm_main(["--db", str(db), "submit", str(workflow)], capsys)
    assert code == 0, err  # healthy: accepted
    Store(db).close()  # fold the WAL back into the file
    offset, size = page_of(db, "executions")
    spoil(db, offset, size // 2)
    before = digest(db.parent)
    code, _, err = fm_main(["--db", str(db), "submit", str(workflow)], capsys)
    assert code == 3
    assert f"cannot write {db}: the file is corrupt" in one_line(err)
    assert digest(db.parent) == before


# --- busy beyond the timeout ----------------------------------------------------------


def test_locked_beyond_the_busy_timeout(copy_db: Callable[..., Path]) -> None:
    db = copy_db()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError) as info:
            waiter.execute("BEGIN IMMEDIATE")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        waiter.close()
    problem = storage_error(info.value, db, "write")
    assert problem.condition == "busy"
    assert str(problem).startswith(f"cannot write {db}: another process kept the database locked")


# --- schema versions: read commands do not migrate ------------------------------------


@pytest.mark.parametrize(("version", "says"), [("99", "newer"), ("0", "older")])
def test_read_commands_do_not_migrate(
    copy_db: Callable[..., Path], capsys: pytest.CaptureFixture[str], version: str, says: str
) -> None:
    db = copy_db()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (version,))
    conn.close()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    code, _, err = fm_main(["--db", str(db), "ls"], capsys)
    assert code == 3
    line = one_line(err)
    assert f"{db} has schema version {version}, {says} than this fm_local" in line
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_read_only_store_refuses_to_write(copy_db: Callable[..., Path]) -> None:
    db = copy_db()
    store = Store(db, readonly=True)
    with pytest.raises(StorageProblem, match="open read-only"):
        store.add_signal("x", "pause")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


# --- a read-only copy, read by another user -------------------------------------------

# Run as another user, the interpreter must be loaded first: it lives under /root
# (0700) here, so a preexec_fn that switches user before exec could not start it.
AS_OTHER_USER = """
import os, sys, json, time
import sqlite3, difflib, heapq
import importlib, pkgutil
import fm_local, tui
# Every module of both packages, and what fm imports only when used, imported (and
# pydantic's validators built) now, while the files are still readable (a checkout
# under a 0700 directory, such as mktemp's, is not readable by the other user).
for pkg in (fm_local, tui):
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
import fm_local.model, tui.app, tui.data
import jsonschema, jsonschema.validators, logging, secrets, select, socket, traceback, uuid
import importlib.metadata
fm_local.model.complete_models()
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(int(sys.argv[1]))
    os.setuid(int(sys.argv[1]))
what, args = sys.argv[2], sys.argv[3:]
if what == "fm":
    sys.exit(fm_local.cli.main(args))
if what == "sqlite3":
    conn = sqlite3.connect("file:" + args[0] + "?immutable=1", uri=True)
    print(json.dumps(conn.execute("SELECT id, status FROM executions").fetchall()))
if what == "tui":
    from pathlib import Path
    tui.app.check_database(Path(args[0]))
    with tui.data.Reader(Path(args[0])) as reader:
        snap = reader.executions(None, time.time())
    print(json.dumps([[r.id, r.status] for r in snap.rows]))
"""


def as_other_user(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOME="/", FM_DB="")
    return subprocess.run(
        [sys.executable, "-c", AS_OTHER_USER, str(NOBODY), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
    )


@pytest.fixture
def read_only_copy(template: tuple[Path, str]) -> Iterator[Path]:
    """A copy in a directory the reader may not write: as root the reader is another
    user (chmod does not stop root); otherwise the modes do it."""
    folder = Path(tempfile.mkdtemp(prefix="fm-ro-copy-"))
    try:
        db = folder / "fm.db"
        shutil.copyfile(template[0], db)
        lock = folder / "fm.db.lock"
        lock.write_text('{"pid": 1}')
        lock.chmod(0o400)  # another user's lock file: the reader may not open it
        (folder / "fmtasks.py").write_text((HERE / "fmtasks.py").read_text())
        (folder / "good.json").write_text(json.dumps(GOOD))
        db.chmod(0o444)
        folder.chmod(0o555)
        yield db
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def test_read_only_copy_is_readable_and_unchanged(
    read_only_copy: Path, template: tuple[Path, str]
) -> None:
    db, eid = read_only_copy, template[1]
    before = digest(db.parent)
    res = as_other_user("fm", "--db", str(db), "ls", "--json")
    assert res.returncode == 0, res.stderr
    assert [r["id"] for r in json.loads(res.stdout)] == [eid]
    res = as_other_user("fm", "--db", str(db), "show", eid, "--json")
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    assert shown["status"] == "succeeded" and shown["output"] == {"a": 3}
    assert [n["path"] for n in shown["nodes"]] == ["a"]
    for args in (["output", eid], ["wait", eid], ["logs", eid], ["queue"], ["timeline", eid]):
        res = as_other_user("fm", "--db", str(db), *args)
        assert res.returncode == 0, (args, res.stderr)
    res = as_other_user("sqlite3", str(db))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [[eid, "succeeded"]]
    res = as_other_user("tui", str(db))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [[eid, "succeeded"]]
    assert digest(db.parent) == before
    assert sorted(p.name for p in db.parent.iterdir()) == [
        "fm.db",
        "fm.db.lock",
        "fmtasks.py",
        "good.json",
    ]


def test_read_only_copy_refuses_writers_in_one_line(read_only_copy: Path) -> None:
    db = read_only_copy
    before = digest(db.parent)
    res = as_other_user("fm", "--db", str(db), "submit", str(db.parent / "good.json"))
    assert res.returncode == 3, res.stderr
    line = one_line(res.stderr)
    assert f"cannot open {db}: permission denied" in line, line
    res = as_other_user("fm", "--db", str(db), "daemon", "--workers", "1")
    assert res.returncode == 3, res.stderr
    assert f"cannot create the lock file {db}.lock: permission denied" in one_line(res.stderr)
    assert digest(db.parent) == before


def test_read_only_copy_with_commits_still_in_its_wal(tmp_path: Path, workflow: Path) -> None:
    """A copy taken with ``cp`` while a connection was open: its -wal holds commits.
    With the -shm beside it, a reader sees them; without, SQLite cannot read the -wal
    in a directory it may not write, and fm says so instead of showing stale data."""
    src = tmp_path / "live" / "fm.db"
    res = CliRunner().invoke(cli, ["--db", str(src), "submit", str(workflow)])
    assert res.exit_code == 0, res.output
    live = sqlite3.connect(src, isolation_level=None)
    live.execute("PRAGMA wal_autocheckpoint=0")
    live.execute("UPDATE executions SET priority=7")
    assert src.with_name("fm.db-wal").stat().st_size > 0
    folder = Path(tempfile.mkdtemp(prefix="fm-ro-wal-"))
    try:
        for name in ("fm.db", "fm.db-wal", "fm.db-shm"):
            shutil.copyfile(src.with_name(name), folder / name)
            (folder / name).chmod(0o444)
        live.close()
        folder.chmod(0o555)
        before = digest(folder)
        res = as_other_user("fm", "--db", str(folder / "fm.db"), "ls", "--json")
        assert res.returncode == 0, res.stderr
        assert [r["priority"] for r in json.loads(res.stdout)] == [7]
        assert digest(folder) == before
        folder.chmod(0o755)
        (folder / "fm.db-shm").unlink()
        folder.chmod(0o555)
        before = digest(folder)
        res = as_other_user("fm", "--db", str(folder / "fm.db"), "ls")
        assert res.returncode == 3
        line = one_line(res.stderr)
        assert "commits wait in fm.db-wal" in line and "copy fm.db and fm.db-wal" in line, line
        assert digest(folder) == before
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


# --- the lock and the read-only opener, in-process -------------------------------------


def test_is_served_does_not_fail_on_an_unopenable_lock_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert is_served(blocker / "fm.db") is None  # the lock's parent is a file
    assert is_served(tmp_path / "missing" / "fm.db") is None


def test_connect_readonly_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StorageProblem) as info:
        connect_readonly(tmp_path / "nope.db")
    assert info.value.condition == "missing"
    assert str(info.value) == (
        f"no database at {tmp_path / 'nope.db'}: run a workflow first, or pass --db PATH"
    )


def test_storage_error_of_real_os_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "f"
    blocker.write_text("")
    with pytest.raises(OSError) as info:
        (blocker / "sub").mkdir(parents=True)
    problem = storage_error(info.value, blocker / "sub" / "fm.db", "create")
    assert problem.condition == "not_a_directory"
    with pytest.raises(OSError) as info:
        open(tmp_path, "rb")
    assert storage_error(info.value, tmp_path, "read").condition == "is_a_directory"


@pytest.mark.crash
def test_the_daemon_stops_with_one_line_on_a_full_disk_and_loses_nothing(
    tmpfs: Callable[[str], Path], tmp_path: Path
) -> None:
    """The daemon's own group commit meets a full disk: it stops (exit 3) with the
    disk-full line, not "internal error"; after the space is freed a new daemon
    finishes the execution, and everything committed before is still there."""
    from conftest import Daemon

    mnt = tmpfs("3m")
    db = mnt / "fm.db"
    (tmp_path / "hostiletasks.py").write_text((HERE / "hostiletasks.py").read_text())
    doc = {
        "name": "chatty",
        "nodes": [
            {
                "id": "l",
                "type": "loop",
                "loopType": "count",
                "count": 3000,
                "parallel": True,
                "maxConcurrency": 4,
                "body": {
                    "nodes": [{"id": "p", "type": "python", "call": "hostiletasks:chatty"}],
                    "edges": [],
                },
            }
        ],
    }
    path = tmp_path / "chatty.json"
    path.write_text(json.dumps(doc))
    eid = api.submit(path, {}, db=db)
    d = Daemon(db, workers=2)
    d.log_path = tmp_path / "daemon.log"  # not on the full disk
    d.start()
    assert d.proc is not None
    code = d.proc.wait(120)
    assert code == 3
    lines = [ln for ln in d.log_path.read_text().splitlines() if ln.strip()]
    assert lines[-1] == (
        f"error: cannot write {db}: disk full — free space and retry; nothing committed was lost"
    ), lines[-5:]
    assert not any("Traceback" in ln for ln in lines)
    conn = sqlite3.connect(db)
    done_before = conn.execute(
        "SELECT count(*) FROM node_runs WHERE execution_id=? AND node_type='item' "
        "AND status='succeeded'",
        (eid,),
    ).fetchone()[0]
    conn.close()
    assert done_before > 0
    res = subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], capture_output=True)
    assert res.returncode == 0, res.stderr
    d2 = Daemon(db, workers=2)
    d2.log_path = tmp_path / "daemon2.log"
    d2.start()
    try:
        assert api.wait(eid, db=db, timeout=300)["status"] == "succeeded"
    finally:
        d2.stop()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    items = conn.execute(
        "SELECT count(*) FROM node_runs WHERE execution_id=? AND node_type='item' "
        "AND status='succeeded'",
        (eid,),
    ).fetchone()[0]
    conn.close()
    assert items == 3000
