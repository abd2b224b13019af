"""A workflow file in: ``fm validate``, ``fm schema``, ``fm run``, ``fm submit``,
and ``fm daemon``, the supervisor that runs what they queue. With their helpers:
preparing a workflow and its input, waiting for an execution's end and reporting it
with its exit code (``fm wait`` too)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from fm_local.cli.base import TERMINAL, Ctx, cli, json_option, load_json_option, pass_ctx
from fm_local.cli.render import echo_failed_traceback, emit_json
from fm_local.errors import (
    EXIT_FAILED,
    EXIT_OK,
    AlreadyServed,
    FmError,
    UsageError,
    WorkflowInvalid,
)
from fm_local.executors import DEFAULT_IO_CONCURRENCY

if TYPE_CHECKING:
    import logging


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


def exit_code_for(status: str) -> int:
    return EXIT_OK if status == "succeeded" else EXIT_FAILED


def wait_for_end(ctx: Ctx, eid: str, timeout: float | None = None) -> dict[str, Any]:
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


def report_end(ctx: Ctx, row: dict[str, Any], extra: dict[str, Any] | None = None) -> int:
    """Print how an execution ended (``extra``: more keys for ``--json``); its exit code."""
    from fm_local.store import loads

    out = loads(row["output"])
    err = loads(row["error"])
    if ctx.json:
        emit_json(
            {"id": row["id"], **(extra or {}), "status": row["status"], "output": out, "error": err}
        )
    else:
        if row["status"] == "succeeded":
            click.echo(json.dumps(out, indent=2))
        took = (row["finished_at"] or time.time()) - (row["started_at"] or row["created_at"])
        line = f"execution {row['id']} {row['status']} in {took:.2f}s"
        if err:
            line += f": {err.get('message')}"
        click.echo(line, err=True)
        if row["status"] == "failed":
            echo_failed_traceback(ctx, row, err)
    return exit_code_for(row["status"])


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
        help="Recycle a worker between tasks once its memory (RSS) passes this many MB; "
        "the I/O worker finishes its calls while a new one takes the next "
        "(default 2048; 0: never; env FM_WORKER_MAX_RSS_MB).",
    )(f)


def io_concurrency_option(f: Any) -> Any:
    """``--io-concurrency``, for every command that runs a supervisor (run, daemon)."""
    return click.option(
        "--io-concurrency",
        type=click.IntRange(0, 100_000),
        default=DEFAULT_IO_CONCURRENCY,
        show_default=True,
        metavar="N",
        help="I/O nodes (http, shell, async python) in flight at once on the I/O lane's "
        "event loop; 0: each takes a worker process.",
    )(f)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@pass_ctx
def validate(ctx: Ctx, file: str) -> None:
    """Check a workflow file; one line per problem (exit 2 if any). Python call
    targets are imported in a separate process to check they exist."""
    from pathlib import Path

    from fm_local.calls import CallCheck
    from fm_local.prepare import read_text
    from fm_local.validate import Problem, check_parsed, parse_json

    path = Path(file)
    raw = parse_json(read_text(path), path=path)
    # The call targets are imported in a child while this process validates.
    calls = CallCheck(raw, path.absolute().parent) if isinstance(raw, dict) else None
    try:
        loaded = check_parsed(raw, path=path)
    except BaseException:
        if calls is not None:
            calls.cancel()
        raise
    assert calls is not None  # a valid document is an object
    call_errors, call_warnings = calls.result()
    loaded.warnings.extend(Problem("", w, "warning") for w in call_warnings)
    if call_errors:
        raise WorkflowInvalid(
            [f"{file}: {e}" for e in call_errors], [f"{file}: {w}" for w in loaded.warnings]
        )
    if ctx.json:
        emit_json({"valid": True, "warnings": [str(w) for w in loaded.warnings]})
        return
    for w in loaded.warnings:
        click.echo(f"{file}: {w}", err=True)
    n = len(loaded.workflow.nodes)
    click.echo(f"{file}: ok ({n} nodes, workflow '{loaded.workflow.name}')")


def durability_option(f: Any) -> Any:
    """``--durability``, for every command that runs a supervisor (run, daemon)."""
    return click.option(
        "--durability",
        type=click.Choice(["full", "normal"]),
        default="full",
        help="SQLite synchronous mode.",
    )(f)


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
@durability_option
@max_worker_memory_option
@io_concurrency_option
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
    io_concurrency: int,
) -> None:
    """Run a workflow to the end (on the daemon if one serves the DB, else embedded)."""
    input_value = load_json_option(input_text, input_file, "input")
    if input_value is None:
        input_value = {}  # no input given: an empty object (docs/semantics.md)
    prepared = _prepare(ctx, file, input_value)
    store = ctx.store()
    eid = store.create_execution(prepared.workflow_id, prepared.name, input_value)
    sys.exit(
        run_to_end(
            ctx,
            eid,
            workers=workers,
            durability=durability,
            max_worker_memory=max_worker_memory,
            io_concurrency=io_concurrency,
        )
    )


def run_to_end(
    ctx: Ctx,
    eid: str,
    *,
    workers: int | None,
    durability: str,
    max_worker_memory: int | None,
    io_concurrency: int,
    extra: dict[str, Any] | None = None,
) -> int:
    """Run a queued execution to its end as ``fm run`` does — on the daemon serving
    the database if there is one, else on a supervisor embedded here that serves it
    alone — report the end (``extra``: more keys for ``--json``), and return the exit
    code (``fm run``, ``fm retry``)."""
    from fm_local.lock import is_served

    store = ctx.store()
    holder = is_served(ctx.db)
    if holder:
        _warn_daemon_settings(ctx, holder)
        if not ctx.json:
            click.echo(f"execution {eid} submitted to the running daemon", err=True)
        return report_end(ctx, wait_for_end(ctx, eid), extra)
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
    if os.environ.get("FM_EXECUTOR") == "dask":
        click.echo(
            "note: FM_EXECUTOR=dask is for fm daemon; with no daemon serving "
            f"{ctx.db}, fm run runs this execution on local worker processes",
            err=True,
        )
    sup = Supervisor(
        ctx.db,
        workers=workers or os.cpu_count() or 2,
        durability=durability,
        only_execution=eid,
        max_worker_memory_mb=max_worker_memory,
        subreaper=True,
        io_concurrency=io_concurrency,
    )
    try:
        sup.open()
    except AlreadyServed:
        # A daemon started between our look and now: it runs the execution.
        if not ctx.json:
            click.echo(f"execution {eid} submitted to the running daemon", err=True)
        return report_end(ctx, wait_for_end(ctx, eid), extra)
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
        return 130
    return report_end(ctx, row, extra)


def _warn_daemon_settings(ctx: Ctx, holder: dict[str, float]) -> None:
    """fm run's supervisor options were given, but a daemon runs the execution."""
    from click.core import ParameterSource

    cctx = click.get_current_context()
    given = [
        "--" + name.replace("_", "-")
        for name in ("workers", "durability", "max_worker_memory", "io_concurrency")
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

    input_value = load_json_option(input_text, input_file, "input")
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
@durability_option
@click.option(
    "--http",
    "http_bind",
    metavar="HOST:PORT",
    help="Also serve the signal API on this address (loopback unless you say otherwise).",
)
@max_worker_memory_option
@io_concurrency_option
@click.option(
    "--executor",
    type=click.Choice(["local", "dask"]),
    default="local",
    show_default=True,
    envvar="FM_EXECUTOR",
    help="Where node work runs: local worker processes (and the I/O lane), or a Dask "
    "distributed cluster (with --scheduler; docs/scale-out.md). Env FM_EXECUTOR.",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    envvar="FM_DASK_SCHEDULER",
    help="The Dask scheduler for --executor dask, e.g. tcp://10.0.0.5:8786 "
    "(env FM_DASK_SCHEDULER).",
)
@click.option(
    "--otlp-endpoint",
    metavar="URL",
    envvar="FM_OTLP_ENDPOINT",
    help="Post each ended execution's OpenTelemetry spans to this OTLP/HTTP collector as "
    "JSON, e.g. http://127.0.0.1:4318/v1/traces (a URL without a path gets /v1/traces), "
    "from a thread of its own; a collector that fails is retried a few times, then "
    "skipped (docs/observability.md). Env FM_OTLP_ENDPOINT.",
)
@click.option(
    "--retain",
    metavar="AGE",
    envvar="FM_RETAIN",
    help="Keep finished executions this long (7d, 12h; units s/m/h/d/w), pruning "
    "older ones in the background, as fm prune does (env FM_RETAIN; default: keep all).",
)
@pass_ctx
def daemon(
    ctx: Ctx,
    workers: int | None,
    durability: str,
    http_bind: str | None,
    max_worker_memory: int | None,
    io_concurrency: int,
    executor: str,
    scheduler: str | None,
    otlp_endpoint: str | None,
    retain: str | None,
) -> None:
    """Run the supervisor in the foreground (SIGTERM or Ctrl-C: graceful stop)."""
    import logging
    import socket

    from fm_local.supervisor import Supervisor

    n = workers or os.cpu_count() or 2
    keep = None
    if retain:
        from fm_local.store.prune import parse_age

        keep = parse_age(retain, "--retain")
    if http_bind is not None and (
        not re.match(r"^(\[[^\]]+\]|[^:]*):\d{1,5}$", http_bind)
        or int(http_bind.rpartition(":")[2]) > 65535
    ):
        raise UsageError(
            f"--http {http_bind!r}: expected HOST:PORT with a port 0-65535, e.g. 127.0.0.1:8765"
        )
    from click.core import ParameterSource

    cctx = click.get_current_context()
    make_executor = None
    if executor == "dask":
        local_only = [
            "--" + name.replace("_", "-")
            for name in ("workers", "max_worker_memory", "io_concurrency")
            if cctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
        ]
        if local_only:
            click.echo(
                f"warning: {' and '.join(local_only)} ignored: they size the local "
                "executor, and node work runs on the Dask cluster (size it with "
                "dask worker --nthreads)",
                err=True,
            )
        if not scheduler:
            raise UsageError(
                "--executor dask needs --scheduler ADDRESS (the Dask scheduler, "
                "e.g. tcp://127.0.0.1:8786), or FM_DASK_SCHEDULER"
            )
        import functools

        from fm_local.executors.daskexec import DaskExecutor

        owner = os.path.abspath(ctx.db)
        make_executor = functools.partial(DaskExecutor, scheduler=scheduler, owner=owner)
    elif scheduler and cctx.get_parameter_source("scheduler") == ParameterSource.COMMANDLINE:
        raise UsageError("--scheduler is for --executor dask")
    # (FM_DASK_SCHEDULER alone, without FM_EXECUTOR=dask, is not an error: it is ignored.)
    otlp_url = None
    if otlp_endpoint:
        from fm_local.otlp_export import endpoint_url

        otlp_url = endpoint_url(otlp_endpoint)
        if otlp_url is None:
            raise UsageError(
                f"--otlp-endpoint {otlp_endpoint!r}: expected an http(s) URL of an OTLP/HTTP "
                "collector, e.g. http://127.0.0.1:4318/v1/traces"
            )
    _log_to(logging.StreamHandler(), "%(asctime)s fm daemon: %(levelname)s %(message)s")
    sup = Supervisor(
        ctx.db,
        workers=n,
        durability=durability,
        max_worker_memory_mb=max_worker_memory,
        subreaper=True,
        io_concurrency=io_concurrency,
        executor=make_executor,
    )
    sup.open()
    server = None
    exporter = None
    retention: Any = None
    try:
        if otlp_url is not None:
            from fm_local.otlp_export import OtlpExporter

            exporter = OtlpExporter(ctx.db, otlp_url)
            exporter.start()
            sup.on_finished = exporter.finished
            click.echo(f"fm daemon: traces to {otlp_url} (OTLP/HTTP JSON)", err=True)
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
        where = f"{n} workers" if executor == "local" else f"the Dask cluster at {scheduler}"
        click.echo(f"fm daemon: serving {ctx.db} with {where} (pid {os.getpid()})", err=True)
        if keep is not None:
            from fm_local.retention import Retention

            retention = Retention(
                ctx.db, keep, report=lambda line: click.echo(f"fm daemon: {line}", err=True)
            ).start()
            click.echo(f"fm daemon: keeping finished executions for {retain}", err=True)
        sup.serve()
    finally:
        if retention is not None:
            retention.stop()
        if server is not None:
            server.shutdown()
        sup.close()
        if exporter is not None:
            exporter.close()
    click.echo(f"fm daemon: stopped ({sup.stop_reason})", err=True)


@cli.command()
def schema() -> None:
    """Print the workflow JSON Schema."""
    from fm_local.model import workflow_json_schema

    emit_json(workflow_json_schema())
