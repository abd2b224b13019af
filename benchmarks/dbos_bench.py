"""The peer for a chain: DBOS (dbos-transact) on SQLite, a workflow of N sequential
no-op steps, each step checkpointed before the next begins (as fm commits each
node of a chain).

``python benchmarks/dbos_bench.py N DIR`` prints the steps per second of one
chain of N steps (after a warm-up chain of 10), in a process of its own: DBOS is
one global object per process. ``make bench`` installs it (the ``bench`` extra);
``rate(n, tmp)`` returns None when it is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def rate(n: int, tmp: Path) -> float | None:
    """Steps per second of a DBOS chain of ``n`` no-op steps, or None without DBOS."""
    try:
        import dbos  # noqa: F401
    except ImportError:
        return None
    folder = tmp / f"dbos-{time.monotonic_ns()}"
    folder.mkdir()
    out = subprocess.run(
        [sys.executable, __file__, str(n), str(folder)],
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ, DBOS__APPVERSION="bench"),
    ).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    import logging

    from dbos import DBOS

    n, folder = int(sys.argv[1]), Path(sys.argv[2])
    DBOS(config={"name": "bench", "system_database_url": f"sqlite:///{folder / 'dbos.sqlite'}"})
    logging.getLogger("dbos").setLevel(logging.WARNING)

    @DBOS.step()
    def noop(i: int) -> int:
        return i

    @DBOS.workflow()
    def chain(k: int) -> int:
        x = 0
        for i in range(k):
            x = noop(i)
        return x

    DBOS.launch()
    try:
        chain(10)
        t0 = time.perf_counter()
        chain(n)
        print(n / (time.perf_counter() - t0), flush=True)
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    main()
