"""What runs on a Dask worker for the Dask executor (:mod:`fm_local.executors.dask`).

A Dask task is a batch of fm node tasks (:func:`run_batch`). Dask cannot stop a
task that runs (its threads cannot be killed), so each node task runs in a child
process of the Dask worker — fm's own worker process,
:mod:`fm_local.executors.worker`, one per Dask thread, kept between tasks — and
stopping a node (:func:`stop`, which the supervisor runs on every Dask worker
with ``Client.run``) kills that child with everything it started; the next task
of the thread gets a new child. A child that dies on its own (the node crashed
it) makes its task come back as lost: the supervisor re-runs it as a recovery.

Module code is found by path: the task names its workflow's folder, and the child
imports that folder's modules keyed by folder (two workflows' ``tasks.py`` never
mix), so the folder must be at the same path on every Dask worker (docs/scale-out.md).
fm_local itself must be installed on the scheduler and every worker.
"""

from __future__ import annotations

import pickle
import signal
import threading
import time
from collections import deque
from typing import Any

from fm_local.executors import procs

LOST = "lost"  # in place of ``ok``: the child died under the task, unasked
# The Dask event topic on which a node with a timeout says that it starts (its time
# counts from there, not from its hand-over: it may wait behind a batch).
STARTED_TOPIC = "fm-started"

_lock = threading.Lock()
_children: dict[int, procs.Slot] = {}  # Dask thread id -> its child process
# Task ids are a supervisor's own (several may share a cluster, and a restarted one
# counts from 1 again): every table here is keyed by (owner, generation, task id),
# the owner being the supervisor's database and the generation its connection's.
Key = tuple[str, int, int]
_running: dict[Key, int] = {}  # -> pid of the child that runs it
# The newest generation of each supervisor (its database) seen here: a batch from an
# older one — sent by a supervisor that died since — is not run.
_current: dict[str, int] = {}
# Task ids stopped before they began here (a later task of a batch), with when:
# skipped when their turn comes. Every worker hears every stop, so entries for
# tasks that run elsewhere are forgotten after a while.
_stopped: dict[Key, float] = {}
STOPPED_MEMORY = 3600.0
# The newest results of each supervisor, kept for its successor: if it dies with
# tasks on the cluster, the next one of the same database adopts the results of
# the attempts it finds still running (:func:`collect`). Bounded per supervisor.
KEEP = 2000
_kept: dict[str, deque[tuple[tuple[str, str, int], int, tuple[Any, ...]]]] = {}


def no_dask_retries(dask_scheduler: Any) -> int:
    """Run on the scheduler when the executor connects: a task whose worker died is
    reported (``KilledWorker``) instead of being run again by Dask on another worker —
    fm re-runs it itself, as a recovery bounded by ``recoveryAttempts``. Returns the
    value it had."""
    before = int(dask_scheduler.allowed_failures)
    dask_scheduler.allowed_failures = 0
    return before


def _where() -> str:
    try:
        from distributed import get_worker

        return "dask@" + get_worker().address.removeprefix("tcp://")
    except Exception:  # noqa: BLE001 - not on a Dask worker (tests call it directly)
        return "dask"


def _child() -> procs.Slot:
    """This thread's child process, started (and waited for) if it has none."""
    me = threading.get_ident()
    slot = _children.get(me)
    if slot is not None and slot.proc.poll() is None:
        return slot
    if slot is not None:
        _forget(me)
    slot = procs.spawn("fm_local.executors.worker", 0, None, None)
    while not slot.ready:
        try:
            msg = pickle.loads(slot.outbox.recv_bytes())
        except (EOFError, OSError) as exc:
            raise RuntimeError("fm's worker process did not start on this Dask worker") from exc
        if msg[0] == "ready":
            slot.ready = True
    _children[me] = slot
    return slot


def _forget(thread: int) -> None:
    slot = _children.pop(thread, None)
    if slot is None:
        return
    procs.killpg(slot.pid, signal.SIGKILL)
    try:
        slot.proc.wait(5)
    except Exception:  # noqa: BLE001
        pass
    procs.close(slot)


STOPPED = "stopped"  # _run_one: stopped before it began (no result is wanted)


def _run_one(task: dict[str, Any], key: Key) -> tuple[Any, ...] | str | None:
    """Run ``task`` in this thread's child; its result, None if the child died
    under it (killed by :func:`stop`, or crashed), or STOPPED if it was stopped
    before it began (while its child process started, say)."""
    tid = task["id"]
    while True:
        slot = _child()
        streamed: list[Any] = []
        with _lock:
            if _stopped.pop(key, None) is not None:
                return STOPPED
            _running[key] = slot.pid
        try:
            slot.inbox.send_bytes(pickle.dumps(("tasks", [task]), protocol=5))
            while True:
                try:
                    # Not a blocking read: a process the node forked may hold the
                    # pipe open after the child died, and no EOF would come.
                    while not slot.outbox.poll(0.2):
                        if slot.proc.poll() is not None:
                            raise EOFError
                    msg = pickle.loads(slot.outbox.recv_bytes())
                except (EOFError, OSError):
                    _forget(threading.get_ident())
                    return None
                if msg[0] == "logs" and msg[1] == tid:
                    streamed.extend(msg[2])  # lines so far: they come with the result
                if msg[0] in ("results", "retire"):
                    mine = [r for r in msg[1] if r[0] == tid]
                    if msg[0] == "retire":
                        # Past its memory limit, between tasks: a new child next.
                        _forget(threading.get_ident())
                    if mine and mine[0][1] is not None:
                        if not streamed:
                            return tuple(mine[0])
                        result = list(mine[0])
                        result[4] = streamed + list(result[4] or ())
                        return tuple(result)
                    if mine or msg[0] == "retire":
                        break  # handed back unstarted: run it on a new child
        except OSError:
            _forget(threading.get_ident())
            return None
        finally:
            with _lock:
                _running.pop(key, None)


def run_batch(
    tasks: list[dict[str, Any]], owner: str = "", generation: int = 0
) -> list[tuple[Any, ...]]:
    """Run fm node tasks one after another; each result is the worker's result
    tuple plus (where it ran, the pid of the child that ran it). A task stopped
    before its turn is left out; so is the whole batch if a newer generation of its
    supervisor (``owner``, its database) has started since it was sent."""
    where = _where()
    out: list[tuple[Any, ...]] = []
    with _lock:
        if generation < _current.get(owner, generation):
            return out
        _current[owner] = generation
    for task in tasks:
        with _lock:
            if _stopped.pop((owner, generation, task["id"]), None) is not None:
                continue
            if generation < _current.get(owner, generation):
                break  # its supervisor was replaced while this batch ran
        if task.get("timeout"):
            _say_started(owner, generation, task["id"])
        result = _run_one(task, (owner, generation, task["id"]))
        if result == STOPPED:
            continue
        pid = _children.get(threading.get_ident())
        if result is None:
            now = time.time()
            out.append((task["id"], LOST, None, None, [], now, now, None, where, None))
            continue
        result = tuple(result) + (None,) * (8 - len(result))
        result = result[:8] + (where, pid.pid if pid is not None else None)
        out.append(result)
        ctx = task["ctx"]
        key = (str(ctx.get("executionId")), str(ctx.get("nodePath")), int(task.get("seq") or 0))
        with _lock:
            kept = _kept.get(owner)
            if kept is None:
                kept = _kept[owner] = deque(maxlen=KEEP)
            kept.append((key, generation, result))
    return out


def _say_started(owner: str, generation: int, tid: int) -> None:
    try:
        from distributed import get_worker

        get_worker().log_event(STARTED_TOPIC, (owner, generation, tid, time.time()))
    except Exception:  # noqa: BLE001 - not on a Dask worker: its time counts from hand-over
        pass


def collect(owner: str, generation: int) -> list[tuple[tuple[str, str, int], tuple[Any, ...]]]:
    """Run on every Dask worker by a supervisor that just connected: the results
    its predecessors (of the same database) left here, ``((execution, path, seq),
    result)``; given once."""
    with _lock:
        kept = _kept.get(owner)
        if not kept:
            return []
        out = [(key, result) for key, gen, result in kept if gen < generation]
        _kept[owner] = deque((e for e in kept if e[1] >= generation), maxlen=KEEP)
    return out


def stop(task_ids: list[int], owner: str = "", generation: int = 0) -> int:
    """Run on every Dask worker (``Client.run``): stop these tasks of the supervisor
    ``owner`` where they run — the child process and all it started — and skip those
    not begun. Returns how many ran here."""
    now = time.time()
    hit: list[tuple[int, list[Any]]] = []
    with _lock:
        for tid in task_ids:
            pid = _running.get((owner, generation, tid))
            if pid is None:
                _stopped[owner, generation, tid] = now
            else:
                hit.append((pid, procs.descendants(pid)))
        for key, since in list(_stopped.items()):
            if now - since > STOPPED_MEMORY:
                del _stopped[key]
    for pid, below in hit:
        procs.killpg(pid, signal.SIGKILL)
        procs.kill_all(below)  # what the node started in other process groups
    return len(hit)


def new_generation(owner: str, generation: int) -> int:
    """Run on every Dask worker when a supervisor (``owner``, its database) connects:
    what an earlier one of the same database left running here is stopped (it died,
    or was killed, with tasks on the cluster: the new one re-runs what has no
    recorded result), and its batches still waiting are skipped. Returns how many
    were stopped."""
    with _lock:
        if generation > _current.get(owner, 0):
            _current[owner] = generation
        old = [
            (pid, procs.descendants(pid))
            for (o, g, _), pid in _running.items()
            if o == owner and g < generation
        ]
    for pid, below in old:
        procs.killpg(pid, signal.SIGKILL)
        procs.kill_all(below)
    return len(old)
