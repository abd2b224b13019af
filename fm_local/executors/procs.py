"""Worker processes: starting one (its pipes, its process group, a pidfd to see it
exit) and stopping what it leaves behind. Shared by the process pool
(:mod:`fm_local.executors.process`) and the I/O lane (:mod:`fm_local.executors.iolane`)."""

from __future__ import annotations

import math
import os
import pickle
import select
import struct
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from fm_local.pipes import Readable


@dataclass(eq=False)
class Slot:
    """One worker process and the tasks it holds (sent, no result yet)."""

    index: int
    proc: subprocess.Popen[bytes]
    inbox: Connection  # we write tasks here
    outbox: Connection  # we read results here
    ready: bool = False
    inflight: deque[dict[str, Any]] = field(default_factory=deque)
    # Monotonic time the head task started (dispatch, or the previous result).
    head_since: float = 0.0
    token: str = ""  # in the environment of everything the worker starts
    pidfd: int | None = None  # readable once the worker process has exited
    retiring: bool = False  # over its memory limit: handing back, then stopping
    dropping: set[int] = field(default_factory=set)  # asked back, answer pending
    frames: Frames | None = None  # the outbox read without blocking (the I/O lane)
    has_output: Readable | None = None  # the outbox's poll(0), kept (fm_local.pipes)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def busy(self) -> int:
        return len(self.inflight)


class Frames:
    """The messages of a pipe, read without ever blocking: a message that is only
    partly written waits in a buffer for the rest, so the supervisor never waits on
    a worker that is busy writing (the I/O worker writes its results as its event
    loop finds the pipe writable), and the I/O worker's event loop never waits on a
    supervisor that is busy writing it a large batch of tasks. Frames are those of
    ``Connection.send_bytes`` (a 4-byte big-endian length, then the bytes)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.buf = bytearray()
        self.eof = False

    def read(self) -> list[bytes]:
        """Every message complete so far (``eof`` is set once the writer is gone)."""
        while not self.eof:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
            self.buf += chunk
        out = []
        buf, pos, end = self.buf, 0, len(self.buf)
        while end - pos >= 4:
            (n,) = struct.unpack_from("!i", buf, pos)
            if n < 0 or end - pos - 4 < n:
                break
            out.append(bytes(buf[pos + 4 : pos + 4 + n]))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out


def spawn(module: str, index: int, env: dict[str, str] | None, max_rss_mb: int | None) -> Slot:
    """Start a worker process (``python -m module RFD WFD PPID``) in a process group
    of its own, with pipes both ways."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    env = dict(os.environ if env is None else env)
    # The worker must import this very fm_local, wherever it is installed.
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if max_rss_mb is not None:
        env["FM_WORKER_MAX_RSS_MB"] = str(max_rss_mb)
    token = os.urandom(8).hex()
    env["FM_WORKER_TOKEN"] = token
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                str(to_child_r),
                str(from_child_w),
                str(os.getpid()),
            ],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
            process_group=0,
            env=env,
        )
    finally:
        os.close(to_child_r)
        os.close(from_child_w)
    os.set_blocking(to_child_w, True)
    slot = Slot(
        index=index,
        proc=proc,
        inbox=Connection(to_child_w, readable=False),
        outbox=Connection(from_child_r, writable=False),
        token=token,
    )
    slot.has_output = Readable(slot.outbox)
    try:
        slot.pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        slot.pidfd = None  # no pidfd here: poll() asks the process instead
    return slot


class Poller:
    """``multiprocessing.connection.wait(objs, timeout)`` (the objects readable,
    closed or in error) on a poll object kept while ``objs`` stay the same objects
    (it holds them, so their ids are not reused meanwhile): the executor waits on
    the same workers turn after turn, and building a selector each turn cost more
    than the wait."""

    def __init__(self) -> None:
        self.key: tuple[int, ...] = ()
        self.poll: Any = None
        self.by_fd: dict[int, Any] = {}

    def wait(self, objs: list[Any], timeout: float | None) -> list[Any]:
        key = tuple(map(id, objs))
        if key != self.key or self.poll is None:
            poll = select.poll()
            by_fd: dict[int, Any] = {}
            for obj in objs:
                fd = obj if isinstance(obj, int) else obj.fileno()
                poll.register(fd, select.POLLIN)
                by_fd[fd] = obj
            self.poll, self.by_fd, self.key = poll, by_fd, key
        ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
        while True:
            try:
                got = self.poll.poll(ms)
                break
            except InterruptedError:
                continue
        by_fd = self.by_fd
        return [by_fd[fd] for fd, _ in got if fd in by_fd]


def encode_tasks(
    tasks: list[dict[str, Any]],
) -> tuple[bytes | None, list[dict[str, Any]], list[tuple[dict[str, Any], BaseException]]]:
    """The "tasks" message for a worker: (its bytes, or None when no task could be
    encoded; the tasks in it; the tasks left out, each with why)."""
    bad: list[tuple[dict[str, Any], BaseException]] = []
    try:
        return pickle.dumps(("tasks", tasks), protocol=5), tasks, bad
    except Exception:  # noqa: BLE001 - find the task at fault; send the others
        good = []
        for t in tasks:
            try:
                pickle.dumps(t, protocol=5)
                good.append(t)
            except Exception as exc:  # noqa: BLE001
                bad.append((t, exc))
        if not good:
            return None, [], bad
        return pickle.dumps(("tasks", good), protocol=5), good, bad


def killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def close(slot: Slot) -> None:
    for conn in (slot.inbox, slot.outbox):
        try:
            conn.close()
        except OSError:
            pass
    if slot.pidfd is not None:
        try:
            os.close(slot.pidfd)
        except OSError:
            pass
        slot.pidfd = None


def descendants(pid: int) -> list[Any]:
    """The processes below ``pid`` now (psutil objects: a reused pid is not killed)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_all(procs: list[Any]) -> None:
    import psutil

    for p in procs:
        try:
            if p.is_running():
                p.kill()
        except psutil.Error:
            pass
