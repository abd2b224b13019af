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

A worker past its memory limit (``--max-worker-memory``) says so; it is sent
nothing more and *drains*: its tasks run to their end while a new worker takes the
new ones, and it exits once idle (nothing is re-run). A draining worker is
cancelled, replaced and mourned like the current one.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Callable
from typing import Any

from fm_local.executors import StartingOffer, Task
from fm_local.executors.procs import Frames, Slot, close, descendants, encode_tasks, killpg, spawn

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
        self.slot: Slot | None = None  # the worker new tasks go to
        self.draining: list[Slot] = []  # workers past their memory limit, finishing
        # Task id -> (task, when it was sent, in the scheduler's clock).
        self.running: dict[int, tuple[Task, float]] = {}
        # Task id -> the worker it was sent to (until it ended or its cancel did).
        self.owner: dict[int, Slot] = {}
        # Task id -> real monotonic time by which its cancellation must be confirmed.
        self.cancelling: dict[int, float] = {}
        # Tasks of a replaced worker, reported lost at the next poll: (task, whether
        # it had reached the worker).
        self.lost: list[tuple[list[tuple[Task, bool]], str]] = []
        # Tasks sent to a worker not ready yet (in ``waiting``): not started.
        self.undelivered: set[int] = set()
        self.dying = dying  # the executor's: stopped processes it reaps and kills
        self._index = 0
        self.waiting: list[bytes] = []  # messages for a worker not ready yet

    def start(self) -> None:
        if self.slot is None:
            env = dict(os.environ if self.env is None else self.env)
            env["FM_IO_CONCURRENCY"] = str(self.concurrency)  # its thread pool's size
            self.slot = spawn("fm_local.executors.ioworker", self._index, env, self.max_rss_mb)
            self._index += 1

    def slots(self) -> list[Slot]:
        return [self.slot, *self.draining] if self.slot is not None else list(self.draining)

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
        slot = self.slot
        for t in tasks:
            self.running[t["id"]] = (t, now_m)
            self.owner[t["id"]] = slot
        if not self.slot.ready:
            self.waiting.append(data)
            self.undelivered.update(t["id"] for t in tasks)
            return bad
        try:
            self.slot.inbox.send_bytes(data)
        except OSError:
            pass  # the death shows up in poll()
        return bad

    def cancel(self, ids: set[int]) -> list[tuple[Task, bool]]:
        """Stop these tasks: returns them (each had started); their worker confirms."""
        out = []
        by_slot: dict[int, tuple[Slot, list[int]]] = {}
        for tid in ids:
            item = self.running.pop(tid, None)
            if item is not None:
                out.append((item[0], tid not in self.undelivered))
                self.cancelling[tid] = time.monotonic() + CANCEL_GRACE
                slot = self.owner[tid]
                by_slot.setdefault(id(slot), (slot, []))[1].append(tid)
        for slot, tids in by_slot.values():
            data = pickle.dumps(("cancel", tids))
            if not slot.ready:
                self.waiting.append(data)  # after the tasks it cancels
                continue
            try:
                slot.inbox.send_bytes(data)
            except OSError:
                pass
        return out

    def read(self, slot: Slot) -> tuple[list[tuple[Task, tuple[Any, ...]]], bool]:
        """Every complete message ``slot``'s worker wrote, read without waiting for
        one it is still writing: the results of tasks still wanted (a cancelled
        task's late result is dropped), and whether the worker closed its pipe — or
        wrote something that is not a message, which counts the same: it is replaced,
        and what it still held is reported lost, while the results read before it
        are kept."""
        if slot.frames is None:
            slot.frames = Frames(slot.outbox.fileno())
        done: list[tuple[Task, tuple[Any, ...]]] = []
        for data in slot.frames.read():
            try:
                msg = pickle.loads(data)
                kind = msg[0]
            except Exception:  # noqa: BLE001 - garbage on the pipe
                return done, True
            if kind == "results":
                for result in msg[1]:
                    self.owner.pop(result[0], None)
                    item = self.running.pop(result[0], None)
                    if item is not None:
                        done.append((item[0], result))
                    else:
                        self.cancelling.pop(result[0], None)
            elif kind == "cancelled":
                unasked = []
                for tid in msg[1]:
                    self.owner.pop(tid, None)
                    self.cancelling.pop(tid, None)
                    item = self.running.pop(tid, None)
                    if item is not None:
                        # Stopped without being asked (the worker is shutting down):
                        # it did not run to its end, so it runs again, as a recovery.
                        unasked.append((item[0], tid not in self.undelivered))
                        self.undelivered.discard(tid)
                if unasked:
                    self.lost.append((unasked, f"worker process {slot.pid} stopped it"))
            elif kind == "retiring" and slot is self.slot:
                # Over its memory limit: new tasks go to a new worker (started with
                # the next of them); this one finishes what it has, then exits.
                self.draining.append(slot)
                self.slot = None
                try:
                    slot.inbox.send_bytes(pickle.dumps(("drain",)))
                except OSError:
                    pass  # the death shows up in poll()
            elif kind == "ready":
                slot.ready = True
                waiting, self.waiting = self.waiting, []
                self.undelivered.clear()
                for queued in waiting:
                    try:
                        slot.inbox.send_bytes(queued)
                    except OSError:
                        break  # the death shows up in poll()
        return done, slot.frames.eof

    def overdue(self) -> list[Slot]:
        """The workers that did not confirm a cancellation in time."""
        now = time.monotonic()
        late = {
            id(self.owner[t]): self.owner[t] for t, due in self.cancelling.items() if due <= now
        }
        return list(late.values())

    def next_check(self) -> float | None:
        """When (the scheduler's clock) the earliest cancellation is due."""
        if not self.cancelling:
            return None
        return self._clock() + max(0.0, min(self.cancelling.values()) - time.monotonic())

    def replace(self, slot: Slot, reason: str, kill: bool) -> None:
        """Replace ``slot``'s worker (the current one, or a draining one); the tasks
        it ran are reported lost at the next poll. A drained worker that exited
        with nothing left is let go."""
        held = [
            (task, tid not in self.undelivered)
            for tid, (task, _) in self.running.items()
            if self.owner.get(tid) is slot
        ]
        for tid in [tid for tid, s in self.owner.items() if s is slot]:
            self.undelivered.discard(tid)
            del self.owner[tid]
            self.running.pop(tid, None)
            self.cancelling.pop(tid, None)
        if slot is self.slot:
            self.waiting = []
            self.slot = None  # a new one starts with the next task
        elif slot in self.draining:
            self.draining.remove(slot)
        else:
            return
        if held:
            self.lost.append((held, reason))
        procs = descendants(slot.pid)
        if kill:
            killpg(slot.pid, signal.SIGTERM)
        self.dying.append((slot.proc, time.monotonic() + 0.5, procs))
        close(slot)
