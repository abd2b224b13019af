"""A tiny JSON HTTP API on 127.0.0.1 for the ``parallel_api_calls`` example.

Standard library only (``http.server.ThreadingHTTPServer``), so the example needs no
network and no third-party service. Endpoints:

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
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROFILE = re.compile(r"^/users/(\d+)/profile$")
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


class Api(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never keeps the process alive

    def __init__(self, users: int, delay: float) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.users = make_users(users)
        self.delay = delay
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_concurrency = 0
        self.requests = 0
        self.profile_requests = 0
        self.last_request = time.monotonic()

    def touch(self) -> None:
        with self.lock:
            self.requests += 1
            self.last_request = time.monotonic()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "maxConcurrency": self.max_concurrency,
                "inFlight": self.in_flight,
                "profileRequests": self.profile_requests,
                "requests": self.requests,
                "pid": os.getpid(),
            }

    def stop_soon(self) -> None:
        # shutdown() blocks until serve_forever returns: never call it on its thread.
        threading.Thread(target=self.shutdown, daemon=True).start()


class Handler(BaseHTTPRequestHandler):
    server: Api

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the server runs detached

    def send_json(self, status: int, value: Any) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        srv = self.server
        srv.touch()
        path = self.path.split("?", 1)[0]
        if path == "/users":
            self.send_json(200, srv.users)
        elif path == "/stats":
            self.send_json(200, srv.stats())
        elif m := PROFILE.match(path):
            self.profile(int(m.group(1)))
        else:
            self.send_json(404, {"error": f"no route {path}"})

    def profile(self, user_id: int) -> None:
        srv = self.server
        with srv.lock:
            srv.in_flight += 1
            srv.profile_requests += 1
            srv.max_concurrency = max(srv.max_concurrency, srv.in_flight)
        try:
            time.sleep(srv.delay)  # the "slow upstream": makes parallelism visible
        finally:
            with srv.lock:
                srv.in_flight -= 1
                srv.last_request = time.monotonic()
        if not any(u["id"] == user_id for u in srv.users):
            self.send_json(404, {"error": f"no user {user_id}"})
            return
        self.send_json(200, make_profile(user_id))

    def do_POST(self) -> None:
        self.server.touch()
        if self.path == "/shutdown":
            self.send_json(200, {"ok": True, "pid": os.getpid()})
            self.server.stop_soon()
        else:
            self.send_json(404, {"error": f"no route {self.path}"})


def watchdog(srv: Api, idle_timeout: float, max_lifetime: float) -> None:
    born = time.monotonic()
    while True:
        time.sleep(min(0.5, idle_timeout / 4))
        now = time.monotonic()
        with srv.lock:
            idle = srv.in_flight == 0 and now - srv.last_request > idle_timeout
        if idle or now - born > max_lifetime:
            srv.stop_soon()
            return


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
    srv = Api(args.users, args.delay_ms / 1000.0)
    threading.Thread(
        target=watchdog, args=(srv, args.idle_timeout, args.max_lifetime), daemon=True
    ).start()
    write_port_file(args.port_file, srv.server_address[1])
    try:
        srv.serve_forever(poll_interval=0.1)
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
