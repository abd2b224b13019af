"""``make bench``: fm_local's performance budget, measured beside Huey in one run.

Each scenario runs several times; the table shows medians. Ours runs on a real
``fm daemon`` (2 workers unless said) and is timed from the execution's recorded
start to its recorded end; Huey is timed from the first enqueue to the last result.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from fm_local import api  # noqa: E402
from fm_local.lock import is_served  # noqa: E402
from fm_local.store import Store  # noqa: E402


def write_workflow(folder: Path, name: str, doc: dict[str, Any]) -> Path:
    (folder / "noop_tasks.py").write_text((HERE / "noop_tasks.py").read_text())
    p = folder / f"{name}.json"
    p.write_text(json.dumps(doc))
    return p


def chain_doc(n: int) -> dict[str, Any]:
    nodes = [{"id": f"n{i}", "type": "python", "call": "noop_tasks:noop"} for i in range(n)]
    edges = [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(n - 1)]
    return {"name": f"chain-{n}", "nodes": nodes, "edges": edges}


def fanout_doc(n: int) -> dict[str, Any]:
    nodes = [
        {"id": f"n{i}", "type": "python", "call": "noop_tasks:noop", "args": {"i": i}}
        for i in range(n)
    ]
    return {"name": f"fanout-{n}", "nodes": nodes, "edges": []}


class Daemon:
    def __init__(self, db: Path, workers: int, durability: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fm_local",
                "--db",
                str(db),
                "daemon",
                "--workers",
                str(workers),
                "--durability",
                durability,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not is_served(db):
            if time.monotonic() > deadline:
                raise RuntimeError("daemon did not start")
            time.sleep(0.02)
        time.sleep(0.5)  # let the workers finish importing

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def fm_once(db: Path, path: Path, n_nodes: int) -> float:
    eid = api.submit(path, None, db=db)
    res = api.wait(eid, db=db, timeout=600)
    if res["status"] != "succeeded":
        raise RuntimeError(f"benchmark execution {eid} {res['status']}: {res['error']}")
    st = Store(db)
    row = st.get_execution(eid)
    st.close()
    assert row is not None
    return n_nodes / (row["finished_at"] - row["started_at"])


def huey_once(n: int, workers: int, tmp: Path, run_no: int) -> float:
    hdb = tmp / f"huey-{run_no}.db"
    env = dict(os.environ, HUEY_DB=str(hdb), PYTHONPATH=str(HERE))
    consumer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "huey.bin.huey_consumer",
            "huey_app.huey",
            "-k",
            "process",
            "-w",
            str(workers),
            "-d",
            "0.01",
            "-q",
        ],
        env=env,
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        os.environ["HUEY_DB"] = str(hdb)
        import importlib

        import huey_app  # type: ignore[import-not-found]

        importlib.reload(huey_app)
        time.sleep(1.0)  # consumer start-up
        t0 = time.perf_counter()
        results = [huey_app.noop(i) for i in range(n)]
        for r in results:
            r.get(blocking=True, timeout=600, backoff=1.0, max_delay=0.01)
        return n / (time.perf_counter() - t0)
    finally:
        consumer.send_signal(signal.SIGINT)
        try:
            consumer.wait(10)
        except subprocess.TimeoutExpired:
            consumer.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one run each, smaller sizes")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    sys.path.insert(0, str(HERE))
    rows: list[tuple[str, str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        chain = write_workflow(tmp, "chain", chain_doc(1000))
        fan = write_workflow(tmp, "fanout", fanout_doc(1000))
        for durability in ("full", "normal"):
            db = tmp / f"fm-{durability}.db"
            d = Daemon(db, args.workers, durability)
            try:
                c = [fm_once(db, chain, 1000) for _ in range(runs)]
                f = [fm_once(db, fan, 1000) for _ in range(runs)]
            finally:
                d.stop()
            rows.append(
                (
                    f"chain of 1,000 no-op nodes ({durability})",
                    "nodes/s",
                    statistics.median(c),
                    ">= 1,000",
                )
            )
            rows.append(
                (
                    f"fan-out of 1,000 no-op nodes ({durability})",
                    "nodes/s",
                    statistics.median(f),
                    "",
                )
            )
        h = [huey_once(1000, args.workers, tmp, i) for i in range(runs)]
        huey_rate = statistics.median(h)
        rows.append(
            (
                "Huey SqliteHuey, 1,000 no-op tasks, process consumer",
                "tasks/s",
                huey_rate,
                "reference",
            )
        )
        fan_full = rows[1][2]
        rows.append(
            ("fan-out (full) / Huey", "ratio", fan_full / huey_rate, ">= 3x (issue 3: 10k loop)")
        )
    print()
    print(
        f"fm_local benchmarks — {args.workers} workers, median of {runs} run(s), {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(f"{'scenario':<58} {'value':>10} {'unit':<8} target")
    for name, unit, value, target in rows:
        print(f"{name:<58} {value:>10.1f} {unit:<8} {target}")


if __name__ == "__main__":
    main()
