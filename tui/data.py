"""Every database read of the TUI.

A :class:`Reader` owns one read-only SQLite connection and is used by one
background thread only (the UI thread never queries). Each snapshot is read in
one short read transaction, with indexed queries and LIMITs, so the supervisor's
group commits are never held up and the WAL can always be checkpointed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fm_local.status import ACTIVE_EXEC, TERMINAL_EXEC
from fm_local.store import browse, live
from fm_local.store.queries import dead_letter_count, queue_depth
from tui import paths, search
from tui.records import (
    EXEC_STATUSES,
    WAITING,
    WORKER_ROLES,
    AttemptRow,
    DetailSnapshot,
    ExecutionInfo,
    ExecutionRow,
    ExecutionsSnapshot,
    ItemPage,
    LogEntry,
    LogLine,
    LogsSnapshot,
    LoopProgress,
    LoopStats,
    NodeDetail,
    Progress,
    QueuedExecution,
    QueueSnapshot,
    ResourceSnapshot,
    Sample,
    Seek,
    TimelineRow,
)

EXECUTIONS_LIMIT = 200
ITEMS_LIMIT = 300  # items listed when a loop is expanded: one page ([ and ] turn it)
ROWS_LIMIT = 3000  # timeline rows in all
LOG_LIMIT = 200  # newest log lines of the selected node
JSON_LIMIT = 20_000  # characters of an output/error/input shown
LOOPS_LIMIT = 100  # loops in progress on the queue screen
THROUGHPUT_SECONDS = 60
HISTORY_SECONDS = 120
RECENT_SAMPLE = 5.0  # a sample older than this means no daemon is sampling
LOGS_TAIL = 1000  # log lines the logs screen first shows (the newest)
LOGS_BATCH = 5000  # new log lines read at most per refresh (a flood catches up)
FAILED = ("failed", "timed_out")


def connect_readonly(db: Path) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``, ``query_only``; ``immutable`` where SQLite
    cannot keep a ``-shm`` beside the file) with a short busy timeout. It never changes
    the file, so a read-only copy works; a problem is a one-line StorageError."""
    from fm_local.store import connect_readonly as store_connect_readonly

    return store_connect_readonly(db, timeout=5.0, check_same_thread=True)


def _json(text: str | None, truncated: bool = False) -> Any:
    if text is None:
        return None
    if truncated:
        return text + " …"
    try:
        return json.loads(text)
    except ValueError:
        return text


def find_definition(nodes: Sequence[Any], node_id: str) -> dict[str, Any] | None:
    """The node ``node_id`` in a workflow document's node lists, depth first."""
    for node in nodes:
        if not isinstance(node, dict):
            continue
        if node.get("id") == node_id:
            return node
        body = node.get("body")
        if isinstance(body, dict):
            found = find_definition(body.get("nodes", []), node_id)
            if found is not None:
                return found
    return None


class Reader:
    """One read-only connection and the queries of every screen."""

    def __init__(self, db: Path) -> None:
        self.db = Path(db)
        self.conn = connect_readonly(self.db)
        self._version: int | None = None
        self._progress: dict[str, Progress] = {}  # finished executions only
        self._documents: dict[int, dict[str, Any]] = {}

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def changed(self) -> bool:
        """True if another connection committed since the last call (or at the first)."""
        version = int(self.conn.execute("PRAGMA data_version").fetchone()[0])
        changed = version != self._version
        self._version = version
        return changed

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One short read transaction, so a snapshot is consistent."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

    # --- executions ----------------------------------------------------------------

    def executions(
        self, status_filter: str | None, now: float, query: str = ""
    ) -> ExecutionsSnapshot:
        if status_filter == "active":
            statuses: tuple[str, ...] = ACTIVE_EXEC
        elif status_filter:
            statuses = (status_filter,)
        else:
            statuses = EXEC_STATUSES
        terms = search.parse(query)
        with self._snapshot() as c:
            if terms:
                rows = _search_executions(c, statuses, terms, EXECUTIONS_LIMIT)
            else:
                rows = live.newest_executions(c, statuses, EXECUTIONS_LIMIT)
            finished = {r[0] for r in rows if r[2] in TERMINAL_EXEC}
            todo = [r[0] for r in rows if r[0] not in self._progress or r[0] not in finished]
            fresh = self._progress_of(c, todo)
        for eid, value in fresh.items():
            if eid in finished:
                self._progress[eid] = value  # a finished execution's counts never change
        out = []
        for r in rows:
            progress = self._progress.get(r[0]) or fresh.get(r[0], Progress(0, 0))
            out.append(
                ExecutionRow(
                    id=r[0],
                    workflow=r[1],
                    status=r[2],
                    priority=r[3],
                    created_at=r[4],
                    started_at=r[5],
                    finished_at=r[6],
                    progress=progress,
                )
            )
        return ExecutionsSnapshot(out, status_filter, now, query)

    def _progress_of(self, c: sqlite3.Connection, ids: list[str]) -> dict[str, Progress]:
        """Each execution's progress (fm_local.store.live.progress_of)."""
        return {eid: Progress(*t) for eid, t in live.progress_of(c, ids).items()}

    # --- one execution ---------------------------------------------------------------

    def detail(
        self,
        execution_id: str,
        *,
        expanded: frozenset[str],
        selected: str | None,
        width: int,
        now: float,
        pages: Mapping[str, int] | None = None,
        seek: Seek | None = None,
    ) -> DetailSnapshot:
        """The execution, its timeline with ``expanded`` loops and items (each
        loop's page of items starts at ``pages[loop]``, 0 by default) and the
        ``selected`` node. A ``seek`` finds a failed node or item first and opens
        the loops and pages around it; the snapshot says where the cursor goes."""
        opened = dict(pages or {})
        with self._snapshot() as c:
            row = live.execution_row(c, execution_id)
            if row is None:
                return DetailSnapshot(None, [], None, None, width, None, now, seek=seek)
            focus, note = None, ""
            if seek is not None:
                focus, note = _seek(c, execution_id, seek)
                if focus is not None:
                    for step in paths.steps(focus):
                        opened[step.loop] = paths.page_of(step.index, ITEMS_LIMIT)
                        expanded = expanded | {step.loop}
                        if step.item != focus:
                            expanded = expanded | {step.item}
                    selected = focus
            progress = self._progress_of(c, [execution_id])[execution_id]
            info = ExecutionInfo(
                id=row[0],
                workflow=row[1],
                status=row[2],
                priority=row[3],
                input=_json(row[4]),
                output=_json(row[5]),
                error=_json(row[6]),
                created_at=row[7],
                started_at=row[8],
                finished_at=row[9],
                progress=progress,
                trace_id=row[11] or "",
            )
            t0 = info.started_at
            t1 = max(info.finished_at or now, (t0 or now) + 1e-3) if t0 is not None else None
            rows: list[TimelineRow] = []
            timeline = _Timeline(c, execution_id, expanded, opened, t0, t1, width, rows)
            timeline.frame("", 0)
            node = None
            if selected is not None:
                # On the line above a loop's items: the loop.
                path = selected.removeprefix("page:")
                node = self._node(c, execution_id, path, row[10])
        return DetailSnapshot(
            info,
            rows,
            t0,
            t1,
            width,
            node,
            now,
            timeline.truncated,
            expanded=expanded,
            pages=tuple(sorted(opened.items())),
            focus=focus,
            seek=seek,
            note=note,
        )

    def _document(self, c: sqlite3.Connection, workflow_id: int) -> dict[str, Any]:
        doc = self._documents.get(workflow_id)
        if doc is None:
            text = live.workflow_document(c, workflow_id)
            doc = json.loads(text) if text is not None else {}
            self._documents[workflow_id] = doc
        return doc

    def _node(
        self, c: sqlite3.Connection, execution_id: str, path: str, workflow_id: int
    ) -> NodeDetail | None:
        r = live.node_row(c, execution_id, path, JSON_LIMIT)
        if r is None:
            return None
        doc = self._document(c, workflow_id)
        definition = find_definition(
            list(doc.get("nodes", [])) + list(doc.get("handlers", [])), r[0]
        )
        if definition is not None and "body" in definition:
            definition = dict(
                definition, body=f"<{len(definition['body'].get('nodes', []))} nodes>"
            )
        attempts = [
            AttemptRow(a[0], a[1], a[2], a[3], _json(a[4]), a[5], a[6], a[7])
            for a in live.node_attempts(c, execution_id, path)
        ]
        logs = [LogLine(*x) for x in live.newest_logs(c, execution_id, path, LOG_LIMIT + 1)]
        dropped = 0
        if len(logs) > LOG_LIMIT:
            logs = logs[:LOG_LIMIT]
            dropped = live.log_count(c, execution_id, path) - LOG_LIMIT
        return NodeDetail(
            path=path,
            node_id=r[0],
            node_type=r[1],
            status=r[2],
            attempts_spent=r[3],
            recoveries=r[4],
            worker_pid=r[5],
            queued_at=r[6],
            started_at=r[7],
            finished_at=r[8],
            output=_json(r[9], bool(r[10])),
            error=_json(r[11], bool(r[12])),
            definition=definition,
            attempts=attempts,
            logs=list(reversed(logs)),
            logs_dropped=dropped,
            trace_id=r[13],
            input=_json(r[14], bool(r[15])) if r[14] is not None else None,
            code=r[16],
            items=r[17],
            lane=r[18],
        )

    # --- logs ------------------------------------------------------------------------

    def logs(
        self,
        execution_id: str,
        path: str | None,
        after: int | None,
        seen_errors: frozenset[int],
        generation: int = 0,
    ) -> LogsSnapshot:
        """What ``fm logs ID [--node PATH]`` prints that was not read yet: the log
        lines after line id ``after`` (the newest LOGS_TAIL at the first read,
        ``after`` None), and the failed tries whose error is not in ``seen_errors``."""
        with self._snapshot() as c:
            status = browse.execution_status(c, execution_id)
            lines, earlier = browse.log_lines(c, execution_id, path, after, LOGS_TAIL, LOGS_BATCH)
            errors = [
                e for e in browse.failed_tries(c, execution_id, path) if e[0] not in seen_errors
            ]
        entries = [
            (ts, 0, LogEntry("line", ts, p, a, stream, text)) for _, p, a, ts, stream, text in lines
        ]
        for _, p, seq, st, error, started, finished in errors:
            ts = finished or started or 0.0
            entries.append((ts, 1, LogEntry("error", ts, p, seq, st, error_text(error))))
        entries.sort(key=lambda e: (e[0], e[1]))
        last = lines[-1][0] if lines else (after or 0)
        return LogsSnapshot(
            execution_id,
            path,
            status,
            [e for _, _, e in entries],
            last,
            seen_errors | {e[0] for e in errors},
            earlier,
            generation,
        )

    # --- queue -----------------------------------------------------------------------

    def queue(self, now: float) -> QueueSnapshot:
        since = int(now) - THROUGHPUT_SECONDS + 1
        with self._snapshot() as c:
            depth: list[tuple[str, int, int]] = queue_depth(c)
            queued = [QueuedExecution(*r) for r in live.queued_executions(c)]
            dead = dead_letter_count(c)
            loops = [LoopProgress(*r) for r in live.loops_in_progress(c)]
            per_second = live.completions_per_second(c, since)
        throughput = [int(per_second.get(since + i, 0)) for i in range(THROUGHPUT_SECONDS)]
        waiting: dict[int, int] = {}
        for lp in loops:
            if lp.waiting:
                waiting[lp.priority] = waiting.get(lp.priority, 0) + lp.waiting
        depth += [(WAITING, p, n) for p, n in sorted(waiting.items(), reverse=True)]
        return QueueSnapshot(depth, queued, throughput, dead, now, loops[:LOOPS_LIMIT])

    # --- resources -------------------------------------------------------------------

    def resources(self, now: float) -> ResourceSnapshot:
        since = now - HISTORY_SECONDS
        with self._snapshot() as c:
            rows = [
                Sample(r[0], r[1], r[2], float(r[3] or 0.0), int(r[4] or 0), r[5], r[6])
                for r in live.samples_between(c, since, now + 1)
            ]
            newest = rows[-1].ts if rows else None
            if newest is None:
                newest = live.newest_sample_time(c)
        latest = [s for s in rows if s.ts == newest]
        order = {"supervisor": 0, "commit": 1, "worker": 2, "io-worker": 3}
        latest.sort(key=lambda s: (order.get(s.role, 3), s.pid or 0))
        return ResourceSnapshot(
            latest, newest, now, history_of(rows, now, HISTORY_SECONDS), RECENT_SAMPLE
        )


def _search_executions(
    c: sqlite3.Connection, statuses: tuple[str, ...], terms: list[search.Term], limit: int
) -> list[tuple[Any, ...]]:
    """Like ``live.newest_executions``, only the executions ``terms`` match (their
    id, workflow, status or error text; tui.search)."""
    words = [(t.text, t.field) for t in terms]
    return browse.search_executions(c, statuses, words, limit)


def _seek(c: sqlite3.Connection, execution_id: str, seek: Seek) -> tuple[str | None, str]:
    """The path the cursor goes to for ``seek``, or None and why not."""
    if seek.loop is None:
        found = browse.first_failed_node(c, execution_id)
        return (found, "") if found is not None else (None, "no failed node")
    forward = seek.direction >= 0
    found = browse.failed_item(c, execution_id, seek.loop, seek.index, forward)
    if found is not None:
        return found, ""
    # Wrap around, as a search in an editor does.
    found = browse.failed_item(c, execution_id, seek.loop, None, forward)
    if found is None:
        return None, f"no failed item in loop {seek.loop}"
    if forward:
        return found, f"no failed item after item {seek.index}: back to the first"
    return found, f"no failed item before item {seek.index}: on to the last"


def error_text(error: str | None) -> str:
    """A failed try's error as ``fm logs`` prints it: ``CODE: message``, the
    message's other lines and the traceback, indented."""
    from fm_local.cli.render import traceback_of

    value = _json(error)
    if not isinstance(value, dict):
        return str(value)
    first, *rest = str(value.get("message") or "").splitlines() or [""]
    lines = [f"{value.get('code')}: {first}", *(f"    {x}" for x in rest)]
    trace = traceback_of(value)
    if trace:
        lines += [f"    {x}" for x in trace.rstrip("\n").splitlines()]
    return "\n".join(lines)


def history_of(samples: list[Sample], now: float, seconds: int) -> dict[str, list[float]]:
    """One value per second of the last ``seconds`` (0 where nothing was sampled),
    oldest first: machine, supervisor, and workers summed."""
    first = int(now) - seconds + 1
    groups: dict[int, dict[float, list[Sample]]] = {}
    for s in samples:
        groups.setdefault(int(s.ts) - first, {}).setdefault(s.ts, []).append(s)
    keys = ("machine_cpu", "machine_mem", "supervisor_cpu", "supervisor_rss")
    series = {k: [0.0] * seconds for k in (*keys, "workers_cpu", "workers_rss")}
    # Samples come about once a second, so a second may have none: it takes the
    # previous second's sample (short gaps, and the second now under way;
    # longer gaps stay empty: no supervisor was sampling).
    for i in range(seconds):
        ahead = i == seconds - 1 or any(j in groups for j in (i + 1, i + 2))
        if i not in groups and i - 1 in groups and ahead:
            groups[i] = groups[i - 1]
    for i, by_ts in groups.items():
        if not 0 <= i < seconds:
            continue
        group = by_ts[max(by_ts)]  # the newest sample of that second
        for s in group:
            if s.role == "machine":
                series["machine_cpu"][i] = s.cpu_percent
                series["machine_mem"][i] = float(s.rss_bytes)
            elif s.role == "supervisor":
                series["supervisor_cpu"][i] = s.cpu_percent
                series["supervisor_rss"][i] = float(s.rss_bytes)
        workers = [s for s in group if s.role in WORKER_ROLES]
        series["workers_cpu"][i] = sum(s.cpu_percent for s in workers)
        series["workers_rss"][i] = float(sum(s.rss_bytes for s in workers))
    return series


class _Timeline:
    """Builds the timeline rows of one execution: frames, loops (one aggregated
    row each) and the items of expanded loops, depth first."""

    def __init__(
        self,
        c: sqlite3.Connection,
        execution_id: str,
        expanded: frozenset[str],
        pages: Mapping[str, int],
        t0: float | None,
        t1: float | None,
        width: int,
        out: list[TimelineRow],
    ) -> None:
        self.c = c
        self.eid = execution_id
        self.expanded = expanded
        self.pages = pages
        self.t0 = t0
        self.t1 = t1
        self.width = max(1, width)
        self.out = out
        self.truncated = False

    def _full(self) -> bool:
        if len(self.out) >= ROWS_LIMIT:
            self.truncated = True
            return True
        return False

    def frame(self, prefix: str, depth: int) -> None:
        """The direct children of a frame (``""`` = top level, ``"loop[3]."`` = an item)."""
        rows = live.frame_children(self.c, self.eid, prefix)
        for path, node_type, status, attempts, started, finished, items in rows:
            if self._full():
                return
            if node_type == "loop":
                open_ = path in self.expanded
                stats = self._loop_stats(path, items)
                self.out.append(
                    TimelineRow(
                        key=path,
                        path=path,
                        kind="loop",
                        depth=depth,
                        node_type=node_type,
                        status=status,
                        started_at=started,
                        finished_at=finished,
                        attempts=attempts,
                        expanded=open_,
                        loop=stats,
                    )
                )
                if open_:
                    failed = sum(n for s, n in stats.counts.items() if s in FAILED)
                    self.items(path, depth + 1, items, failed)
            else:
                self.out.append(
                    TimelineRow(
                        key=path,
                        path=path,
                        kind="node",
                        depth=depth,
                        node_type=node_type,
                        status=status,
                        started_at=started,
                        finished_at=finished,
                        attempts=attempts,
                    )
                )

    def _loop_stats(self, loop_path: str, items: int | None) -> LoopStats:
        """Counts by status, and the number of items running in each column,
        aggregated in SQL (at most width² groups come back); ``items`` is the
        loop's item count, recorded when it started."""
        counts: dict[str, int] = {}
        density = [0] * self.width
        if self.t0 is None or self.t1 is None:
            counts = live.item_status_counts(self.c, self.eid, loop_path)
            return LoopStats(counts, tuple(density), items)
        w = self.width
        diff = [0] * (w + 1)
        for a, b, status, n in live.item_columns(self.c, self.eid, loop_path, self.t0, self.t1, w):
            counts[status] = counts.get(status, 0) + n
            if a is not None:
                diff[a] += n
                diff[max(a, b) + 1] -= n
        level = 0
        for col in range(w):
            level += diff[col]
            density[col] = level
        return LoopStats(counts, tuple(density), items)

    def items(self, loop_path: str, depth: int, total: int | None, failed: int) -> None:
        """One page of a loop's items (ITEMS_LIMIT of them, from ``pages[loop]``),
        read by path through the (execution_id, path) index: a page of a
        10,000-item loop costs one page of rows, whichever page it is."""
        if total is None:  # a file from before schema version 2
            total = live.item_count(self.c, self.eid, loop_path)
        first = self.pages.get(loop_path, 0)
        if first >= total:
            first = paths.page_of(total - 1, ITEMS_LIMIT)
        last = min(first + ITEMS_LIMIT, total) - 1
        wanted = [f"{loop_path}[{i}]" for i in range(first, last + 1)]
        rows = browse.item_rows(self.c, self.eid, wanted)
        rows.sort(key=lambda r: r[5] if r[5] is not None else paths.item_index(r[0]) or 0)
        if self._full():
            return
        self.out.append(
            TimelineRow(
                key=f"page:{loop_path}",
                path=loop_path,
                kind="page",
                depth=depth,
                node_type="item",
                status="",
                page=ItemPage(first, last, total, len(rows), failed),
            )
        )
        for path, status, attempts, started, finished, _ in rows:
            if self._full():
                return
            open_ = path in self.expanded
            self.out.append(
                TimelineRow(
                    key=path,
                    path=path,
                    kind="item",
                    depth=depth,
                    node_type="item",
                    status=status,
                    started_at=started,
                    finished_at=finished,
                    attempts=attempts,
                    expanded=open_,
                )
            )
            if open_:
                self.frame(path + ".", depth + 1)
