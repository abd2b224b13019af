"""The I/O lane of the process executor: one worker process with an event loop
(:mod:`fm_local.executors.ioworker`) that runs up to ``concurrency`` I/O tasks at
once — http nodes, ``async def`` python functions, thread-lane python functions,
shell commands.

The worker process starts with the executor (not waited for) and, after it was
replaced, with the next I/O task; tasks sent before it is ready wait in order and
go out when it reports ready.

Invariants: a task starts when it reaches the worker (nothing waits behind another,
so nothing is prefetched or handed back); stopping a task is a cancellation the
worker confirms once the work has really stopped — a confirmation later than
``CANCEL_GRACE`` means the cancellation did not take (a thread that runs on), and
the worker is replaced: its other tasks are reported lost (they run again, as
recoveries), like every task of a worker that dies.
"""

from __future__ import annotations

import pickle
import signal
import time
from collections.abc import Callable
from typing import Any

from fm_local.executors import StartingOffer, Task
from fm_local.executors.procs import Slot, close, descendants, encode_tasks, killpg, spawn

CANCEL_GRACE = 1.0  # seconds a cancelled task may take to stop


class IOOffer(StartingOffer):
    """Room for tasks on the I/O lane (:class:`fm_local.executors.Offer`): each
    starts as soon as it arrives."""

    lane: str | None = "io"

    def __init__(self, lane: IOLane, room: int) -> None:
        super().__init__(room)
        self.io = lane

    @property
    def worker(self) -> int | None:
        # Asked for a task about to be made: the worker starts now if it had not.
        self.io.start()
        return self.io.slot.pid if self.io.slot is not None else None


class IOLane:
    def __init__(
        self,
        concurrency: int,
        env: dict[str, str] | None,
        max_rss_mb: int | None,
        monotonic: Callable[[], float],
        dying: list[tuple[Any, float, list[Any]]],
    ) -> None:
        self.concurrency = concurrency
        self.env = env
        self.max_rss_mb = max_rss_mb
        self._clock = monotonic
        self.slot: Slot | None = None
        # Task id -> (task, when it was sent, in the scheduler's clock).
        self.running: dict[int, tuple[Task, float]] = {}
        # Task id -> real monotonic time by which its cancellation must be confirmed.
        self.cancelling: dict[int, float] = {}
        # Tasks of a replaced worker, reported lost at the next poll.
        self.lost: list[tuple[list[Task], str]] = []
        self.dying = dying  # the executor's: stopped processes it reaps and kills
        self._index = 0
        self.waiting: list[bytes] = []  # messages for a worker not ready yet

    def start(self) -> None:
        if self.slot is None:
            self.slot = spawn("fm_local.executors.ioworker", self._index, self.env, self.max_rss_mb)
            self._index += 1

    @property
    def ready(self) -> bool:
        return self.slot is not None and self.slot.ready

    def room(self) -> int:
        return self.concurrency - len(self.running) - len(self.cancelling)

    def send(self, tasks: list[Task]) -> list[tuple[Task, BaseException]]:
        self.start()
        assert self.slot is not None
        data, tasks, bad = encode_tasks(tasks)
        if data is None:
            return bad
        now_m = self._clock()
        for t in tasks:
            self.running[t["id"]] = (t, now_m)
        if not self.slot.ready:
            self.waiting.append(data)
            return bad
        try:
            self.slot.inbox.send_bytes(data)
        except OSError:
            pass  # the death shows up in poll()
        return bad

    def cancel(self, ids: set[int]) -> list[tuple[Task, bool]]:
        """Stop these tasks: returns them (each had started); the worker confirms."""
        out = []
        for tid in ids:
            item = self.running.pop(tid, None)
            if item is not None:
                out.append((item[0], True))
                self.cancelling[tid] = time.monotonic() + CANCEL_GRACE
        if out and self.slot is not None:
            data = pickle.dumps(("cancel", [t["id"] for t, _ in out]))
            if not self.slot.ready:
                self.waiting.append(data)  # after the tasks it cancels
                return out
            try:
                self.slot.inbox.send_bytes(data)
            except OSError:
                pass
        return out

    def read(self, exited: bool) -> list[tuple[Task, tuple[Any, ...]]]:
        """Every complete message the worker wrote: the results of tasks still
        wanted (a cancelled task's late result is dropped)."""
        assert self.slot is not None
        conn = self.slot.outbox
        done: list[tuple[Task, tuple[Any, ...]]] = []
        while conn.poll(0):
            msg = pickle.loads(conn.recv_bytes())
            kind = msg[0]
            if kind == "results":
                for result in msg[1]:
                    item = self.running.pop(result[0], None)
                    if item is not None:
                        done.append((item[0], result))
                    else:
                        self.cancelling.pop(result[0], None)
            elif kind == "cancelled":
                for tid in msg[1]:
                    self.cancelling.pop(tid, None)
            elif kind == "ready":
                self.slot.ready = True
                waiting, self.waiting = self.waiting, []
                for data in waiting:
                    try:
                        self.slot.inbox.send_bytes(data)
                    except OSError:
                        break  # the death shows up in poll()
            if exited and not conn.poll(0):
                break
        return done

    def overdue(self) -> bool:
        now = time.monotonic()
        return any(due <= now for due in self.cancelling.values())

    def next_check(self) -> float | None:
        """When (the scheduler's clock) the earliest cancellation is due."""
        if not self.cancelling:
            return None
        return self._clock() + max(0.0, min(self.cancelling.values()) - time.monotonic())

    def replace(self, reason: str, kill: bool) -> None:
        """Replace the worker; what it ran is reported lost at the next poll."""
        slot = self.slot
        if slot is None:
            return
        held = [task for task, _ in self.running.values()]
        self.running.clear()
        self.cancelling.clear()
        self.waiting = []
        if held:
            self.lost.append((held, reason))
        procs = descendants(slot.pid)
        if kill:
            killpg(slot.pid, signal.SIGTERM)
        self.dying.append((slot.proc, time.monotonic() + 0.5, procs))
        close(slot)
        self.slot = None  # a new one starts with the next task
