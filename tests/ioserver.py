"""The I/O lane tests' HTTP server, in a process of its own (so the engine under
test, in the test process, cannot delay its clock readings): it records each
request's arrival and departure.

- ``GET /sleep?ms=N&i=K``  answers ``{"i": K}`` after N ms
- ``GET /limited?i=K``     answers 429 (Retry-After: 2) to its first request, then 200
- ``GET /redirect?ms=N&i=K`` answers 302 to ``/sleep?i=K`` after N ms
- ``GET /hits``            every request so far: ``[{path, i, t, end}]``

Started as ``python tests/ioserver.py PORT_FILE``: it binds a free port on 127.0.0.1
and writes it to PORT_FILE once it accepts connections; it exits with its parent.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from aiohttp import web

hits: list[dict[str, object]] = []
limited_seen = 0


async def sleep(request: web.Request) -> web.Response:
    hit: dict[str, object] = {"path": "/sleep", "i": request.query.get("i"), "t": time.time()}
    hits.append(hit)
    await asyncio.sleep(int(request.query.get("ms", "0")) / 1000.0)
    hit["end"] = time.time()
    return web.json_response({"i": request.query.get("i")})


async def limited(request: web.Request) -> web.Response:
    global limited_seen
    hits.append({"path": "/limited", "i": request.query.get("i"), "t": time.time()})
    limited_seen += 1
    if limited_seen == 1:
        return web.json_response({"slow": "down"}, status=429, headers={"Retry-After": "2"})
    return web.json_response({"i": request.query.get("i")})


async def redirect(request: web.Request) -> web.Response:
    hits.append({"path": "/redirect", "i": request.query.get("i"), "t": time.time()})
    await asyncio.sleep(int(request.query.get("ms", "0")) / 1000.0)
    raise web.HTTPFound(f"/sleep?i={request.query.get('i')}")


async def all_hits(request: web.Request) -> web.Response:
    return web.json_response(hits)


async def main(port_file: str) -> None:
    app = web.Application()
    app.router.add_get("/sleep", sleep)
    app.router.add_get("/limited", limited)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/hits", all_hits)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(port_file + ".tmp", port_file)
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(0.5)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
