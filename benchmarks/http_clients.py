"""Which async HTTP client the I/O lane uses: aiohttp or httpx, measured here.

A local aiohttp server answers every request after 100 ms (in its own process);
each client makes N calls with at most C in flight (a semaphore), and we print the
wall time of each (median of several runs, alternating clients).

    python benchmarks/http_clients.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import time


def _serve(port: int, delay: float) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, backlog=4096, access_log=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _aiohttp(url: str, n: int, c: int) -> float:
    import aiohttp

    sem = asyncio.Semaphore(c)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one() -> None:
            async with sem, session.get(url) as resp:
                await resp.json()

        t = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - t


async def _httpx(url: str, n: int, c: int, tuned: bool) -> float:
    import httpx

    sem = asyncio.Semaphore(c)
    # Tuned: as many connections as calls in flight, and no pool timeout (the
    # default pool of 100 connections times out waiting at 1,000 in flight).
    kwargs: dict[str, object] = {}
    if tuned:
        kwargs["limits"] = httpx.Limits(max_connections=c, max_keepalive_connections=c)
        kwargs["timeout"] = httpx.Timeout(30.0, pool=None)
    async with httpx.AsyncClient(**kwargs) as client:

        async def one() -> None:
            async with sem:
                resp = await client.get(url)
                resp.json()

        t = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port, 0.1))
    server.start()
    url = f"http://127.0.0.1:{port}/"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        for n, c in ((1000, 100), (1000, 1000)):
            times: dict[str, list[float]] = {"aiohttp": [], "httpx": [], "httpx tuned": []}
            failed: dict[str, str] = {}
            runs = {
                "aiohttp": lambda n=n, c=c: _aiohttp(url, n, c),
                "httpx": lambda n=n, c=c: _httpx(url, n, c, tuned=False),
                "httpx tuned": lambda n=n, c=c: _httpx(url, n, c, tuned=True),
            }
            for _ in range(args.rounds):
                for name, make in runs.items():
                    try:
                        times[name].append(asyncio.run(make()))
                    except Exception as exc:  # noqa: BLE001 - e.g. httpx.PoolTimeout
                        failed[name] = type(exc).__name__
            ideal = n / c * 0.1
            for name, ts in times.items():
                if not ts:
                    print(f"{n} calls x 100 ms, {c} in flight, {name:12s}: failed ({failed[name]})")
                    continue
                print(
                    f"{n} calls x 100 ms, {c} in flight, {name:12s}: "
                    f"{statistics.median(ts):.2f} s (ideal {ideal:.1f} s; runs "
                    + ", ".join(f"{t:.2f}" for t in ts)
                    + ")"
                )
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
