"""Submit-to-start latency on a warm engine: fm_local's daemon beside Huey.

fm_local: ``api.submit`` of a one-node workflow to a warm ``fm daemon``; the node's
own code records when it started; ``api.wait`` returns once the end is committed.
Huey: enqueue a task on a warm consumer (1 ms polling, its fastest); the task
records when it started. Each figure is the median of ``n`` tries, in ms.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def fm_latency(tmp: Path, n: int = 20) -> tuple[float, float]:
    """(p50 ms submit committed -> node start, p50 ms end committed -> api.wait
    returned)."""
    sys.path.insert(0, str(ROOT))
    from fm_local import api
    from fm_local.lock import is_served

    (tmp / "noop_tasks.py").write_text((HERE / "noop_tasks.py").read_text())
    path = tmp / "one.json"
    path.write_text(
        json.dumps(
            {"name": "one", "nodes": [{"id": "a", "type": "python", "call": "noop_tasks:stamp"}]}
        )
    )
    db = tmp / "latency.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fm_local", "--db", str(db), "daemon", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not is_served(db):
            time.sleep(0.02)
        api.run(path, db=db)  # warm: workers have imported the module
        import sqlite3

        starts, seen = [], []
        for _ in range(n):
            t0 = time.time()
            eid = api.submit(path, db=db)
            res = api.wait(eid, db=db, timeout=60)
            t_back = time.time()
            con = sqlite3.connect(db)
            created, finished = con.execute(
                "SELECT created_at, finished_at FROM executions WHERE id=?", (eid,)
            ).fetchone()
            con.close()
            # From the commit of the execution row (the client's validation before it
            # is the CLI's cost, measured in "CLI start-up").
            starts.append((res["output"]["a"] - max(t0, created)) * 1000)
            seen.append((t_back - finished) * 1000)
        return statistics.median(starts), statistics.median(seen)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@contextlib.contextmanager
def huey_consumer(hdb: Path, workers: int, poll: float, kind: str = "process") -> Iterator[Any]:
    """A Huey consumer on ``hdb`` (``kind``: its worker type, process or thread;
    ``poll`` seconds between its queue polls), stopped on exit; yields the freshly
    imported ``huey_app``."""
    env = dict(os.environ, HUEY_DB=str(hdb), PYTHONPATH=str(HERE))
    consumer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "huey.bin.huey_consumer",
            "huey_app.huey",
            "-k",
            kind,
            "-w",
            str(workers),
            "-d",
            str(poll),
            "-q",
        ],
        env=env,
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        os.environ["HUEY_DB"] = str(hdb)
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        import importlib

        import huey_app

        yield importlib.reload(huey_app)
    finally:
        consumer.send_signal(signal.SIGINT)
        try:
            consumer.wait(20)
        except subprocess.TimeoutExpired:
            consumer.kill()


def huey_latency(tmp: Path, n: int = 20) -> float:
    """p50 ms enqueue -> task start on a warm Huey consumer polling every 1 ms."""
    with huey_consumer(tmp / "huey-latency.db", 2, 0.001) as huey_app:
        huey_app.stamp().get(blocking=True, timeout=60)  # warm
        starts = []
        for _ in range(n):
            t0 = time.time()
            started = huey_app.stamp().get(blocking=True, timeout=60, backoff=1.0, max_delay=0.001)
            starts.append((started - t0) * 1000)
        return statistics.median(starts)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        start, seen = fm_latency(Path(d))
        h = huey_latency(Path(d))
    print(f"fm_local submit -> start p50 {start:.1f} ms; end -> wait returns p50 {seen:.1f} ms")
    print(f"Huey (1 ms polling) enqueue -> start p50 {h:.1f} ms")
