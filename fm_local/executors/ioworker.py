"""The I/O worker process: many node tasks at once on one asyncio event loop.

``http`` nodes, ``async def`` python functions, sync python functions that opted in
to a thread (``lane: "io"``) and ``shell`` nodes (a child process waited for without
blocking) run here, each as an asyncio task, up to the number the supervisor sends
(``--io-concurrency``). Messages are those of :mod:`fm_local.executors.worker`, plus:

- ``("cancel", [ids])``: stop these tasks (asyncio cancellation; a shell node's
  process group is killed). Each is answered by ``("cancelled", [ids])`` once its
  work has really stopped — for a thread, once the function returned: Python cannot
  stop a thread, so a thread that runs on keeps its answer back, and the supervisor
  replaces this worker when the answer is late (its other tasks then run again
  elsewhere, as recoveries).

Invariants as for the process worker: no database; it dies with the supervisor; a
child subreaper in its own process group, so what node code starts is stopped with
it; results are batched per turn of the event loop.
Started as ``python -m fm_local.executors.ioworker RFD WFD PPID``.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import struct
import sys
import time
from typing import Any

from fm_local import runners
from fm_local.executors import worker as base
from fm_local.executors.procs import Frames
from fm_local.limits import MARGIN


class Outbox:
    """The pipe to the supervisor, written without ever blocking: what the pipe does
    not take now waits in a buffer and goes out when the event loop sees it
    writable. A blocking write could deadlock — this worker stuck writing results
    while the supervisor is stuck writing tasks to it — where the loop, which reads
    the tasks, keeps running. Messages are framed as
    ``multiprocessing.connection.Connection.send_bytes`` frames them (a 4-byte
    big-endian length), which the supervisor reads with ``recv_bytes``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.buf = bytearray()
        self.watching = False

    def send_bytes(self, data: bytes) -> None:
        if len(data) > 0x7FFFFFFF:
            raise ValueError("message too large")
        self.buf += struct.pack("!i", len(data))
        self.buf += data
        self.drain()

    def drain(self) -> None:
        while self.buf:
            try:
                n = os.write(self.fd, self.buf)
            except BlockingIOError:
                break
            del self.buf[:n]
        loop = asyncio.get_running_loop()
        if self.buf and not self.watching:
            loop.add_writer(self.fd, self.drain)
            self.watching = True
        elif not self.buf and self.watching:
            loop.remove_writer(self.fd)
            self.watching = False


class IOWorker:
    def __init__(self, inbox: Frames, outbox: Outbox) -> None:
        self.inbox = inbox
        self.outbox = outbox
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self.begun: set[int] = set()  # tasks whose coroutine has started
        self.cancelling: set[int] = set()
        self.results: list[tuple[Any, ...]] = []
        self.cancelled: list[int] = []
        self.flush_scheduled = False
        self.done = asyncio.Event()
        # Tasks held until their turn under a rate limit (hold): how late that
        # schedule runs, when the last one started, the window it is kept over.
        self.hold_shift = 0.0
        self.last_held = 0.0
        self.hold_window = 0.0
        # Past its memory limit (--max-worker-memory) this worker says so and the
        # supervisor sends it nothing more ("drain"): it ends once its tasks have.
        mb = os.environ.get("FM_WORKER_MAX_RSS_MB")
        self.max_rss = int(mb or base.DEFAULT_MAX_RSS_MB) * 2**20
        self.retiring = False
        self.draining = False

    def send(self, msg: tuple[Any, ...]) -> None:
        self.outbox.send_bytes(pickle.dumps(msg, protocol=5))

    def on_readable(self) -> None:
        try:
            for data in self.inbox.read():
                self.handle(pickle.loads(data))
        except Exception:  # noqa: BLE001 - garbage on the pipe
            self.stop()
            return
        if self.inbox.eof:
            self.stop()  # the supervisor is gone

    def handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "tasks":
            for task in msg[1]:
                t = asyncio.get_running_loop().create_task(self.run(task))
                self.tasks[task["id"]] = t
        elif kind == "cancel":
            for tid in msg[1]:
                running = self.tasks.get(tid)
                if running is None:
                    continue  # ended already: its result is on the way
                if tid not in self.begun:
                    # Cancelled before its coroutine took a step (it came in the same
                    # read as its task): it never runs, so nothing of run() would
                    # answer for it. Answer now.
                    running.cancel()
                    del self.tasks[tid]
                    self.cancelled.append(tid)
                    self._schedule_flush()
                    continue
                self.cancelling.add(tid)
                running.cancel()
            if self.draining and not self.tasks:
                self.stop()
        elif kind == "drop":
            # Nothing waits here: every task starts when it arrives.
            pass
        elif kind == "drain":
            self.draining = True
            if not self.tasks:
                self.stop()
        elif kind == "stop":
            self.stop()

    def check_memory(self) -> None:
        if self.max_rss and not self.retiring and base._rss_bytes() > self.max_rss:
            self.retiring = True
            self.send(("retiring",))

    async def run(self, task: dict[str, Any]) -> None:
        tid = task["id"]
        self.begun.add(tid)
        try:
            if task.get("notBefore") is not None:
                await self.hold(task["notBefore"], task.get("holdWindow", 1.0))
            result = await runners.run_task_async(task)
        except asyncio.CancelledError:
            await self._until_thread_ends(tid)
            self.cancelled.append(tid)
        else:
            if tid in self.cancelling:
                self.cancelled.append(tid)  # ended before the cancel took
            else:
                self.results.append(result)
        finally:
            self.tasks.pop(tid, None)
            self.begun.discard(tid)
            self.cancelling.discard(tid)
            self._schedule_flush()
            if self.draining and not self.tasks:
                self.stop()  # after that flush: it was scheduled first

    async def hold(self, not_before: float, window: float) -> None:
        """A task handed over ahead of its turn under a rate limit starts at its turn.
        If this worker runs late (starved of CPU), the rest of the held schedule is
        shifted by as much, so starts never come closer together than the limiter
        spaced them (but for the limiter's margin); the shift ends once no held task
        started for a whole window."""
        now = time.time()
        if now - self.last_held > max(window, self.hold_window):
            self.hold_shift = 0.0
        self.hold_window = window
        while True:
            due = not_before + self.hold_shift
            delay = due - time.time()
            if delay <= 0:
                break
            await asyncio.sleep(delay)
        late = time.time() - due
        if late > MARGIN:
            # Later than the limiter's own margin (a timer's usual overshoot is
            # within it): a stall, not jitter.
            self.hold_shift += late
        self.last_held = time.time()

    async def _until_thread_ends(self, tid: int) -> None:
        """A cancelled thread-lane call: answer once its thread is done."""
        from fm_local.runners import python

        future = python.lingering.get(tid)
        while future is not None and not future.done():
            await asyncio.sleep(0.05)
        python.lingering.pop(tid, None)

    def _schedule_flush(self) -> None:
        # At the end of this turn of the loop: what ended in the same turn goes in
        # one message, and nothing waits for a timer.
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        try:
            if self.results:
                results, self.results = self.results, []
                self.send(("results", results))
            if self.cancelled:
                ids, self.cancelled = self.cancelled, []
                self.send(("cancelled", ids))
        except OSError:
            self.stop()

    def stop(self) -> None:
        for t in self.tasks.values():
            t.cancel()
        self.done.set()


async def serve(box: IOWorker) -> None:
    loop = asyncio.get_running_loop()
    loop.add_reader(box.inbox.fd, box.on_readable)
    box.send(("ready", os.getpid()))
    while not box.done.is_set():
        try:
            await asyncio.wait_for(box.done.wait(), base.MEMORY_CHECK_INTERVAL)
        except TimeoutError:
            box.check_memory()
    loop.remove_reader(box.inbox.fd)
    if box.tasks:
        await asyncio.wait(list(box.tasks.values()), timeout=1.0)
    deadline = loop.time() + 1.0
    while box.outbox.buf and loop.time() < deadline:
        await asyncio.sleep(0.01)  # what is still buffered, if the supervisor reads it


def main(argv: list[str]) -> int:
    rfd, wfd, ppid = int(argv[1]), int(argv[2]), int(argv[3])
    base._WORKER_PID = os.getpid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    signal.signal(signal.SIGTERM, base._on_term)
    base._prctl(base.PR_SET_PDEATHSIG, signal.SIGTERM)
    base._prctl(base.PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != ppid:
        return 0
    import psutil  # noqa: F401 - kill_descendants needs it, in a signal handler too

    # Import the node runtimes now, so a task starts within a millisecond of its dispatch.
    runners.load_runners()
    import aiohttp  # noqa: F401

    runners.capture_by_task()
    box = IOWorker(Frames(rfd), Outbox(wfd))
    # Not asyncio.run: its shutdown waits, with no time limit, for every thread of
    # the loop's default executor, and a node's hung asyncio.to_thread call would
    # keep this worker (a draining one too) alive for good.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(serve(box))
    finally:
        base.kill_descendants()
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    # Not sys.exit: a thread-lane call that never returns would hold the exit.
    os._exit(code)
