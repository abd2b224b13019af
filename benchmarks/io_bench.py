"""I/O-bound benchmarks (SPEC §11, the I/O lane): calls to a local HTTP server that
answers each request after 100 ms, fm_local side by side with plain asyncio +
aiohttp and Huey's thread consumer, in one run on this machine.

The server runs in its own process and records each request's arrival: rates and
windows are read from those arrivals, not from the engine's records. fm_local runs
as a new user would: ``fm run`` with no flags (its embedded supervisor), the wall
time being the execution's own (started_at to finished_at); memory is the peak
resident set of the whole ``fm run`` process tree, sampled every 20 ms.

    python benchmarks/io_bench.py [--runs 3] [--quick]     (make bench runs it too)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DELAY_MS = 100

# --- the server (python benchmarks/io_bench.py --serve PORT) ----------------------------


def serve(port: int) -> None:
    from aiohttp import web

    arrivals: list[float] = []

    async def sleep(request: web.Request) -> web.Response:
        arrivals.append(time.time())
        await asyncio.sleep(int(request.query.get("ms", DELAY_MS)) / 1000.0)
        return web.json_response({"i": request.query.get("i")})

    async def taken(request: web.Request) -> web.Response:
        out = list(arrivals)
        arrivals.clear()
        return web.json_response(out)

    app = web.Application()
    app.router.add_get("/sleep", sleep)
    app.router.add_get("/arrivals", taken)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)


class Server:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", str(self.port)]
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the benchmark server did not start")

    def url(self, query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/sleep{query}"

    def arrivals(self) -> list[float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/arrivals") as r:
            return sorted(json.loads(r.read()))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# --- fm_local -----------------------------------------------------------------------------

TASKS = '''
import aiohttp

_session = None


async def get(url):
    """An async python node that makes the call itself."""
    global _session
    if _session is None or _session.closed:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    async with _session.get(url) as resp:
        return await resp.json()
'''


def loop_of(n: int, body: dict[str, Any], **loop: Any) -> dict[str, Any]:
    return {
        "name": f"io-{n}",
        "nodes": [
            {"id": "items", "type": "transform", "expression": f"range({n})"},
            {
                "id": "calls",
                "type": "loop",
                "arrayPath": "{{items}}",
                "parallel": True,
                **loop,
                "body": {"nodes": [body]},
            },
            {"id": "count", "type": "transform", "expression": "len(calls)"},
        ],
        "edges": [
            {"source": "items", "target": "calls"},
            {"source": "calls", "target": "count"},
        ],
    }


def http_body(server: Server) -> dict[str, Any]:
    return {"id": "call", "type": "http", "url": server.url("?i={{item}}")}


def async_body(server: Server) -> dict[str, Any]:
    return {"id": "call", "type": "python", "call": "io_tasks:get", "args": {"url": server.url()}}


def fm_run(folder: Path, doc: dict[str, Any], n: int) -> tuple[float, float]:
    """``fm run`` of ``doc`` on a new database: (the execution's wall seconds, the
    peak RSS in MB of the fm run process and all its children)."""
    import psutil

    path = folder / "wf.json"
    path.write_text(json.dumps(doc))
    db = folder / f"fm-{time.monotonic_ns()}.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fm_local", "--db", str(db), "run", str(path), "--json"],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    peak = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.02)
    out = json.loads(proc.stdout.read() if proc.stdout else b"{}")
    if out.get("status") != "succeeded" or out["output"].get("count") != n:
        raise RuntimeError(f"benchmark execution did not succeed: {out}")
    con = sqlite3.connect(db)
    started, finished = con.execute(
        "SELECT started_at, finished_at FROM executions WHERE id=?", (out["id"],)
    ).fetchone()
    con.close()
    return finished - started, peak / 2**20


# --- the peers ----------------------------------------------------------------------------


async def _plain(url: str, n: int, c: int) -> float:
    import aiohttp

    sem = asyncio.Semaphore(c)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> None:
            async with sem, session.get(f"{url}?i={i}") as resp:
                await resp.json()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t0


def plain_aiohttp(server: Server, n: int, c: int) -> float:
    return asyncio.run(_plain(server.url(), n, c))


def huey_threads(server: Server, n: int, threads: int, tmp: Path, run_no: int) -> float:
    sys.path.insert(0, str(HERE))
    from latency import huey_consumer

    with huey_consumer(tmp / f"huey-io-{run_no}.db", threads, 0.01, kind="thread") as app:
        time.sleep(1.0)  # consumer start-up, not timed
        t0 = time.perf_counter()
        results = [app.fetch(server.url(f"?i={i}")) for i in range(n)]
        for r in results:
            r.get(blocking=True, timeout=600, backoff=1.0, max_delay=0.01)
        return time.perf_counter() - t0


# --- the scenarios ------------------------------------------------------------------------


def max_in_window(times: list[float], window: float) -> int:
    best = j = 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def scenarios(
    tmp: Path, runs: int, add: Callable[[str, str, float, str], None], big: bool = True
) -> None:
    (tmp / "io_tasks.py").write_text(TASKS)
    server = Server()
    try:
        n, c = 1000, 100
        for short, body in (("http", http_body), ("async def", async_body)):
            walls, rss = [], []
            for _ in range(runs):
                wall, mb = fm_run(tmp, loop_of(n, body(server), maxConcurrency=c), n)
                walls.append(wall)
                rss.append(mb)
            server.arrivals()
            add(
                f"I/O 1,000 calls x 100 ms, 100 in flight: fm run, {short}",
                "s",
                statistics.median(walls),
                "<= 1.3 (ideal 1.0)",
            )
            add(f"  peak RSS of the fm run process tree ({short})", "MB", max(rss), "<= 250")
            if short == "http":
                fm_wall = statistics.median(walls)
        plain = statistics.median(plain_aiohttp(server, n, c) for _ in range(runs))
        server.arrivals()
        add("I/O the same calls: plain asyncio + aiohttp, semaphore 100", "s", plain, "reference")
        add("I/O fm run (http nodes) / plain asyncio + aiohttp", "x", fm_wall / plain, "<= 1.2")
        huey = statistics.median(huey_threads(server, n, c, tmp, i) for i in range(runs))
        server.arrivals()
        add("I/O the same calls: Huey thread consumer, 100 threads", "s", huey, "reference")

        if big:
            n, c = 10_000, 1000
            wall, mb = fm_run(tmp, loop_of(n, http_body(server), maxConcurrency=c), n)
            server.arrivals()
            add(
                "I/O 10,000 calls x 100 ms, 1,000 in flight: fm run, http",
                "s",
                wall,
                "<= 2.5 (ideal 1.0)",
            )
            add("  peak RSS of the fm run process tree", "MB", mb, "")
            plain = plain_aiohttp(server, n, c)
            server.arrivals()
            add("I/O the same: plain asyncio + aiohttp, semaphore 1,000", "s", plain, "reference")

        rates, worst = [], []
        for _ in range(runs):
            doc = loop_of(500, http_body(server), maxConcurrency=100, rateLimit=50)
            server.arrivals()
            fm_run(tmp, doc, 500)
            t = server.arrivals()
            rates.append((len(t) - 1) / (t[-1] - t[0]))
            worst.append(max_in_window(t, 1.0))
        add(
            "I/O rateLimit 50/s, 500 calls: arrival rate at the server",
            "calls/s",
            statistics.median(rates),
            "within 2% of 50",
        )
        add(
            "I/O rateLimit 50/s: most arrivals in any 1 s window",
            "calls",
            max(worst),
            "<= 50",
        )
    finally:
        server.stop()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one run each, no 10,000-call run")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    report("I/O benchmarks", lambda tmp, add: scenarios(tmp, runs, add, big=not args.quick))


def report(title: str, body: Callable[[Path, Callable[..., None]], None]) -> None:
    """Run ``body(tmp, add)`` in a temporary folder, printing each row as ``add``
    gets it, then the table (a benchmark script run on its own)."""
    rows: list[tuple[str, str, float, str]] = []

    def add(name: str, unit: str, value: float, target: str = "") -> None:
        rows.append((name, unit, value, target))
        print(f"  {name}: {value:.2f} {unit}", flush=True)

    with tempfile.TemporaryDirectory() as tmpd:
        body(Path(tmpd), add)
    print()
    print(f"{title}, {time.strftime('%Y-%m-%d %H:%M')}")
    for name, unit, value, target in rows:
        print(f"{name:<66} {value:>10.2f} {unit:<9} {target}")


if __name__ == "__main__":
    main()
