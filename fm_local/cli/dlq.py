"""``fm dlq``: the dead-letter queue's commands (``ls``, ``show``, ``replay``,
``purge``)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from fm_local.cli.base import Ctx, cli, json_option, pass_ctx, read_only
from fm_local.cli.render import emit_json
from fm_local.errors import FmError, UsageError
from fm_local.status import ACTIVE_EXEC


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
        emit_json([_dead_json(r) for r in rows])
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
    emit_json(_dead_json(_dead_letter(ctx, dead_letter_id)))


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
    if ex["status"] in ACTIVE_EXEC:
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
