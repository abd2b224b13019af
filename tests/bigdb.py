"""A big database, quickly: copies of a real execution's rows under new ids, by SQL
(tests/test_prune.py, benchmarks/prune_lock.py). Each copy has the same rows in every
table as the execution it copies, so what a prune deletes is known exactly."""

from __future__ import annotations

import sqlite3
from pathlib import Path

# The tables whose rows belong to an execution (by execution_id).
CHILD_TABLES = (
    "node_runs",
    "attempts",
    "queue",
    "logs",
    "events",
    "signals",
    "dead_letters",
    "notifications",
)


def _cols(c: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in c.execute(f"PRAGMA table_info({table})") if r[1] != "id"]


def clone_execution(
    db: Path,
    source: str,
    copies: int,
    *,
    prefix: str = "c",
    status: str | None = None,
    finished_at: float | None = None,
    start: int = 0,
) -> list[str]:
    """Insert ``copies`` copies of execution ``source`` (ids ``<prefix><hex>``) with
    every row it owns; ``status``/``finished_at`` override the copies' (a paused
    copy gets no finished_at). Returns the new ids."""
    c = sqlite3.connect(str(db), timeout=30, isolation_level=None)
    try:
        width = 12 - len(prefix)
        c.execute("DROP TABLE IF EXISTS temp.clones")
        c.execute(
            "CREATE TEMP TABLE clones AS WITH RECURSIVE k(i) AS (SELECT ? UNION ALL "
            "SELECT i + 1 FROM k WHERE i < ?) "
            f"SELECT printf('{prefix}%0{width}x', i) AS id FROM k",
            (start, start + copies - 1),
        )
        ids = [r[0] for r in c.execute("SELECT id FROM temp.clones")]
        c.execute("BEGIN IMMEDIATE")
        cols = [x for x in _cols(c, "executions")]
        cols.insert(0, "id")
        sel = []
        for col in cols:
            if col == "id":
                sel.append("k.id")
            elif col == "status" and status is not None:
                sel.append("?")
            elif col == "finished_at" and (finished_at is not None or status is not None):
                sel.append("?")
            else:
                sel.append(f"e.{col}")
        args: list[object] = []
        if status is not None:
            args.append(status)
        if finished_at is not None or status is not None:
            args.append(finished_at)
        c.execute(
            f"INSERT INTO executions ({','.join(cols)}) SELECT {','.join(sel)} "
            "FROM executions e, temp.clones k WHERE e.id = ?",
            (*args, source),
        )
        for table in CHILD_TABLES:
            tcols = _cols(c, table)
            tsel = ["k.id" if col == "execution_id" else f"t.{col}" for col in tcols]
            c.execute(
                f"INSERT INTO {table} ({','.join(tcols)}) SELECT {','.join(tsel)} "
                f"FROM {table} t, temp.clones k WHERE t.execution_id = ?",
                (source,),
            )
        c.execute("COMMIT")
        return ids
    finally:
        c.close()


def rows_of(db: Path, eids: list[str]) -> dict[str, int]:
    """Per table: how many rows these executions own (executions: their own rows)."""
    c = sqlite3.connect(str(db), timeout=30)
    try:
        c.execute("CREATE TEMP TABLE ids (id TEXT PRIMARY KEY)")
        c.executemany("INSERT INTO temp.ids VALUES (?)", [(e,) for e in eids])
        out = {
            t: c.execute(
                f"SELECT count(*) FROM {t} WHERE execution_id IN (SELECT id FROM temp.ids)"
            ).fetchone()[0]
            for t in (*CHILD_TABLES, "resource_samples")
        }
        out["executions"] = c.execute(
            "SELECT count(*) FROM executions WHERE id IN (SELECT id FROM temp.ids)"
        ).fetchone()[0]
        return out
    finally:
        c.close()
