"""Wake-ups, both ways between clients and the supervisor of one database.

- A client that committed a new execution or signal nudges the supervisor, so it
  looks now instead of at its next poll (:func:`notify`, :class:`Listener`).
- A client waiting for an execution to end (``fm wait``, ``api.wait``, ``fm run``
  on a daemon) registers with the supervisor (:class:`Waiter`), which nudges it
  once the end is committed: the waiter reads the file then, not every few ms.

Invariant: a wake-up is only a hint. The database stays the one channel: a lost
datagram, a restarted daemon or a platform without abstract sockets costs at most
one fallback poll interval. The sockets are abstract Unix sockets named after the
database's real path, so they need no file and die with their process.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import select
import socket
import time
from pathlib import Path

MAX_WAITERS = 10_000  # registrations kept; past this the oldest wait by polling


def _key(db: str | Path) -> str:
    return hashlib.sha256(os.path.realpath(str(db)).encode()).hexdigest()[:24]


def address(db: str | Path) -> str:
    return "\0fm_local-wake-" + _key(db)


def _waiter_address(name: str) -> str:
    return "\0fm_local-wait-" + name


def notify(db: str | Path) -> None:
    """Nudge the supervisor serving ``db``, if one listens (never blocks, never fails)."""
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError:
        return
    try:
        s.setblocking(False)
        s.sendto(b"!", address(db))
    except OSError:
        pass  # nobody listens, or its queue is full: it will poll anyway
    finally:
        s.close()


class Listener:
    """The supervisor's end: readable when a client nudged it or registered to
    wait for an execution's end (kept in :attr:`waits` until :meth:`ended`)."""

    def __init__(self, db: str | Path) -> None:
        self.sock: socket.socket | None = None
        self.waits: dict[str, set[str]] = {}  # execution id -> waiter names
        # Asked before each drain: the supervisor drains every turn, and a receive
        # on an empty socket costs a system call and an exception.
        self._readable = select.poll()
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(address(db))
            self.sock = sock
            self._readable.register(sock.fileno(), select.POLLIN)
        except OSError:
            self.sock = None  # no wake-ups here: the supervisor polls as before

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def drain(self) -> tuple[bool, list[str]]:
        """Empty the queue: (anyone nudged, the execution ids waiters registered
        for since the last drain)."""
        woke = False
        registered: list[str] = []
        if self.sock is None or not self._readable.poll(0):
            return woke, registered
        while self.sock is not None:
            try:
                msg = self.sock.recv(256)
            except OSError:
                break
            if msg.startswith(b"w "):
                parts = msg.decode("ascii", "replace").split()
                if len(parts) == 3:
                    _, name, eid = parts
                    if len(self.waits) >= MAX_WAITERS and eid not in self.waits:
                        self.waits.pop(next(iter(self.waits)))  # they fall back to polling
                    self.waits.setdefault(eid, set()).add(name)
                    registered.append(eid)
            else:
                woke = True
        return woke, registered

    def ended(self, execution_id: str) -> None:
        """The end of this execution is committed: nudge whoever waits for it."""
        names = self.waits.pop(execution_id, None)
        if not names or self.sock is None:
            return
        for name in names:
            try:
                self.sock.sendto(b"!", _waiter_address(name))
            except OSError:
                pass  # gone, or its queue is full: it polls anyway

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.waits.clear()


class Waiter:
    """A client's end: registered with the supervisor of ``db`` for the end of
    ``execution_id``; :meth:`wait` returns when nudged or after ``timeout``."""

    def __init__(self, db: str | Path, execution_id: str) -> None:
        self.sock: socket.socket | None = None
        name = f"{_key(db)}-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(_waiter_address(name))
            sock.setblocking(False)
            sock.sendto(f"w {name} {execution_id}".encode("ascii"), address(db))
            self.sock = sock
        except (OSError, UnicodeEncodeError):
            if "sock" in locals():
                sock.close()
            self.sock = None  # no supervisor listens (or no abstract sockets): poll

    @property
    def registered(self) -> bool:
        return self.sock is not None

    def wait(self, timeout: float) -> bool:
        """Until nudged (True) or ``timeout`` seconds passed (False)."""
        if self.sock is None:
            time.sleep(timeout)
            return False
        import select

        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return False
        try:
            while True:
                self.sock.recv(16)
        except OSError:
            pass
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
