"""The inline executor: node tasks run in the supervisor's own process, inside
:meth:`InlineExecutor.poll`, one after another — no worker process.

For the engine's tests (``Supervisor(db, executor=InlineExecutor)``): a task does
exactly what it does in a worker (:func:`fm_local.runners.run_task`), so
readiness, retries, error strategies, merges and loops are exercised without
spawning processes. What it cannot do is what needs a process boundary: a task
that runs cannot be stopped (it has ended by the time anyone could ask), a node
that crashes takes the supervisor with it, and nothing is isolated. Not for
production use.
"""

from __future__ import annotations

import os
import select
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from typing import Any

from fm_local.executors import Event, Finished, Offer, StartingOffer, Task


class InlineOffer(StartingOffer):
    """Room for ``room`` more tasks (:class:`fm_local.executors.Offer`): each starts
    at the next poll, none waits behind another; tasks of every lane."""

    def __init__(self, room: int) -> None:
        super().__init__(room)
        self.worker: int | None = os.getpid()


class InlineExecutor:
    """Runs up to ``size`` tasks per poll, in this process."""

    def __init__(
        self, size: int = 1, *, monotonic: Callable[[], float] = time.monotonic, **_: Any
    ) -> None:
        self.size = max(1, size)
        self._clock = monotonic  # the scheduler's clock (running() reports in it)
        self.queue: deque[tuple[Task, float]] = deque()  # (task, monotonic submit time)
        self.handed_back: list[Task] = []
        self.ran = 0  # tasks run so far (tests read it)

    def start(self) -> None:
        pass

    def wait_ready(self, timeout: float) -> None:
        pass

    def shutdown(self) -> None:
        self.queue.clear()

    def offers(self, backlog: Callable[[], int]) -> Iterator[Offer]:
        room = self.size - len(self.queue)
        if room > 0:
            yield InlineOffer(room)

    def submit(self, offer: Offer) -> list[tuple[Task, BaseException]]:
        assert isinstance(offer, InlineOffer)
        now_m = self._clock()
        self.queue.extend((task, now_m) for task in offer.tasks)
        return []

    def poll(self, timeout: float, extra: Any = None) -> list[Event]:
        from fm_local.runners import run_task

        done: list[tuple[Task, tuple[Any, ...]]] = []
        now = time.time()
        for task in self.handed_back:
            done.append((task, (task["id"], None, None, None, [], now, now, None)))
        self.handed_back = []
        while self.queue:
            task, _ = self.queue.popleft()
            done.append((task, run_task(task)))
            self.ran += 1
        if done:
            return [Finished(done)]
        if extra is not None and extra.fileno() >= 0:
            select.select([extra], [], [], timeout)
        else:
            time.sleep(timeout)
        return []

    def running(self) -> list[tuple[int, float]]:
        return [(task["id"], since) for task, since in self.queue]

    def stop(self, task_ids: Collection[int]) -> list[tuple[Task, bool]]:
        ids = set(task_ids)
        stopped = [(task, False) for task, _ in self.queue if task["id"] in ids]
        self.queue = deque(item for item in self.queue if item[0]["id"] not in ids)
        return stopped

    def hand_back(self, task_ids: Collection[int]) -> None:
        ids = set(task_ids)
        self.handed_back.extend(task for task, _ in self.queue if task["id"] in ids)
        self.queue = deque(item for item in self.queue if item[0]["id"] not in ids)

    def can_follow(self, task_id: int) -> bool:
        return False  # no task waits behind another here

    def follow(self, task_id: int, task: Task) -> bool:
        return False

    def reclaim(self, now_m: float) -> None:
        pass

    def next_check(self, now_m: float) -> float | None:
        return None

    def io_workers(self) -> list[tuple[int, int]]:
        return []

    def workers(self) -> list[tuple[int, int | None]]:
        return [(os.getpid(), self.queue[0][0]["id"] if self.queue else None)]
