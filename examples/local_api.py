"""A tiny JSON HTTP API on 127.0.0.1 for the ``parallel_api_calls`` example.

An aiohttp server (aiohttp comes with fm_local), so the example needs no network and
no third-party service, and answers a hundred requests at once as a real API would. Endpoints:

- ``GET /users``                -> a list of ``--users`` users ``{id, name, email}``
- ``GET /users/{id}/profile``   -> that user's profile, after ``--delay-ms`` of "work"
- ``GET /stats``                -> ``{maxConcurrency, inFlight, profileRequests, requests}``;
  ``maxConcurrency`` is the most profile requests the server ever had in flight at once
- ``POST /shutdown``            -> ``{"ok": true}``, then the server exits

It binds port 0 (a free port) and writes ``{"port", "pid"}`` to ``--port-file``
(atomically: a temporary file renamed into place) once it accepts connections.
It exits by itself after ``--idle-timeout`` seconds without a request, and after
``--max-lifetime`` seconds in any case, so nothing is left behind even when the
workflow that started it fails before stopping it.

``--detach`` forks once more and lets the parent exit at once, so the process that
started the server does not keep it as a child (``api_tasks.start_api`` uses it).

Run it by hand: ``python examples/local_api.py --port-file /tmp/api.port`` then
``curl http://127.0.0.1:$(jq .port /tmp/api.port)/users``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from aiohttp import web

COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli"]


def make_users(count: int) -> list[dict[str, Any]]:
    return [
        {"id": i, "name": f"user{i}", "email": f"user{i}@example.com"} for i in range(1, count + 1)
    ]


def make_profile(user_id: int) -> dict[str, Any]:
    return {
        "userId": user_id,
        "company": COMPANIES[user_id % len(COMPANIES)],
        "followers": (user_id * 37) % 101,
        "verified": user_id % 3 == 0,
    }


class Api:
    """The API's state: its users, the slow upstream's delay, and what it counted."""

    def __init__(self, users: int, delay: float) -> None:
        self.users = make_users(users)
        self.ids = {u["id"] for u in self.users}
        self.delay = delay
        self.in_flight = 0
        self.max_concurrency = 0
        self.requests = 0
        self.profile_requests = 0
        self.last_request = time.monotonic()
        self.stop = asyncio.Event()

    def stats(self) -> dict[str, Any]:
        return {
            "maxConcurrency": self.max_concurrency,
            "inFlight": self.in_flight,
            "profileRequests": self.profile_requests,
            "requests": self.requests,
            "pid": os.getpid(),
        }

    def app(self) -> web.Application:
        @web.middleware
        async def touch(request: web.Request, handler: Any) -> web.StreamResponse:
            self.requests += 1
            self.last_request = time.monotonic()
            return await handler(request)

        app = web.Application(middlewares=[touch])
        app.router.add_get("/users", self.get_users)
        app.router.add_get("/stats", self.get_stats)
        app.router.add_get("/users/{id:\\d+}/profile", self.get_profile)
        app.router.add_post("/shutdown", self.shutdown)
        return app

    async def get_users(self, request: web.Request) -> web.Response:
        return web.json_response(self.users)

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def get_profile(self, request: web.Request) -> web.Response:
        user_id = int(request.match_info["id"])
        self.in_flight += 1
        self.profile_requests += 1
        self.max_concurrency = max(self.max_concurrency, self.in_flight)
        try:
            await asyncio.sleep(self.delay)  # the "slow upstream": makes parallelism visible
        finally:
            self.in_flight -= 1
            self.last_request = time.monotonic()
        if user_id not in self.ids:
            return web.json_response({"error": f"no user {user_id}"}, status=404)
        return web.json_response(make_profile(user_id))

    async def shutdown(self, request: web.Request) -> web.Response:
        self.stop.set()  # after this answer has gone out (serve() closes the site)
        return web.json_response({"ok": True, "pid": os.getpid()})

    async def watchdog(self, idle_timeout: float, max_lifetime: float) -> None:
        born = time.monotonic()
        while not self.stop.is_set():
            await asyncio.sleep(min(0.5, idle_timeout / 4))
            now = time.monotonic()
            idle = self.in_flight == 0 and now - self.last_request > idle_timeout
            if idle or now - born > max_lifetime:
                self.stop.set()


async def serve(api: Api, port_file: str, idle_timeout: float, max_lifetime: float) -> None:
    runner = web.AppRunner(api.app(), access_log=None)
    await runner.setup()
    # A backlog for a hundred clients connecting at once.
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    write_port_file(port_file, port)
    watchdog = asyncio.ensure_future(api.watchdog(idle_timeout, max_lifetime))
    await api.stop.wait()
    await asyncio.sleep(0.05)  # let the last answer (to /shutdown) leave
    watchdog.cancel()
    await runner.cleanup()


def write_port_file(path: str, port: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"port": port, "pid": os.getpid()}, f)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port-file", required=True, help="where to write {port, pid}")
    p.add_argument("--users", type=int, default=25)
    p.add_argument("--delay-ms", type=int, default=100, help="sleep per profile request")
    p.add_argument("--idle-timeout", type=float, default=10.0, help="seconds")
    p.add_argument("--max-lifetime", type=float, default=600.0, help="seconds")
    p.add_argument("--detach", action="store_true", help="fork; the parent exits at once")
    args = p.parse_args(argv)
    if args.detach and os.fork() > 0:
        os._exit(0)  # the starter reaps this parent; the server lives on in the child
    api = Api(args.users, args.delay_ms / 1000.0)
    asyncio.run(serve(api, args.port_file, args.idle_timeout, args.max_lifetime))
    return 0


if __name__ == "__main__":
    sys.exit(main())
