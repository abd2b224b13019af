"""One supervisor per database: an OS lock (flock) on ``<db>.lock`` beside it.

The lock file holds the holder's pid and start time, so a second supervisor can say
which process serves the database. The kernel drops the lock when the holder dies,
however it dies, so a stale file never blocks a restart. A supervisor that cannot
create the lock file (a read-only directory or mount) stops with the storage problem's
one line; a read command that cannot open it only cannot tell, and goes on.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from fm_local.errors import AlreadyServed


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


class SupervisorLock:
    def __init__(self, db: Path) -> None:
        self.path = lock_path(db)
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            from fm_local.store import storage_error

            raise storage_error(exc, self.path, "create the lock file") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(self.path)
            who = f"pid {holder['pid']}" if holder else "another process"
            raise AlreadyServed(
                f"another supervisor ({who}) already serves {self.path.with_suffix('')}; "
                "stop it first, or use it: fm run/submit talk to it through the database"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "startedAt": time.time()}).encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


def read_holder(path: Path) -> dict[str, float] | None:
    try:
        return json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None


def is_served(db: Path) -> dict[str, float] | None:
    """The holder's record if a supervisor holds the lock of ``db`` now, else None."""
    path = lock_path(db)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        # Missing: nobody ever served it. Unreadable (another user's, or a parent
        # that is not a directory): we cannot tell, and a read command goes on.
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_holder(path) or {"pid": -1}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
