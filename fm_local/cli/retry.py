"""``fm retry``: a new execution of an ended one's workflow and input that reuses
the results recorded then and runs the rest (docs/retry.md). The planning is
:mod:`fm_local.retry`; the copy of the reused results, with the new execution in
one transaction, :mod:`fm_local.store.retry`; the run, ``fm run``'s."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from fm_local.cli.base import ACTIVE, Ctx, cli, find_execution, json_option, pass_ctx
from fm_local.cli.render import emit_json
from fm_local.cli.run import (
    durability_option,
    io_concurrency_option,
    max_worker_memory_option,
    run_to_end,
)
from fm_local.errors import FmError, UsageError


@cli.command()
@click.argument("execution")
@click.option(
    "--from-failure",
    "from_failure",
    is_flag=True,
    help="Reuse every node instance and loop item that succeeded; run the failed, "
    "cancelled, timed-out and never-run ones and everything downstream (the default).",
)
@click.option(
    "--node",
    "nodes",
    multiple=True,
    metavar="PATH",
    help="Run this node again (every instance: loop.step; one: loop[3].step; one item: "
    "loop[3]) and everything downstream of it; reuse the rest that succeeded. Repeatable.",
)
@click.option(
    "--force",
    is_flag=True,
    help="A task module changed since: run again every node instance that ran it.",
)
@click.option(
    "--reuse-changed",
    is_flag=True,
    help="A task module changed since: keep the results it computed then anyway.",
)
@click.option(
    "--detach",
    is_flag=True,
    help="Queue the retry and print its id (like fm submit); a daemon runs it.",
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
def retry(
    ctx: Ctx,
    execution: str,
    from_failure: bool,
    nodes: tuple[str, ...],
    force: bool,
    reuse_changed: bool,
    detach: bool,
    workers: int | None,
    durability: str,
    max_worker_memory: int | None,
    io_concurrency: int,
) -> None:
    """Run an ended execution again, reusing what succeeded (docs/retry.md).

    A new execution of the same workflow document (as recorded) and the same input:
    node instances and loop items that succeeded are not run again — their recorded
    outputs are reused — and the rest runs. Waits for the end like fm run (on the
    daemon if one serves the DB, else embedded); --detach only queues it."""
    from fm_local import retry as planning
    from fm_local.lock import is_served
    from fm_local.store import retry as store_retry

    if from_failure and nodes:
        raise UsageError("give --from-failure or --node, not both")
    if force and reuse_changed:
        raise UsageError("give --force or --reuse-changed, not both")
    store = ctx.store()
    old = find_execution(ctx, execution)
    oid = old["id"]
    if old["status"] in ACTIVE:
        first = (
            f"fm resume {oid}, then fm wait {oid}"
            if old["status"] == "paused"
            else (f"fm wait {oid}")
        )
        raise UsageError(
            f"execution {oid} is {old['status']}: retry it once it has ended "
            f"({first}), or end it first (fm cancel {oid})"
        )
    wf_row = store.get_workflow(old["workflow_id"])
    if wf_row is None:
        raise FmError(f"the workflow of execution {oid} is missing from {ctx.db}")
    workflow = _recorded_workflow(oid, wf_row["document"])
    targets = []
    for text in nodes:
        try:
            target = planning.parse_target(text)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        why = planning.target_node(workflow.nodes, target)
        if why is not None:
            raise UsageError(f"--node {text}: {why} (workflow '{workflow.name}')")
        targets.append(target)
    rows = store_retry.old_rows(store, oid)
    for text, target in zip(nodes, targets, strict=True):
        why = planning.item_out_of_range(target, rows)
        if why is not None:
            raise UsageError(f"--node {text}: {why}")
    folder = planning.folder_of(wf_row)
    changed = planning.changed_modules(folder, {r.code for r in rows if r.code})
    plan = planning.plan(
        workflow,
        rows,
        targets=targets,
        changed_codes=set(changed),
        rerun_changed=force,
        compensated=store_retry.compensated_paths(store, oid),
    )
    if plan.changed_used and not reuse_changed:
        what = "; ".join(
            f"{changed[code]} since execution {oid} ran, and the retry would reuse what "
            f"it computed ({path})"
            for code, path in sorted(plan.changed_used.items())
        )
        raise UsageError(
            f"task module {what}: fm retry --force runs again every node instance that "
            "ran a changed module; --reuse-changed keeps their results"
        )
    for code in sorted(changed):
        if force:
            click.echo(
                f"warning: {changed[code]} since execution {oid}: node instances that "
                "ran it run again (--force)",
                err=True,
            )
        elif reuse_changed:
            click.echo(
                f"warning: {changed[code]} since execution {oid}: results it computed "
                "then are reused (--reuse-changed)",
                err=True,
            )
    note = planning.document_change(wf_row["path"], wf_row["document"])
    if note is not None:
        click.echo(
            f"note: {note} since execution {oid} ran; the retry runs the workflow "
            f"document recorded then (to run the file as it is now: fm run {wf_row['path']})",
            err=True,
        )
    how: dict[str, Any] = {
        "of": oid,
        "from": "node" if nodes else "failure",
        "nodes": list(nodes),
        "force": force,
        "reuseChanged": reuse_changed,
        "reused": len(plan.paths),
        "loops": plan.loops,
    }
    eid, copied = store_retry.create_retry(store, old, plan.paths, how)
    extra = {"retryOf": oid, "reused": copied, "reusedItems": plan.items}
    if not ctx.json:
        items = f" ({plan.items} of them loop items)" if plan.items else ""
        total = sum(plan.loops.values())
        again = f"{total - plan.items} of {total} loop items and " if total else ""
        click.echo(
            f"retry {eid} of {oid}: reusing {copied} recorded node results{items}; "
            f"{again}the rest run again",
            err=True,
        )
    if detach:
        if ctx.json:
            emit_json({"id": eid, **extra, "status": "queued"})
        else:
            click.echo(eid)
        if not is_served(ctx.db):
            click.echo(
                f"note: no supervisor serves {ctx.db}; execution {eid} runs when one "
                "does (start one with: fm daemon)",
                err=True,
            )
        return
    sys.exit(
        run_to_end(
            ctx,
            eid,
            workers=workers,
            durability=durability,
            max_worker_memory=max_worker_memory,
            io_concurrency=io_concurrency,
            extra=extra,
        )
    )


def _recorded_workflow(oid: str, document: str) -> Any:
    """The workflow model of the recorded document (as the daemon loads it)."""
    from fm_local.model import Workflow

    try:
        return Workflow.model_validate(json.loads(document))
    except Exception as exc:  # noqa: BLE001 - a document this version cannot load
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FmError(
            f"the workflow document recorded for execution {oid} does not load in this "
            f"version of fm_local ({first}); run the workflow afresh (fm run FILE)"
        ) from None
