"""Reads for live screens (the TUI): each runs inside the caller's one short read
transaction on a read-only connection, through an index and with a LIMIT, so a
screen refreshing every second never holds up the supervisor's group commits.
Rows come back as tuples; the caller shapes them. The reads a command shares with
a screen (queue depth, dead letters, a loop's item rows) are in
:mod:`fm_local.store.queries`, used by both.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from fm_local.status import ACTIVE_NODE, TERMINAL_NODE
from fm_local.store.queries import item_filter
from fm_local.store.rows import glob_escape

_TERMINAL_NODE_SQL = "('" + "','".join(TERMINAL_NODE) + "')"
_ACTIVE_NODE_SQL = "('" + "','".join(ACTIVE_NODE) + "')"

# (done, total, unit, started_at, finished_at): an execution's progress, the
# arguments of tui.records.Progress.
ProgressTuple = tuple[Any, ...]


def newest_executions(
    c: sqlite3.Connection, statuses: tuple[str, ...], limit: int
) -> list[tuple[Any, ...]]:
    """(id, workflow, status, priority, created_at, started_at, finished_at) of the
    newest executions in ``statuses``: one range of the (status, created_at) index
    per status, merged — the newest rows without sorting the whole table."""
    newest = " UNION ALL ".join(
        "SELECT * FROM (SELECT id, workflow, status, priority, created_at, started_at, "
        "finished_at FROM executions WHERE status=? ORDER BY created_at DESC LIMIT ?)"
        for _ in statuses
    )
    args = [x for s in statuses for x in (s, limit)]
    return c.execute(f"{newest} ORDER BY created_at DESC LIMIT ?", (*args, limit)).fetchall()


def progress_of(c: sqlite3.Connection, ids: list[str]) -> dict[str, ProgressTuple]:
    """Each execution's progress: the items of its top-level loops (a loop row's
    ``items``, known when it starts) once one has started, else its node
    instances. Nested loops count through the items of the loop around them.

    Cheap on a big execution: the rows and the top-level item rows are counted
    in the (execution_id, path) index alone, the unfinished ones (few) through
    the status index; done = counted - unfinished."""
    found: dict[str, ProgressTuple] = {eid: (0, 0) for eid in ids}
    # A top-level item's path has a "[" and no "."; a top-level node's neither.
    top_item = "instr(path, '.') = 0 AND instr(path, '[') > 0"
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        counted = {
            eid: (int(n), int(items or 0))
            for eid, n, items in c.execute(
                f"SELECT execution_id, count(*), sum({top_item}) FROM node_runs "
                f"WHERE execution_id IN ({marks}) GROUP BY execution_id",
                chunk,
            )
        }
        unfinished = {
            eid: (int(n), int(items or 0))
            for eid, n, items in c.execute(
                f"SELECT execution_id, count(*), sum({top_item}) FROM node_runs "
                f"INDEXED BY node_runs_status WHERE status IN {_ACTIVE_NODE_SQL} "
                f"AND execution_id IN ({marks}) GROUP BY execution_id",
                chunk,
            )
        }
        loops: dict[str, list[tuple[Any, ...]]] = {}
        for eid, *loop in c.execute(
            "SELECT execution_id, items, status, started_at, finished_at FROM node_runs "
            f"WHERE execution_id IN ({marks}) AND instr(path, '.') = 0 "
            "AND instr(path, '[') = 0 AND node_type = 'loop'",
            chunk,
        ):
            loops.setdefault(eid, []).append(tuple(loop))
        for eid in chunk:
            rows, item_rows = counted.get(eid, (0, 0))
            open_rows, open_items = unfinished.get(eid, (0, 0))
            top = loops.get(eid, [])
            # A file from before schema version 2 has no item counts: the
            # item rows are the best total there is.
            total = max(sum(int(items or 0) for items, *_ in top), item_rows)
            if not total:
                found[eid] = (rows - open_rows, rows)
                continue
            starts = [started for _, _, started, _ in top if started is not None]
            ends = [finished for _, _, _, finished in top if finished is not None]
            running = any(status not in TERMINAL_NODE for _, status, _, _ in top)
            found[eid] = (
                item_rows - open_items,
                total,
                "items",
                min(starts, default=None),
                None if running or not ends else max(ends),
            )
    return found


def execution_row(c: sqlite3.Connection, execution_id: str) -> tuple[Any, ...] | None:
    """(id, workflow, status, priority, input, output, error, created_at,
    started_at, finished_at, workflow_id, trace_id) of one execution."""
    return c.execute(
        "SELECT id, workflow, status, priority, input, output, error, created_at, "
        "started_at, finished_at, workflow_id, trace_id FROM executions WHERE id=?",
        (execution_id,),
    ).fetchone()


def workflow_document(c: sqlite3.Connection, workflow_id: int) -> str | None:
    found = c.execute("SELECT document FROM workflows WHERE id=?", (workflow_id,)).fetchone()
    return found[0] if found else None


def node_row(
    c: sqlite3.Connection, execution_id: str, path: str, json_limit: int
) -> tuple[Any, ...] | None:
    """(node_id, node_type, status, attempts, recoveries, worker_pid, queued_at,
    started_at, finished_at, output, output cut?, error, error cut?, trace_id,
    input, input cut?, code, items, lane) of one node instance, each JSON text cut
    at ``json_limit`` characters."""
    return c.execute(
        "SELECT node_id, node_type, status, attempts, recoveries, worker_pid, queued_at, "
        "started_at, finished_at, substr(output, 1, ?), length(output) > ?, "
        "substr(error, 1, ?), length(error) > ?, trace_id, substr(input, 1, ?), "
        "length(input) > ?, code, items, lane FROM node_runs "
        "WHERE execution_id=? AND path=?",
        (json_limit,) * 6 + (execution_id, path),
    ).fetchone()


def node_attempts(
    c: sqlite3.Connection, execution_id: str, path: str, limit: int = 100
) -> list[tuple[Any, ...]]:
    """(seq, attempt, kind, status, error, worker_pid, started_at, finished_at)."""
    return c.execute(
        "SELECT seq, attempt, kind, status, error, worker_pid, started_at, finished_at "
        "FROM attempts WHERE execution_id=? AND path=? ORDER BY seq LIMIT ?",
        (execution_id, path, limit),
    ).fetchall()


def newest_logs(
    c: sqlite3.Connection, execution_id: str, path: str, limit: int
) -> list[tuple[Any, ...]]:
    """(attempt, ts, stream, line) of a node instance's newest log lines, newest first."""
    return c.execute(
        "SELECT attempt, ts, stream, line FROM logs WHERE execution_id=? AND path=? "
        "ORDER BY id DESC LIMIT ?",
        (execution_id, path, limit),
    ).fetchall()


def log_count(c: sqlite3.Connection, execution_id: str, path: str) -> int:
    return int(
        c.execute(
            "SELECT count(*) FROM logs WHERE execution_id=? AND path=?", (execution_id, path)
        ).fetchone()[0]
    )


def queued_executions(c: sqlite3.Connection, limit: int = 100) -> list[tuple[Any, ...]]:
    """(id, workflow, priority, created_at) of executions waiting for a start."""
    return c.execute(
        "SELECT id, workflow, priority, created_at FROM executions "
        "WHERE status='queued' ORDER BY priority DESC, created_at LIMIT ?",
        (limit,),
    ).fetchall()


def completions_per_second(c: sqlite3.Connection, since: int) -> dict[int, int]:
    """Node instances finished in each second from ``since`` on. They come from
    executions that ran in the window: the node_runs lookups then go through the
    (execution_id, path) index."""
    return dict(
        c.execute(
            "SELECT CAST(finished_at AS INTEGER) AS sec, count(*) FROM node_runs "
            "WHERE execution_id IN (SELECT id FROM executions WHERE status IN "
            "('running','paused') OR finished_at >= ?) "
            f"AND finished_at >= ? AND status IN {_TERMINAL_NODE_SQL} GROUP BY sec",
            (since, since),
        ).fetchall()
    )


def loops_in_progress(c: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """(execution_id, workflow, execution status, priority, loop path, items,
    opened, done, started_at) of every loop still running in a running or paused
    execution, oldest first. Unfinished rows (the loops, their open items) are few
    and found through the status index; a loop's item rows are counted in the
    (execution_id, path) index alone; done = opened - still open."""
    loops: list[tuple[Any, ...]] = []
    open_items: dict[tuple[str, str], int] = {}
    for eid, workflow, status, priority, path, node_type, state, items, started in c.execute(
        "SELECT n.execution_id, e.workflow, e.status, e.priority, n.path, n.node_type, "
        "n.status, n.items, n.started_at FROM node_runs n INDEXED BY node_runs_status "
        "JOIN executions e ON e.id = n.execution_id "
        f"WHERE n.status IN {_ACTIVE_NODE_SQL} AND n.node_type IN ('loop', 'item') "
        "AND e.status IN ('running', 'paused') ORDER BY e.created_at, n.started_at, n.id"
    ):
        if node_type == "item":
            key = (eid, path[: path.rfind("[")])
            open_items[key] = open_items.get(key, 0) + 1
        elif state == "running":  # started: its item count is known
            loops.append((eid, workflow, status, int(priority), path, items, started))
    out = []
    for eid, workflow, status, priority, path, items, started in loops:
        opened = int(
            c.execute(
                "SELECT count(*) FROM node_runs WHERE execution_id=? AND path GLOB ? "
                "AND instr(substr(path, ?), '.') = 0",
                (eid, glob_escape(path) + "[[]*]", len(path) + 1),
            ).fetchone()[0]
        )
        done = opened - open_items.get((eid, path), 0)
        total = int(items) if items is not None else opened
        out.append((eid, workflow, status, priority, path, total, opened, done, started))
    return out


def samples_between(c: sqlite3.Connection, since: float, until: float) -> list[tuple[Any, ...]]:
    """(ts, pid, role, cpu_percent, rss_bytes, execution_id, node_path) in time order."""
    return c.execute(
        "SELECT ts, pid, role, cpu_percent, rss_bytes, execution_id, node_path "
        "FROM resource_samples WHERE ts >= ? AND ts <= ? ORDER BY ts, id",
        (since, until),
    ).fetchall()


def newest_sample_time(c: sqlite3.Connection) -> float | None:
    return c.execute("SELECT max(ts) FROM resource_samples").fetchone()[0]


# --- an execution's timeline ---------------------------------------------------------


def frame_children(c: sqlite3.Connection, execution_id: str, prefix: str) -> list[tuple[Any, ...]]:
    """(path, node_type, status, attempts, started_at, finished_at, items) of the
    direct children of a frame (``""`` = top level, ``"loop[3]."`` = an item), in
    the order they came, items excluded."""
    n = len(prefix)
    return c.execute(
        "SELECT path, node_type, status, attempts, started_at, finished_at, items "
        "FROM node_runs WHERE execution_id=? AND path GLOB ? AND node_type != 'item' "
        "AND instr(substr(path, ?), '.') = 0 AND instr(substr(path, ?), '[') = 0 "
        "ORDER BY coalesce(started_at, queued_at, finished_at), id",
        (execution_id, glob_escape(prefix) + "*", n + 1, n + 1),
    ).fetchall()


def item_status_counts(c: sqlite3.Connection, execution_id: str, loop_path: str) -> dict[str, int]:
    where, args = item_filter(execution_id, loop_path)
    return {
        status: n
        for status, n in c.execute(
            f"SELECT status, count(*) FROM node_runs WHERE {where} GROUP BY status", args
        )
    }


def item_columns(
    c: sqlite3.Connection,
    execution_id: str,
    loop_path: str,
    t0: float,
    t1: float,
    width: int,
) -> list[tuple[int | None, int, str, int]]:
    """(first column, last column, status, count) of a loop's items drawn across
    ``width`` columns from ``t0`` to ``t1``, aggregated in SQL (at most width²
    groups come back); the first column is None for an item not started."""
    where, args = item_filter(execution_id, loop_path)
    span = max(t1 - t0, 1e-6)
    w = width
    sql = (
        "SELECT CASE WHEN started_at IS NULL THEN NULL ELSE "
        "min(? - 1, max(0, CAST((started_at - ?) / ? * ? AS INTEGER))) END AS a, "
        "min(? - 1, max(0, CAST((coalesce(finished_at, ?) - ?) / ? * ? AS INTEGER))) AS b, "
        f"status, count(*) FROM node_runs WHERE {where} GROUP BY a, b, status"
    )
    params = (w, t0, span, w, w, t1, t0, span, w, *args)
    return [(a, int(b), s, int(n)) for a, b, s, n in c.execute(sql, params)]


def loop_items(
    c: sqlite3.Connection, execution_id: str, loop_path: str, limit: int
) -> list[tuple[Any, ...]]:
    """(path, status, attempts, started_at, finished_at) of a loop's first items."""
    where, args = item_filter(execution_id, loop_path)
    return c.execute(
        "SELECT path, status, attempts, started_at, finished_at FROM node_runs "
        f"WHERE {where} ORDER BY item_index LIMIT ?",
        (*args, limit),
    ).fetchall()


def item_count(c: sqlite3.Connection, execution_id: str, loop_path: str) -> int:
    where, args = item_filter(execution_id, loop_path)
    return int(c.execute(f"SELECT count(*) FROM node_runs WHERE {where}", args).fetchone()[0])
