"""Read queries: what the CLI, the HTTP API, the TUI and the supervisor read.
:class:`Queries` is a part of :class:`fm_local.store.Store` (its reading half)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Container, Iterator
from typing import Any

from fm_local.store.rows import (
    _at_or_under,
    glob_escape,
)


def item_filter(execution_id: str, loop_path: str) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause (and its arguments) of a loop's item rows: ``loop[3]``,
    not ``loop[3].step``."""
    return (
        "execution_id=? AND path GLOB ? AND node_type='item' AND instr(substr(path, ?), '.') = 0",
        (execution_id, glob_escape(loop_path) + "[[]*]", len(loop_path) + 1),
    )


def queue_depth(c: sqlite3.Connection) -> list[tuple[str, int, int]]:
    """(status, priority, tasks) of the task queue (``fm queue`` and the TUI): the
    tasks with a queue row, and those the supervisor counts without one yet
    (``queue_counts``, schema version 7)."""
    try:
        rows = c.execute(
            "SELECT status, priority, sum(tasks) FROM queue_depth GROUP BY status, priority "
            "HAVING sum(tasks) > 0 ORDER BY status, priority DESC"
        ).fetchall()
    except sqlite3.OperationalError:  # a version 6 file: no queue_counts
        rows = c.execute(
            "SELECT status, priority, count(*) FROM queue GROUP BY status, priority "
            "ORDER BY status, priority DESC"
        ).fetchall()
    return [(s, int(p), int(n)) for s, p, n in rows]


def queued_execution_count(c: sqlite3.Connection) -> int:
    """Executions waiting for a start."""
    return int(c.execute("SELECT count(*) FROM executions WHERE status='queued'").fetchone()[0])


def dead_letter_count(c: sqlite3.Connection) -> int:
    return int(c.execute("SELECT count(*) FROM dead_letters").fetchone()[0])


class Queries:
    """The read verbs of :class:`fm_local.store.Store` (a connection in ``self.conn``)."""

    conn: sqlite3.Connection

    def data_version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def known_workflow(self, digest: str) -> dict[str, Any] | None:
        """The saved workflow with this hash (``prepare.document_hash``): id, name,
        checked; None if there is none."""
        return self._one("SELECT id, name, checked FROM workflows WHERE hash=?", (digest,))

    def get_signal(self, signal_id: int) -> dict[str, Any] | None:
        return self._one("SELECT * FROM signals WHERE id=?", (signal_id,))

    def get_execution(self, execution_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM executions WHERE id=?", (execution_id,))

    def find_execution(self, prefix: str) -> dict[str, Any] | None:
        """An execution by id or unique id prefix."""
        row = self.get_execution(prefix)
        if row or len(prefix) < 4:
            return row
        rows = self._all(
            "SELECT * FROM executions WHERE substr(id, 1, ?) = ? ORDER BY created_at LIMIT 2",
            (len(prefix), prefix),
        )
        return rows[0] if len(rows) == 1 else None

    def get_workflow(self, workflow_id: int) -> dict[str, Any] | None:
        return self._one("SELECT * FROM workflows WHERE id=?", (workflow_id,))

    def list_executions(
        self,
        status: str | tuple[str, ...] | None = None,
        limit: int | None = 50,
        workflow: str | None = None,
        since: float | None = None,
    ) -> list[dict[str, Any]]:
        """Executions, newest first (``fm ls``): with one of ``status`` (a status or
        several), of ``workflow`` (a name, or a GLOB pattern when it holds ``*?[``),
        created at ``since`` (epoch seconds) or later; at most ``limit`` (None: all).
        Each filter is a WHERE clause an index serves (schema version 6)."""
        where: list[str] = []
        args: list[Any] = []
        statuses = (status,) if isinstance(status, str) else tuple(status or ())
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        if workflow:
            where.append("workflow GLOB ?" if any(c in workflow for c in "*?[") else "workflow=?")
            args.append(workflow)
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        sql = "SELECT * FROM executions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(-1 if limit is None else limit)
        return self._all(sql, tuple(args))

    def node_runs(self, execution_id: str, path: str | None = None) -> list[dict[str, Any]]:
        if path:
            under, args = _at_or_under(path)
            return self._all(
                f"SELECT * FROM node_runs WHERE execution_id=? AND {under} ORDER BY id",
                (execution_id, *args),
            )
        return self._all(
            "SELECT * FROM node_runs WHERE execution_id=? ORDER BY coalesce(started_at, "
            "queued_at, finished_at), id",
            (execution_id,),
        )

    def count_node_runs(self, execution_id: str) -> int:
        return int(
            self.conn.execute(
                "SELECT count(*) FROM node_runs WHERE execution_id=?", (execution_id,)
            ).fetchone()[0]
        )

    def loop_summaries(self, execution_id: str) -> list[dict[str, Any]]:
        """Per loop (by path): item counts by status, first start, last end."""
        return self._all(
            "SELECT rtrim(rtrim(path, '0123456789]'), '[') AS loop, status, count(*) AS items, "
            "min(started_at) AS first_start, max(finished_at) AS last_end FROM node_runs "
            "WHERE execution_id=? AND node_type='item' GROUP BY loop, status ORDER BY loop",
            (execution_id,),
        )

    def loop_progress(self, execution_id: str) -> list[dict[str, Any]]:
        """Per loop instance, in the order the loops started: ``loop`` (its path),
        ``status``, ``total`` (its item count, set when it starts; NULL before),
        ``materialised`` (item rows that exist), ``done`` (items in a final status),
        ``failed`` (failed or timed out), ``running`` (items open now), and the
        ``first_start`` and ``last_end`` of its items. See fm_local.progress."""
        return self._all(
            "WITH agg AS (SELECT loop, count(*) AS materialised, "
            "sum(status IN ('succeeded','failed','cancelled','skipped','timed_out')) AS done, "
            "sum(status IN ('failed','timed_out')) AS failed, "
            "sum(status = 'running') AS running, "
            "min(started_at) AS first_start, max(finished_at) AS last_end "
            "FROM (SELECT rtrim(rtrim(path, '0123456789]'), '[') AS loop, status, "
            "started_at, finished_at FROM node_runs "
            "WHERE execution_id=? AND node_type='item') GROUP BY loop) "
            "SELECT l.path AS loop, l.status, l.items AS total, "
            "coalesce(a.materialised, 0) AS materialised, coalesce(a.done, 0) AS done, "
            "coalesce(a.failed, 0) AS failed, coalesce(a.running, 0) AS running, "
            "a.first_start, a.last_end FROM node_runs l LEFT JOIN agg a ON a.loop = l.path "
            "WHERE l.execution_id=? AND l.node_type='loop' ORDER BY l.id",
            (execution_id, execution_id),
        )

    def node_runs_in(
        self, execution_id: str, statuses: tuple[str, ...], limit: int | None = None
    ) -> list[dict[str, Any]]:
        """node_runs rows in one of ``statuses`` (``fm show --status``), in the order
        of :meth:`node_runs`; at most ``limit`` of them."""
        marks = ",".join("?" * len(statuses))
        return self._all(
            f"SELECT * FROM node_runs WHERE execution_id=? AND status IN ({marks}) "
            "ORDER BY coalesce(started_at, queued_at, finished_at), id LIMIT ?",
            (execution_id, *statuses, -1 if limit is None else limit),
        )

    def count_node_runs_in(self, execution_id: str, statuses: tuple[str, ...]) -> int:
        marks = ",".join("?" * len(statuses))
        return int(
            self.conn.execute(
                f"SELECT count(*) FROM node_runs WHERE execution_id=? AND status IN ({marks})",
                (execution_id, *statuses),
            ).fetchone()[0]
        )

    def failed_with_traceback(
        self, execution_id: str, under: str | None = None, limit: int = 1
    ) -> list[dict[str, Any]]:
        """Failed node instances whose error records a python traceback, at or under
        the path ``under``: unhandled ones first, then the earliest to fail."""
        where = ""
        args: tuple[Any, ...] = (execution_id,)
        if under:
            sql, more = _at_or_under(under)
            where, args = f"AND {sql} ", args + more
        return self._all(
            "SELECT * FROM node_runs WHERE execution_id=? AND status='failed' "
            + where
            + "AND json_extract(error, '$.details.traceback') IS NOT NULL "
            "ORDER BY handled, finished_at, id LIMIT ?",
            (*args, limit),
        )

    def failed_attempts(self, execution_id: str, path: str | None = None) -> list[dict[str, Any]]:
        """Tries that ended in an error (failed or timed out), with their error, at or
        under ``path`` (``fm logs``)."""
        where = ""
        args: tuple[Any, ...] = (execution_id,)
        if path:
            sql, more = _at_or_under(path)
            where, args = f"AND {sql} ", args + more
        return self._all(
            "SELECT * FROM attempts WHERE execution_id=? AND status IN ('failed','timed_out') "
            + where
            + "AND error IS NOT NULL ORDER BY id",
            args,
        )

    def item_intervals(
        self, execution_id: str
    ) -> list[tuple[str, str, float | None, float | None]]:
        """(path, status, started_at, finished_at) of every loop item."""
        return self.conn.execute(
            "SELECT path, status, started_at, finished_at FROM node_runs "
            "WHERE execution_id=? AND node_type='item'",
            (execution_id,),
        ).fetchall()

    def top_level_runs(self, execution_id: str) -> list[dict[str, Any]]:
        return self.frame_rows(execution_id, "")

    def node_counts(self, execution_id: str) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT status, count(*) FROM node_runs WHERE execution_id=? GROUP BY status",
            (execution_id,),
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def attempts(self, execution_id: str, path: str | None = None) -> list[dict[str, Any]]:
        if path:
            return self._all(
                "SELECT * FROM attempts WHERE execution_id=? AND path=? ORDER BY seq",
                (execution_id, path),
            )
        return self._all(
            "SELECT * FROM attempts WHERE execution_id=? ORDER BY path, seq", (execution_id,)
        )

    def logs(self, execution_id: str, path: str | None = None) -> list[dict[str, Any]]:
        if path:
            under, args = _at_or_under(path)
            return self._all(
                f"SELECT * FROM logs WHERE execution_id=? AND {under} ORDER BY id",
                (execution_id, *args),
            )
        return self._all("SELECT * FROM logs WHERE execution_id=? ORDER BY id", (execution_id,))

    def logs_after(
        self, execution_id: str, after_id: int, path: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """The log lines of an execution written after line ``after_id`` (at or under
        ``path``), in order, at most ``limit``: the keyset ``fm logs -f`` polls with.
        ``+execution_id`` keeps SQLite on the rowid range (the lines written since the
        last look, whichever execution wrote them), not on the execution's index,
        which would read every line the execution ever wrote at each look."""
        where, args = "id > ? AND +execution_id = ?", (after_id, execution_id)
        if path:
            under, more = _at_or_under(path)
            where, args = f"{where} AND {under}", args + more
        return self._all(f"SELECT * FROM logs WHERE {where} ORDER BY id LIMIT ?", (*args, limit))

    def attempts_from(
        self, execution_id: str, from_id: int, path: str | None = None
    ) -> list[dict[str, Any]]:
        """The tries of an execution whose row id is ``from_id`` or more (at or under
        ``path``), in id order; a rowid range, as :meth:`logs_after` (``fm logs -f``:
        from the oldest try it saw running)."""
        where, args = "id >= ? AND +execution_id = ?", (from_id, execution_id)
        if path:
            under, more = _at_or_under(path)
            where, args = f"{where} AND {under}", args + more
        return self._all(f"SELECT * FROM attempts WHERE {where} ORDER BY id", args)

    def follow_marks(self, execution_id: str) -> tuple[int, int]:
        """Where ``fm logs -f`` starts its keysets: the last log line id of the
        file, and the first try id that may still change for this execution (its
        oldest try still running, else the one after the file's last)."""
        last_log = self.conn.execute("SELECT coalesce(max(id), 0) FROM logs").fetchone()[0]
        last_try = self.conn.execute("SELECT coalesce(max(id), 0) FROM attempts").fetchone()[0]
        running = self.conn.execute(
            "SELECT min(id) FROM attempts WHERE execution_id=? AND finished_at IS NULL",
            (execution_id,),
        ).fetchone()[0]
        return int(last_log), int(running if running is not None else last_try + 1)

    def frame_rows(self, execution_id: str, prefix: str) -> list[dict[str, Any]]:
        """node_runs rows of the direct children of a frame (``""`` = top level,
        ``"loop[3]."`` = the body of item 3), items excluded."""
        n = len(prefix)
        return self._all(
            "SELECT * FROM node_runs WHERE execution_id=? AND path GLOB ? "
            "AND instr(substr(path, ?), '.') = 0 AND instr(substr(path, ?), '[') = 0",
            (execution_id, glob_escape(prefix) + "*", n + 1, n + 1),
        )

    def item_rows(
        self, execution_id: str, loop_path: str
    ) -> list[tuple[int, str, float | None, float | None]]:
        """(item_index, status, started_at, finished_at) of every recorded item of a loop."""
        where, args = item_filter(execution_id, loop_path)
        rows = self.conn.execute(
            f"SELECT item_index, status, started_at, finished_at FROM node_runs WHERE {where}",
            args,
        ).fetchall()
        return [(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def loop_results(self, execution_id: str, loop_path: str) -> Iterator[tuple[Any, ...]]:
        """(item_index, status, output, error) of a loop's items, in item order."""
        where, args = item_filter(execution_id, loop_path)
        return iter(
            self.conn.execute(
                f"SELECT item_index, status, output, error FROM node_runs WHERE {where} "
                "ORDER BY item_index",
                args,
            )
        )

    def reused_items(
        self, execution_id: str, loop_path: str
    ) -> tuple[list[tuple[int, str]], set[int]]:
        """A retry's reused rows under a loop (docs/retry.md): (item_index, status) of
        the reused item rows, and the indexes of items that have reused rows inside
        their body but no item row of their own (items that run again in part)."""
        rows = self.conn.execute(
            "SELECT path, status FROM node_runs WHERE execution_id=? AND path GLOB ? "
            "AND reused_from IS NOT NULL",
            (execution_id, glob_escape(loop_path) + "[[]*"),
        ).fetchall()
        start = len(loop_path) + 1
        items: list[tuple[int, str]] = []
        inside: set[int] = set()
        for path, status in rows:
            end = path.find("]", start)
            if end < 0 or not path[start:end].isdigit():
                continue
            idx = int(path[start:end])
            if end + 1 == len(path):
                items.append((idx, status))
            elif path[end + 1] == ".":
                inside.add(idx)
        return items, inside - {i for i, _ in items}

    def retry_chain(self, execution_id: str) -> list[str]:
        """The executions a retry retries, nearest first (a retry of a retry...)."""
        chain: list[str] = []
        eid: str | None = execution_id
        while eid is not None and len(chain) < 1000:
            row = self.conn.execute("SELECT retry_of FROM executions WHERE id=?", (eid,)).fetchone()
            eid = row[0] if row is not None else None
            if eid is not None:
                if eid in chain:
                    break
                chain.append(eid)
        return chain

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM dead_letters ORDER BY id DESC LIMIT ?", (limit,))

    def dead_letter(self, dl_id: int) -> dict[str, Any] | None:
        return self._one("SELECT * FROM dead_letters WHERE id=?", (dl_id,))

    def dead_letter_count(self) -> int:
        return dead_letter_count(self.conn)

    def queued_execution_count(self) -> int:
        return queued_execution_count(self.conn)

    def latest_samples(self, max_age: float = 5.0) -> list[dict[str, Any]]:
        """The newest resource sample of each process (and the machine), if recent."""
        return self._all(
            "SELECT * FROM resource_samples WHERE ts = (SELECT max(ts) FROM resource_samples) "
            "AND ts > ? ORDER BY role DESC, pid",
            (time.time() - max_age,),
        )

    def queue_depth(self) -> list[dict[str, Any]]:
        return [{"status": s, "priority": p, "tasks": n} for s, p, n in queue_depth(self.conn)]

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        cur = self.conn.execute(sql, args)
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row, strict=True))

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = self.conn.execute(sql, args)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def active_executions(self) -> list[dict[str, Any]]:
        return self._all(
            "SELECT * FROM executions WHERE status IN ('queued','running','paused') "
            "ORDER BY created_at"
        )

    def new_executions(self, known: Container[str]) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT * FROM executions WHERE status='queued' ORDER BY priority DESC, created_at"
        )
        return [r for r in rows if r["id"] not in known]

    def applied_signals(self, execution_id: str) -> list[dict[str, Any]]:
        return self._all(
            "SELECT * FROM signals WHERE execution_id=? AND status='applied' ORDER BY id",
            (execution_id,),
        )

    def recent_starts(self, execution_id: str, node_id: str, since: float) -> list[float]:
        """Start times after ``since`` of node ``node_id``'s attempts, wherever it is
        (a loop body's node in every item): a rate limiter's memory across restarts."""
        rows = self.conn.execute(
            "SELECT started_at FROM attempts WHERE execution_id=? AND started_at > ? AND "
            "(path = ? OR path GLOB ?)",
            (execution_id, since, node_id, "*." + glob_escape(node_id)),
        ).fetchall()
        return [r[0] for r in rows]

    def last_attempts(self, execution_id: str, prefix: str) -> dict[str, tuple[int, str]]:
        """Per node path under ``prefix``: the latest attempt's seq and kind."""
        rows = self.conn.execute(
            "SELECT path, max(seq), kind FROM attempts WHERE execution_id=? AND path GLOB ? "
            "GROUP BY path",
            (execution_id, glob_escape(prefix) + "*"),
        ).fetchall()
        return {r[0]: (int(r[1] or 0), r[2] or "attempt") for r in rows}

    def compensated(self, execution_id: str) -> set[str]:
        """Paths of the compensation runs that succeeded (``<path>->compensate``)."""
        return {
            row[0]
            for row in self.conn.execute(
                "SELECT path FROM node_runs WHERE execution_id=? AND status='succeeded' "
                "AND path LIKE '%->compensate'",
                (execution_id,),
            ).fetchall()
        }

    def signals_of(self, execution_id: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM signals WHERE execution_id=? ORDER BY id", (execution_id,))

    def pending_signals(self, after_id: int) -> list[dict[str, Any]]:
        return self._all(
            "SELECT * FROM signals WHERE status='pending' AND id>? ORDER BY id", (after_id,)
        )
