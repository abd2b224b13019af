"""Before/after in one sitting: the same scenarios on daemons of two source trees.

``python benchmarks/ab.py --base REV`` checks REV out into a temporary git worktree
and runs each scenario on a daemon of that tree and on one of this tree, in
alternation (A B A B …), so that the machine's drift hits both alike. It prints the
median of each side and their ratio. This is how a change to the hot path, or a
refactor, shows it is not slower (``make bench`` compares us with the peers).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from run import NOOP, chain_doc, fanout_doc, loop_doc, rate, write_workflow  # noqa: E402

from fm_local.lock import is_served  # noqa: E402


def start_daemon(root: Path, db: Path, workers: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fm_local", "--db", str(db), "daemon", "--workers", str(workers)],
        env=env,
        cwd=str(root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not is_served(db):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the daemon of {root} did not start")
        time.sleep(0.02)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--base", required=True, help="git revision (or a source directory) to compare with"
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    scenarios = {
        "10,000-item parallel loop, no-op (items/s)": (loop_doc(10000, NOOP), 10000),
        "chain of 1,000 no-op nodes (nodes/s)": (chain_doc(1000), 1000),
        "fan-out of 1,000 no-op nodes (nodes/s)": (fanout_doc(1000), 1000),
    }
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        given = Path(args.base)
        base = given if (given / "fm_local").is_dir() else tmp / "base"
        if base != given:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.base],
                check=True,
            )
        try:
            trees = {"base": base, "this": ROOT}
            daemons = {}
            dbs = {}
            for name, root in trees.items():
                dbs[name] = tmp / f"{name}.db"
                daemons[name] = start_daemon(root, dbs[name], args.workers)
            try:
                results: dict[str, dict[str, list[float]]] = {}
                for title, (doc, n) in scenarios.items():
                    path = write_workflow(tmp, title.split()[0].strip(","), doc)
                    rates: dict[str, list[float]] = {"base": [], "this": []}
                    for _ in range(args.rounds):
                        for name in trees:
                            rates[name].append(rate(dbs[name], path, n))
                    results[title] = rates
                    b, t = statistics.median(rates["base"]), statistics.median(rates["this"])
                    print(
                        f"{title}: base {b:,.0f} (range {min(rates['base']):,.0f}-"
                        f"{max(rates['base']):,.0f}), this {t:,.0f} (range "
                        f"{min(rates['this']):,.0f}-{max(rates['this']):,.0f}), "
                        f"this/base {t / b:.3f}",
                        flush=True,
                    )
            finally:
                for proc in daemons.values():
                    stop(proc)
        finally:
            if base != given:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                    check=False,
                )
                shutil.rmtree(base, ignore_errors=True)
    print(
        f"\nbase {args.base} vs this tree, {args.workers} workers, medians of "
        f"{args.rounds} alternating rounds, {time.strftime('%Y-%m-%d %H:%M')}"
    )


if __name__ == "__main__":
    main()
