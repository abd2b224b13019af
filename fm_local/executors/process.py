"""The process executor: long-lived worker processes behind the task-level
:class:`fm_local.executors.Executor` protocol.

Invariants: the scheduler only sees tasks (offers to fill, events back, tasks
stopped or taken back by id); prefetch — tasks queued on a busy worker behind its
running one, when their expected durations fit a small window — and taking them
back when the running one overstays are decided here; each worker is its own process group and a
child subreaper, so stopping a slot (SIGTERM, SIGKILL after a grace, then every
descendant seen before the stop) stops everything its node started; a worker's
death is seen from its process (a pidfd), not only from EOF on its pipe, which a
process forked by node code may hold open; a stopped, dead or retired worker is
replaced; every child is reaped.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

from fm_local.executors import Event, Finished, Logs, Lost, Offer, Started, Task, started_first
from fm_local.executors.iolane import IOLane, IOOffer
from fm_local.executors.procs import (
    Poller,
    Slot,
    close,
    descendants,
    encode_tasks,
    kill_all,
    killpg,
    spawn,
)

PREFETCH = 64  # most tasks queued on one worker
PREFETCH_WINDOW = 0.005  # seconds of expected work a worker may hold behind its head
PREFETCH_HOLD = 0.02  # a head running longer than this (and 2x its estimate): take back
STOP_GRACE = 0.5  # seconds between SIGTERM and SIGKILL
PIPE_ROOM = 16 * 1024  # bytes a message may have without the worker reading at once
SIG_DROP = (
    signal.SIGRTMIN + 3
)  # as fm_local.executors.worker.SIG_DROP (not imported: it imports nodes)


class ProcessOffer:
    """Room on one worker (:class:`fm_local.executors.Offer`): one task that starts
    at once on an idle worker, then tasks whose expected durations fit the
    prefetch window behind it."""

    lane: str | None = "process"

    __slots__ = (
        "slot",
        "worker",
        "tasks",
        "_room",
        "_budget",
        "_idle",
        "_estimates",
        "_next_estimate",
    )

    def __init__(self, slot: Slot, room: int, budget: float, estimates: dict[int, Any]) -> None:
        self.slot = slot
        self.worker: int | None = slot.pid
        self.tasks: list[Task] = []
        self._room = room
        self._budget = budget
        self._idle = not slot.inflight
        self._estimates = estimates
        self._next_estimate: float | None = None

    def wants(self) -> bool:
        return self._room > 0 and (self._starts_now() or self._budget > 0.0)

    def _starts_now(self) -> bool:
        return self._idle and not self.tasks

    def budget(self) -> float | None:
        return None if self._starts_now() else self._budget

    def charge(self, estimate: float | None) -> None:
        self._next_estimate = estimate
        if self._starts_now():
            self._budget = PREFETCH_WINDOW - estimate if estimate is not None else 0.0
        else:
            self._budget -= estimate if estimate is not None else PREFETCH_WINDOW

    def add(self, task: Task) -> None:
        self.tasks.append(task)
        self._estimates[task["id"]] = self._next_estimate
        self._room -= 1


class ProcessExecutor:
    """A fixed number of worker processes; replaces any that die or are stopped."""

    def __init__(
        self,
        size: int,
        env: dict[str, str] | None = None,
        max_rss_mb: int | None = None,
        subreaper: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        io_concurrency: int = 0,
    ) -> None:
        self.size = max(1, size)
        # The scheduler's monotonic clock: what running() and the prefetch window
        # report and compare is in its time (a stepped test clock included).
        # Stopping processes keeps real time.
        self._clock = monotonic
        self.env = env
        self.max_rss_mb = max_rss_mb
        # As a child subreaper, this process inherits the processes of a worker that
        # died; those that came from a worker (by its token or process group) are
        # killed. Only for a process of our own (fm daemon, fm run).
        self.subreaper = subreaper
        self._watch: list[tuple[str, int, float]] = []  # (token, pgid, until) of dead workers
        self._children_fd: int | None = None
        self.detached: set[int] = set()  # processes node code let outlive its node
        self.slots: list[Slot] = []
        # Stopped workers: (process, when to SIGKILL, descendants seen at the stop).
        self._dying: list[tuple[subprocess.Popen[bytes], float, list[Any]]] = []
        self._next_index = 0
        # Task id -> the scheduler's estimate of its duration (seconds; None: unknown),
        # for the tasks the workers hold.
        self._estimates: dict[int, float | None] = {}
        # What _poll waits on, kept between turns while the workers stay the same.
        self._poller = Poller()
        # The I/O lane: one event-loop worker running up to io_concurrency tasks.
        self.io = (
            IOLane(io_concurrency, env, max_rss_mb, monotonic, self._dying)
            if io_concurrency > 0
            else None
        )
        self.lanes = ("process", "io") if self.io is not None else ("process",)

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        if self.subreaper and self._children_fd is None:
            try:
                import ctypes

                ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1, 0, 0, 0)
                self._children_fd = os.open(f"/proc/self/task/{os.getpid()}/children", os.O_RDONLY)
            except (OSError, AttributeError):
                self._children_fd = None
        while len(self.slots) < self.size:
            self.slots.append(self._spawn())
        if self.io is not None:
            # Started now, beside the process workers, but not waited for: a first
            # I/O task that comes before it is ready waits in order (iolane).
            self.io.start()

    def _spawn(self) -> Slot:
        slot = spawn("fm_local.executors.worker", self._next_index, self.env, self.max_rss_mb)
        self._next_index += 1
        return slot

    def wait_ready(self, timeout: float) -> None:
        """Wait (bounded) until every worker has started and reported ready."""
        deadline = time.monotonic() + timeout
        io = self.io
        while (
            any(not s.ready for s in self.slots)
            # (An I/O worker that retired at once is replaced with the next I/O task.)
            or (io is not None and io.slot is not None and not io.ready)
        ) and time.monotonic() < deadline:
            for kind, slot, _ in self._poll(0.05):
                if kind == "died" or kind == "io-gone":
                    raise RuntimeError(f"worker process {slot.pid} died while starting")

    def shutdown(self) -> None:
        """Stop every worker: idle ones exit at once; one still running a node is
        stopped with everything its node started."""
        if self.io is not None:
            self.slots.extend(self.io.slots())  # stopped with the others
            self.io.slot = None
            self.io.draining = []
        for slot in self.slots:
            try:
                slot.inbox.send_bytes(pickle.dumps(("stop",)))
            except OSError:
                pass
        deadline = time.monotonic() + 1.0
        for slot in self.slots:
            try:
                slot.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._dying.append(
                    (slot.proc, time.monotonic() + STOP_GRACE, descendants(slot.pid))
                )
                killpg(slot.proc.pid, signal.SIGTERM)
            else:
                killpg(slot.proc.pid, signal.SIGKILL)  # leftovers in its group
            close(slot)
        self.slots = []
        for proc, kill_at, tree in self._dying:
            try:
                proc.wait(max(0.0, kill_at - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            killpg(proc.pid, signal.SIGKILL)
            kill_all(tree)
            proc.wait()
        self._dying.clear()

    # --- scheduling -----------------------------------------------------------------

    def offers(self, backlog: Callable[[], int]) -> Iterator[Offer]:
        """One offer per worker that takes tasks now: an idle one takes one (more,
        behind it, when the backlog is deep); a busy one, only when the backlog is
        deep, tasks whose expected durations fit what is left of its window. Made
        one at a time: the room of each counts the backlog left by the ones before."""
        n_slots = len(self.slots)
        deep = backlog() > 2 * n_slots
        now_m = self._clock()
        for slot in self.slots:
            if not slot.ready:
                continue
            idle = not slot.inflight
            if not idle and not deep:
                continue
            room = 1
            if deep:
                room = min(PREFETCH - len(slot.inflight), max(1, backlog() // n_slots))
            budget = 0.0 if idle else self._window_left(slot, now_m)
            yield ProcessOffer(slot, room, budget, self._estimates)
        if self.io is not None:
            room = self.io.room()
            if room > 0:
                yield IOOffer(self.io, room)

    def _window_left(self, slot: Slot, now_m: float) -> float:
        """Seconds of prefetch window a busy worker has left: the window minus the
        expected rest of its running task and of the tasks queued behind it."""
        held = 0.0
        for i, t in enumerate(slot.inflight):
            est = self._estimates.get(t["id"])
            if est is None:
                return 0.0  # unknown work ahead: do not queue behind it
            if i == 0:
                ran = now_m - slot.head_since
                if ran > est:
                    return 0.0  # running longer than expected: its end is unknown
                held += est - ran
            else:
                held += est
        return PREFETCH_WINDOW - held

    def submit(self, offer: Offer) -> list[tuple[Task, BaseException]]:
        """Send an offer's tasks to its worker; returns the tasks that could not
        be encoded (with why) — the others are sent."""
        tasks = offer.tasks  # type: ignore[attr-defined]
        if not tasks:
            return []
        if isinstance(offer, IOOffer):
            return offer.io.send(tasks)
        assert isinstance(offer, ProcessOffer)
        bad = self._send(offer.slot, tasks)
        for task, _ in bad:
            self._estimates.pop(task["id"], None)
        return bad

    def _send(self, slot: Slot, tasks: list[Task]) -> list[tuple[Task, BaseException]]:
        data, tasks, bad = encode_tasks(tasks)
        if data is None:
            return bad
        busy = bool(slot.inflight)
        if not busy:
            slot.head_since = self._clock()
        slot.inflight.extend(tasks)
        try:
            if busy and len(data) > PIPE_ROOM:
                # More than the pipe holds, for a worker running a node: have it
                # read now, or this write would wait for the node to end.
                os.kill(slot.pid, SIG_DROP)
            slot.inbox.send_bytes(data)
        except OSError:
            pass  # the death shows up in poll()
        return bad

    def poll(self, timeout: float, extra: Any = None) -> list[Event]:
        """Wait up to ``timeout`` for results (or for ``extra``, a file-like object
        such as a wake-up socket, to be readable); what happened, in order."""
        events: list[Event] = []
        io = self.io
        if io is not None and io.lost:
            for tasks, why in io.lost:
                events.append(Lost(tasks, why))
            io.lost = []
        for kind, slot, payload in self._poll(timeout, extra):
            if kind == "io" or kind == "io-gone":
                assert io is not None
                if kind == "io":
                    events.append(Finished(payload))
                else:
                    io.replace(slot, f"worker process {slot.pid} died", kill=False)
                    for tasks, why in io.lost:
                        events.append(Lost(tasks, why))
                    io.lost = []
                continue
            if kind == "results":
                events.append(Finished(payload))
            elif kind == "started":
                events.append(Started(payload))
            elif kind == "logs":
                events.append(Logs(*payload))
            elif kind == "died":
                events.append(Lost(started_first(payload), f"worker process {slot.pid} died"))
        return events

    def _poll(self, timeout: float, extra: Any = None) -> list[tuple[str, Slot, Any]]:
        """:meth:`poll`, by worker: ``("results", slot, [(task, result), ...])``,
        ``("started", slot, task id)`` (a new head), ``("died", slot, [tasks])`` (the
        tasks it held, head first), ``("retired", slot, [])``, ``("ready", slot, None)``."""
        self._reap()
        slots = self.slots
        io = self.io
        io_slots = io.slots() if io is not None else []
        if io_slots:
            slots = [*slots, *io_slots]
        by_conn: dict[Any, Slot] = {s.outbox: s for s in slots}
        for s in slots:
            if s.pidfd is not None:
                by_conn[s.pidfd] = s
        events: list[tuple[str, Slot, Any]] = []
        waiting = list(by_conn)
        if extra is not None and extra.fileno() >= 0:
            waiting.append(extra)
        if not waiting:
            time.sleep(timeout)
            return events
        ready = [r for r in self._poller.wait(waiting, timeout) if r is not extra]
        gone = {by_conn[r] for r in ready if isinstance(r, int)}  # type: ignore[index]
        for s in slots:
            if s.pidfd is None and s.proc.poll() is not None:
                gone.add(s)
        seen: set[int] = set()
        for conn in ready:
            slot = by_conn[conn]  # type: ignore[index]
            if id(slot) in seen:
                continue
            seen.add(id(slot))
            try:
                if io is not None and slot in io_slots:
                    done, closed = io.read(slot)
                    if done:
                        events.append(("io", slot, done))
                    if closed:
                        gone.add(slot)
                else:
                    self._read(slot, events, exited=slot in gone)
            except (EOFError, OSError, pickle.UnpicklingError):
                gone.add(slot)
        for slot in gone:
            if slot in io_slots:
                if id(slot) not in seen:
                    # What it wrote before it exited (a drained worker's last results).
                    try:
                        done, _ = io.read(slot)  # type: ignore[union-attr]
                        if done:
                            events.append(("io", slot, done))
                    except (EOFError, OSError, pickle.UnpicklingError):
                        pass
                events.append(("io-gone", slot, []))
                continue
            if slot not in self.slots:
                continue
            held = list(slot.inflight)
            slot.inflight.clear()
            for task in held:
                self._estimates.pop(task["id"], None)
            retired = slot.retiring and not held
            self._replace(slot, kill=False)
            events.append(("retired" if retired else "died", slot, held))
        return events

    def _read(self, slot: Slot, events: list[tuple[str, Slot, Any]], exited: bool) -> None:
        """Take every complete message the worker wrote (all of them, when it has
        exited: results it sent before dying count)."""
        conn = slot.outbox
        waiting = slot.has_output or conn.poll
        head = slot.inflight[0]["id"] if slot.inflight else None
        while waiting():
            msg = pickle.loads(conn.recv_bytes())
            kind = msg[0]
            if kind == "results" or kind == "retire":
                done = self._match(slot, msg[1])
                if done:
                    events.append(("results", slot, done))
                if kind == "retire":
                    slot.retiring = True
                    slot.ready = False
                    try:
                        slot.inbox.send_bytes(pickle.dumps(("stop",)))
                    except OSError:
                        pass
            elif kind == "ready":
                slot.ready = True
                events.append(("ready", slot, None))
            elif kind == "detached":
                self.detached.update(msg[1])
            elif kind == "logs":
                events.append(("logs", slot, (msg[1], msg[2])))
            if exited and not conn.poll(0):
                break
        if slot.inflight and slot.inflight[0]["id"] != head:
            events.append(("started", slot, slot.inflight[0]["id"]))

    def _match(self, slot: Slot, results: list[tuple[Any, ...]]) -> list[tuple[Any, Any]]:
        """Pair results with the tasks the slot holds (a handed-back task may come
        back before the one that runs ahead of it)."""
        done = []
        estimates = self._estimates
        for result in results:
            tid = result[0]
            slot.dropping.discard(tid)
            estimates.pop(tid, None)
            inflight = slot.inflight
            if inflight and inflight[0]["id"] == tid:
                done.append((inflight.popleft(), result))
                slot.head_since = self._clock()
                continue
            for i, task in enumerate(inflight):
                if task["id"] == tid:
                    del inflight[i]
                    done.append((task, result))
                    break
        return done

    def drop(self, slot: Slot, task_ids: list[int]) -> None:
        """Ask a worker to hand back tasks it holds but has not started (they come
        back as results with ``ok`` None, at once: the signal that
        follows the message makes the worker answer while a node runs)."""
        ids = [t for t in task_ids if t not in slot.dropping]
        if not ids:
            return
        slot.dropping.update(ids)
        try:
            slot.inbox.send_bytes(pickle.dumps(("drop", ids)))
            os.kill(slot.pid, SIG_DROP)  # a busy worker answers now, not after its node
        except OSError:
            pass  # the death shows up in poll()

    def stop_slot(self, slot: Slot) -> list[dict[str, Any]]:
        """Stop the worker (and its process group) now; return the tasks it held."""
        held = list(slot.inflight)
        slot.inflight.clear()
        for task in held:
            self._estimates.pop(task["id"], None)
        self._replace(slot, kill=True)
        return held

    # --- the task-level view (fm_local.executors.Executor) ----------------------

    def running(self) -> list[tuple[int, float]]:
        out = [(s.inflight[0]["id"], s.head_since) for s in self.slots if s.inflight]
        if self.io is not None:
            out.extend((tid, since) for tid, (_, since) in self.io.running.items())
        return out

    def stop(self, task_ids: Collection[int]) -> list[tuple[Task, bool]]:
        """Stop every worker holding one of these tasks (a worker runs one task at a
        time: the tasks queued behind it come back too, unstarted)."""
        ids = set(task_ids)
        out: list[tuple[Task, bool]] = []
        if self.io is not None:
            out.extend(self.io.cancel(ids))
        for slot in list(self.slots):
            if any(t["id"] in ids for t in slot.inflight):
                out.extend(started_first(self.stop_slot(slot)))
        return out

    def hand_back(self, task_ids: Collection[int]) -> None:
        ids = set(task_ids)
        for slot in self.slots:
            back = [t["id"] for t in list(slot.inflight)[1:] if t["id"] in ids]
            if back:
                self.drop(slot, back)

    def _tail_slot(self, task_id: int) -> Slot | None:
        for slot in self.slots:
            if slot.inflight and slot.inflight[-1]["id"] == task_id:
                return None if slot.retiring or slot.dropping else slot
        return None

    def can_follow(self, task_id: int) -> bool:
        return self._tail_slot(task_id) is not None

    def follow(self, task_id: int, task: Task) -> bool:
        """(Its expected duration stays unknown: nothing is prefetched behind it.)"""
        slot = self._tail_slot(task_id)
        if slot is None:
            return False
        task["after"] = task_id  # the worker checks it (executors/worker.py)
        return not self._send(slot, [task])

    def _hold(self, head_id: int) -> float:
        """How long a worker's running task may take before the tasks queued behind
        it are taken back: twice what it is expected to take, at least PREFETCH_HOLD."""
        return max(PREFETCH_HOLD, 2 * (self._estimates.get(head_id) or 0.0))

    def reclaim(self, now_m: float) -> None:
        io = self.io
        if io is not None and io.cancelling:
            for late in io.overdue():
                # A cancellation did not take (a thread that runs on): replace the worker.
                io.replace(
                    late,
                    f"I/O worker process {late.pid} replaced: a cancelled node did not stop",
                    kill=True,
                )
        for slot in self.slots:
            inflight = slot.inflight
            # Tasks chained behind the head (follow) could run nowhere else sooner.
            if len(inflight) < 2 or "after" in inflight[1]:
                continue
            if now_m - slot.head_since <= self._hold(inflight[0]["id"]):
                continue
            self.drop(slot, [t["id"] for t in list(inflight)[1:]])

    def next_check(self, now_m: float) -> float | None:
        due: float | None = self.io.next_check() if self.io is not None else None
        for slot in self.slots:
            inflight = slot.inflight
            if len(inflight) > len(slot.dropping) + 1 and "after" not in inflight[1]:
                # Look again when the tasks queued behind it are due to be taken back.
                at = slot.head_since + self._hold(inflight[0]["id"])
                due = at if due is None else min(due, at)
        return due

    def workers(self) -> list[tuple[int, int | None]]:
        return [(s.pid, s.inflight[0]["id"] if s.inflight else None) for s in self.slots]

    def io_workers(self) -> list[tuple[int, int]]:
        io = self.io
        if io is None:
            return []
        n: dict[int, int] = {}
        for tid in io.running:
            pid = io.owner[tid].pid
            n[pid] = n.get(pid, 0) + 1
        return [(s.pid, n.get(s.pid, 0)) for s in io.slots()]

    def _replace(self, slot: Slot, *, kill: bool) -> None:
        if slot not in self.slots:
            return
        i = self.slots.index(slot)
        # Whatever runs below the worker now is stopped with it, even a process
        # that left its process group (the worker's own SIGTERM handler kills
        # them too; this is for a worker too stuck to run it).
        tree = [p for p in descendants(slot.pid) if p.pid not in self.detached]
        if kill:
            killpg(slot.proc.pid, signal.SIGTERM)
        self._dying.append((slot.proc, time.monotonic() + STOP_GRACE, tree))
        if self._children_fd is not None:
            self._watch.append((slot.token, slot.pid, time.monotonic() + 5.0))
        close(slot)
        self.slots[i] = self._spawn()

    def _reap(self) -> None:
        if self._watch:
            self._kill_orphans()
        if not self._dying:
            return
        now = time.monotonic()
        keep = []
        for proc, kill_at, tree in self._dying:
            if proc.poll() is not None:
                # The leader is gone; make sure nothing it started survives.
                killpg(proc.pid, signal.SIGKILL)
                kill_all(tree)
                continue
            if now >= kill_at:
                killpg(proc.pid, signal.SIGKILL)
                kill_all(tree)
            keep.append((proc, kill_at, tree))
        # In place: the I/O lane appends to this same list.
        self._dying[:] = keep

    def _kill_orphans(self) -> None:
        """Processes of a dead worker's nodes, reparented to us: kill and reap them."""
        now = time.monotonic()
        self._watch = [w for w in self._watch if w[2] > now]
        assert self._children_fd is not None
        try:
            pids = {int(p) for p in os.pread(self._children_fd, 65536, 0).split()}
        except OSError:
            return
        known = {s.pid for s in self.slots} | {p.pid for p, _, _ in self._dying}
        if self.io is not None:
            known.update(s.pid for s in self.io.slots())
        unknown = pids - known - self.detached
        if not unknown:
            return
        import psutil

        tokens = {t for t, _, _ in self._watch}
        groups = {g for _, g, _ in self._watch}
        for pid in unknown:
            try:
                p = psutil.Process(pid)
                ours = os.getpgid(pid) in groups
                if not ours:
                    ours = p.environ().get("FM_WORKER_TOKEN") in tokens
                if ours:
                    for q in [*p.children(recursive=True), p]:
                        if q.pid not in self.detached:
                            q.kill()
                    os.waitpid(pid, 0)
            except (psutil.Error, OSError):
                continue
