"""Reading executions and the engine: ``fm ls``, ``fm show``, ``fm output``,
``fm wait``, ``fm logs``, ``fm queue`` and ``fm workers`` (``fm timeline`` and
``fm trace`` are in tracing.py)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from fm_local.cli.base import (
    ACTIVE,
    TERMINAL,
    Ctx,
    cli,
    find_execution,
    json_option,
    pass_ctx,
    read_only,
)
from fm_local.cli.render import (
    duration,
    echo_traceback,
    emit_json,
    fmt_time,
    traceback_of,
)
from fm_local.cli.run import exit_code_for, report_end, wait_for_end
from fm_local.errors import EXIT_FAILED, FmError

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


@cli.command(name="ls")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    metavar="STATUS[,STATUS]",
    help=f"Only executions with this status (repeatable, or a comma list): {', '.join([*ACTIVE, *TERMINAL])}.",
)
@click.option(
    "--workflow",
    metavar="NAME",
    help="Only executions of this workflow: its name, or a glob pattern (etl-*).",
)
@click.option(
    "--since",
    metavar="WHEN",
    help="Only executions submitted since then: a duration back from now (30m, 2h, 7d) "
    "or an ISO date/time (2026-12-03, 2026-12-03T14:00; local time unless it says).",
)
@click.option(
    "--limit",
    type=click.IntRange(0, None),
    default=20,
    show_default=True,
    help="At most this many, newest first (0: all).",
)
@json_option
@pass_ctx
@read_only
def ls_cmd(
    ctx: Ctx,
    statuses: tuple[str, ...],
    workflow: str | None,
    since: str | None,
    limit: int,
) -> None:
    """List executions, newest first. Running ones show their loop progress."""
    from fm_local.cli.filters import parse_since, parse_statuses
    from fm_local.lock import is_served
    from fm_local.progress import headline
    from fm_local.store import loads

    wanted = parse_statuses(statuses, (*ACTIVE, *TERMINAL), "--status")
    after = None if since is None else parse_since(since, time.time())
    store = ctx.store()
    rows = store.list_executions(status=wanted, limit=limit or None, workflow=workflow, since=after)
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
        emit_json(
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
        filtered = wanted or workflow or since is not None
        click.echo("no executions" + (" match these filters" if filtered else ""))
        return
    waiting = not served
    head = f"{'ID':<13} {'WORKFLOW':<24} {'STATUS':<10} {'STARTED':<19} {'SECONDS':>8}"
    click.echo(head + ("  PROGRESS" if any(progress.values()) else ""))
    for r in rows:
        started = fmt_time(r["started_at"])
        took = duration(r)
        st = r["status"] + ("*" if waiting and r["status"] in ACTIVE else "")
        p = progress.get(r["id"])
        click.echo(
            f"{r['id']:<13} {r['workflow'][:24]:<24} {st:<10} {started:<19} {took:>8}"
            + (f"  {p.text()}" if p else "")
        )
    if waiting:
        click.echo(f"* waiting {NO_SUPERVISOR}")
    if limit and len(rows) == limit:
        click.echo(f"(the newest {limit}; --limit N shows more, --limit 0 all)")


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
        "lane": n.get("lane"),
        "port": n["port"],
        "code": n.get("code"),
        "items": n.get("items"),
        # fm retry: the execution that computed this result, reused here (not run)
        "reusedFrom": n.get("reused_from"),
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
    from fm_local.store.retry import retries_of

    row = find_execution(ctx, execution)
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
        emit_json(
            {
                **execution_record(row),
                "retry": loads(row.get("retry")),
                "retriedBy": retries_of(store, row["id"]),
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
    if row.get("retry_of"):
        how = loads(row.get("retry")) or {}
        mode = f"from node {', '.join(how['nodes'])}" if how.get("nodes") else "from failure"
        click.echo(
            f"retry of   {row['retry_of']}  ({mode}; {how.get('reused', 0)} node results reused)"
        )
    retried = retries_of(store, row["id"])
    if retried:
        click.echo(f"retried by {', '.join(retried[-5:])}")
    click.echo(
        f"started    {fmt_time(row['started_at'])}   finished {fmt_time(row['finished_at'])}   ({duration(row)} s)"
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
    # A Dask worker's lane (dask@HOST:PORT) is longer than process/io.
    lw = max([7, *(len(n["lane"]) for n in nodes if n.get("lane"))])
    click.echo(
        f"{'PATH':<32} {'STATUS':<10} {'ATT':>3} {'MS':>8} {'TRACE':<9} {'LANE':<{lw}} "
        f"{code_head}ERROR"
    )
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
        if n.get("reused_from"):
            etext = f"reused from {n['reused_from']}" + (f"; {etext}" if etext else "")
        if len(etext) > 80:
            etext = etext[:79] + "…"
        # The node's trace id is the execution's plus its branch suffix (SPEC §9).
        trace = (n["trace_id"] or "")[len(root) :] if (n["trace_id"] or "").startswith(root) else ""
        code = f"{(n.get('code') or '-')[:cw]:<{cw}} " if cw else ""
        click.echo(
            f"{n['path'][:32]:<32} {n['status']:<10} {n['attempts']:>3} {ms:>8} "
            f"{trace or '-':<9} {n.get('lane') or '-':<{lw}} {code}{etext}".rstrip()
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
        tb = None if n["node_type"] == "item" and not summarize else traceback_of(e)
        where = None
        if tb is None and summarize and n["node_type"] == "loop":
            found = ctx.store().failed_with_traceback(row["id"], n["path"])
            if found:
                tb = traceback_of(loads(found[0]["error"]))
                where = found[0]["path"]
        if tb is None:
            continue
        if printed >= TRACEBACKS:
            left_out += 1
            continue
        if where is not None:
            click.echo(f"    {where}:")
        echo_traceback(tb, "      ")
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

    row = find_execution(ctx, execution)
    if row["status"] != "succeeded":
        click.echo(json.dumps(loads(row["output"]), indent=2))
        raise FmError(
            f"execution {row['id']} is {row['status']}", exit_code_for(row["status"]) or EXIT_FAILED
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
    row = find_execution(ctx, execution)
    sys.exit(report_end(ctx, wait_for_end(ctx, row["id"], timeout)))


@cli.command()
@click.argument("execution")
@click.option("--node", "node_path", help="Only this node path (and what is under it).")
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Then print new lines as they are committed, until the execution ends; exit "
    "like fm wait (0 succeeded, 1 failed, cancelled or timed out; Ctrl-C: 130). With "
    "--json: one JSON object per line (JSON Lines).",
)
@json_option
@pass_ctx
@read_only
def logs(ctx: Ctx, execution: str, node_path: str | None, follow: bool) -> None:
    """Captured log lines of an execution's node attempts. A failed try's error
    follows its lines, with its traceback.

    A node running in a worker process of its own (a sync python function)
    sends its new lines every 0.5 s while it runs, so --follow shows them as they
    come and a try stopped by a timeout or a cancel keeps what it printed; on the
    I/O lane and on Dask a try's lines are written when it ends
    (docs/observability.md)."""
    from fm_local.cli.follow import echo_entries, line_json

    row = find_execution(ctx, execution)
    if follow:
        from fm_local.cli.follow import follow as follow_logs

        sys.exit(follow_logs(ctx, row, node_path))
    lines = ctx.store().logs(row["id"], node_path)
    if ctx.json:
        emit_json([line_json(r) for r in lines])
        return
    echo_entries(lines, ctx.store().failed_attempts(row["id"], node_path), False)


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
    waiting = store.queued_execution_count()
    dead = store.dead_letter_count()
    if ctx.json:
        emit_json({"tasks": rows, "queuedExecutions": waiting, "deadLetters": dead})
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


@cli.command()
@json_option
@pass_ctx
@read_only
def workers(ctx: Ctx) -> None:
    """The supervisor, its workers and the machine: CPU, RSS, current node."""
    rows = ctx.store().latest_samples()
    if ctx.json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"no recent resource samples: no supervisor serves {ctx.db}")
        return
    click.echo(f"{'ROLE':<11} {'PID':>7} {'CPU%':>6} {'RSS MB':>8}  NODE")
    for r in rows:
        node = f"{r['execution_id']} {r['node_path']}" if r["node_path"] else "-"
        if r["execution_id"] is None:
            node = r["node_path"] or "-"  # a process running no node (the commit process)
        if r["role"] == "io-worker":
            node = f"I/O lane: {r['node_path'] or '0 tasks'}"
        elif r["role"] == "dask":
            node = f"cluster {r['node_path']}"
            click.echo(f"{'dask':<11} {'-':>7} {'-':>6} {'-':>8}  {node}")
            continue
        pid = r["pid"] if r["pid"] is not None else "-"
        click.echo(
            f"{r['role']:<11} {pid:>7} {r['cpu_percent']:>6.1f} {r['rss_bytes'] / 2**20:>8.1f}  {node}"
        )
