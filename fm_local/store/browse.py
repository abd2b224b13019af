"""What the TUI reads as a person browses: an execution's log lines after a line
id, executions a search matches, the next failed item of a loop, a page of loop
items by path. Plain reads on a read-only connection the caller holds (one
snapshot); the TUI shapes the rows (tui/data.py)."""

from __future__ import annotations

import sqlite3
from typing import Any

from fm_local.store.queries import item_filter
from fm_local.store.rows import glob_escape

FAILED = "status IN ('failed', 'timed_out')"


def log_scope(execution_id: str, path: str | None) -> tuple[str, tuple[Any, ...]]:
    """The rows of an execution's logs (or attempts) at or under ``path``."""
    if not path:
        return "execution_id=?", (execution_id,)
    return (
        "execution_id=? AND (path=? OR path GLOB ? OR path GLOB ?)",
        (execution_id, path, glob_escape(path) + ".*", glob_escape(path) + "[[]*"),
    )


def execution_status(c: sqlite3.Connection, execution_id: str) -> str | None:
    found = c.execute("SELECT status FROM executions WHERE id=?", (execution_id,))
    return (found.fetchone() or (None,))[0]


def log_lines(
    c: sqlite3.Connection,
    execution_id: str,
    path: str | None,
    after: int | None,
    tail: int,
    batch: int,
) -> tuple[list[tuple[Any, ...]], int]:
    """(lines ``(id, path, attempt, ts, stream, line)``, how many earlier ones were
    left out): the newest ``tail`` when ``after`` is None, else up to ``batch``
    lines after line id ``after``."""
    scope, args = log_scope(execution_id, path)
    if after is not None:
        rows = c.execute(
            "SELECT id, path, attempt, ts, stream, line FROM logs "
            f"WHERE {scope} AND id > ? ORDER BY id LIMIT ?",
            (*args, after, batch),
        ).fetchall()
        return rows, 0
    rows = c.execute(
        "SELECT id, path, attempt, ts, stream, line FROM logs "
        f"WHERE {scope} ORDER BY id DESC LIMIT ?",
        (*args, tail),
    ).fetchall()[::-1]
    earlier = 0
    if len(rows) == tail:
        earlier = int(
            c.execute(
                f"SELECT count(*) FROM logs WHERE {scope} AND id < ?", (*args, rows[0][0])
            ).fetchone()[0]
        )
    return rows, earlier


def failed_tries(
    c: sqlite3.Connection, execution_id: str, path: str | None
) -> list[tuple[Any, ...]]:
    """``(id, path, seq, status, error, started_at, finished_at)`` of the failed
    tries at or under ``path`` that recorded an error, oldest first."""
    scope, args = log_scope(execution_id, path)
    return c.execute(
        "SELECT id, path, seq, status, error, started_at, finished_at FROM attempts "
        f"WHERE {scope} AND status IN ('failed', 'timed_out') "
        "AND error IS NOT NULL ORDER BY id",
        args,
    ).fetchall()


# The executions' columns a search word matches (tui/search.py): the error is
# its JSON text (code, message, traceback).
SEARCHED = {"status": "status", "workflow": "workflow", "id": "id", "error": "coalesce(error, '')"}


def like_pattern(text: str) -> str:
    """``%text%`` with LIKE's wildcards escaped (ESCAPE '\\')."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_condition(words: list[tuple[str, str | None]]) -> tuple[str, list[str]]:
    """One SQL condition (``1`` for no words) and its arguments: every ``(text,
    field)`` must match, case-insensitively, as a substring of its field (any of
    SEARCHED when ``field`` is None)."""
    parts: list[str] = []
    args: list[str] = []
    for text, field in words:
        fields = [field] if field else list(SEARCHED)
        ors = [f"{SEARCHED[f]} LIKE ? ESCAPE '\\'" for f in fields]
        parts.append("(" + " OR ".join(ors) + ")")
        args.extend([like_pattern(text)] * len(fields))
    return (" AND ".join(parts) or "1"), args


def search_executions(
    c: sqlite3.Connection,
    statuses: tuple[str, ...],
    words: list[tuple[str, str | None]],
    limit: int,
) -> list[tuple[Any, ...]]:
    """Like ``live.newest_executions``, only those every search word matches
    (:func:`search_condition`)."""
    cond, args = search_condition(words)
    marks = ",".join("?" * len(statuses))
    return c.execute(
        "SELECT id, workflow, status, priority, created_at, started_at, finished_at "
        f"FROM executions WHERE status IN ({marks}) AND {cond} "
        "ORDER BY created_at DESC LIMIT ?",
        (*statuses, *args, limit),
    ).fetchall()


def first_failed_node(c: sqlite3.Connection, execution_id: str) -> str | None:
    """The first failed node instance to end: a node that ran (not a loop or item
    failed by its items), else whatever failed."""
    for kinds in ("node_type NOT IN ('loop', 'item')", "1"):
        found = c.execute(
            f"SELECT path FROM node_runs WHERE execution_id=? AND {FAILED} AND {kinds} "
            "ORDER BY coalesce(finished_at, started_at), id LIMIT 1",
            (execution_id,),
        ).fetchone()
        if found is not None:
            return str(found[0])
    return None


def failed_item(
    c: sqlite3.Connection, execution_id: str, loop: str, index: int | None, forward: bool
) -> str | None:
    """The path of the next (``forward``) or previous failed item of ``loop`` after
    / before item ``index``; with ``index`` None the first (or last) of all."""
    where, args = item_filter(execution_id, loop)
    order = "" if forward else " DESC"
    if index is None:
        found = c.execute(
            f"SELECT path FROM node_runs WHERE {where} AND {FAILED} "
            f"ORDER BY item_index{order} LIMIT 1",
            args,
        ).fetchone()
    else:
        found = c.execute(
            f"SELECT path FROM node_runs WHERE {where} AND {FAILED} AND item_index "
            f"{'>' if forward else '<'} ? ORDER BY item_index{order} LIMIT 1",
            (*args, index),
        ).fetchone()
    return None if found is None else str(found[0])


def item_rows(
    c: sqlite3.Connection, execution_id: str, item_paths: list[str]
) -> list[tuple[Any, ...]]:
    """``(path, status, attempts, started_at, finished_at, item_index)`` of the
    item rows at ``item_paths`` (those that exist), read by the (execution_id,
    path) index, 500 paths a statement."""
    rows: list[tuple[Any, ...]] = []
    for at in range(0, len(item_paths), 500):
        chunk = item_paths[at : at + 500]
        rows += c.execute(
            "SELECT path, status, attempts, started_at, finished_at, item_index "
            f"FROM node_runs WHERE execution_id=? AND path IN ({','.join('?' * len(chunk))})",
            (execution_id, *chunk),
        ).fetchall()
    return rows
