"""Shared fixtures: a temporary database, workflow files beside the test tasks
module, and helpers that run the real supervisor with real worker processes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent


def assert_same_model(fast: Any, slow: Any, at: str = "workflow") -> None:
    """``fast`` equals ``slow`` down to each value's type and each model's set
    fields (what fm_local.construct promises about pydantic's result)."""
    from pydantic import BaseModel

    assert type(fast) is type(slow), f"{at}: {type(fast).__name__} != {type(slow).__name__}"
    if isinstance(slow, BaseModel):
        assert fast.model_fields_set == slow.model_fields_set, f"{at}: set fields differ"
        for name in type(slow).model_fields:
            assert_same_model(getattr(fast, name), getattr(slow, name), f"{at}.{name}")
    elif isinstance(slow, list):
        assert len(fast) == len(slow), f"{at}: lengths differ"
        for i, (a, b) in enumerate(zip(fast, slow, strict=True)):
            assert_same_model(a, b, f"{at}[{i}]")
    elif isinstance(slow, dict):
        assert list(fast) == list(slow), f"{at}: keys differ"
        for k in slow:
            assert_same_model(fast[k], slow[k], f"{at}.{k}")
    else:
        assert fast == slow, f"{at}: {fast!r} != {slow!r}"


@pytest.fixture(autouse=True)
def _construct_agrees_with_pydantic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every document a test validates in this process and fm_local.construct
    builds without pydantic is validated by pydantic as well: same objects."""
    from fm_local import validate
    from fm_local.model import Workflow

    fast_path = validate.construct

    def checked(raw: Any) -> Any:
        fast = fast_path(raw)
        if fast is not None:
            assert_same_model(fast, Workflow.model_validate(raw))
        return fast

    monkeypatch.setattr(validate, "construct", checked)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "fm.db"


@pytest.fixture
def wf(tmp_path: Path) -> Callable[..., Path]:
    """Write a workflow document into tmp_path (beside a copy of fmtasks.py)."""
    (tmp_path / "fmtasks.py").write_text((HERE / "fmtasks.py").read_text())
    counter = iter(range(1000))

    def write(doc: dict[str, Any], name: str | None = None) -> Path:
        p = tmp_path / (name or f"wf{next(counter)}.json")
        p.write_text(json.dumps(doc))
        return p

    return write


@pytest.fixture
def hwf(wf: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    """Like ``wf``, with hostiletasks.py (misbehaving node code) beside the workflow."""
    (tmp_path / "hostiletasks.py").write_text((HERE / "hostiletasks.py").read_text())
    return wf


def query(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows of ``sql`` as dicts, read with a fresh connection (committed state)."""
    import sqlite3

    con = sqlite3.connect(str(db), timeout=30)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, args).fetchall()]
    finally:
        con.close()


def exec_status(db: Path, eid: str) -> str | None:
    """An execution's status as committed (None: no such execution)."""
    rows = query(db, "SELECT status FROM executions WHERE id=?", (eid,))
    return rows[0]["status"] if rows else None


def python_node(
    module: str, nid: str, fn: str, args: dict[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    """A python node calling ``module:fn`` (test files bind their task module:
    ``py = partial(python_node, "fmtasks")``)."""
    node: dict[str, Any] = {"id": nid, "type": "python", "call": f"{module}:{fn}"}
    if args is not None:
        node["args"] = args
    node.update(kw)
    return node


def holds(cond: Callable[[], Any], seconds: float, what: str) -> None:
    """``cond()`` stays true for ``seconds`` (polled; fails at the first false)."""
    deadline = time.monotonic() + seconds
    while True:
        assert cond(), f"violated: {what}"
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)


def python_fresh(db: Path, script: str, *args: str) -> tuple[list[str], str, str]:
    """Run ``python -c script args...`` in a fresh interpreter with ``FM_DB=db``:
    (the words of the last line it wrote to stderr, the stderr lines before it,
    stdout) — for tests of what a fresh ``fm`` process imports or decides."""
    env = dict(os.environ, FM_DB=str(db), PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    *lines, last = res.stderr.strip().splitlines()
    return last.split(), "\n".join(lines), res.stdout.strip()


def serve_until_done(sup: Any, ids: set[str]) -> None:
    """Open a supervisor object, serve until every execution of ``ids`` finished,
    close it."""
    sup.open()
    try:
        sup.serve(until=lambda: ids <= sup.finished)
    finally:
        sup.close()


def run_wf(path: Path, db: Path, input: Any = None, workers: int = 2) -> dict[str, Any]:
    from fm_local import api

    return api.run(path, input, db=db, workers=workers)


def show(db: Path, eid: str) -> dict[str, Any]:
    """The ``fm show --json`` object, through the CLI code."""
    out = fm(db, "show", eid, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def show_cli(db: Path, eid: str) -> dict[str, Any]:
    """Like :func:`show`, in this process (:func:`fm_cli`)."""
    out = fm_cli(db, "show", eid, "--json")
    assert out.exit_code == 0, out.stderr
    return json.loads(out.stdout)


def fm(
    db: Path, *args: str, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``fm`` command in a subprocess."""
    env = dict(os.environ, FM_DB=str(db), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "fm_local", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        input=input,
    )


class CliResult:
    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.returncode = self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


def fm_cli(db: Path, *args: str, input: str | None = None) -> CliResult:
    """Run ``fm`` in this process through ``fm_local.cli.main`` (the real error
    mapping and exit codes) with click's CliRunner isolation: like :func:`fm`
    without the cost of a subprocess."""
    from click.testing import CliRunner

    from fm_local.cli import main

    runner = CliRunner()
    with (
        process_state_kept(),
        runner.isolation(input=input, env={"FM_DB": str(db)}) as streams,
    ):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        # What was written without click.echo (print, traceback.print_exc) may still
        # sit in the text wrappers' buffers (CliRunner.invoke flushes too).
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = streams[0].getvalue(), streams[1].getvalue()
    return CliResult(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37


def _subreaper(set_to: int | None = None) -> int | None:
    """This process's child-subreaper flag (Linux), or set it; None where unknown."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if set_to is not None:
            libc.prctl(_PR_SET_CHILD_SUBREAPER, set_to, 0, 0, 0)
            return set_to
        flag = ctypes.c_int(0)
        if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) != 0:
            return None
        return flag.value
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """Give back the process-wide state an in-process ``fm`` command changes: the
    SIGINT/SIGTERM handlers (the embedded supervisor of ``fm run`` installs its own),
    the ``fm_local`` logger (``fm run`` adds a file handler beside its database), the
    child-subreaper flag (``fm run``'s worker pool sets it: orphans of later tests
    would become zombies of pytest) and the working directory."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    logger = logging.getLogger("fm_local")
    log_handlers, log_level = list(logger.handlers), logger.level
    subreaper = _subreaper()
    cwd = os.getcwd()
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for h in [h for h in logger.handlers if h not in log_handlers]:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(log_level)
        if subreaper == 0 and _subreaper() != 0:
            _subreaper(0)
        os.chdir(cwd)


@pytest.fixture
def restore_process_state() -> Iterator[None]:
    """For a test that calls ``fm_local.cli.main`` itself: see :func:`process_state_kept`
    (:func:`fm_cli` keeps it by itself)."""
    with process_state_kept():
        yield


class Daemon:
    """``fm daemon`` in a subprocess, killed (or stopped) at teardown."""

    def __init__(self, db: Path, workers: int = 2, extra: tuple[str, ...] = ()) -> None:
        self.db = db
        self.workers = workers
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = db.with_suffix(".daemon.log")

    def start(self) -> Daemon:
        env = dict(os.environ, FM_DB=str(self.db), PYTHONPATH=str(ROOT))
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fm_local",
                "daemon",
                "--workers",
                str(self.workers),
                *self.extra,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        from fm_local.lock import is_served

        wait_until(lambda: is_served(self.db) is not None, 20, "daemon did not start")
        return self

    def kill9(self) -> None:
        """SIGKILL the daemon; returns once it and its commit process (which dies
        with it, holding the lock file until then) are gone: the file is free."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        from fm_local.lock import is_served

        wait_until(lambda: is_served(self.db) is None, 10, "the killed daemon's lock to be free")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def daemon(db: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(workers: int = 2, extra: tuple[str, ...] = ()) -> Daemon:
        d = Daemon(db, workers, extra).start()
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def exited(proc: psutil.Process) -> bool:
    """The process has exited: gone, or a zombie waiting to be reaped. Checked in one
    call that tolerates the process ending between two questions."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(cond: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def read_marks(path: Path) -> list[dict[str, Any]]:
    """The JSON mark lines written so far (a line still being written is skipped)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def undo_version_7(con: Any) -> None:
    """Take a database file back to before schema version 7 (queue_counts, and the
    queue_depth view without it); the caller sets ``meta.schema_version``."""
    con.execute("DROP VIEW queue_depth")
    con.execute("DROP TABLE queue_counts")
    con.execute(
        "CREATE VIEW queue_depth AS SELECT status, priority, count(*) AS tasks FROM queue "
        "GROUP BY status, priority"
    )


def undo_version_5(con: Any) -> None:
    """Take a database file back to before schema version 5 (fm retry's columns;
    and before 7); the caller sets ``meta.schema_version``."""
    undo_version_7(con)
    con.execute("DROP INDEX executions_retry_of")
    con.execute("ALTER TABLE executions DROP COLUMN retry_of")
    con.execute("ALTER TABLE executions DROP COLUMN retry")
    con.execute("ALTER TABLE node_runs DROP COLUMN reused_from")


# --- xdist: the longest tests start first ---------------------------------------------------

# Seconds a test took in a `make test` run (2 workers, 2 cores, 2026-12-04), for the tests
# of 5 s and more: they start first, one share per xdist worker, so that none is left
# running alone at the end while the other workers are idle. A rough guide, not a
# contract: a test not named here runs in collection order after them. A module whose
# tests share an expensive module-scoped fixture is one block (the fixture is built once
# per worker that runs the block), named by its file.
SLOW_FIRST: dict[str, float] = {
    "tests/test_tui_live.py": 95.0,
    "tests/test_dask.py::test_the_examples_give_the_same_results_on_both_executors": 40.0,
    "tests/test_examples.py::test_batch_processing": 12.3,
    "tests/test_isolation.py::test_stopping_the_daemon_kills_what_running_nodes_started[sigterm]": 12.2,
    "tests/test_examples.py::test_parallel_api_calls[1]": 11.4,
    "tests/test_signals.py::test_timers_falling_due_while_paused_start_nothing_until_resume": 11.3,
    "tests/test_examples.py::test_parallel_api_calls[None]": 11.0,
    "tests/test_dask.py::test_dask_executor_usage_errors": 10.3,
    "tests/test_storage_errors.py::test_read_only_copy_is_readable_and_unchanged": 10.1,
    "tests/test_crash.py::test_restart_after_kill9_dispatches_again": 10.1,
    "tests/test_crash.py::test_daemon_killed_repeatedly_finished_nodes_never_rerun": 9.4,
    "tests/test_httpapi_hostile.py::test_idle_and_slow_clients_do_not_block_others_and_are_cut_off": 9.3,
    "tests/test_prune.py::test_daemon_retain_prunes_in_the_background": 8.7,
    "tests/test_crash_loops.py::test_loop_limits_hold_after_restart": 8.2,
    "tests/test_retry.py::test_retry_node_reruns_that_node_and_downstream": 8.0,
    "tests/test_crash_loops.py::test_batch_delay_holds_across_restart[3000]": 8.0,
    "tests/test_dask.py::test_two_daemons_share_a_cluster_without_touching_each_others_nodes": 7.7,
    "tests/test_observability.py::test_a_dead_collector_does_not_stop_the_daemon": 7.7,
    "tests/test_queue.py::test_long_loop_example_pause_resume_cancel": 7.6,
    "tests/test_dask.py::test_a_timeout_counts_from_the_start_on_the_dask_worker": 7.4,
    "tests/test_queue.py::test_dead_letter_ls_show_replay_purge": 6.8,
    "tests/test_signals.py::test_a_pause_is_applied_exactly_once_across_a_daemon_kill[at_once]": 6.5,
    "tests/test_dask.py::test_a_scheduler_restart_recovers_the_nodes_in_flight": 6.5,
    "tests/test_crash_loops.py::test_parallel_loop_survives_repeated_kill9": 6.2,
    "tests/test_tui.py::test_enter_opens_the_detail_and_keys_switch_screens": 6.2,
    "tests/test_queue.py::test_dead_letter_replay_into_its_still_running_execution": 6.1,
    "tests/test_queue.py::test_two_workflows_share_the_workers_fairly": 5.9,
    "tests/test_retry.py::test_kill9_of_the_daemon_mid_retry": 5.7,
    "tests/test_io_lane.py::test_kill9_of_the_daemon_mid_io_loop_loses_nothing": 5.7,
    "tests/test_io_lane.py::test_a_thread_that_cannot_be_stopped_recycles_the_worker": 5.7,
    "tests/test_crash.py::test_supervisor_killed_mid_node_counts_as_a_recovery": 5.7,
    "tests/test_queue.py::test_fm_queue_reports_tasks_executions_and_dead_letters": 5.7,
    "tests/test_queue.py::test_policy_orders_executions_of_one_workflow[lifo]": 5.7,
    "tests/test_daemon.py::test_concurrent_cli_writers_against_busy_daemon": 5.7,
    "tests/test_queue.py::test_submit_beyond_max_size_fails_or_waits_for_room": 5.6,
    "tests/test_signals.py::test_a_pause_is_applied_exactly_once_across_a_daemon_kill[after_applied]": 5.6,
    "tests/test_queue.py::test_policy_orders_executions_of_one_workflow[fifo]": 5.6,
    "tests/test_crash.py::test_supervisor_crash_closes_the_interrupted_attempt_row": 5.5,
    "tests/test_storage_errors.py::test_the_daemon_stops_with_one_line_on_a_full_disk_and_loses_nothing": 5.4,
    "tests/test_crash_loops.py::test_nested_loops_survive_kill9": 5.3,
    "tests/test_dask.py::test_kill9_of_the_daemon_mid_loop_on_dask": 5.3,
    "tests/test_dask.py::test_a_node_stopped_while_its_process_starts_never_runs": 5.3,
    "tests/test_signals.py::test_paused_state_survives_a_daemon_restart[kill9]": 5.2,
    "tests/test_queue.py::test_queue_timeout_is_retried": 5.1,
}


def _module_scoped(item: pytest.Item) -> bool:
    """The test uses a fixture of module (or class) scope: moved alone, it would have
    that fixture built once more on its worker."""
    info = getattr(item, "_fixtureinfo", None)
    for defs in getattr(info, "name2fixturedefs", {}).values():
        if defs and getattr(defs[-1], "scope", "function") in ("module", "class"):
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests of SLOW_FIRST first. Under xdist's worksteal (make test) each worker
    starts with a contiguous slice of the collection and others steal from its end:
    the slow tests are spread over the slices (the longest first, each to the slice
    with the least slow seconds so far), each slice beginning with its slow tests,
    then the other tests in collection order. Only the order changes: every test runs,
    each with its own fixtures."""
    blocks: dict[str, list[pytest.Item]] = {}
    rest: list[pytest.Item] = []
    for item in items:
        nodeid = item.nodeid
        module = nodeid.split("::", 1)[0]
        if module in SLOW_FIRST:
            blocks.setdefault(module, []).append(item)
        elif nodeid in SLOW_FIRST and not _module_scoped(item):
            blocks[nodeid] = [item]
        else:
            rest.append(item)
    if not blocks:
        return
    slow = sorted(blocks, key=lambda key: -SLOW_FIRST[key])
    workerinput = getattr(config, "workerinput", None)
    n = int(workerinput["workercount"]) if workerinput else 1
    # The slice sizes worksteal sends first: len // n, then what is left // (n - 1), ...
    sizes, left = [], len(items)
    for i in range(n):
        sizes.append(left // (n - i))
        left -= sizes[-1]
    load = [0.0] * n
    count = [0] * n
    chosen: list[list[pytest.Item]] = [[] for _ in range(n)]
    for key in slow:
        fits = [i for i in range(n) if count[i] + len(blocks[key]) <= sizes[i]] or list(range(n))
        i = min(fits, key=lambda i: load[i])
        chosen[i].extend(blocks[key])
        load[i] += SLOW_FIRST[key]
        count[i] += len(blocks[key])
    ordered: list[pytest.Item] = []
    it = iter(rest)
    for i in range(n):
        ordered.extend(chosen[i])
        ordered.extend(item for _, item in zip(range(sizes[i] - count[i]), it, strict=False))
    ordered.extend(it)
    items[:] = ordered
