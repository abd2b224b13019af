"""The ``fm`` command line: a thin click layer over the library (SPEC §10).

Every error a user can meet prints one line and exits with the spec's code:
0 success, 1 the execution failed/was cancelled/timed out, 2 bad usage or an
invalid workflow, 3 engine or storage error. Tracebacks only with ``--debug``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from fm_local import __version__, errors
from fm_local.errors import (
    EXIT_FAILED,
    EXIT_OK,
    AlreadyServed,
    FmError,
    UsageError,
    WorkflowInvalid,
)

if TYPE_CHECKING:
    import logging

# Every command starts fast (<= 0.3 s, benchmarks/run.py): heavy modules (logging,
# socket, pydantic, jsonschema, the supervisor) are imported where they are used.

TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")
ACTIVE = ("queued", "running", "paused")
NODE_STATUSES = (
    "pending",
    "queued",
    "running",
    "retry_wait",
    "succeeded",
    "failed",
    "cancelled",
    "skipped",
    "timed_out",
)
NO_SUPERVISOR = "(no supervisor — start `fm daemon`)"
SHOW_LIMIT = 50  # node instances fm show lists before it summarizes (a screen)
TIMELINE_LIMIT = 200  # bars fm timeline draws before it summarizes


class Ctx:
    current: Ctx | None = None  # the invocation's context, for main()'s error lines

    def __init__(self, db: str | None, as_json: bool, debug: bool) -> None:
        from fm_local.store import default_db_path

        self.db = Path(db) if db else default_db_path()
        self.json = as_json
        self.debug = debug
        self.readonly = False  # set by @read_only: the command opens the file read-only
        self._store: Any = None
        Ctx.current = self

    def store(self, *, create: bool = False, check: bool = False) -> Any:
        from fm_local.store import Store

        if self._store is None:
            self._store = Store(self.db, create=create, readonly=self.readonly, check=check)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


pass_ctx = click.make_pass_decorator(Ctx)


def read_only(f: Any) -> Any:
    """A command that only reads: it opens the database read-only (no journal-mode
    change, no migration), so it works on a read-only copy. Put it under @pass_ctx."""

    @functools.wraps(f)
    def wrapper(ctx: Ctx, *args: Any, **kwargs: Any) -> Any:
        ctx.readonly = True
        return f(ctx, *args, **kwargs)

    return wrapper


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _load_json_option(text: str | None, file: str | None, what: str) -> Any:
    if text is not None and file is not None:
        raise UsageError(f"give --{what} or --{what}-file, not both")
    if file is not None:
        try:
            text = Path(file).read_text()
        except OSError as exc:
            raise UsageError(f"--{what}-file {file}: {exc.strerror}") from None
    if text is None:
        return None
    from fm_local.jsonio import JsonProblem, strict_loads

    try:
        return strict_loads(text, root=what, what=f"--{what}")
    except JsonProblem as exc:
        raise UsageError(str(exc)) from None


def _execution(ctx: Ctx, ident: str) -> dict[str, Any]:
    row = ctx.store().find_execution(ident)
    if row is None:
        raise UsageError(f"no execution '{ident}' in {ctx.db} (see: fm ls)")
    return row


def _prepare(ctx: Ctx, file: str, input_value: Any) -> Any:
    """Validate the workflow (or find it validated before: ``fm_local.prepare``) and
    its input; save the workflow. Returns a ``prepare.Prepared``."""
    from fm_local.prepare import check_input_served, prepare

    prepared = prepare(
        file,
        # a corrupt database is refused before anything is written to it
        lambda: ctx.store(create=True, check=True),
        known_only_if=ctx.db.exists(),
        db=ctx.db,
    )
    for w in prepared.warnings:
        click.echo(f"{file}: {w}", err=True)
    problems = check_input_served(ctx.db, prepared.raw.get("inputs"), input_value)
    if problems:
        raise WorkflowInvalid([f"{file}: {p}" for p in problems])
    return prepared


def _exit_for(status: str) -> int:
    return EXIT_OK if status == "succeeded" else EXIT_FAILED


def _wait_for(ctx: Ctx, eid: str, timeout: float | None = None) -> dict[str, Any]:
    from fm_local.api import wait_row
    from fm_local.lock import is_served

    store = ctx.store()
    row = store.get_execution(eid)
    if row is not None and row["status"] not in TERMINAL and not is_served(ctx.db):
        click.echo(
            f"note: no supervisor serves {ctx.db}; execution {eid} waits until one does "
            "(start one with: fm daemon)",
            err=True,
        )
    return wait_row(store, eid, timeout)


def _report(ctx: Ctx, row: dict[str, Any]) -> int:
    from fm_local.store import loads

    out = loads(row["output"])
    err = loads(row["error"])
    if ctx.json:
        _emit_json({"id": row["id"], "status": row["status"], "output": out, "error": err})
    else:
        if row["status"] == "succeeded":
            click.echo(json.dumps(out, indent=2))
        took = (row["finished_at"] or time.time()) - (row["started_at"] or row["created_at"])
        line = f"execution {row['id']} {row['status']} in {took:.2f}s"
        if err:
            line += f": {err.get('message')}"
        click.echo(line, err=True)
        if row["status"] == "failed":
            _echo_failed_traceback(ctx, row, err)
    return _exit_for(row["status"])


def _traceback_of(error: Any) -> str | None:
    """The python traceback an error object records (also inside the node error an
    execution's error wraps), or None."""
    for _ in range(4):
        if not isinstance(error, dict):
            return None
        details = error.get("details")
        if isinstance(details, dict) and isinstance(details.get("traceback"), str):
            return str(details["traceback"])
        error = details
    return None


def _echo_traceback(tb: str, indent: str = "    ", err: bool = False) -> None:
    for line in tb.rstrip("\n").splitlines():
        click.echo(indent + line, err=err)


def _echo_failed_traceback(ctx: Ctx, row: dict[str, Any], err: Any) -> None:
    """On stderr, the traceback of the node that failed the execution: the one its
    error wraps, else the first failed node under the node it names (a loop's item)."""
    from fm_local.store import loads

    tb = _traceback_of(err)
    if tb is None:
        where = err.get("nodePath") if isinstance(err, dict) else None
        store = ctx.store()
        found = store.failed_with_traceback(row["id"], where) or (
            store.failed_with_traceback(row["id"]) if where else []
        )
        if not found:
            return
        tb = _traceback_of(loads(found[0]["error"]))
        if tb is None:
            return
        click.echo(f"  {found[0]['path']}:", err=True)
    _echo_traceback(tb, err=True)


PLUGIN_GROUP = "fm_local.commands"  # entry points that add commands to fm (fm tui)


class FmGroup(click.Group):
    """The ``fm`` group: its own commands, and those other installed packages add
    through the ``fm_local.commands`` entry-point group (the ``tui`` package adds
    ``fm tui``: the engine never imports the UI). The entry points are read only
    when a name is not one of fm's own or the help lists every command."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(plugin_commands()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        own = super().get_command(ctx, cmd_name)
        if own is not None:
            return own
        target = plugin_commands().get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        try:
            import importlib

            command = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise FmError(
                f"fm {cmd_name} is not available: {exc} (it comes from {target}; "
                "reinstall it, e.g. pip install -e '.[dev]')"
            ) from None
        return command if isinstance(command, click.Command) else None


def plugin_commands() -> dict[str, str]:
    """name -> "module:attribute" of every ``fm_local.commands`` entry point of the
    distributions on ``sys.path``. Read from their ``entry_points.txt`` directly:
    ``importlib.metadata`` alone takes longer to import than fm takes to start."""
    import configparser

    found: dict[str, str] = {}
    for folder in sys.path:
        try:
            entries = [e for e in os.scandir(folder or ".") if e.name.endswith(".dist-info")]
        except OSError:
            continue
        for entry in entries:
            parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
            parser.optionxform = str  # type: ignore[assignment,method-assign]
            try:
                parser.read(os.path.join(entry.path, "entry_points.txt"), encoding="utf-8")
            except (configparser.Error, UnicodeDecodeError):
                continue
            if parser.has_section(PLUGIN_GROUP):
                for name, target in parser.items(PLUGIN_GROUP):
                    found.setdefault(name, target.strip())
    return found


@click.group(cls=FmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db", envvar="FM_DB", help="Database file (env FM_DB; default ~/.local/share/fm_local/fm.db)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(__version__, prog_name="fm")
@click.pass_context
def cli(cctx: click.Context, db: str | None, as_json: bool, debug: bool) -> None:
    """fm_local: durable, parallel workflows on one machine."""
    cctx.obj = Ctx(db, as_json, debug)
    cctx.call_on_close(cctx.obj.close)


def _log_to(handler: logging.Handler, fmt: str) -> None:
    """Send the engine's log (errors it contained, with their tracebacks) here."""
    import logging

    handler.setFormatter(logging.Formatter(fmt))
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("fm_local")
    for old in [h for h in logger.handlers if getattr(h, "fm_cli", False)]:
        logger.removeHandler(old)  # one per process, also when main() runs again
        old.close()
    handler.fm_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)


def max_worker_memory_option(f: Any) -> Any:
    return click.option(
        "--max-worker-memory",
        type=click.IntRange(0, None),
        default=None,
        envvar="FM_WORKER_MAX_RSS_MB",
        metavar="MB",
        help="Recycle a worker between tasks once its memory (RSS) passes this many MB "
        "(default 2048; 0: never; env FM_WORKER_MAX_RSS_MB).",
    )(f)


def json_option(f: Any) -> Any:
    """Accept --json after the subcommand too (``fm show ID --json``)."""

    def set_json(cctx: click.Context, param: Any, value: bool) -> None:
        obj = cctx.find_object(Ctx)
        if value and obj is not None:
            obj.json = True

    return click.option(
        "--json",
        "as_json_local",
        is_flag=True,
        expose_value=False,
        callback=set_json,
        help="Machine-readable JSON output.",
    )(f)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@pass_ctx
def validate(ctx: Ctx, file: str) -> None:
    """Check a workflow file; one line per problem (exit 2 if any). Python call
    targets are imported in a separate process to check they exist."""
    from fm_local.calls import check_calls
    from fm_local.validate import Problem, load_workflow

    loaded = load_workflow(file)
    call_errors, call_warnings = check_calls(loaded.raw, loaded.folder)
    loaded.warnings.extend(Problem("", w, "warning") for w in call_warnings)
    if call_errors:
        raise WorkflowInvalid(
            [f"{file}: {e}" for e in call_errors], [f"{file}: {w}" for w in loaded.warnings]
        )
    if ctx.json:
        _emit_json({"valid": True, "warnings": [str(w) for w in loaded.warnings]})
        return
    for w in loaded.warnings:
        click.echo(f"{file}: {w}", err=True)
    n = len(loaded.workflow.nodes)
    click.echo(f"{file}: ok ({n} nodes, workflow '{loaded.workflow.name}')")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--input", "input_text", help="Execution input as JSON.")
@click.option(
    "--input-file", type=click.Path(dir_okay=False), help="Read the input JSON from a file."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 512),
    default=None,
    help="Worker processes (embedded supervisor).",
)
@click.option(
    "--durability",
    type=click.Choice(["full", "normal"]),
    default="full",
    help="SQLite synchronous mode.",
)
@max_worker_memory_option
@json_option
@pass_ctx
def run(
    ctx: Ctx,
    file: str,
    input_text: str | None,
    input_file: str | None,
    workers: int | None,
    durability: str,
    max_worker_memory: int | None,
) -> None:
    """Run a workflow to the end (on the daemon if one serves the DB, else embedded)."""
    from fm_local.lock import is_served

    input_value = _load_json_option(input_text, input_file, "input")
    if input_value is None:
        input_value = {}  # no input given: an empty object (docs/semantics.md)
    prepared = _prepare(ctx, file, input_value)
    store = ctx.store()
    eid = store.create_execution(prepared.workflow_id, prepared.name, input_value)
    holder = is_served(ctx.db)
    if holder:
        _warn_daemon_settings(ctx, holder)
        if not ctx.json:
            click.echo(f"execution {eid} submitted to the running daemon", err=True)
        sys.exit(_report(ctx, _wait_for(ctx, eid)))
    import logging

    from fm_local.supervisor import Supervisor

    # The embedded supervisor's internal errors go to a log beside the database
    # (the execution's own error says INTERNAL_ERROR and what it was).
    log_file = ctx.db.with_name(ctx.db.name + ".log")
    try:
        _log_to(
            logging.FileHandler(log_file, delay=True),
            "%(asctime)s fm run: %(levelname)s %(message)s",
        )
    except OSError:
        pass
    sup = Supervisor(
        ctx.db,
        workers=workers or os.cpu_count() or 2,
        durability=durability,
        only_execution=eid,
        max_worker_memory_mb=max_worker_memory,
        subreaper=True,
    )
    try:
        sup.open()
    except AlreadyServed:
        # A daemon started between our look and now: it runs the execution.
        if not ctx.json:
            click.echo(f"execution {eid} submitted to the running daemon", err=True)
        sys.exit(_report(ctx, _wait_for(ctx, eid)))
    sup.install_signal_handlers()
    try:
        sup.run_execution(eid)
    finally:
        sup.close()
    row = store.get_execution(eid)
    if row["status"] not in TERMINAL:
        click.echo(
            f"interrupted: execution {eid} is {row['status']}; it continues when a "
            f"supervisor serves {ctx.db} (fm daemon), or: fm cancel {eid}",
            err=True,
        )
        sys.exit(130)
    sys.exit(_report(ctx, row))


def _warn_daemon_settings(ctx: Ctx, holder: dict[str, float]) -> None:
    """fm run's supervisor options were given, but a daemon runs the execution."""
    from click.core import ParameterSource

    cctx = click.get_current_context()
    given = [
        "--" + name.replace("_", "-")
        for name in ("workers", "durability", "max_worker_memory")
        if cctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    ]
    if given:
        pid = int(holder.get("pid", -1))
        who = f"a daemon (pid {pid})" if pid > 0 else "a daemon"
        click.echo(
            f"warning: {who} serves {ctx.db}: {' and '.join(given)} ignored; "
            "the daemon's own settings apply",
            err=True,
        )


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--input", "input_text", help="Execution input as JSON.")
@click.option(
    "--input-file", type=click.Path(dir_okay=False), help="Read the input JSON from a file."
)
@click.option(
    "--priority",
    type=click.IntRange(-(2**63), 2**63 - 1),
    default=0,
    help="Execution priority (higher first).",
)
@click.option(
    "--wait-for-room",
    is_flag=True,
    help="When settings.queue.maxSize executions are already queued, wait instead of failing.",
)
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="With --wait-for-room: give up after this many seconds.",
)
@pass_ctx
def submit(
    ctx: Ctx,
    file: str,
    input_text: str | None,
    input_file: str | None,
    priority: int,
    wait_for_room: bool,
    timeout: float | None,
) -> None:
    """Queue an execution; prints its id."""
    from fm_local.errors import QueueFull

    input_value = _load_json_option(input_text, input_file, "input")
    if input_value is None:
        input_value = {}
    prepared = _prepare(ctx, file, input_value)
    max_queued = prepared.max_queued
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            eid = ctx.store().create_execution(
                prepared.workflow_id,
                prepared.name,
                input_value,
                priority=priority,
                max_queued=max_queued,
            )
            break
        except QueueFull:
            if not wait_for_room or (deadline is not None and time.monotonic() > deadline):
                raise
            time.sleep(0.1)
    click.echo(eid)


@cli.command()
@click.option(
    "--workers",
    type=click.IntRange(1, 512),
    default=None,
    help="Worker processes (default: CPU count).",
)
@click.option(
    "--durability",
    type=click.Choice(["full", "normal"]),
    default="full",
    help="SQLite synchronous mode.",
)
@click.option(
    "--http",
    "http_bind",
    metavar="HOST:PORT",
    help="Also serve the signal API on this address (loopback unless you say otherwise).",
)
@max_worker_memory_option
@pass_ctx
def daemon(
    ctx: Ctx,
    workers: int | None,
    durability: str,
    http_bind: str | None,
    max_worker_memory: int | None,
) -> None:
    """Run the supervisor in the foreground (SIGTERM or Ctrl-C: graceful stop)."""
    import logging
    import socket

    from fm_local.supervisor import Supervisor

    n = workers or os.cpu_count() or 2
    if http_bind is not None and (
        not re.match(r"^(\[[^\]]+\]|[^:]*):\d{1,5}$", http_bind)
        or int(http_bind.rpartition(":")[2]) > 65535
    ):
        raise UsageError(
            f"--http {http_bind!r}: expected HOST:PORT with a port 0-65535, e.g. 127.0.0.1:8765"
        )
    _log_to(logging.StreamHandler(), "%(asctime)s fm daemon: %(levelname)s %(message)s")
    sup = Supervisor(
        ctx.db,
        workers=n,
        durability=durability,
        max_worker_memory_mb=max_worker_memory,
        subreaper=True,
    )
    sup.open()
    server = None
    try:
        if http_bind is not None:
            from fm_local import httpapi

            try:
                server = httpapi.start(ctx.db, http_bind)
            except socket.gaierror as exc:
                raise UsageError(
                    f"--http {http_bind}: unknown host: {exc.strerror or exc}"
                ) from None
            except (OSError, OverflowError) as exc:
                msg = getattr(exc, "strerror", None) or exc
                raise FmError(f"--http {http_bind}: cannot listen: {msg}") from None
            host, port = str(server.server_address[0]), server.server_address[1]
            click.echo(
                f"fm daemon: signal API on http://{host}:{port}/api "
                f"(token: fm token, file {httpapi.token_path(ctx.db)})",
                err=True,
            )
        sup.install_signal_handlers()
        click.echo(f"fm daemon: serving {ctx.db} with {n} workers (pid {os.getpid()})", err=True)
        sup.serve()
    finally:
        if server is not None:
            server.shutdown()
        sup.close()
    click.echo(f"fm daemon: stopped ({sup.stop_reason})", err=True)


@cli.command(name="ls")
@click.option("--status", type=click.Choice(["queued", "running", "paused", *TERMINAL]))
@click.option("--limit", type=int, default=20, show_default=True)
@json_option
@pass_ctx
@read_only
def ls_cmd(ctx: Ctx, status: str | None, limit: int) -> None:
    """List executions, newest first. Running ones show their loop progress."""
    from fm_local.lock import is_served
    from fm_local.progress import headline
    from fm_local.store import loads

    store = ctx.store()
    rows = store.list_executions(status=status, limit=limit)
    now = time.time()
    # Nothing progresses without a supervisor: no ETA then, as while paused.
    served = not any(r["status"] in ACTIVE for r in rows) or bool(is_served(ctx.db))
    progress = {
        r["id"]: headline(
            store.loop_progress(r["id"]), now, paused=r["status"] == "paused" or not served
        )
        for r in rows
        if r["status"] in ("running", "paused")
    }
    if ctx.json:
        _emit_json(
            [
                {
                    "id": r["id"],
                    "workflow": r["workflow"],
                    "status": r["status"],
                    "priority": r["priority"],
                    "createdAt": r["created_at"],
                    "startedAt": r["started_at"],
                    "finishedAt": r["finished_at"],
                    "error": loads(r["error"]),
                    "progress": p.as_json() if (p := progress.get(r["id"])) else None,
                }
                for r in rows
            ]
        )
        return
    if not rows:
        click.echo("no executions")
        return
    waiting = not served
    head = f"{'ID':<13} {'WORKFLOW':<24} {'STATUS':<10} {'STARTED':<19} {'SECONDS':>8}"
    click.echo(head + ("  PROGRESS" if any(progress.values()) else ""))
    for r in rows:
        started = _fmt_time(r["started_at"])
        took = _duration(r)
        st = r["status"] + ("*" if waiting and r["status"] in ACTIVE else "")
        p = progress.get(r["id"])
        click.echo(
            f"{r['id']:<13} {r['workflow'][:24]:<24} {st:<10} {started:<19} {took:>8}"
            + (f"  {p.text()}" if p else "")
        )
    if waiting:
        click.echo(f"* waiting {NO_SUPERVISOR}")


def _fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _duration(r: dict[str, Any]) -> str:
    if not r["started_at"]:
        return "-"
    end = r["finished_at"] or time.time()
    return f"{end - r['started_at']:.2f}"


def _node_json(n: dict[str, Any]) -> dict[str, Any]:
    from fm_local.store import loads

    return {
        "path": n["path"],
        "nodeId": n["node_id"],
        "type": n["node_type"],
        "status": n["status"],
        "attempts": n["attempts"],
        "recoveries": n["recoveries"],
        "startedAt": n["started_at"],
        "finishedAt": n["finished_at"],
        "traceId": n["trace_id"],
        "branch": n["branch_id"],
        "workerPid": n["worker_pid"],
        "port": n["port"],
        "code": n.get("code"),
        "items": n.get("items"),
        "input": loads(n["input"]),
        "output": loads(n["output"]),
        "error": loads(n["error"]),
    }


LOOP_LINES = 10  # loops fm show gives a progress line
TRACEBACKS = 5  # failed nodes fm show prints the traceback of


@cli.command()
@click.argument("execution")
@click.option("--all", "show_all", is_flag=True, help="List every node instance, however many.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(NODE_STATUSES),
    help="Only node instances with this status (repeatable).",
)
@json_option
@pass_ctx
@read_only
def show(ctx: Ctx, execution: str, show_all: bool, statuses: tuple[str, ...]) -> None:
    """An execution: status, input, output, error and its node instances. Also the
    progress of its loops, and failed nodes' errors in full with their tracebacks."""
    from fm_local.lock import is_served
    from fm_local.progress import ACTIVE_LOOP, headline, of_row
    from fm_local.store import loads

    row = _execution(ctx, execution)
    store = ctx.store()
    now = time.time()
    served = row["status"] not in ACTIVE or bool(is_served(ctx.db))
    # Nothing progresses without a supervisor: no ETA then, as while paused.
    paused = row["status"] == "paused" or not served
    loops = store.loop_progress(row["id"])
    if ctx.json:
        from fm_local.api import execution_record

        if statuses:
            nodes = store.node_runs_in(row["id"], statuses)
        else:
            nodes = store.node_runs(row["id"])
        live = row["status"] in ("running", "paused")
        head = headline(loops, now, paused) if live else None
        _emit_json(
            {
                **execution_record(row),
                "progress": head.as_json() if head else None,
                "loops": [
                    {
                        "path": lp["loop"],
                        "status": lp["status"],
                        "progress": of_row(lp, now, paused).as_json(),
                    }
                    for lp in loops
                ],
                "nodes": [_node_json(n) for n in nodes],
            }
        )
        return
    err = loads(row["error"])
    status = row["status"] if served else f"{row['status']}  {NO_SUPERVISOR}"
    click.echo(f"execution  {row['id']}")
    click.echo(f"workflow   {row['workflow']}")
    click.echo(f"status     {status}")
    click.echo(f"trace      {row['trace_id']}")
    if row["priority"]:
        click.echo(f"priority   {row['priority']}")
    click.echo(
        f"started    {_fmt_time(row['started_at'])}   finished {_fmt_time(row['finished_at'])}   ({_duration(row)} s)"
    )
    if err:
        click.echo(f"error      {err.get('code')}: {err.get('message')}")
    counts = store.node_counts(row["id"])
    click.echo("nodes      " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    # One line per loop: top-level loops first, then the nested ones still running.
    shown = [lp for lp in loops if "[" not in lp["loop"]]
    shown += [lp for lp in loops if "[" in lp["loop"] and lp["status"] in ACTIVE_LOOP]
    for lp in shown[:LOOP_LINES]:
        click.echo(f"loop       {lp['loop']}  {of_row(lp, now, paused).text()}")
    if len(loops) > min(len(shown), LOOP_LINES):
        click.echo(f"           ({len(loops)} loops in all: fm show {row['id']} --json lists them)")
    total = sum(counts.values())
    listed = total
    summarize = False
    if statuses:
        listed = store.count_node_runs_in(row["id"], statuses)
        nodes = store.node_runs_in(row["id"], statuses, None if show_all else SHOW_LIMIT)
    else:
        # A loop of more items than a screen is summarized from its start, so the
        # view does not change shape halfway through the run.
        big_loop = any((lp["total"] or 0) > SHOW_LIMIT for lp in loops)
        summarize = (total > SHOW_LIMIT or big_loop) and not show_all
        nodes = store.top_level_runs(row["id"]) if summarize else store.node_runs(row["id"])
    click.echo("")
    if statuses and not nodes:
        click.echo(f"no node instances with status {' or '.join(statuses)}")
    else:
        _node_table(row, nodes)
    if statuses and listed > len(nodes):
        click.echo(
            f"({len(nodes)} of {listed} node instances with status {' or '.join(statuses)}; "
            f"--all lists them all)"
        )
    _failed_section(ctx, row, nodes, summarize)
    if summarize:
        by_path = {lp["loop"]: lp for lp in loops}
        click.echo("")
        click.echo(f"{'LOOP':<32} {'ITEMS':>8}  {'PROGRESS':<36} BY STATUS")
        by_loop: dict[str, dict[str, int]] = {}
        for r in store.loop_summaries(row["id"]):
            by_loop.setdefault(r["loop"], {})[r["status"]] = r["items"]
        for lp, st in by_loop.items():
            opened = sum(st.values())
            known = by_path[lp]["total"] if lp in by_path else None
            items = known if known is not None and known >= opened else opened
            parts = ", ".join(f"{v} {k}" for k, v in sorted(st.items()))
            if items > opened:
                parts += f", {items - opened} not started"
            prog = of_row(by_path[lp], now, paused).text() if lp in by_path else "-"
            click.echo(f"{lp[:32]:<32} {items:>8}  {prog:<36} {parts}")
        click.echo(
            f"({total} node instances; this is a summary: fm show {row['id']} --all lists "
            f"them all, --status STATUS lists those, fm logs/timeline --node PATH narrows)"
        )
    if row["status"] == "succeeded" and not statuses:
        click.echo("")
        click.echo("output     " + json.dumps(loads(row["output"]))[:2000])


def _node_table(row: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
    """fm show's table: one line per node instance; a long error is cut here and
    printed in full below it (:func:`_failed_section`)."""
    from fm_local.store import loads

    codes = [n["code"] for n in nodes if n.get("code")]
    cw = min(max(map(len, codes)), 40) if codes else 0
    code_head = f"{'CODE':<{cw}} " if cw else ""
    click.echo(f"{'PATH':<32} {'STATUS':<10} {'ATT':>3} {'MS':>8} {'TRACE':<9} {code_head}ERROR")
    root = row["trace_id"]
    for n in nodes:
        ms = (
            f"{(n['finished_at'] - n['started_at']) * 1000:.0f}"
            if n["finished_at"] and n["started_at"]
            else "-"
        )
        e = loads(n["error"])
        etext = f"{e.get('code')}: {e.get('message')}" if e else ""
        etext = etext.splitlines()[0] if etext else ""
        if len(etext) > 80:
            etext = etext[:79] + "…"
        # The node's trace id is the execution's plus its branch suffix (SPEC §9).
        trace = (n["trace_id"] or "")[len(root) :] if (n["trace_id"] or "").startswith(root) else ""
        code = f"{(n.get('code') or '-')[:cw]:<{cw}} " if cw else ""
        click.echo(
            f"{n['path'][:32]:<32} {n['status']:<10} {n['attempts']:>3} {ms:>8} "
            f"{trace or '-':<9} {code}{etext}".rstrip()
        )


def _failed_section(
    ctx: Ctx, row: dict[str, Any], nodes: list[dict[str, Any]], summarize: bool
) -> None:
    """The failed nodes of the table: each one's error in full, and the traceback of
    the first few (a loop summarized without its items: the first failed node's in it).
    An item's error wraps its failed body node's: that node, listed too, shows it."""
    from fm_local.store import loads

    failed = [n for n in nodes if n["status"] == "failed" and n["error"]]
    if not failed:
        return
    click.echo("")
    click.echo("failed nodes")
    printed, left_out = 0, 0
    for n in failed:
        e = loads(n["error"]) or {}
        message = str(e.get("message") or "")
        first, *rest = message.splitlines() or [""]
        click.echo(f"  {n['path']}: {e.get('code')}: {first}")
        for line in rest:
            click.echo(f"    {line}")
        tb = None if n["node_type"] == "item" and not summarize else _traceback_of(e)
        where = None
        if tb is None and summarize and n["node_type"] == "loop":
            found = ctx.store().failed_with_traceback(row["id"], n["path"])
            if found:
                tb = _traceback_of(loads(found[0]["error"]))
                where = found[0]["path"]
        if tb is None:
            continue
        if printed >= TRACEBACKS:
            left_out += 1
            continue
        if where is not None:
            click.echo(f"    {where}:")
        _echo_traceback(tb, "      ")
        printed += 1
    if left_out:
        click.echo(
            f"  ({left_out} more tracebacks left out: fm logs {row['id']} --node PATH "
            "prints one at its failed attempt)"
        )


@cli.command()
@click.argument("execution")
@pass_ctx
@read_only
def output(ctx: Ctx, execution: str) -> None:
    """Print an execution's output as JSON."""
    from fm_local.store import loads

    row = _execution(ctx, execution)
    if row["status"] != "succeeded":
        click.echo(json.dumps(loads(row["output"]), indent=2))
        raise FmError(
            f"execution {row['id']} is {row['status']}", _exit_for(row["status"]) or EXIT_FAILED
        )
    click.echo(json.dumps(loads(row["output"]), indent=2))


@cli.command(name="wait")
@click.argument("execution")
@click.option(
    "--timeout", type=float, default=None, help="Give up after this many seconds (exit 1)."
)
@json_option
@pass_ctx
@read_only
def wait_cmd(ctx: Ctx, execution: str, timeout: float | None) -> None:
    """Block until an execution ends; exit like fm run."""
    row = _execution(ctx, execution)
    sys.exit(_report(ctx, _wait_for(ctx, row["id"], timeout)))


@cli.command()
@click.argument("execution")
@click.option("--node", "node_path", help="Only this node path (and what is under it).")
@json_option
@pass_ctx
@read_only
def logs(ctx: Ctx, execution: str, node_path: str | None) -> None:
    """Captured log lines of an execution's node attempts. A failed try's error
    follows its lines, with its traceback."""
    from fm_local.store import loads

    row = _execution(ctx, execution)
    lines = ctx.store().logs(row["id"], node_path)
    if ctx.json:
        _emit_json(
            [
                {
                    "path": r["path"],
                    "attempt": r["attempt"],
                    "ts": r["ts"],
                    "stream": r["stream"],
                    "line": r["line"],
                }
                for r in lines
            ]
        )
        return
    # A failed try's error (and traceback) goes after its last line, in time order.
    entries: list[tuple[float, int, dict[str, Any]]] = [(r["ts"], 0, r) for r in lines]
    for a in ctx.store().failed_attempts(row["id"], node_path):
        ts = a["finished_at"] or a["started_at"] or 0.0
        entries.append((ts, 1, a))
    entries.sort(key=lambda e: (e[0], e[1]))
    for ts_, kind, r in entries:
        ts = time.strftime("%H:%M:%S", time.localtime(ts_)) + f".{int(ts_ % 1 * 1000):03d}"
        if kind == 0:
            click.echo(f"{ts} {r['path']}#{r['attempt']} {r['stream']}: {r['line']}")
            continue
        e = loads(r["error"]) or {}
        first, *rest = str(e.get("message") or "").splitlines() or [""]
        click.echo(f"{ts} {r['path']}#{r['seq']} {r['status']}: {e.get('code')}: {first}")
        for line in rest:
            click.echo(f"    {line}")
        tb = _traceback_of(e)
        if tb is not None:
            _echo_traceback(tb)


@cli.command()
@click.argument("execution")
@click.option("--width", type=int, default=60, show_default=True, help="Bar area width in columns.")
@click.option("--all", "show_all", is_flag=True, help="One bar per node instance, however many.")
@click.option("--node", "node_path", help="Only this node path (and what is under it).")
@json_option
@pass_ctx
@read_only
def timeline(ctx: Ctx, execution: str, width: int, show_all: bool, node_path: str | None) -> None:
    """One bar per node instance on a shared time axis."""
    from fm_local.timeline import render_summary, render_timeline

    row = _execution(ctx, execution)
    store = ctx.store()
    if not ctx.json and not show_all and not node_path:
        if store.count_node_runs(row["id"]) > TIMELINE_LIMIT:
            click.echo(
                render_summary(
                    row,
                    store.top_level_runs(row["id"]),
                    store.item_intervals(row["id"]),
                    width=width,
                )
            )
            return
    nodes = store.node_runs(row["id"], node_path)
    if ctx.json:
        _emit_json(
            [
                {
                    "path": n["path"],
                    "status": n["status"],
                    "startedAt": n["started_at"],
                    "finishedAt": n["finished_at"],
                    "workerPid": n["worker_pid"],
                }
                for n in nodes
            ]
        )
        return
    click.echo(render_timeline(row, nodes, width=width, limit=None if show_all else TIMELINE_LIMIT))


@cli.command()
@click.argument("execution")
@click.option("--format", "fmt", type=click.Choice(["chrome"]), default="chrome", show_default=True)
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False),
    help="Write to this file (default stdout).",
)
@pass_ctx
@read_only
def trace(ctx: Ctx, execution: str, fmt: str, out: str | None) -> None:
    """Chrome/Perfetto trace-event JSON of an execution."""
    from fm_local.timeline import chrome_trace

    row = _execution(ctx, execution)
    data = chrome_trace(row, ctx.store().node_runs(row["id"]))
    text = json.dumps(data)
    if out:
        Path(out).write_text(text)
        click.echo(f"wrote {out} ({len(data['traceEvents'])} events)", err=True)
    else:
        click.echo(text)


@cli.command()
@json_option
@pass_ctx
@read_only
def queue(ctx: Ctx) -> None:
    """Queue depth by state and priority, queued executions, dead letters. Loop items
    not started yet count as waiting."""
    from fm_local.progress import not_started

    store = ctx.store()
    rows = store.queue_depth()
    # A loop materialises its items as it goes (maxConcurrency, back-pressure): those
    # without a row wait all the same.
    unstarted: dict[int, int] = {}
    for ex in store.active_executions():
        if ex["status"] in ("running", "paused"):
            n = not_started(store.loop_progress(ex["id"]))
            if n:
                unstarted[ex["priority"]] = unstarted.get(ex["priority"], 0) + n
    if unstarted:
        rows += [{"status": "waiting", "priority": p, "tasks": n} for p, n in unstarted.items()]
        rows.sort(key=lambda r: (r["status"], -r["priority"]))
    waiting = store.conn.execute(
        "SELECT count(*) FROM executions WHERE status='queued'"
    ).fetchone()[0]
    dead = store.dead_letter_count()
    if ctx.json:
        _emit_json({"tasks": rows, "queuedExecutions": waiting, "deadLetters": dead})
        return
    if not rows:
        click.echo("no tasks queued or running")
    else:
        click.echo(f"{'STATE':<12} {'PRIORITY':>8} {'TASKS':>8}")
        for r in rows:
            click.echo(f"{r['status']:<12} {r['priority']:>8} {r['tasks']:>8}")
    if unstarted:
        click.echo(
            f"items not yet started: {sum(unstarted.values()):,} (in loops still running; "
            "counted as waiting above)"
        )
    click.echo(f"executions waiting to start: {waiting}; dead letters: {dead} (fm dlq ls)")


@cli.group()
def dlq() -> None:
    """The dead-letter queue: node instances that failed for good."""


@dlq.command(name="ls")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
@pass_ctx
@read_only
def dlq_ls(ctx: Ctx, limit: int) -> None:
    """List dead letters, newest first."""
    from fm_local.store import loads

    rows = ctx.store().dead_letters(limit)
    if ctx.json:
        _emit_json([_dead_json(r) for r in rows])
        return
    if not rows:
        click.echo("no dead letters")
        return
    click.echo(f"{'ID':>5} {'EXECUTION':<13} {'PATH':<28} {'ATT':>3} {'REPLAYED':<13} ERROR")
    for r in rows:
        err = loads(r["error"]) or {}
        etext = f"{err.get('code')}: {err.get('message')}"[:60]
        click.echo(
            f"{r['id']:>5} {r['execution_id']:<13} {r['path'][:28]:<28} {r['attempts']:>3} "
            f"{r['replayed_as'] or '-':<13} {etext}"
        )


def _dead_json(r: dict[str, Any]) -> dict[str, Any]:
    from fm_local.store import loads

    return {
        "id": r["id"],
        "executionId": r["execution_id"],
        "path": r["path"],
        "nodeId": r["node_id"],
        "input": loads(r["input"]),
        "error": loads(r["error"]),
        "attempts": r["attempts"],
        "createdAt": r["created_at"],
        "replayedAs": r["replayed_as"],
    }


def _dead_letter(ctx: Ctx, dl_id: int) -> dict[str, Any]:
    row = ctx.store().dead_letter(dl_id)
    if row is None:
        raise UsageError(f"no dead letter {dl_id} (see: fm dlq ls)")
    return row


@dlq.command(name="show")
@click.argument("dead_letter_id", type=int)
@pass_ctx
@read_only
def dlq_show(ctx: Ctx, dead_letter_id: int) -> None:
    """One dead letter: its input, error and attempts, as JSON."""
    _emit_json(_dead_json(_dead_letter(ctx, dead_letter_id)))


@dlq.command(name="replay")
@click.argument("dead_letter_id", type=int)
@pass_ctx
def dlq_replay(ctx: Ctx, dead_letter_id: int) -> None:
    """Run that node instance again, with its recorded input, in a new execution."""
    from fm_local.replay import replay_document
    from fm_local.store import loads

    row = _dead_letter(ctx, dead_letter_id)
    store = ctx.store()
    ex = store.get_execution(row["execution_id"])
    if ex is None:
        raise FmError(f"dead letter {dead_letter_id}: its execution {row['execution_id']} is gone")
    if ex["status"] in ("queued", "running", "paused"):
        # Still running: the node runs again inside it (SPEC §8).
        from fm_local.signals import REPLAY

        store.add_signal(
            ex["id"],
            REPLAY,
            f"fm dlq replay {dead_letter_id}",
            {"deadLetter": dead_letter_id, "path": row["path"], "input": loads(row["input"])},
        )
        store.mark_replayed(dead_letter_id, ex["id"])
        click.echo(ex["id"])
        click.echo(
            f"replaying {row['path']} inside execution {ex['id']} (still {ex['status']}) "
            f"as {row['path']}->replay#{dead_letter_id}",
            err=True,
        )
        return
    wrow = store.get_workflow(ex["workflow_id"])
    try:
        doc = replay_document(json.loads(wrow["document"]), row)
    except ValueError as exc:
        raise FmError(f"dead letter {dead_letter_id}: {exc}") from None
    wid = store.save_workflow(doc["name"], doc, wrow["path"], wrow["folder"])
    input_value = loads(ex["input"])
    eid = store.create_execution(wid, doc["name"], {} if input_value is None else input_value)
    store.mark_replayed(dead_letter_id, eid)
    click.echo(eid)


@dlq.command(name="purge")
@click.argument("dead_letter_ids", type=int, nargs=-1)
@click.option("--yes", is_flag=True, help="Do not ask (needed without a terminal).")
@pass_ctx
def dlq_purge(ctx: Ctx, dead_letter_ids: tuple[int, ...], yes: bool) -> None:
    """Delete dead letters (all, or the given ids)."""
    what = f"dead letters {list(dead_letter_ids)}" if dead_letter_ids else "all dead letters"
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to delete {what} without --yes")
        click.confirm(f"Delete {what}?", abort=True)
    n = ctx.store().purge_dead_letters(list(dead_letter_ids) or None)
    click.echo(f"deleted {n} dead letters")


def _send_signal(
    ctx: Ctx, execution: str, type_: str, reason: str | None, data_text: str | None, wait: float
) -> None:
    """Write a signal row; refuse at once what the supervisor would refuse; report
    the outcome once a supervisor applied it (SPEC §8; fm_local.client)."""
    from fm_local.client import SignalRefused, send_signal

    data = _load_json_option(data_text, None, "data")
    eid = _execution(ctx, execution)["id"]
    try:
        sent = send_signal(ctx.store(), eid, type_, reason, data, wait=wait)
    except SignalRefused as exc:
        if exc.why == "finished":
            raise FmError(f"{exc}: signal '{type_}' refused", EXIT_FAILED) from None
        raise FmError(f"execution {eid}: {exc}", errors.EXIT_USAGE) from None
    out = sent.as_json()
    if not sent.served:
        done = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}.get(type_)
        effect = f"execution {eid} is not {done} yet" if done else "nothing applied it yet"
        msg = (
            f"signal {sent.id} ({type_}) queued until a supervisor starts: no supervisor serves "
            f"{ctx.db}, so {effect} — start `fm daemon`"
        )
        _say(ctx, out, msg)
        return
    if sent.status == "refused":
        if ctx.json:
            _emit_json(out)
        raise FmError(f"signal '{type_}' refused: {sent.outcome}", EXIT_FAILED)
    if sent.status == "pending":
        _say(ctx, out, f"signal {sent.id} ({type_}) sent; not applied yet")
    else:
        _say(ctx, out, f"execution {eid}: {sent.outcome}")


def _say(ctx: Ctx, value: Any, line: str) -> None:
    if ctx.json:
        _emit_json(value)
    else:
        click.echo(line)


SIGNAL_OPTIONS = [
    click.option("--reason", help="Why (recorded with the signal)."),
    click.option("--data", "data_text", help="Signal data as JSON (e.g. for resume)."),
    click.option(
        "--wait",
        type=float,
        default=10.0,
        show_default=True,
        help="Seconds to wait for the outcome.",
    ),
]


def signal_options(f: Any) -> Any:
    for opt in reversed(SIGNAL_OPTIONS):
        f = opt(f)
    return f


@cli.command(name="signal")
@click.argument("execution")
@click.argument("type_", metavar="TYPE")
@signal_options
@json_option
@pass_ctx
def signal_cmd(
    ctx: Ctx, execution: str, type_: str, reason: str | None, data_text: str | None, wait: float
) -> None:
    """Send a signal (pause, resume, cancel, or a type the workflow handles)."""
    _send_signal(ctx, execution, type_, reason, data_text, wait)


def _shorthand(type_: str, doc: str) -> None:
    @cli.command(name=type_, help=doc)
    @click.argument("execution")
    @signal_options
    @json_option
    @pass_ctx
    def cmd(
        ctx: Ctx, execution: str, reason: str | None, data_text: str | None, wait: float
    ) -> None:
        _send_signal(ctx, execution, type_, reason, data_text, wait)


_shorthand("pause", "Pause an execution: nothing new starts; running nodes finish.")
_shorthand("resume", "Resume a paused execution (--data is readable as signals.resume.data).")
_shorthand("cancel", "Cancel an execution: running nodes are stopped, nothing new starts.")


@cli.command()
@pass_ctx
def token(ctx: Ctx) -> None:
    """Print the HTTP API's bearer token (created on first use, mode 0600)."""
    from fm_local.apitoken import ensure_token

    click.echo(ensure_token(ctx.db))


@cli.command()
@json_option
@pass_ctx
@read_only
def workers(ctx: Ctx) -> None:
    """The supervisor, its workers and the machine: CPU, RSS, current node."""
    rows = ctx.store().latest_samples()
    if ctx.json:
        _emit_json(rows)
        return
    if not rows:
        click.echo(f"no recent resource samples: no supervisor serves {ctx.db}")
        return
    click.echo(f"{'ROLE':<11} {'PID':>7} {'CPU%':>6} {'RSS MB':>8}  NODE")
    for r in rows:
        node = f"{r['execution_id']} {r['node_path']}" if r["node_path"] else "-"
        pid = r["pid"] if r["pid"] is not None else "-"
        click.echo(
            f"{r['role']:<11} {pid:>7} {r['cpu_percent']:>6.1f} {r['rss_bytes'] / 2**20:>8.1f}  {node}"
        )


@cli.command()
def schema() -> None:
    """Print the workflow JSON Schema."""
    from fm_local.model import workflow_json_schema

    _emit_json(workflow_json_schema())


def _storage_problem(exc: BaseException) -> FmError | None:
    """A sqlite3 error, or an OS error about the database file (or the files beside
    it), as the storage problem's one line; None for anything else (a bug)."""
    import sqlite3

    from fm_local.store import default_db_path, storage_error

    ctx = Ctx.current
    db = ctx.db if ctx is not None else default_db_path()
    action = "read" if ctx is not None and ctx.readonly else "write"
    if type(exc) in (sqlite3.OperationalError, sqlite3.DatabaseError):
        return storage_error(exc, db, action)
    if isinstance(exc, OSError) and exc.filename:
        name = os.path.abspath(os.fsdecode(exc.filename))
        here = os.path.abspath(db)
        if name.startswith(here) or here.startswith(name + os.sep):
            return storage_error(exc, db, action)
    return None


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _print_traceback() -> None:
    import traceback

    traceback.print_exc()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    Ctx.current = None
    try:
        cli.main(args=args, prog_name="fm", standalone_mode=False)
    except WorkflowInvalid as exc:
        for w in exc.warnings:
            click.echo(w, err=True)
        for p in exc.problems:
            click.echo(p, err=True)
        if debug:
            _print_traceback()
        sys.exit(exc.exit_code)
    except FmError as exc:
        if debug:
            _print_traceback()
        _fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(errors.EXIT_USAGE)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into one line
        if debug:
            _print_traceback()
        problem = _storage_problem(exc)
        if problem is not None:
            _fail(str(problem), errors.EXIT_ENGINE)
        _fail(
            f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
            errors.EXIT_ENGINE,
        )
