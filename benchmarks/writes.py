"""What one loop item costs the supervisor: SQL row writes and CPU.

``python benchmarks/writes.py [N]`` runs a warm-up loop and then a parallel loop of
N no-op python items (default 10,000) on an embedded supervisor with 2 workers, and
prints one JSON line: ``rows_per_item`` (rows inserted, updated or deleted, from
SQLite's own ``total_changes`` counter on the supervisor's connections),
``statements_per_item`` (statements run on them, from SQLite's trace callback),
``cpu_us_per_item`` (the supervisor process's CPU, all its threads, workers not
included), ``commit_cpu_us_per_item`` (its commit process's, where it has one) and
``items_per_s``. The commit process reports its own counters (FM_WRITER_TRACE=1). It imports fm_local from PYTHONPATH, so the same
script measures another source tree (``PYTHONPATH=../old python
benchmarks/writes.py``): the before and after of a change.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def loop_doc(n: int) -> dict[str, Any]:
    # As benchmarks/run.py's loop_doc(n, NOOP), which is not imported: it puts this
    # tree first on sys.path.
    body = {"id": "noop", "type": "python", "call": "noop_tasks:noop", "args": {"i": "{{index}}"}}
    return {
        "name": f"loop-{n}",
        "nodes": [
            {
                "id": "each",
                "type": "loop",
                "loopType": "count",
                "count": n,
                "parallel": True,
                "body": {"nodes": [body]},
            }
        ],
    }


def write_workflow(folder: Path, name: str, doc: dict[str, Any]) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(doc))
    (folder / "noop_tasks.py").write_text((HERE / "noop_tasks.py").read_text())
    return path


def connections(sup: Any) -> list[sqlite3.Connection]:
    conns = [sup.store.conn]
    writer = getattr(sup, "writer", None)
    if writer is not None and hasattr(writer, "store"):
        conns.append(writer.store.conn)  # a tree whose commits ran on a thread
    return conns


def child_counters(sup: Any) -> tuple[int, int, float]:
    """(rows changed, statements, CPU seconds) of the supervisor's commit process,
    if it has one (zeros otherwise)."""
    writer = getattr(sup, "writer", None)
    if writer is None or not hasattr(writer, "pid"):
        return 0, 0, 0.0
    import psutil

    writer.wait()
    t = psutil.Process(writer.pid).cpu_times()
    return writer.changes, writer.statements, t.user + t.system


def measure(n: int, workers: int = 2) -> dict[str, float]:
    from fm_local import api
    from fm_local.supervisor import Supervisor

    tmp = Path(tempfile.mkdtemp())
    db = tmp / "fm.db"
    wf = write_workflow(tmp, "loop", loop_doc(n))
    warm = write_workflow(tmp, "warm", loop_doc(200))
    os.environ["FM_WRITER_TRACE"] = "1"
    sup = Supervisor(db, workers=workers)
    sup.open()
    statements = [0]

    def count(_sql: str) -> None:
        statements[0] += 1

    try:
        first = api.submit(warm, None, db=db)
        sup.run_execution(first)
        sup.stopping = False
        eid = api.submit(wf, None, db=db)
        conns = connections(sup)
        for c in conns:
            c.set_trace_callback(count)
        before = sum(c.total_changes for c in conns)
        c_rows, c_stmts, c_cpu = child_counters(sup)
        cpu = time.process_time()
        t0 = time.perf_counter()
        sup.run_execution(eid)
        secs = time.perf_counter() - t0
        cpu = time.process_time() - cpu
        rows = sum(c.total_changes for c in conns) - before
        c_rows2, c_stmts2, c_cpu2 = child_counters(sup)
        rows += c_rows2 - c_rows
        statements[0] += c_stmts2 - c_stmts
    finally:
        sup.close()
    status = (
        sqlite3.connect(db)
        .execute("SELECT status FROM executions WHERE id=?", (eid,))
        .fetchone()[0]
    )
    if status != "succeeded":
        raise RuntimeError(f"the loop {status}")
    return {
        "items": n,
        "rows_per_item": rows / n,
        "statements_per_item": statements[0] / n,
        "cpu_us_per_item": cpu / n * 1e6,
        "commit_cpu_us_per_item": (c_cpu2 - c_cpu) / n * 1e6,
        "items_per_s": n / secs,
    }


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)))
