"""``fm verify``: the store's invariants, checked on one consistent snapshot.

Invariant of this module: it never writes. Every check runs inside one read
transaction on a read-only connection, so a daemon serving the file goes on
undisturbed and the checks see one committed state. The supervisor commits whole
transitions (a node's status, its queue row and its attempt row in one group
commit; an execution's end after every one of its nodes), so every check here
holds at every commit boundary: a violation is never a moment of normal work.

Each check is a function of a connection that yields :class:`Violation` rows;
:data:`CHECKS` lists them in the order they run. Each violation names the
execution and node path it is about and says what to do.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fm_local.status import TERMINAL_EXEC, TERMINAL_NODE

_TN = ",".join(f"'{s}'" for s in TERMINAL_NODE)
_TE = ",".join(f"'{s}'" for s in TERMINAL_EXEC)
# Node types that never have a queue row (the supervisor evaluates them as frames).
_NO_QUEUE_ROW = "('item','loop')"
_BUG = "a bug in fm_local: report it with `fm show {eid} --json`"
_LEFTOVER = "delete it with the daemon stopped"


@dataclass(frozen=True)
class Violation:
    """One broken invariant: which check, where, what is wrong and what to do."""

    check: str
    execution: str | None
    path: str | None
    message: str

    def line(self) -> str:
        where = ""
        if self.execution:
            where += f"execution {self.execution}"
            if self.path:
                where += f" node {self.path}"
            where += ": "
        elif self.path:
            where = f"{self.path}: "
        return f"{self.check}: {where}{self.message}"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


Rows = Iterator[tuple[Any, ...]]
Check = Callable[[sqlite3.Connection], Iterator[Violation]]


def _rows(c: sqlite3.Connection, sql: str, args: tuple[Any, ...] = ()) -> Rows:
    return iter(c.execute(sql, args).fetchall())


# --- the checks -------------------------------------------------------------------------


def check_integrity(c: sqlite3.Connection, *, quick: bool = False) -> Iterator[Violation]:
    """SQLite's own check of the file: every page, every index against its table
    (``quick_check`` skips the index contents). The UNIQUE (execution_id, path) of
    node_runs — one row, so one final result, per node instance — is only as good as
    its index: this is the check that proves it."""
    pragma = "quick_check" if quick else "integrity_check"
    what = (
        "the file is damaged: stop the daemon, restore a backup, or salvage the rows "
        "with `sqlite3 FILE .recover`"
    )
    try:
        texts = [r[0] for r in _rows(c, f"PRAGMA {pragma}(100)")]
    except sqlite3.DatabaseError as exc:
        # SQLITE_CORRUPT met by the check itself is its finding; anything else (I/O)
        # is a storage error.
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF != 11 and "malformed" not in str(exc):
            raise
        texts = [f"stopped: {exc}"]
    for text in texts:
        if text != "ok":
            yield Violation("integrity", None, None, f"PRAGMA {pragma}: {text} — {what}")


def check_foreign_keys(c: sqlite3.Connection) -> Iterator[Violation]:
    """Rows whose REFERENCES target is missing (node_runs, attempts and queue of an
    execution; an execution's workflow)."""
    for table, rowid, parent, _ in _rows(c, "PRAGMA foreign_key_check"):
        eid = None
        if table != "executions" and rowid is not None:
            row = c.execute(f"SELECT execution_id FROM {table} WHERE rowid=?", (rowid,)).fetchone()
            eid = row[0] if row else None
        yield Violation(
            "foreign_keys",
            eid,
            None,
            f"{table} row {rowid} refers to a {parent} row that does not exist — "
            f"a leftover of a delete made without foreign keys; {_LEFTOVER} "
            f"(DELETE FROM {table} WHERE rowid={rowid})",
        )


def check_final_results(c: sqlite3.Connection) -> Iterator[Violation]:
    """At most one final result per node instance: no two tries of one node
    instance succeeded, and only a succeeded node carries an output."""
    for eid, path, n in _rows(
        c,
        "SELECT execution_id, path, count(*) FROM attempts WHERE status='succeeded' "
        "GROUP BY execution_id, path HAVING count(*) > 1",
    ):
        yield Violation(
            "final_results",
            eid,
            path,
            f"{n} tries succeeded: a node instance's result is recorded once; "
            + _BUG.format(eid=eid),
        )
    for eid, path, status in _rows(
        c,
        "SELECT execution_id, path, status FROM node_runs "
        "WHERE output IS NOT NULL AND status != 'succeeded'",
    ):
        yield Violation(
            "final_results",
            eid,
            path,
            f"is {status} but carries an output (only a succeeded node has one); "
            + _BUG.format(eid=eid),
        )


def check_terminal_final(c: sqlite3.Connection) -> Iterator[Violation]:
    """Nothing moves after a row is final: a finished execution has only finished
    nodes and an end time; a running one has none; a finished node has no try still
    running and none that started after it ended."""
    for eid, status in _rows(
        c, f"SELECT id, status FROM executions WHERE status IN ({_TE}) AND finished_at IS NULL"
    ):
        yield Violation(
            "terminal_final",
            eid,
            None,
            f"is {status} but has no finished_at; " + _BUG.format(eid=eid),
        )
    for eid, status in _rows(
        c,
        f"SELECT id, status FROM executions WHERE status NOT IN ({_TE}) "
        "AND finished_at IS NOT NULL",
    ):
        yield Violation(
            "terminal_final",
            eid,
            None,
            f"is {status} but has a finished_at: a finished execution moved back "
            "(terminal is final); " + _BUG.format(eid=eid),
        )
    for eid, path, estatus, nstatus in _rows(
        c,
        "SELECT e.id, n.path, e.status, n.status FROM executions e "
        "JOIN node_runs n ON n.execution_id = e.id "
        f"WHERE e.status IN ({_TE}) AND n.status NOT IN ({_TN})",
    ):
        yield Violation(
            "terminal_final",
            eid,
            path,
            f"is {nstatus} but its execution is {estatus}: it will never run; "
            + _BUG.format(eid=eid),
        )
    # One pass over attempts (in the order of their unique index), each looking up
    # its node instance.
    for eid, path, nstatus, seq, running in _rows(
        c,
        "SELECT a.execution_id, a.path, n.status, a.seq, a.status = 'running' "
        "FROM attempts a JOIN node_runs n ON n.execution_id = a.execution_id "
        f"AND n.path = a.path WHERE n.status IN ({_TN}) "
        "AND (a.status = 'running' OR a.started_at > n.finished_at)",
    ):
        if running:
            what = f"its try {seq} is still running (attempts.status)"
        else:
            what = f"its try {seq} started after it finished: a finished node ran again"
        yield Violation(
            "terminal_final", eid, path, f"is {nstatus} but {what}; " + _BUG.format(eid=eid)
        )


def check_queue(c: sqlite3.Connection) -> Iterator[Violation]:
    """The queue table mirrors the unfinished node instances of live executions:
    no row for a finished (or missing) execution or node, one row for every node
    waiting or running, with the node's own status."""
    for qid, eid, path, qstatus, estatus in _rows(
        c,
        "SELECT q.id, q.execution_id, q.path, q.status, e.status FROM queue q "
        "LEFT JOIN executions e ON e.id = q.execution_id "
        f"WHERE e.id IS NULL OR e.status IN ({_TE})",
    ):
        what = "no execution" if estatus is None else f"an execution that is {estatus}"
        yield Violation(
            "queue",
            eid,
            path,
            f"queue row ({qstatus}) for {what}: nothing will ever take it; "
            f"{_LEFTOVER} (DELETE FROM queue WHERE id={qid})",
        )
    for eid, path, qstatus, nstatus in _rows(
        c,
        "SELECT q.execution_id, q.path, q.status, n.status FROM queue q "
        "JOIN executions e ON e.id = q.execution_id "
        "LEFT JOIN node_runs n ON n.execution_id = q.execution_id AND n.path = q.path "
        f"WHERE e.status NOT IN ({_TE}) AND (n.id IS NULL OR q.status != CASE "
        "WHEN n.node_type = 'delay' THEN 'timer' ELSE n.status END)",
    ):
        what = "there is no such node instance" if nstatus is None else f"the node is {nstatus}"
        yield Violation(
            "queue",
            eid,
            path,
            f"queue row says {qstatus} but {what}; " + _BUG.format(eid=eid),
        )
    for eid, path, nstatus in _rows(
        c,
        "SELECT n.execution_id, n.path, n.status FROM node_runs n "
        "JOIN executions e ON e.id = n.execution_id "
        f"WHERE e.status NOT IN ({_TE}) AND n.status NOT IN ({_TN}) "
        f"AND n.node_type NOT IN {_NO_QUEUE_ROW} AND NOT EXISTS "
        "(SELECT 1 FROM queue q WHERE q.execution_id = n.execution_id AND q.path = n.path)",
    ):
        yield Violation(
            "queue",
            eid,
            path,
            f"is {nstatus} but has no queue row; " + _BUG.format(eid=eid),
        )


def check_timers(c: sqlite3.Connection) -> Iterator[Violation]:
    """Every waiting retry and every running ``delay`` has its due time
    (``node_runs.next_attempt_at``, what a restarted supervisor re-arms) and the
    queue row that shows it (``status`` retry_wait/timer, ``not_before``)."""
    for eid, path, nstatus, due, qstatus, not_before in _rows(
        c,
        "SELECT n.execution_id, n.path, n.status, n.next_attempt_at, "
        "q.status, q.not_before FROM node_runs n "
        "JOIN executions e ON e.id = n.execution_id "
        "LEFT JOIN queue q ON q.execution_id = n.execution_id AND q.path = n.path "
        f"WHERE e.status NOT IN ({_TE}) AND (n.status = 'retry_wait' "
        "OR (n.node_type = 'delay' AND n.status = 'running'))",
    ):
        what = "a retry" if nstatus == "retry_wait" else "its delay"
        if due is None:
            yield Violation(
                "timers",
                eid,
                path,
                f"waits for {what} with no due time (next_attempt_at is NULL): a "
                "restarted supervisor runs it at once; " + _BUG.format(eid=eid),
            )
        elif qstatus is not None and not_before != due:
            yield Violation(
                "timers",
                eid,
                path,
                f"waits for {what} due at {due} but its queue row says {not_before}; "
                + _BUG.format(eid=eid),
            )
    for qid, eid, path, qstatus in _rows(
        c,
        "SELECT id, execution_id, path, status FROM queue "
        "WHERE status = 'retry_wait' AND not_before IS NULL",
    ):
        yield Violation(
            "timers",
            eid,
            path,
            f"queue row {qid} waits ({qstatus}) with no due time (not_before is NULL); "
            + _BUG.format(eid=eid),
        )


def check_counts(c: sqlite3.Connection) -> Iterator[Violation]:
    """Counters agree with the rows they count. (Executions carry no counts; the
    ``execution_summary`` view computes them.) A loop's ``items`` bounds its item
    rows; a node's ``attempts`` and ``recoveries`` cover its recorded tries."""
    for eid, path, items, n, lo, hi in _rows(
        c,
        "SELECT l.execution_id, l.path, l.items, count(i.id), min(i.item_index), "
        "max(i.item_index) FROM node_runs l JOIN node_runs i "
        "ON i.execution_id = l.execution_id AND i.node_type = 'item' "
        "AND substr(i.path, 1, length(l.path) + 1) = l.path || '[' "
        "AND i.path = l.path || '[' || i.item_index || ']' "
        "WHERE l.node_type = 'loop' AND l.items IS NOT NULL "
        "GROUP BY l.id HAVING count(i.id) > l.items OR min(i.item_index) < 0 "
        "OR max(i.item_index) >= l.items",
    ):
        yield Violation(
            "counts",
            eid,
            path,
            f"loop of {items} items has {n} item rows (indexes {lo}..{hi}); "
            + _BUG.format(eid=eid),
        )
    for eid, path, spent, top, rec, n in _rows(
        c,
        "SELECT a.execution_id, a.path, n.attempts, max(CASE WHEN a.kind = 'attempt' "
        "AND a.status != 'interrupted' THEN a.attempt END) AS top, n.recoveries, "
        "sum(a.kind = 'recovery') AS rec FROM attempts a JOIN node_runs n "
        "ON n.execution_id = a.execution_id AND n.path = a.path "
        "GROUP BY a.execution_id, a.path HAVING top > n.attempts OR rec > n.recoveries",
    ):
        if top is not None and top > spent:
            yield Violation(
                "counts",
                eid,
                path,
                f"node_runs.attempts is {spent} but a try of attempt {top} is recorded; "
                + _BUG.format(eid=eid),
            )
        if n > rec:
            yield Violation(
                "counts",
                eid,
                path,
                f"node_runs.recoveries is {rec} but {n} recovery tries are recorded; "
                + _BUG.format(eid=eid),
            )


# Tables that name an execution without a foreign key: what `fm prune` deletes with it.
ORPHAN_TABLES = ("logs", "events", "dead_letters", "notifications")


def check_orphans(c: sqlite3.Connection) -> Iterator[Violation]:
    """Rows of an execution that does not exist (a delete that left part of it
    behind). Signals are checked only once applied: a signal sent to an unknown id
    is refused by the supervisor, and that refusal is not an orphan."""
    for table in (*ORPHAN_TABLES, "signals"):
        extra = " AND t.status = 'applied'" if table == "signals" else ""
        for eid, n in _rows(
            c,
            f"SELECT t.execution_id, count(*) FROM {table} t "
            "WHERE t.execution_id IS NOT NULL AND NOT EXISTS "
            f"(SELECT 1 FROM executions e WHERE e.id = t.execution_id){extra} "
            "GROUP BY t.execution_id",
        ):
            yield Violation(
                "orphans",
                eid,
                None,
                f"{n} {table} rows of an execution that does not exist; {_LEFTOVER} "
                f"(DELETE FROM {table} WHERE execution_id='{eid}')",
            )


CHECKS: dict[str, Check] = {
    "integrity": check_integrity,
    "foreign_keys": check_foreign_keys,
    "final_results": check_final_results,
    "terminal_final": check_terminal_final,
    "queue": check_queue,
    "timers": check_timers,
    "counts": check_counts,
    "orphans": check_orphans,
}


def verify_connection(
    c: sqlite3.Connection, *, quick: bool = False, checks: tuple[str, ...] | None = None
) -> list[Violation]:
    """Run the checks on ``c`` inside one read transaction (one snapshot)."""
    names = tuple(CHECKS) if checks is None else checks
    out: list[Violation] = []
    c.execute("BEGIN")
    try:
        for name in names:
            if name == "integrity":
                out.extend(check_integrity(c, quick=quick))
                continue
            try:
                out.extend(CHECKS[name](c))
            except sqlite3.DatabaseError as exc:
                # A damaged page the integrity check already named: say this check
                # could not run, and go on (a file nothing can read is exit 3).
                if not any(v.check == "integrity" for v in out):
                    raise
                out.append(
                    Violation(
                        name,
                        None,
                        None,
                        f"could not run: {exc} (the file is damaged: see the integrity lines)",
                    )
                )
    finally:
        if c.in_transaction:
            c.execute("ROLLBACK")
    return out


def verify(
    db: str | Path, *, quick: bool = False, checks: tuple[str, ...] | None = None
) -> list[Violation]:
    """The store's violations (empty: clean). Opens ``db`` read-only; a file that
    cannot be read raises :class:`fm_local.store.StorageProblem`."""
    from fm_local.store import Store, storage_error

    store = Store(db, readonly=True)
    try:
        return verify_connection(store.conn, quick=quick, checks=checks)
    except sqlite3.Error as exc:
        raise storage_error(exc, Path(db), "read") from exc
    finally:
        store.close()
