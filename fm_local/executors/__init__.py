"""Where node tasks run: the :class:`Executor` protocol the supervisor schedules
through, and its events.

The supervisor sees tasks, never workers. It asks for offers (room for tasks now,
and how much expected work may wait behind a running one), fills them, polls for
what happened (:class:`Finished`, :class:`Started`, :class:`Lost`), and stops or
takes back tasks by id. How a task reaches a process, prefetch behind a running
task, process groups, and replacing a dead or retired worker belong to the
implementation: :mod:`fm_local.executors.process`, long-lived worker processes
(:mod:`fm_local.executors.worker` is their main loop).

The protocol is made for a remote executor too: nothing in it is a pid the
supervisor would kill, a death arrives as an event whenever it is known, and
``running()`` reports what runs from the executor's side.

A task is a dict: ``{"id", "type", "spec", "folder", "ctx"}``; a result is the
tuple a worker sends back (``fm_local.runners.run_task``). This module
imports nothing heavy: a worker process imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

# I/O tasks (http, shell, async python) in flight at once on the I/O lane, by default
# (``fm daemon --io-concurrency``, SPEC §11).
DEFAULT_IO_CONCURRENCY = 1000

Task = dict[str, Any]
Result = tuple[Any, ...]


@dataclass(slots=True)
class Finished:
    """Tasks that ended (in order), each with its result; a result whose ``ok`` is
    None is a task handed back unstarted (:meth:`Executor.hand_back`)."""

    results: list[tuple[Task, Result]]


@dataclass(slots=True)
class Started:
    """A task that waited behind another now runs."""

    task_id: int


@dataclass(slots=True)
class Lost:
    """Tasks the executor can no longer run or report: ``(task, had started)``, the
    running one first, with why (``"worker process 123 died"``)."""

    tasks: list[tuple[Task, bool]]
    reason: str


@dataclass(slots=True)
class Logs:
    """Log lines a running task printed so far (the process lane streams them;
    its result then carries only the lines after these)."""

    task_id: int
    lines: list[tuple[float, str, str]]


Event = Finished | Started | Lost | Logs


class Offer(Protocol):
    """Room for tasks now, on one unit of the executor (a worker process)."""

    @property
    def worker(self) -> int | None:
        """The pid that will run the next task, when the executor knows it (recorded
        with the task); asked only for a task about to be made."""
        ...

    # Which tasks it takes: "process" (a worker process each), "io" (many at once on
    # an event loop), None (any).
    lane: str | None

    def wants(self) -> bool:
        """Room for one more task."""
        ...

    def budget(self) -> float | None:
        """Seconds of expected work the next task may take (it would wait behind a
        running one); None: any (it starts at once)."""
        ...

    def charge(self, estimate: float | None) -> None:
        """The next task, expected to take ``estimate`` seconds (None: unknown), is
        being made: count it against the budget."""
        ...

    def add(self, task: Task) -> None:
        """A task made for this offer (sent by :meth:`Executor.submit`)."""
        ...


class Executor(Protocol):
    """Where node tasks run. The scheduler never cares which implementation it has."""

    def start(self) -> None: ...

    def wait_ready(self, timeout: float) -> None:
        """Wait (bounded) until the executor can run tasks."""
        ...

    def shutdown(self) -> None:
        """Stop everything: what still runs is stopped with all it started."""
        ...

    def offers(self, backlog: Callable[[], int]) -> Iterator[Offer]:
        """Where tasks may go now; ``backlog()``: how many tasks are ready to run
        (asked again as offers are filled)."""
        ...

    def submit(self, offer: Offer) -> list[tuple[Task, BaseException]]:
        """Send an offer's tasks; returns those that could not be sent, with why."""
        ...

    def poll(self, timeout: float, extra: Any = None) -> list[Event]:
        """What happened, waiting up to ``timeout`` seconds for something (or for
        ``extra``, a file-like object such as a wake-up socket, to be readable)."""
        ...

    def running(self) -> list[tuple[int, float]]:
        """(task id, ``time.monotonic()`` it started) of every task running now."""
        ...

    def stop(self, task_ids: Collection[int]) -> list[tuple[Task, bool]]:
        """Stop these tasks now, with everything they started. Returns every task
        the executor gives up doing so — the ones asked for, and any that could
        not be kept apart from them — as ``(task, had started)``; no event
        follows for them."""
        ...

    def hand_back(self, task_ids: Collection[int]) -> None:
        """Give back these tasks if they have not started: each comes back as a
        :class:`Finished` result whose ``ok`` is None."""
        ...

    def can_follow(self, task_id: int) -> bool:
        """Whether :meth:`follow` could queue a task behind this one now."""
        ...

    def follow(self, task_id: int, task: Task) -> bool:
        """Queue ``task`` behind task ``task_id``, last on its worker, to start
        there only if that one succeeds (else it comes back as a :class:`Finished`
        result whose ``ok`` is None, as a handed-back task does); False if it
        cannot (then nothing was sent)."""
        ...

    def reclaim(self, now_m: float) -> None:
        """Hand back the tasks waiting behind a task that runs far longer than
        expected, so they run elsewhere (the executor's own prefetch policy)."""
        ...

    def next_check(self, now_m: float) -> float | None:
        """The ``time.monotonic()`` by which the executor wants :meth:`reclaim` called."""
        ...

    def workers(self) -> list[tuple[int, int | None]]:
        """(pid, the task it runs or None) of each worker process, for sampling."""
        ...

    def io_workers(self) -> list[tuple[int, int]]:
        """(pid, tasks in flight) of each I/O-lane worker process, for sampling."""
        ...


class StartingOffer:
    """Room for ``room`` tasks that each start as soon as they arrive (nothing waits
    behind another, so no prefetch budget): the I/O lane's and the inline
    executor's offers."""

    lane: str | None = None

    def __init__(self, room: int) -> None:
        self.tasks: list[Task] = []
        self._room = room

    def wants(self) -> bool:
        return self._room > 0

    def budget(self) -> float | None:
        return None

    def charge(self, estimate: float | None) -> None:
        pass

    def add(self, task: Task) -> None:
        self.tasks.append(task)
        self._room -= 1


def started_first(held: list[Task]) -> list[tuple[Task, bool]]:
    """The tasks a worker held, head first: the head had started, the rest not."""
    return [(task, i == 0) for i, task in enumerate(held)]
