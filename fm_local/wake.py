"""Wake-ups: a client that committed a new execution or signal nudges the
supervisor serving that database, so it looks now instead of at its next poll.

Invariant: a wake-up is only a hint. The database stays the one channel (a lost
datagram costs at most one poll interval); the socket is an abstract Unix socket
named after the database's real path, so it needs no file and dies with the daemon.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path


def address(db: str | Path) -> str:
    real = os.path.realpath(str(db))
    return "\0fm_local-wake-" + hashlib.sha256(real.encode()).hexdigest()[:24]


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
    """The supervisor's end: readable when a client nudged it."""

    def __init__(self, db: str | Path) -> None:
        self.sock: socket.socket | None = None
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(address(db))
            self.sock = sock
        except OSError:
            self.sock = None  # no wake-ups here: the supervisor polls as before

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def drain(self) -> bool:
        """Empty the queue; True if anyone nudged."""
        woke = False
        while self.sock is not None:
            try:
                self.sock.recv(64)
                woke = True
            except OSError:
                break
        return woke

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
