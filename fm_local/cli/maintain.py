"""Store care for the person on call: ``fm verify`` (the store's invariants) and
``fm prune`` (retention: delete old finished executions, reclaim the space)."""

from __future__ import annotations

import sys

import click

from fm_local.cli.base import Ctx, cli, json_option, pass_ctx, read_only
from fm_local.cli.render import emit_json
from fm_local.errors import EXIT_FAILED

_CHECK_NAMES = (
    "integrity",
    "foreign_keys",
    "final_results",
    "terminal_final",
    "queue",
    "timers",
    "counts",
    "orphans",
)


@cli.command()
@click.option(
    "--quick",
    is_flag=True,
    help="PRAGMA quick_check instead of integrity_check: faster on a big file, but "
    "does not compare indexes with their tables.",
)
@click.option(
    "--check",
    "only",
    multiple=True,
    type=click.Choice(_CHECK_NAMES),
    metavar="NAME",
    help="Run only this check (repeatable): " + ", ".join(_CHECK_NAMES) + ".",
)
@json_option
@pass_ctx
@read_only
def verify(ctx: Ctx, quick: bool, only: tuple[str, ...]) -> None:
    """Check the store's invariants; one line per violation (exit 1 if any, 3 if
    the file cannot be read). Read-only, in one read transaction: safe while a
    daemon serves the file. The checks: docs/maintenance.md."""
    from fm_local.store.verify import verify as run_checks

    found = run_checks(ctx.db, quick=quick, checks=only or None)
    if ctx.json:
        emit_json([v.as_json() for v in found])
    else:
        for v in found:
            click.echo(v.line())
        n = len(only or _CHECK_NAMES)
        if found:
            click.echo(f"{ctx.db}: {_n(len(found), 'violation')} ({n} checks)", err=True)
        else:
            click.echo(f"{ctx.db}: ok ({n} checks)")
    if found:
        sys.exit(EXIT_FAILED)


def _n(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


@cli.command()
@click.option(
    "--older-than",
    required=True,
    metavar="AGE",
    help="Delete executions that finished more than this long ago: a number and a "
    "unit s/m/h/d/w (7d, 12h, 30m).",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    metavar="STATUS",
    help="Only executions with this final status: succeeded, failed, cancelled, "
    "timed_out (repeatable, or a comma list; default: all four).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--no-vacuum",
    is_flag=True,
    help="Do not give the freed space back to the file system.",
)
@json_option
@pass_ctx
def prune(
    ctx: Ctx, older_than: str, statuses: tuple[str, ...], dry_run: bool, no_vacuum: bool
) -> None:
    """Delete finished executions, with every row they own, in short transactions
    (a daemon serving the file goes on), then reclaim the space. Running, queued and
    paused executions are never touched."""
    from fm_local.store.prune import parse_age, parse_statuses, prune_db

    age = parse_age(older_than)
    wanted = parse_statuses(statuses)
    r = prune_db(ctx.db, age, wanted, dry_run=dry_run, vacuum=not no_vacuum)
    if ctx.json:
        emit_json(r.as_json())
        return
    verb = "would delete" if dry_run else "deleted"
    tables = ", ".join(f"{t} {n:,}" for t, n in r.rows.items() if n and t != "executions")
    click.echo(
        f"{verb} {_n(r.executions, 'execution')} ({_n(r.total_rows, 'row')}"
        + (f": {tables}" if tables else "")
        + f") and {_n(r.workflows, 'workflow')} no execution uses"
    )
    if not dry_run:
        click.echo(
            f"space: {r.vacuum}; reclaimed {_mb(r.reclaimed_bytes)}; file "
            f"{_mb(r.file_bytes_before)} -> {_mb(r.file_bytes_after)}; "
            f"{r.transactions} transactions, the longest {r.longest_txn_ms:.0f} ms"
        )
