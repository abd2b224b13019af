"""The daemon's HTTP API under attack: it can be neither exhausted nor confused.

Every test runs the real ``fm daemon --http`` in a subprocess and attacks it with raw
sockets and urllib: bad ``Content-Length`` values and short bodies, idle and
slow-loris connections, more clients than handler threads, 200 clients at once,
bodies with NaN, huge numbers, duplicate keys, lone surrogates and NUL characters,
a token file open to others, a non-loopback bind. After each attack the daemon must
still serve: a pause and a resume sent over HTTP are applied.
"""

from __future__ import annotations

import json
import select
import shlex
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Daemon, fm, wait_until
from test_httpapi import (
    HTASKS,
    Api,
    approval_doc,
    free_port,
    get_token,
    one_line,
    query,
    reachable,
    submit,
    tags,
)

from fm_local.httpapi import MAX_BODY, MAX_HANDLERS, MAX_REASON, MAX_TYPE, token_path
from fm_local.lock import is_served

# The daemon's timeouts in these tests (seconds): short, so a test need not wait long
# for the daemon to cut a client off; long enough for a loaded machine to send a
# whole ordinary request well within them.
IDLE = 3
REQUEST = 8
# How long a test client waits for any one answer: far beyond the timeouts above.
CLIENT_TIMEOUT = 60


@dataclass
class Served:
    """A daemon serving the API, and an execution of it held running by a gate file."""

    api: Api
    daemon: Daemon
    eid: str

    @property
    def port(self) -> int:
        return self.api.port

    @property
    def path(self) -> str:
        return f"/api/executions/{self.eid}/signal"

    def signal_status(self, sid: int) -> str:
        return str(query(self.api.db, "SELECT status FROM signals WHERE id=?", (sid,))[0]["status"])

    def signals(self) -> list[dict[str, Any]]:
        return query(self.api.db, "SELECT type, reason, status FROM signals ORDER BY id")


@pytest.fixture
def served(
    db: Path,
    daemon: Callable[..., Daemon],
    wf: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Served]:
    def start(
        idle: float = IDLE, request_timeout: float = REQUEST, bind: str = "127.0.0.1"
    ) -> Served:
        monkeypatch.setenv("FM_HTTP_IDLE_TIMEOUT", str(idle))
        monkeypatch.setenv("FM_HTTP_REQUEST_TIMEOUT", str(request_timeout))
        port = free_port()
        d = daemon(workers=1, extra=("--http", f"{bind}:{port}"))
        wait_until(lambda: reachable("127.0.0.1", port), 20, "the HTTP API to listen")
        (tmp_path / "htasks.py").write_text(HTASKS)
        mark, gate = tmp_path / "marks", tmp_path / "gate"
        eid = submit(db, wf(approval_doc(mark, gate)))
        wait_until(lambda: "prepare" in tags(mark), 30, "prepare to start")
        return Served(Api(db, port, get_token(db)), d, eid)

    return start


def send_applied(s: Served, body: Any = None, raw: bytes | None = None) -> None:
    """Send a signal over HTTP that must be accepted, and wait until it is applied."""
    code, reply = s.api.signal(s.eid, body, raw=raw)
    assert code in (200, 202), (body, code, reply)  # 202: applied later (a busy machine)
    wait_until(lambda: s.signal_status(reply["id"]) == "applied", 60, f"{body or raw!r} applied")


def assert_alive(s: Served) -> None:
    """The daemon still runs and serves: a pause and a resume over HTTP are applied."""
    assert s.daemon.proc is not None and s.daemon.proc.poll() is None, "the daemon died"
    send_applied(s, {"type": "pause", "reason": "still alive?"})
    assert s.api.status(s.eid) == "paused"
    send_applied(s, {"type": "resume"})
    assert s.api.status(s.eid) == "running"


# --- raw HTTP ----------------------------------------------------------------------------


def parse_reply(data: bytes) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one whole HTTP/1.1 reply; it must be JSON."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP reply: {data[:300]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    assert headers.get("content-type") == "application/json", head
    assert int(headers["content-length"]) == len(body), head
    assert b"\n" not in body, body  # one line
    return status, json.loads(body)


def read_to_close(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def raw_http(port: int, data: bytes, *, half_close: bool = False) -> tuple[int, dict[str, Any]]:
    """Send ``data`` as it is, read the reply until the daemon closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return parse_reply(read_to_close(sock))


def post_head(s: Served, *headers: str) -> bytes:
    lines = [
        f"POST {s.path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {s.api.token}",
        "Content-Type: application/json",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def closed_by_server(sock: socket.socket) -> bool:
    """True once the daemon has closed ``sock`` (without waiting if it has not)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536) == b""
    except OSError:
        return True


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Client sockets a test opens; closed at teardown whatever happens."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


# --- Content-Length -----------------------------------------------------------------------


def test_missing_negative_or_bad_content_length_is_refused(served: Callable[..., Served]) -> None:
    s = served()
    pause = json.dumps({"type": "pause"}).encode()
    cases: list[tuple[bytes, int, str]] = [
        (post_head(s), 411, "Content-Length"),
        (post_head(s) + pause, 411, "Content-Length"),  # a body, but no length
        (
            post_head(s, "Transfer-Encoding: chunked") + b"f\r\n" + pause + b"\r\n0\r\n\r\n",
            411,
            "chunked",
        ),
        (post_head(s, "Content-Length: -1") + pause, 400, "Content-Length"),
        (post_head(s, "Content-Length: -17"), 400, "Content-Length"),
        (post_head(s, "Content-Length: abc") + pause, 400, "Content-Length"),
        (post_head(s, "Content-Length: 1_7") + pause, 400, "Content-Length"),  # int() takes it
        (post_head(s, "Content-Length: +17") + pause, 400, "Content-Length"),
        (post_head(s, "Content-Length: 17", "Content-Length: 18") + pause, 400, "Content-Length"),
        (post_head(s, f"Content-Length: {MAX_BODY + 1}"), 413, str(MAX_BODY)),
        (post_head(s, "Content-Length: " + "9" * 5000), 413, str(MAX_BODY)),
    ]
    for data, status, word in cases:
        code, body = raw_http(s.port, data)
        assert code == status, (data[-80:], code, body)
        assert word in body["error"], (data[-80:], body)
    assert s.signals() == []  # nothing was written
    assert_alive(s)


def test_a_body_shorter_than_announced_is_a_400_not_a_hung_thread(
    served: Callable[..., Served], sockets: list[socket.socket]
) -> None:
    s = served()
    body = json.dumps({"type": "pause", "reason": "never whole"}).encode()
    head = post_head(s, f"Content-Length: {len(body) + 100}")

    # The client stops sending but keeps the connection open: the read times out.
    stalled = socket.create_connection(("127.0.0.1", s.port), timeout=CLIENT_TIMEOUT)
    sockets.append(stalled)
    stalled.sendall(head + body)
    assert_alive(s)  # answered while the short body hangs
    code, reply = parse_reply(read_to_close(stalled))
    assert code == 400 and "shorter" in reply["error"], (code, reply)

    # The client half-closes: the body has ended short.
    code, reply = raw_http(s.port, head + body, half_close=True)
    assert code == 400 and "shorter" in reply["error"], (code, reply)

    assert [x["reason"] for x in s.signals() if x["type"] == "pause"] == ["still alive?"]
    assert_alive(s)


# --- idle, slow and too many clients --------------------------------------------------------


class Loris(threading.Thread):
    """A slow-loris client: one more byte of a header line every half second (faster
    than the idle timeout) until the daemon closes the connection, or 120 s."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.cut = threading.Event()
        self.sent = 0

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=CLIENT_TIMEOUT) as sock:
            sock.sendall(b"GET /api/executions/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            end = time.monotonic() + 120
            while time.monotonic() < end:
                readable, _, _ = select.select([sock], [], [], 0.5)  # the pace of the attack
                try:
                    if readable and sock.recv(65536) == b"":
                        break
                    sock.send(b"a")
                    self.sent += 1
                except OSError:
                    break
            else:
                return  # never cut off
        self.cut.set()


def test_idle_and_slow_clients_do_not_block_others_and_are_cut_off(
    served: Callable[..., Served], sockets: list[socket.socket]
) -> None:
    s = served()
    for _ in range(5):  # connect, send nothing
        sockets.append(socket.create_connection(("127.0.0.1", s.port), timeout=CLIENT_TIMEOUT))
    half = socket.create_connection(("127.0.0.1", s.port), timeout=CLIENT_TIMEOUT)
    half.sendall(f"GET /api/executions/{s.eid} HTTP/1.1\r\n".encode())  # then nothing more
    sockets.append(half)
    loris = Loris(s.port)
    loris.start()
    wait_until(lambda: loris.sent >= 2, 30, "the slow client to be sending")

    assert_alive(s)  # served while all of them hang
    code, body = s.api.get(s.eid)
    assert code == 200 and body["id"] == s.eid

    # Each is cut off by the daemon: the silent ones after the idle timeout, the slow
    # one (never silent that long) after the request timeout.
    wait_until(lambda: all(closed_by_server(x) for x in sockets), 60, "idle clients cut off")
    wait_until(loris.cut.is_set, 90, "the slow-loris client to be cut off")
    assert_alive(s)


def daemon_threads(s: Served) -> int:
    assert s.daemon.proc is not None
    return psutil.Process(s.daemon.proc.pid).num_threads()


def test_handler_threads_are_bounded_and_the_busy_are_told_503(
    served: Callable[..., Served], sockets: list[socket.socket]
) -> None:
    s = served(idle=120, request_timeout=240)  # held connections stay held
    baseline = daemon_threads(s)
    for _ in range(3 * MAX_HANDLERS):
        sockets.append(socket.create_connection(("127.0.0.1", s.port), timeout=CLIENT_TIMEOUT))

    # All handlers are taken: a new request is answered 503 (JSON) instead of a thread.
    def busy() -> tuple[int, Any] | None:
        code, body = s.api.get(s.eid)
        return (code, body) if code == 503 else None

    code, body = wait_until(busy, 60, "a request to be refused as busy")
    assert "busy" in body["error"], body
    # So were the idle connections beyond the pool: each got its 503 at once.
    replies: dict[int, bytes] = {}

    def refused() -> bool:
        for i, sock in enumerate(sockets):
            if i not in replies and select.select([sock], [], [], 0)[0]:
                replies[i] = read_to_close(sock)
        return len(replies) >= 2 * MAX_HANDLERS

    wait_until(refused, 60, f"{2 * MAX_HANDLERS} idle connections to be refused")
    for reply in replies.values():
        code, body = parse_reply(reply)
        assert code == 503 and "busy" in body["error"], (code, body)
    assert daemon_threads(s) <= baseline + MAX_HANDLERS + 8, (baseline, daemon_threads(s))

    for sock in sockets:  # the held connections go away: their handlers are free again
        sock.close()
    wait_until(lambda: s.api.get(s.eid)[0] == 200, 60, "the API to serve again")
    assert_alive(s)


def test_200_concurrent_clients_are_all_answered(served: Callable[..., Served]) -> None:
    s = served()
    n = 200
    start = threading.Barrier(n)
    results: list[Any] = [None] * n

    def client(i: int) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{s.port}/api/executions/{s.eid}")
        req.add_header("Authorization", f"Bearer {s.api.token}")
        start.wait()
        try:
            with urllib.request.urlopen(req, timeout=CLIENT_TIMEOUT) as resp:
                results[i] = (resp.status, json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            results[i] = (exc.code, json.loads(exc.read()))
        except Exception as exc:  # noqa: BLE001 - a reset or timeout is what we look for
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [r for r in results if not isinstance(r, tuple)]
    assert failed == [], f"{len(failed)} of {n} clients got no HTTP answer: {failed[:3]}"
    codes = [r[0] for r in results]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 1
    for code, body in results:
        assert (body["id"] == s.eid) if code == 200 else ("busy" in body["error"]), body
    assert_alive(s)


def listen_backlog(port: int) -> int | None:
    """The listening socket's backlog as the kernel reports it (``ss``), if it can."""
    try:
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
    return int(rows[0][2]) if out.returncode == 0 and rows else None


def test_listen_backlog_holds_a_burst_of_clients(served: Callable[..., Served]) -> None:
    s = served()
    backlog = listen_backlog(s.port)
    if backlog is None:
        pytest.skip("ss cannot show the listen backlog here")
    assert backlog >= 200, backlog


# --- hostile bodies --------------------------------------------------------------------------


HOSTILE_BODIES: list[tuple[bytes, list[str]]] = [
    (b'{"type": "pause", "data": {"x": NaN}}', ["body.data.x", "NaN"]),
    (b'{"type": "pause", "data": {"x": [1, Infinity]}}', ["body.data.x[1]", "Infinity"]),
    (b'{"type": "pause", "data": -Infinity}', ["body.data", "Infinity"]),
    (b'{"type": "pause", "data": {"x": 1e999}}', ["body.data.x", "Infinity"]),
    (b'{"type": "pause", "data": {"n": ' + b"7" * 5000 + b"}}", ["body.data.n", "digits"]),
    (b'{"type": "pause", "type": "cancel"}', ["body", "duplicate key 'type'"]),
    (b'{"type": "pause", "data": {"a": 1, "a": 2}}', ["body.data", "duplicate key 'a'"]),
    (b'{"type": "pause", "reason": "\\ud800"}', ["body.reason", "surrogate"]),
    (b'{"type": "pause", "reason": "ok \\udc00 ok"}', ["body.reason", "surrogate"]),
    (b'{"type": "pause", "data": {"a": ["fine", "\\udfff"]}}', ["body.data.a[1]", "surrogate"]),
    (b'{"type": "pause", "data": {"\\ud800": 1}}', ["body.data", "key", "surrogate"]),
    (b'{"type": "\\ud800"}', ["body.type", "surrogate"]),
    (b'{"type": "pause", "data": ' + b"[" * 300 + b"]" * 300 + b"}", ["nested deeper"]),
    (b'{"type": "pause", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", ["nested deeper"]),
    (b'{"type": "pause", "reason": "\xff\xfe"}', ["UTF-8"]),
    (b'{"type": "pause",', ["not JSON"]),
    (b"", ["empty"]),
]


def test_hostile_bodies_are_a_400_naming_the_json_path(served: Callable[..., Served]) -> None:
    s = served()
    for raw, words in HOSTILE_BODIES:
        code, body = s.api.signal(s.eid, None, raw=raw)
        assert code == 400, (raw[:80], code, body)
        assert isinstance(body, dict) and "\n" not in body["error"], body
        for word in words:
            assert word in body["error"], (raw[:80], body)
    assert s.signals() == []

    # A real surrogate pair is text: accepted and stored as the character it encodes.
    send_applied(s, raw=b'{"type": "pause", "reason": "ok \\ud83d\\ude00"}')
    assert s.signals()[-1]["reason"] == "ok \U0001f600"
    send_applied(s, {"type": "resume"})
    assert_alive(s)


def test_nul_or_overlong_type_and_reason_are_refused_before_anything_is_written(
    served: Callable[..., Served],
) -> None:
    s = served()
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"type": "pause", "reason": "before\u0000after"}, ["body.reason", "NUL"]),
        ({"type": "pause", "reason": "\u0000"}, ["body.reason", "NUL"]),
        ({"type": "pa\u0000use"}, ["body.type", "NUL"]),
        ({"type": "pause", "reason": "r" * (MAX_REASON + 1)}, ["body.reason", str(MAX_REASON)]),
        ({"type": "p" * (MAX_TYPE + 1)}, ["body.type", str(MAX_TYPE)]),
        ({"type": "__replay", "data": {"deadLetter": 1}}, ["body.type", "reserved"]),
    ]
    for bad, words in cases:
        code, body = s.api.signal(s.eid, bad)
        assert code == 400, (code, body)
        for word in words:
            assert word in body["error"], (bad["type"][:20], body)
    # Refused, so not applied: no signal row, and the execution was not paused.
    assert s.signals() == []
    assert s.api.status(s.eid) == "running"

    # The longest reason allowed is applied, and stored whole.
    send_applied(s, {"type": "pause", "reason": "r" * MAX_REASON})
    assert s.signals() == [{"type": "pause", "reason": "r" * MAX_REASON, "status": "applied"}]
    send_applied(s, {"type": "resume"})
    assert_alive(s)


def test_protocol_errors_are_answered_in_json(served: Callable[..., Served]) -> None:
    s = served()
    auth = f"Authorization: Bearer {s.api.token}\r\n"
    for data, status in [
        (f"PUT {s.path} HTTP/1.1\r\n{auth}Content-Length: 0\r\n\r\n".encode(), 501),
        (f"HEAD {s.path} HTTP/1.1\r\n{auth}\r\n".encode(), 501),
        (b"HELLO\r\n\r\n", 400),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n", 431),
    ]:
        if status == 501 and data.startswith(b"HEAD"):
            # HEAD has no body to carry the JSON; the status alone is the answer.
            with socket.create_connection(("127.0.0.1", s.port), timeout=CLIENT_TIMEOUT) as sock:
                sock.sendall(data)
                assert read_to_close(sock).startswith(b"HTTP/1.1 501 ")
            continue
        code, body = raw_http(s.port, data)
        assert code == status and body["error"], (data[:40], code, body)
    assert_alive(s)


# --- the token and where the API listens --------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o660, 0o602], ids=oct)
def test_a_token_file_open_to_others_is_refused_with_the_chmod_to_run(
    db: Path, mode: int, served: Callable[..., Served]
) -> None:
    get_token(db)  # made 0600
    path = token_path(db)
    path.chmod(mode)
    fix = f"chmod 600 {shlex.quote(str(path))}"
    port = free_port()
    out = fm(db, "daemon", "--workers", "1", "--http", f"127.0.0.1:{port}", timeout=60)
    assert out.returncode in (2, 3), (out.returncode, out.stderr)
    line = one_line(out.stderr)
    assert fix in line, line
    assert is_served(db) is None and not reachable("127.0.0.1", port)
    out = fm(db, "token")  # nor is it printed
    assert out.returncode in (2, 3) and fix in one_line(out.stderr), out
    assert out.stdout == ""

    path.chmod(0o600)  # the fix it names works
    assert_alive(served())


def test_a_loopback_bind_does_not_warn(db: Path, served: Callable[..., Served]) -> None:
    served()
    log = db.with_suffix(".daemon.log")
    wait_until(lambda: "signal API on" in log.read_text(), 20, "the daemon's start line")
    assert "clear text" not in log.read_text()


def test_a_non_loopback_bind_warns_that_the_token_travels_in_clear_text(
    db: Path, served: Callable[..., Served]
) -> None:
    log = db.with_suffix(".daemon.log")
    s = served(bind="0.0.0.0")
    wait_until(lambda: "clear text" in log.read_text(), 20, "the clear-text warning")
    warnings = [x for x in log.read_text().splitlines() if "clear text" in x]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "warning" in warnings[0], warnings
    assert_alive(s)
