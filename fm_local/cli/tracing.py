"""An execution in time: ``fm timeline`` (bars on a shared axis) and ``fm trace``
(Chrome/Perfetto trace events or OpenTelemetry spans)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from fm_local.cli.base import Ctx, cli, find_execution, json_option, pass_ctx, read_only
from fm_local.cli.render import emit_json

TIMELINE_LIMIT = 200  # bars fm timeline draws before it summarizes


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

    row = find_execution(ctx, execution)
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
        emit_json(
            [
                {
                    "path": n["path"],
                    "status": n["status"],
                    "startedAt": n["started_at"],
                    "finishedAt": n["finished_at"],
                    "workerPid": n["worker_pid"],
                    "lane": n.get("lane"),
                }
                for n in nodes
            ]
        )
        return
    click.echo(render_timeline(row, nodes, width=width, limit=None if show_all else TIMELINE_LIMIT))


@cli.command()
@click.argument("execution")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["chrome", "otlp-json"]),
    default="chrome",
    show_default=True,
    help="chrome: Chrome/Perfetto trace-event JSON. otlp-json: an OpenTelemetry OTLP/JSON "
    "ExportTraceServiceRequest, for Jaeger, Tempo or an OpenTelemetry collector "
    "(docs/observability.md).",
)
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
    """An execution's trace: Chrome/Perfetto trace-event JSON, or OpenTelemetry
    spans (OTLP/JSON: one span for the execution, one per node instance that
    started, one per try of a node that had several)."""
    row = find_execution(ctx, execution)
    store = ctx.store()
    if fmt == "otlp-json":
        import socket

        from fm_local.otlp import otlp_trace

        data = otlp_trace(
            row,
            store.node_runs(row["id"]),
            store.attempts(row["id"]),
            time.time(),
            host=socket.gethostname(),
        )
        count = f"{len(data['resourceSpans'][0]['scopeSpans'][0]['spans'])} spans"
    else:
        from fm_local.timeline import chrome_trace

        data = chrome_trace(row, store.node_runs(row["id"]))
        count = f"{len(data['traceEvents'])} events"
    text = json.dumps(data)
    if out:
        Path(out).write_text(text)
        click.echo(f"wrote {out} ({count})", err=True)
    else:
        click.echo(text)
