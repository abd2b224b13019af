"""The Dask executor's throughput (SPEC §11, docs/scale-out.md), three ways in one
run on this machine: a 10,000-item parallel loop of no-op python nodes on fm's
local executor (2 worker processes), the same loop on ``--executor dask`` against a
``LocalCluster`` of 2 worker processes (1 thread each), and the same 10,000 calls
submitted straight to that cluster (``client.map`` + ``gather``), medians of
``--runs``.

    python benchmarks/dask_bench.py [--runs 3] [--items 10000]     (make bench runs it)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import NOOP, Daemon, loop_doc, rate, write_workflow  # noqa: E402


def scenarios(tmp: Path, runs: int, n: int, add: Callable[[str, str, float, str], None]) -> None:
    from distributed import Client, LocalCluster

    path = write_workflow(tmp, "loop", loop_doc(n, NOOP))
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    )
    try:
        local, dask, direct = [], [], []
        for r in range(runs):
            d = Daemon(tmp / f"local-{r}.db", 2)
            try:
                local.append(rate(d.db, path, n))
            finally:
                d.stop()
            d = Daemon(
                tmp / f"dask-{r}.db",
                2,
                extra=("--executor", "dask", "--scheduler", cluster.scheduler_address),
            )
            try:
                dask.append(rate(d.db, path, n))
            finally:
                d.stop()
            sys.path.insert(0, str(tmp))
            import noop_tasks

            with Client(cluster.scheduler_address, set_as_default=False) as c:
                t0 = time.perf_counter()
                futures = c.map(noop_tasks.noop, range(n), pure=False)
                c.gather(futures)
                direct.append(n / (time.perf_counter() - t0))
                del futures
        items = f"{n:,}-item"
        add(
            f"Dask {items} no-op loop: fm, local executor (2 workers)",
            "items/s",
            statistics.median(local),
            "reference",
        )
        add(
            f"Dask {items} no-op loop: fm --executor dask (LocalCluster, 2 procs)",
            "items/s",
            statistics.median(dask),
            "",
        )
        add(
            f"Dask the same {n:,} calls: client.map + gather, same cluster",
            "calls/s",
            statistics.median(direct),
            "reference",
        )
        add(
            "Dask fm --executor dask / client.map",
            "x",
            statistics.median(dask) / statistics.median(direct),
            "",
        )
    finally:
        cluster.close()


def main() -> None:
    from io_bench import report

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--items", type=int, default=10_000)
    args = ap.parse_args()
    report("Dask benchmarks", lambda tmp, add: scenarios(tmp, args.runs, args.items, add))


if __name__ == "__main__":
    main()
