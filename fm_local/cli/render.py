"""Output helpers several commands share: ``--json`` emission, times and
durations, and the Python tracebacks recorded with a failed node's error."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from fm_local.cli.base import Ctx


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def duration(r: dict[str, Any]) -> str:
    if not r["started_at"]:
        return "-"
    end = r["finished_at"] or time.time()
    return f"{end - r['started_at']:.2f}"


def traceback_of(error: Any) -> str | None:
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


def echo_traceback(tb: str, indent: str = "    ", err: bool = False) -> None:
    for line in tb.rstrip("\n").splitlines():
        click.echo(indent + line, err=err)


def echo_failed_traceback(ctx: Ctx, row: dict[str, Any], err: Any) -> None:
    """On stderr, the traceback of the node that failed the execution: the one its
    error wraps, else the first failed node under the node it names (a loop's item)."""
    from fm_local.store import loads

    tb = traceback_of(err)
    if tb is None:
        where = err.get("nodePath") if isinstance(err, dict) else None
        store = ctx.store()
        found = store.failed_with_traceback(row["id"], where) or (
            store.failed_with_traceback(row["id"]) if where else []
        )
        if not found:
            return
        tb = traceback_of(loads(found[0]["error"]))
        if tb is None:
            return
        click.echo(f"  {found[0]['path']}:", err=True)
    echo_traceback(tb, err=True)
