"""``fm explain EXECUTION [PATH]``: why node instances are not running (docs/explain.md)."""

from __future__ import annotations

from typing import Any

import click

from fm_local.cli.base import Ctx, cli, json_option, pass_ctx
from fm_local.cli.render import emit_json

PATH_WIDTH = (32, 48)  # the PATH column: at least as fm show's, long paths cut beyond


def _open_store(ctx: Ctx) -> Any:
    """Writable when a supervisor serves the file (the request is a row), else
    read-only (the rows alone speak; a read-only copy works)."""
    from fm_local.errors import FmError
    from fm_local.lock import is_served

    if is_served(ctx.db) is not None:
        try:
            return ctx.store()
        except FmError:
            ctx.close()  # a file this process cannot write: read it
    ctx.readonly = True
    return ctx.store()


@cli.command()
@click.argument("execution")
@click.argument("path", required=False)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Seconds to wait for the supervisor's answer (default 3).",
)
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="Also list the node instances that succeeded or were skipped (listed anyway "
    "under PATH, and always in --json).",
)
@json_option
@pass_ctx
def explain(
    ctx: Ctx, execution: str, path: str | None, timeout: float | None, show_all: bool
) -> None:
    """Why each node instance of an execution is not running (or only PATH and what
    it covers: a loop's path covers its items): waiting for dependencies, queued,
    held by maxConcurrency, a pool, a rate limit, a batch, a retry back-off, paused,
    finished (how), or no supervisor serving the database. The supervisor answers
    from its own state; without one, the rows alone speak and say so."""
    from fm_local import explain as ex_mod

    store = _open_store(ctx)
    got = ex_mod.explain(
        store,
        ctx.db,
        execution,
        path,
        timeout=ex_mod.ASK_TIMEOUT if timeout is None else timeout,
    )
    if ctx.json:
        emit_json([r.as_json() for r in got.reasons])
        return
    _print(got, path, show_all or path is not None)


# What a person on call reads past unless asked: instances that ended well.
QUIET_STATUSES = ("succeeded", "skipped")


def _print(got: Any, path: str | None, show_all: bool) -> None:
    row = got.execution
    if got.source == "supervisor":
        source = f"explained by the supervisor (pid {got.served_by})"
    else:
        source = "from the database alone"
    click.echo(f"execution {row['id']} ({row['workflow']}) {row['status']}: {source}")
    if got.note:
        click.echo(f"note: {got.note}")
    reasons = got.reasons
    quiet = 0
    if not show_all:
        reasons = [r for r in got.reasons if r.status not in QUIET_STATUSES]
        quiet = len(got.reasons) - len(reasons)
    if not reasons:
        click.echo("nothing to explain" + (f" under {path}" if path else ""))
    else:
        lo, hi = PATH_WIDTH
        width = min(max(lo, *(len(r.path) for r in reasons)), hi)
        rw = max(6, *(len(r.reason) for r in reasons))
        click.echo(f"{'PATH':<{width}} {'STATUS':<10} {'REASON':<{rw}} DETAIL")
        for r in reasons:
            p = r.path if len(r.path) <= width else r.path[: width - 1] + "…"
            click.echo(f"{p:<{width}} {r.status:<10} {r.reason:<{rw}} {r.detail}".rstrip())
    if got.running and not path:
        what = "node instance" if got.running == 1 else "node instances"
        click.echo(f"({got.running} {what} running: fm show {row['id']})")
    if quiet:
        what = "node instance" if quiet == 1 else "node instances"
        click.echo(f"({quiet} {what} succeeded or skipped, not listed: --all)")
