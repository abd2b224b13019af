"""``fm logs -f``: an execution's log lines as they are committed, until it ends.

It polls the file, cheaply: nothing is read while ``PRAGMA data_version`` says no
one committed; then the lines after the last one printed (a keyset on the rowid of
``logs``), and the tries from the oldest one still running (on the rowid of
``attempts``), for the failed ones' errors. Whoever writes the file — a daemon, or
an embedded ``fm run`` in another terminal — the lines appear the same way.

Lines reach the file in the supervisor's group commits: a worker process sends
a running try's new lines every 0.5 s, and the rest with its result; on the I/O
lane and on Dask they come with the result (docs/observability.md)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from fm_local.cli.base import TERMINAL, Ctx
from fm_local.cli.render import echo_traceback, traceback_of

POLL = 0.1  # seconds between looks at PRAGMA data_version
BATCH = 1000  # log lines read per query


def _stamp(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def echo_entries(lines: list[dict[str, Any]], failed: list[dict[str, Any]], as_json: bool) -> None:
    """Log lines, and after a failed try's last line its error and traceback, in
    time order (``--json``: one object per log line, JSON Lines)."""
    from fm_local.store import loads

    if as_json:
        for r in lines:
            click.echo(json.dumps(line_json(r)))
        return
    entries: list[tuple[float, int, dict[str, Any]]] = [(r["ts"], 0, r) for r in lines]
    for a in failed:
        entries.append((a["finished_at"] or a["started_at"] or 0.0, 1, a))
    entries.sort(key=lambda e: (e[0], e[1]))
    for ts_, kind, r in entries:
        ts = _stamp(ts_)
        if kind == 0:
            click.echo(f"{ts} {r['path']}#{r['attempt']} {r['stream']}: {r['line']}")
            continue
        e = loads(r["error"]) or {}
        first, *rest = str(e.get("message") or "").splitlines() or [""]
        click.echo(f"{ts} {r['path']}#{r['seq']} {r['status']}: {e.get('code')}: {first}")
        for line in rest:
            click.echo(f"    {line}")
        tb = traceback_of(e)
        if tb is not None:
            echo_traceback(tb)


def line_json(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": r["path"],
        "attempt": r["attempt"],
        "ts": r["ts"],
        "stream": r["stream"],
        "line": r["line"],
    }


def follow(ctx: Ctx, row: dict[str, Any], node_path: str | None) -> int:
    """Print the lines there are, then new ones as they are committed, until the
    execution ends; return its exit code (0 succeeded, 1 otherwise). Ctrl-C: 130;
    a closed pipe: 141, as SIGPIPE."""
    try:
        return _follow(ctx, row, node_path)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (fm logs -f ID | grep -m1 ready): stop as quietly as a
        # process SIGPIPE ends; stdout goes to /dev/null so its last flush is silent.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


def _follow(ctx: Ctx, row: dict[str, Any], node_path: str | None) -> int:
    from fm_local.cli.run import exit_code_for
    from fm_local.lock import is_served
    from fm_local.store import loads

    store = ctx.store()
    eid = row["id"]
    # Where the keysets start, read before the lines already there: a line or try
    # committed in between is read twice at worst, and printed once.
    last_log, try_from = store.follow_marks(eid)
    status = store.get_execution(eid)["status"]
    lines = store.logs(eid, node_path)
    failed = store.failed_attempts(eid, node_path)
    reported = {(a["path"], a["seq"]) for a in failed}
    echo_entries(lines, failed, ctx.json)
    last_log = max([last_log, *(r["id"] for r in lines)])
    if status not in TERMINAL and not is_served(ctx.db):
        click.echo(
            f"note: no supervisor serves {ctx.db}; execution {eid} waits until one does "
            "(start one with: fm daemon)",
            err=True,
        )
    seen = store.data_version()
    while status not in TERMINAL:
        time.sleep(POLL)
        version = store.data_version()
        if version == seen:
            continue
        seen = version
        # The status first: once it is final, every line was committed before it.
        ex = store.get_execution(eid)
        status = ex["status"] if ex is not None else "cancelled"
        new: list[dict[str, Any]] = []
        while True:
            batch = store.logs_after(eid, last_log, node_path, BATCH)
            new.extend(batch)
            if batch:
                last_log = batch[-1]["id"]
            if len(batch) < BATCH:
                break
        tries = store.attempts_from(eid, try_from, node_path)
        if tries:
            open_ids = [a["id"] for a in tries if a["finished_at"] is None]
            try_from = min(open_ids) if open_ids else tries[-1]["id"] + 1
        fresh = [
            a
            for a in tries
            if a["status"] in ("failed", "timed_out")
            and a["error"] is not None
            and (a["path"], a["seq"]) not in reported
        ]
        reported.update((a["path"], a["seq"]) for a in fresh)
        echo_entries(new, fresh, ctx.json)
    end = store.get_execution(eid) or row
    took = (end["finished_at"] or time.time()) - (end["started_at"] or end["created_at"])
    err = loads(end["error"])
    line = f"execution {eid} {end['status']} in {took:.2f}s"
    if isinstance(err, dict) and err.get("message"):
        line += f": {err.get('message')}"
    click.echo(line, err=True)
    sys.stdout.flush()
    return exit_code_for(end["status"])
