"""The local process pool: long-lived worker processes behind an executor interface.

Invariants: the scheduler only sees :class:`Executor` (submit tasks to a slot, get
results and deaths back, stop a slot); each worker is its own process group, so
stopping a slot (SIGTERM, SIGKILL after a grace) stops everything its node
started; a stopped or dead worker is replaced; every child is reaped.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

STOP_GRACE = 0.5  # seconds between SIGTERM and SIGKILL


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

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def busy(self) -> int:
        return len(self.inflight)


class Executor(Protocol):
    """Where node tasks run. The scheduler never cares which implementation it has."""

    def start(self) -> None: ...
    def idle_slots(self) -> list[Slot]: ...
    def submit(self, slot: Slot, tasks: list[dict[str, Any]]) -> None: ...
    def poll(self, timeout: float) -> list[tuple[str, Slot, Any]]: ...
    def stop_slot(self, slot: Slot) -> list[dict[str, Any]]: ...
    def drop(self, slot: Slot, task_ids: list[int]) -> None: ...
    def wait_ready(self, timeout: float) -> None: ...
    def shutdown(self) -> None: ...


class ProcessPool:
    """A fixed number of worker processes; replaces any that die or are stopped."""

    def __init__(self, size: int, env: dict[str, str] | None = None) -> None:
        self.size = max(1, size)
        self.env = env
        self.slots: list[Slot] = []
        self._dying: list[tuple[subprocess.Popen[bytes], float]] = []
        self._next_index = 0

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        while len(self.slots) < self.size:
            self.slots.append(self._spawn())

    def _spawn(self) -> Slot:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ if self.env is None else self.env)
        # The worker must import this very fm_local, wherever it is installed.
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = pkg_root + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
        )
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fm_local.worker",
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
            index=self._next_index,
            proc=proc,
            inbox=Connection(to_child_w, readable=False),
            outbox=Connection(from_child_r, writable=False),
        )
        self._next_index += 1
        return slot

    def wait_ready(self, timeout: float) -> None:
        """Wait (bounded) until every worker has started and reported ready."""
        deadline = time.monotonic() + timeout
        while any(not s.ready for s in self.slots) and time.monotonic() < deadline:
            for kind, slot, _ in self.poll(0.05):
                if kind == "died":
                    raise RuntimeError(f"worker process {slot.pid} died while starting")

    def shutdown(self) -> None:
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
                _killpg(slot.proc.pid, signal.SIGKILL)
                slot.proc.wait()
            _close(slot)
        self.slots = []
        for proc, _ in self._dying:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._dying = []

    # --- scheduling -----------------------------------------------------------------

    def idle_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.ready and not s.inflight]

    def submit(self, slot: Slot, tasks: list[dict[str, Any]]) -> None:
        if not slot.inflight:
            slot.head_since = time.monotonic()
        slot.inflight.extend(tasks)
        try:
            slot.inbox.send_bytes(pickle.dumps(("tasks", tasks), protocol=5))
        except OSError:
            pass  # the death shows up in poll()

    def poll(self, timeout: float) -> list[tuple[str, Slot, Any]]:
        """Wait up to ``timeout`` for results. Returns events:
        ``("results", slot, [(task, result), ...])`` and ``("died", slot, [tasks])``
        (the tasks it held, head first) and ``("ready", slot, None)``."""
        self._reap()
        by_conn = {s.outbox: s for s in self.slots}
        events: list[tuple[str, Slot, Any]] = []
        if not by_conn:
            time.sleep(timeout)
            return events
        for conn in wait(list(by_conn), timeout):
            slot = by_conn[conn]  # type: ignore[index]
            try:
                while True:
                    msg = pickle.loads(slot.outbox.recv_bytes())
                    if msg[0] == "results":
                        done = []
                        for result in msg[1]:
                            task = slot.inflight.popleft() if slot.inflight else None
                            if task is not None and task["id"] == result[0]:
                                done.append((task, result))
                        slot.head_since = time.monotonic()
                        events.append(("results", slot, done))
                    elif msg[0] == "ready":
                        slot.ready = True
                        events.append(("ready", slot, None))
                    if not slot.outbox.poll(0):
                        break
            except (EOFError, OSError, pickle.UnpicklingError):
                held = list(slot.inflight)
                slot.inflight.clear()
                self._replace(slot, kill=False)
                events.append(("died", slot, held))
        return events

    def drop(self, slot: Slot, task_ids: list[int]) -> None:
        """Ask a worker to hand back tasks it holds but has not started (they come
        back as results with ``ok`` None)."""
        try:
            slot.inbox.send_bytes(pickle.dumps(("drop", task_ids)))
        except OSError:
            pass  # the death shows up in poll()

    def stop_slot(self, slot: Slot) -> list[dict[str, Any]]:
        """Stop the worker (and its process group) now; return the tasks it held."""
        held = list(slot.inflight)
        slot.inflight.clear()
        self._replace(slot, kill=True)
        return held

    def _replace(self, slot: Slot, *, kill: bool) -> None:
        if slot not in self.slots:
            return
        i = self.slots.index(slot)
        if kill:
            _killpg(slot.proc.pid, signal.SIGTERM)
        self._dying.append((slot.proc, time.monotonic() + STOP_GRACE))
        _close(slot)
        self.slots[i] = self._spawn()

    def _reap(self) -> None:
        if not self._dying:
            return
        now = time.monotonic()
        keep = []
        for proc, kill_at in self._dying:
            if proc.poll() is not None:
                # The leader is gone; make sure nothing of its group survives.
                _killpg(proc.pid, signal.SIGKILL)
                continue
            if now >= kill_at:
                _killpg(proc.pid, signal.SIGKILL)
            keep.append((proc, kill_at))
        self._dying = keep

    def pids(self) -> list[int]:
        return [s.pid for s in self.slots]


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _close(slot: Slot) -> None:
    for conn in (slot.inbox, slot.outbox):
        try:
            conn.close()
        except OSError:
            pass
