"""How long ``fm prune`` keeps a working daemon waiting (docs/maintenance.md).

``python benchmarks/prune_lock.py [--node-rows 1000000] [--dir DIR]`` builds a
database of about that many ``node_runs`` rows by SQL (copies of one real execution,
tests/bigdb.py; half of them finished 30 days ago), starts ``fm daemon``, gives it a
long loop of no-op items, and prunes the old half while the loop runs. It prints the
prune's longest write transaction and the longest gap between two consecutive node
ends of the daemon's loop, during the prune and in a window of the same loop before
it (the machine's own noise). Then, the daemon stopped, it times a full ``VACUUM``
of the file (what ``fm prune`` does to a file in auto_vacuum=NONE mode when no
daemon serves it). A figure, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from bigdb import clone_execution  # noqa: E402
from run import NOOP, Daemon, loop_doc, write_workflow  # noqa: E402

from fm_local import api  # noqa: E402
from fm_local.store.prune import prune_db  # noqa: E402


def base_doc() -> dict:
    body = {"id": "e", "type": "python", "call": "noop_tasks:noop", "args": {"i": "{{index}}"}}
    return {
        "name": "base",
        "nodes": [
            {"id": "p", "type": "python", "call": "noop_tasks:noop"},
            {
                "id": "l",
                "type": "loop",
                "loopType": "count",
                "count": 10,
                "body": {"nodes": [body]},
            },
        ],
    }


def count(db: Path, table: str) -> int:
    c = sqlite3.connect(str(db))
    try:
        return int(c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        c.close()


def gaps(db: Path, eid: str, t0: float, t1: float) -> tuple[float, int]:
    """Longest gap (ms) between consecutive node ends of ``eid`` in [t0, t1]."""
    c = sqlite3.connect(str(db))
    try:
        ts = [
            r[0]
            for r in c.execute(
                "SELECT finished_at FROM node_runs WHERE execution_id=? AND node_type='python' "
                "AND finished_at BETWEEN ? AND ? ORDER BY finished_at",
                (eid, t0, t1),
            )
        ]
    finally:
        c.close()
    if len(ts) < 2:
        return 0.0, len(ts)
    return max(b - a for a, b in zip(ts, ts[1:], strict=False)) * 1000, len(ts)


def build(folder: Path, db: Path, node_rows: int) -> None:
    """Copies of one real execution: half finished 30 days ago, half yesterday."""
    t = time.perf_counter()
    src = api.run(write_workflow(folder, "base", base_doc()), None, db=db, workers=1)["id"]
    per = count(db, "node_runs")
    copies = max(2, node_rows // per)
    now = time.time()
    made = 0
    while made < copies:
        n = min(2000, copies - made)
        old = made < copies // 2
        clone_execution(
            db,
            src,
            n,
            prefix="o" if old else "k",
            start=made,
            finished_at=now - (30 if old else 1) * 86400,
        )
        made += n
    c = sqlite3.connect(str(db))
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    print(f"built {db} in {time.perf_counter() - t:.0f} s")


class Probe:
    """Another writer: takes the write lock every 10 ms (BEGIN IMMEDIATE, ROLLBACK)
    and records how long it waited for it — how long any writer, the daemon
    included, is kept waiting."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.waits: list[tuple[float, float]] = []  # (when, ms waited)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        c = sqlite3.connect(str(self.db), timeout=60, isolation_level=None)
        while not self.stop.is_set():
            t0 = time.perf_counter()
            c.execute("BEGIN IMMEDIATE")
            waited = (time.perf_counter() - t0) * 1000
            c.execute("ROLLBACK")
            self.waits.append((time.time(), waited))
            time.sleep(0.01)
        c.close()

    def worst(self, t0: float, t1: float) -> tuple[float, float, int, float]:
        """Longest wait, p99, how many takes, and waits over 100 ms per minute."""
        w = sorted(ms for t, ms in self.waits if t0 <= t <= t1)
        if not w:
            return 0.0, 0.0, 0, 0.0
        over = sum(1 for ms in w if ms > 100) / max(t1 - t0, 1e-9) * 60
        return w[-1], w[int(len(w) * 0.99)], len(w), over


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--node-rows", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="fm-prune-"))
    folder.mkdir(parents=True, exist_ok=True)
    pristine = folder / f"built-{args.node_rows}.db"
    if not pristine.exists():
        build(folder, pristine, args.node_rows)
    db = folder / "big.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    shutil.copyfile(pristine, db)
    print(
        f"{db}: {count(db, 'node_runs'):,} node_runs rows, {count(db, 'attempts'):,} "
        f"attempts, {count(db, 'executions'):,} executions, "
        f"{db.stat().st_size / 2**20:.0f} MB"
    )

    d = Daemon(db, args.workers)
    try:
        work = api.submit(
            write_workflow(folder, "work", loop_doc(400_000, NOOP, maxConcurrency=8)), db=db
        )
        probe = Probe(db)
        time.sleep(8.0)  # the loop at its pace; this window is the baseline
        t_start = time.time()
        r = prune_db(db, 7 * 86400)
        t_end = time.time()
        probe.stop.set()
        probe.thread.join()
        p_max, p_99, p_n, p_over = probe.worst(t_start, t_end)
        b_max, b_99, b_n, b_over = probe.worst(t_start - 6.0, t_start)
        base_gap, base_n = gaps(db, work, t_start - 6.0, t_start)
        gap, n = gaps(db, work, t_start, t_end)
    finally:
        d.stop()
    held = sorted(ms for ms, _ in r.held_ms)
    worst = max(r.held_ms, default=(0.0, "-"))
    print(
        f"prune: {r.executions:,} executions, {r.total_rows:,} rows in {t_end - t_start:.1f} s, "
        f"{r.transactions} write transactions holding the lock: median "
        f"{statistics.median(held):.0f} ms, p99 {held[int(len(held) * 0.99)]:.0f} ms, "
        f"longest {worst[0]:.0f} ms ({worst[1]}); space: {r.vacuum}, "
        f"{r.reclaimed_bytes / 2**20:.0f} MB reclaimed"
    )
    print(
        f"a writer taking the lock every 10 ms waited at most {p_max:.0f} ms (p99 {p_99:.0f} ms, "
        f"{p_n:,} takes, {p_over:.0f} waits over 100 ms a minute) during the prune; in the "
        f"6 s before it at most {b_max:.0f} ms (p99 {b_99:.0f} ms, {b_n:,} takes, "
        f"{b_over:.0f} waits over 100 ms a minute)"
    )
    print(
        f"daemon's loop: longest gap between node ends during the prune {gap:.0f} ms "
        f"({n:,} nodes ended); in the 6 s before it {base_gap:.0f} ms ({base_n:,} nodes)"
    )
    c = sqlite3.connect(str(db), isolation_level=None)
    size = db.stat().st_size
    t = time.perf_counter()
    c.execute("VACUUM")
    took = time.perf_counter() - t
    c.close()
    print(
        f"VACUUM of the {size / 2**20:.0f} MB file (no daemon): {took:.1f} s holding the "
        f"write lock; {db.stat().st_size / 2**20:.0f} MB after"
    )


if __name__ == "__main__":
    main()
