"""Retention: delete finished executions with every row they own, in short write
transactions, then give the space back (``fm prune``, ``fm daemon --retain``).

Invariants: only executions whose status is terminal (and final: a trigger keeps
it so) and whose ``finished_at`` is older than the cut-off are touched, so nothing
the supervisor still reads or writes is deleted. Each write transaction deletes
at most a budget of rows, sized from the last transactions' durations to hold the
write lock about :data:`TARGET_TXN_SECONDS`, and the pruner then sleeps at least
twice as long (and at least :data:`MIN_PAUSE`): a daemon's group commit waits for
one short transaction at most, and has the lock most of the time. An execution's
rows go children first (logs, events, attempts, node_runs, then the small tables)
and its ``executions`` row last, so a reader in between sees a finished execution
with fewer rows, never a row without its execution.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fm_local.errors import UsageError
from fm_local.status import TERMINAL_EXEC

# Tables with an index on execution_id, deleted in slices of the row budget.
BIG_TABLES = ("logs", "events", "attempts", "node_runs")
# Tables of an execution with few rows (most without an index on execution_id: one
# scan per group), deleted with the executions rows themselves.
SMALL_TABLES = ("queue", "signals", "dead_letters", "notifications", "resource_samples")
TABLES = (*BIG_TABLES, *SMALL_TABLES, "executions")

TARGET_TXN_SECONDS = 0.025  # the write lock held per transaction, aimed at
# Seconds between two transactions: at least twice what the last one held, and at
# least MIN_PAUSE. A writer kept waiting polls on SQLite's busy handler, whose
# sleeps grow 1, 2, 5, 10, 15, 20, 25 ms…: a pause longer than the poll interval a
# waiter has reached by then gives it the lock (with 10 ms pauses a waiter that had
# backed off to 25-100 ms sleeps kept missing them: up to 0.95 s waits, measured).
MIN_PAUSE = 0.05
PAUSE_FACTOR = 2.0
GROUP = 200  # executions handled together (one temp table fill, one final delete)
FIRST_BUDGET = 500  # rows in the first transaction, before any is measured
MIN_BUDGET, MAX_BUDGET = 50, 50_000

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# An execution that an unfinished retry reuses is kept: the retry reads its applied
# signals (signals.<type>) when it starts and after every restart (docs/retry.md).
KEEP_RETRIED = (
    "AND NOT EXISTS (SELECT 1 FROM executions r WHERE r.retry_of = e.id AND r.status NOT IN ("
    + ",".join(f"'{s}'" for s in TERMINAL_EXEC)
    + "))"
)


def parse_age(text: str, what: str = "--older-than") -> float:
    """``7d`` → seconds. Units s, m, h, d, w; a bare number is seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m:
        raise UsageError(
            f"{what} {text!r}: expected a number and a unit s/m/h/d/w, e.g. 7d, 12h, 30m"
        )
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def parse_statuses(values: Iterable[str]) -> tuple[str, ...]:
    """``--status`` values (repeatable, or comma lists) → terminal statuses."""
    out: list[str] = []
    for v in values:
        for s in v.split(","):
            s = s.strip()
            if not s:
                continue
            if s not in TERMINAL_EXEC:
                raise UsageError(
                    f"--status {s!r}: fm prune deletes finished executions only; "
                    f"choose from {', '.join(TERMINAL_EXEC)}"
                )
            if s not in out:
                out.append(s)
    return tuple(out) or TERMINAL_EXEC


@dataclass
class PruneResult:
    """What a prune did (or, with ``dry_run``, would do)."""

    executions: int = 0
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    workflows: int = 0
    dry_run: bool = False
    transactions: int = 0
    longest_txn_ms: float = 0.0
    # Each write transaction: (ms it held the write lock, what it deleted).
    held_ms: list[tuple[float, str]] = field(default_factory=list)
    vacuum: str = "none"
    reclaimed_bytes: int = 0
    file_bytes_before: int = 0
    file_bytes_after: int = 0

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "executions": self.executions,
            "rows": dict(self.rows),
            "totalRows": self.total_rows,
            "workflows": self.workflows,
            "dryRun": self.dry_run,
            "transactions": self.transactions,
            "longestTransactionMs": round(self.longest_txn_ms, 1),
            "vacuum": self.vacuum,
            "reclaimedBytes": self.reclaimed_bytes,
            "fileBytesBefore": self.file_bytes_before,
            "fileBytesAfter": self.file_bytes_after,
        }


def file_bytes(db: Path) -> int:
    """The database's size on disk: the file and its write-ahead log."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(str(db) + suffix).st_size
        except FileNotFoundError:
            pass
    return total


class Pruner:
    """Deletes finished executions from one connection (its own: open one per
    thread), a few hundred rows per write transaction."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        db: Path,
        *,
        target: float = TARGET_TXN_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.conn = conn
        self.db = Path(db)
        self.target = target
        self.sleep = sleep
        self.should_stop = should_stop
        self.budgets: dict[str, int] = {}  # rows per transaction, per table
        self.emptied: set[str] = set()  # big tables with no rows left in this group
        self.result = PruneResult()
        self.since_checkpoint = 0
        # Checkpoints run between transactions (see _write), not inside a COMMIT
        # that would then seem to hold the lock longer than it does.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS prune_ids (id TEXT PRIMARY KEY)")
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS prune_workflows (id INTEGER PRIMARY KEY)")
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS prune_all (id TEXT PRIMARY KEY)")

    # --- choosing --------------------------------------------------------------------

    def candidates(self, before: float, statuses: tuple[str, ...] = TERMINAL_EXEC) -> list[str]:
        """Ids of executions with one of ``statuses`` (terminal ones only) that
        finished before ``before`` (epoch seconds), oldest first."""
        statuses = tuple(s for s in statuses if s in TERMINAL_EXEC)
        if not statuses:
            return []
        marks = ",".join("?" * len(statuses))
        return [
            r[0]
            for r in self.conn.execute(
                f"SELECT id FROM executions e WHERE status IN ({marks}) "
                "AND finished_at IS NOT NULL AND finished_at < ? " + KEEP_RETRIED + " "
                "ORDER BY finished_at",
                (*statuses, before),
            )
        ]

    # --- deleting --------------------------------------------------------------------

    def prune(self, ids: list[str], *, dry_run: bool = False) -> PruneResult:
        """Delete ``ids`` (finished executions) with all their rows, then the
        workflows none of the remaining executions uses."""
        r = self.result
        r.dry_run = dry_run
        c = self.conn
        c.execute("DELETE FROM temp.prune_workflows")
        c.execute("DELETE FROM temp.prune_all")
        for start in range(0, len(ids), GROUP):
            if self.should_stop():
                break
            self._fill(ids[start : start + GROUP])
            self.emptied = set()
            c.execute(
                "INSERT OR IGNORE INTO temp.prune_workflows SELECT DISTINCT workflow_id "
                "FROM executions WHERE id IN (SELECT id FROM temp.prune_ids)"
            )
            if dry_run:
                c.execute("INSERT OR IGNORE INTO temp.prune_all SELECT id FROM temp.prune_ids")
                for table in TABLES:
                    col = "id" if table == "executions" else "execution_id"
                    r.rows[table] += c.execute(
                        f"SELECT count(*) FROM {table} WHERE {col} IN "
                        "(SELECT id FROM temp.prune_ids)"
                    ).fetchone()[0]
                continue
            while not self.should_stop() and not self._step():
                pass
        r.executions = r.rows["executions"]
        self._prune_workflows(dry_run)
        return r

    def _fill(self, group: list[str]) -> None:
        """The group's ids, kept only if they are finished (they cannot move back)."""
        c = self.conn
        c.execute("DELETE FROM temp.prune_ids")
        terminal = ",".join(f"'{s}'" for s in TERMINAL_EXEC)
        marks = ",".join("?" * len(group))
        c.execute(
            "INSERT INTO temp.prune_ids SELECT id FROM executions e "
            f"WHERE id IN ({marks}) AND status IN ({terminal}) " + KEEP_RETRIED,
            group,
        )

    def _write(self, body: Callable[[sqlite3.Connection], Any], kind: str) -> Any:
        """One short ``BEGIN IMMEDIATE`` transaction, timed from the moment it holds
        the write lock; then a pause at least as long, for the daemon's commits."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        t0 = time.perf_counter()
        try:
            out = body(c)
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        held = time.perf_counter() - t0
        self._held(held, kind)
        return out, held

    def _held(self, held: float, kind: str) -> None:
        """Account for a transaction that held the lock ``held`` seconds; pause."""
        r = self.result
        r.transactions += 1
        r.held_ms.append((held * 1000, kind))
        r.longest_txn_ms = max(r.longest_txn_ms, held * 1000)
        t0 = time.perf_counter()
        self.since_checkpoint += 1
        if self.since_checkpoint >= 16:
            # PASSIVE: copies what it can, never waits for or blocks a writer.
            self.since_checkpoint = 0
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self.sleep(max(0.0, max(MIN_PAUSE, PAUSE_FACTOR * held) - (time.perf_counter() - t0)))

    def _vacuum_step(self, pages: int) -> float:
        """``PRAGMA incremental_vacuum(pages)`` in a transaction of its own. Python's
        ``execute`` steps a statement without result columns once (one page), so the
        pragma runs through ``executescript``, which steps it to its end; the time
        measured includes waiting for the lock, so it errs on the short side."""
        t0 = time.perf_counter()
        try:
            self.conn.executescript(
                f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({int(pages)}); COMMIT;"
            )
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        held = time.perf_counter() - t0
        self._held(held, "incremental_vacuum")
        return held

    def _adapt(self, table: str, used: int, held: float) -> None:
        """The next budget of ``table``: as many rows as fit the target at the pace
        just seen (each table its own: a node_runs row, with its three indexes,
        costs more than a logs row)."""
        if used <= 0:
            return
        budget = self.budgets.get(table, FIRST_BUDGET)
        pace = held / used
        want = int(self.target / pace) if pace > 0 else MAX_BUDGET
        # Grow gently, shrink at once: a slow transaction is what hurts the daemon.
        want = min(want, budget * 2)
        self.budgets[table] = max(MIN_BUDGET, min(MAX_BUDGET, want))

    def _step(self) -> bool:
        """One transaction: up to its budget of rows of the first of the group's big
        tables that has some left; once they are all gone, the small tables and the
        executions rows. True when the group is done."""
        table = next((t for t in BIG_TABLES if t not in self.emptied), None)
        if table is not None:
            budget = self.budgets.get(table, FIRST_BUDGET)

            def body(c: sqlite3.Connection) -> int:
                return int(
                    c.execute(
                        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "
                        "WHERE execution_id IN (SELECT id FROM temp.prune_ids) LIMIT ?)",
                        (budget,),
                    ).rowcount
                )

            n, held = self._write(body, table)
            self.result.rows[table] += n
            if n < budget:
                self.emptied.add(table)
            self._adapt(table, n, held)
            return False
        counts: dict[str, int] = {}

        def last(c: sqlite3.Connection) -> None:
            for t in SMALL_TABLES:
                counts[t] = c.execute(
                    f"DELETE FROM {t} WHERE execution_id IN (SELECT id FROM temp.prune_ids)"
                ).rowcount
            counts["executions"] = c.execute(
                "DELETE FROM executions WHERE id IN (SELECT id FROM temp.prune_ids)"
            ).rowcount

        self._write(last, "executions")
        for t, n in counts.items():
            self.result.rows[t] += n
        return True

    def _prune_workflows(self, dry_run: bool) -> None:
        """Workflows of the pruned executions that no execution uses any more. (A
        client saves a workflow, then creates its execution in a second
        transaction; a workflow deleted between the two makes that submit fail
        with a clear line, and a second try stores it again: docs/maintenance.md.)

        The workflow with the highest id stays, whatever uses it: SQLite gives a new
        row the highest id + 1, so while that row is there no id is ever given
        twice — a daemon keeps each workflow it loaded by id, and a new workflow
        under a pruned one's id would run the old document."""
        c = self.conn
        wids = [r[0] for r in c.execute("SELECT id FROM temp.prune_workflows")]
        used_sql = "SELECT 1 FROM executions WHERE workflow_id = ?"
        if dry_run:
            # Those no execution outside the ones counted uses.
            self.result.workflows = c.execute(
                "SELECT count(*) FROM temp.prune_workflows w WHERE NOT EXISTS (SELECT 1 "
                "FROM executions e WHERE e.workflow_id = w.id "
                "AND e.id NOT IN (SELECT id FROM temp.prune_all)) "
                "AND w.id < (SELECT max(id) FROM workflows)"
            ).fetchone()[0]
            return
        for wid in wids:
            if self.should_stop():
                break

            def body(c: sqlite3.Connection, wid: int = wid) -> int:
                if c.execute(used_sql, (wid,)).fetchone():
                    return 0
                return c.execute(
                    "DELETE FROM workflows WHERE id = ? AND id < (SELECT max(id) FROM workflows)",
                    (wid,),
                ).rowcount

            n, _ = self._write(body, "workflows")
            self.result.workflows += n

    # --- space -------------------------------------------------------------------------

    def reclaim(self, *, full_vacuum_ok: bool) -> None:
        """Give the freed pages back to the file system.

        ``auto_vacuum=INCREMENTAL`` (new files): ``PRAGMA incremental_vacuum`` in
        short transactions, like the deletes. Otherwise a ``VACUUM`` (which rewrites
        the whole file holding the write lock throughout, and turns the file to
        incremental mode for next time) when ``full_vacuum_ok`` — no daemon serves
        the file — else nothing: SQLite reuses the free pages for new rows."""
        c = self.conn
        r = self.result
        page = int(c.execute("PRAGMA page_size").fetchone()[0])
        free0 = int(c.execute("PRAGMA freelist_count").fetchone()[0])
        mode = int(c.execute("PRAGMA auto_vacuum").fetchone()[0])
        if free0 == 0:
            r.vacuum = "none (no free pages)"
            return
        if mode == 2:
            pages = 256
            while not self.should_stop():
                free = int(c.execute("PRAGMA freelist_count").fetchone()[0])
                if free == 0:
                    break
                n = min(pages, free)
                held = self._vacuum_step(n)
                want = int(n * self.target / held) if held > 0 else pages * 2
                pages = max(16, min(pages * 2, want, 100_000))
            free1 = int(c.execute("PRAGMA freelist_count").fetchone()[0])
            r.vacuum = "incremental"
            r.reclaimed_bytes = (free0 - free1) * page
            self._checkpoint(full_vacuum_ok)
            return
        if mode == 1:
            r.vacuum = "none (auto_vacuum=FULL gives pages back at each commit)"
            return
        if not full_vacuum_ok:
            r.vacuum = (
                "skipped: a daemon serves the file (VACUUM would hold the write lock "
                "while it rewrites the file); SQLite reuses the free pages for new rows"
            )
            return
        c.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect with the VACUUM
        t0 = time.perf_counter()
        c.execute("VACUUM")
        held = time.perf_counter() - t0
        r.transactions += 1
        r.held_ms.append((held * 1000, "VACUUM"))
        r.longest_txn_ms = max(r.longest_txn_ms, held * 1000)
        self._checkpoint(True)
        r.vacuum = "full (VACUUM; the file is now auto_vacuum=INCREMENTAL)"
        r.reclaimed_bytes = free0 * page

    def _checkpoint(self, alone: bool) -> None:
        """Fold the WAL back into the file, so that it shrinks: all of it and the
        WAL truncated when no daemon serves the file, else what a PASSIVE
        checkpoint can (it never blocks the daemon; the daemon's own checkpoints
        finish the work)."""
        mode = "TRUNCATE" if alone else "PASSIVE"
        self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()


def prune_db(
    db: Path,
    older_than: float,
    statuses: tuple[str, ...] = TERMINAL_EXEC,
    *,
    dry_run: bool = False,
    vacuum: bool = True,
    now: float | None = None,
    target: float = TARGET_TXN_SECONDS,
    should_stop: Callable[[], bool] = lambda: False,
) -> PruneResult:
    """``fm prune``: delete the executions with ``statuses`` that finished more than
    ``older_than`` seconds before ``now``, then reclaim the space (unless
    ``vacuum`` is false or it is a dry run)."""
    from fm_local.lock import is_served
    from fm_local.store import Store, storage_error

    db = Path(db)
    store = Store(db, create=False, durability="normal")
    try:
        pruner = Pruner(store.conn, db, target=target, should_stop=should_stop)
        pruner.result.file_bytes_before = file_bytes(db)
        cutoff = (time.time() if now is None else now) - older_than
        ids = pruner.candidates(cutoff, statuses)
        result = pruner.prune(ids, dry_run=dry_run)
        if vacuum and not dry_run:
            pruner.reclaim(full_vacuum_ok=is_served(db) is None)
        result.file_bytes_after = file_bytes(db)
        return result
    except sqlite3.Error as exc:
        raise storage_error(exc, db, "write") from exc
    finally:
        store.close()
