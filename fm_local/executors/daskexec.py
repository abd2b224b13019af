"""The Dask executor (``fm daemon --executor dask --scheduler ADDRESS``, SPEC §11):
node work runs on a Dask ``distributed`` cluster; the supervisor and the SQLite
file stay where they are, and the supervisor still gates every start (limits,
pools, rate limits are its own, as on the local executor).

- Tasks go to Dask in batches (one Dask task runs several fm tasks one after
  another, :func:`fm_local.executors.daskwork.run_batch`), so that Dask's per-task
  cost does not dominate small nodes; a node with a ``timeout`` goes alone, so its
  time counts from when it was handed over.
- On the Dask worker each fm task runs in a child process that can be killed:
  stopping a node (timeout, cancel, fail-fast, first-success) runs
  :func:`fm_local.executors.daskwork.stop` on every Dask worker.
- A Dask worker that dies under a task: Dask is told not to run it again itself
  (``allowed_failures = 0`` on the scheduler); its tasks come back as lost and the
  supervisor re-runs them as recoveries (``WORKER_CRASH``, bounded by
  ``recoveryAttempts``), exactly as for a local worker process.
- Which Dask worker ran a node is recorded as its lane, ``dask@HOST:PORT``, and the
  child's pid as its worker pid.

Results come back on Dask's client thread; a pipe wakes :meth:`DaskExecutor.poll`.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from typing import Any

from fm_local import errors
from fm_local.executors import Event, Finished, Lost, Offer, StartingOffer, Task, daskwork

# fm tasks in one Dask task, at most; and how many batches may be in flight per
# Dask worker thread (it runs one at a time: the next waits on the worker, so the
# thread never idles for a round trip to the supervisor).
MAX_BATCH = 32
BATCHES_PER_THREAD = 2
CAPACITY_REFRESH = 1.0  # seconds between looks at the cluster's workers

log = logging.getLogger("fm_local.executors.dask")


class DaskOffer(StartingOffer):
    worker: int | None = None  # the pid is known once a Dask worker runs it


class DaskExecutor:
    lanes: tuple[str, ...] = ()  # no I/O lane here: every task runs in a child process
    lane_name = "dask"

    def __init__(
        self,
        size: int = 1,
        *,
        scheduler: str,
        owner: str = "",
        monotonic: Callable[[], float] = time.monotonic,
        connect_timeout: float = 10.0,
        **_: Any,
    ) -> None:
        self.address = scheduler
        # Which supervisor this is (its database), and its generation: on connecting,
        # what an earlier supervisor of the same database left on the cluster stops.
        self.owner = owner
        self.generation = time.time_ns()
        self._clock = monotonic
        self.connect_timeout = connect_timeout
        self.client: Any = None
        self.threads = 0  # worker threads in the cluster (counted in the background)
        # fm task id -> (task, when it started (scheduler's clock): its hand-over to
        # Dask, or for a node with a timeout when the worker said so (None before),
        # its batch key)
        self.inflight: dict[int, tuple[Task, float | None, str]] = {}
        self.started: deque[tuple[int, int, float]] = deque()  # (generation, id, epoch)
        self.futures: dict[str, Any] = {}
        self.done: deque[tuple[str, Any, BaseException | None]] = deque()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._seq = 0
        self._token = os.urandom(4).hex()
        # The scheduler's connection: "connected", or why not (fm workers shows it).
        self.state = "connecting"
        self.lost_at: float | None = None  # when the connection was lost (monotonic)
        self.watched = 0.0
        self.closing = False  # shutdown began: the background threads end
        # Results its predecessor (of this database) left on the cluster, by attempt
        # key (execution, path, seq): the supervisor adopts those of the attempts it
        # finds still running when it starts, and re-runs the rest.
        self.adoptable: dict[tuple[str, str, int], tuple[Any, ...]] = {}

    # --- life ---------------------------------------------------------------------

    def start(self) -> None:
        try:
            from distributed import Client
            from distributed.comm import parse_address
        except ImportError as exc:
            raise errors.FmError(
                "--executor dask needs Dask's distributed package: pip install "
                "'fm_local[dask]' (from a checkout: make install)"
            ) from exc
        try:
            scheme, rest = parse_address(self.address)
            if scheme not in ("tcp", "tls", "inproc", "ucx"):
                raise ValueError(f"{scheme}:// is not a scheduler's scheme")
            if ":" not in rest:
                raise ValueError("no port")
        except ValueError as exc:
            raise errors.FmError(
                f"--scheduler {self.address}: not a Dask scheduler address ({exc}); "
                "expected tcp://HOST:PORT, as `dask scheduler` prints it"
            ) from None
        # In a thread, bounded: Dask's connect timeout does not cover the handshake,
        # and a port where something else listens would hold us for good.
        made: list[Any] = []
        failed: list[BaseException] = []

        def connect() -> None:
            try:
                made.append(
                    Client(self.address, set_as_default=False, timeout=self.connect_timeout)
                )
            except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, Dask's own
                failed.append(exc)

        t = threading.Thread(target=connect, daemon=True, name="fm-dask-connect")
        t.start()
        t.join(self.connect_timeout + 5)
        if not made:
            why = failed[0] if failed else "no Dask scheduler answered there"
            raise errors.FmError(
                f"--executor dask: cannot reach the Dask scheduler at {self.address}: {why}"
            )
        self.client = made[0]
        self._connected()
        try:
            found = self.client.run(daskwork.collect, self.owner, self.generation)
        except Exception:  # noqa: BLE001 - nothing to adopt: those nodes re-run
            found = {}
        for results in found.values():
            for key, result in results:
                self.adoptable[tuple(key)] = tuple(result)  # type: ignore[index]
        threading.Thread(target=self._count_threads, daemon=True, name="fm-dask-count").start()

    def _connected(self) -> None:
        """A (new) connection to the scheduler: Dask must not re-run our tasks itself,
        and what an earlier supervisor of this database (or this one, before the
        connection was lost) left running on the workers stops. Blocking: at start,
        or on the reconnecting thread."""
        self.client.run_on_scheduler(daskwork.no_dask_retries)
        self.client.subscribe_topic(daskwork.STARTED_TOPIC, self._on_started)
        self.generation = max(self.generation + 1, time.time_ns())
        self.client.run(daskwork.new_generation, self.owner, self.generation, on_error="ignore")
        self.threads = self._threads_now()
        if self.state != "connecting":
            log.warning("connected to the Dask scheduler at %s again", self.address)
        self.state = "connected"
        self.lost_at = None

    def _threads_now(self) -> int:
        workers = self.client.scheduler_info()["workers"]
        return sum(int(w.get("nthreads", 1)) for w in workers.values())

    def _count_threads(self) -> None:
        """The cluster's worker threads, looked at about once a second on a thread of
        its own (asking the scheduler blocks, and a hung scheduler must not hold the
        supervisor)."""
        while not self.closing:
            time.sleep(CAPACITY_REFRESH)
            if self.state == "connected" and not self.closing:
                try:
                    self.threads = self._threads_now()
                except Exception:  # noqa: BLE001 - the watch sees a lost connection
                    pass

    def _watch(self) -> list[Event]:
        """About twice a second: is the scheduler still there? When it is not, every
        task in flight is reported lost at once (the supervisor re-runs each as a
        recovery once there is room again), no room is offered, and the connection
        is made again in the background."""
        now = time.monotonic()
        if now - self.watched < 0.5:
            return []
        self.watched = now
        events: list[Event] = []
        status = getattr(self.client, "status", "closed")
        if self.state != "connected" or status == "running":
            return events
        self.state = f"scheduler unreachable since {time.strftime('%H:%M:%S')}"
        self.lost_at = now
        self.threads = 0
        lost = [(task, True) for task, _, _ in self.inflight.values()]
        self.inflight.clear()
        self.futures.clear()
        if lost:
            events.append(Lost(lost, f"dask scheduler {self.address} unreachable"))
        log.warning(
            "the Dask scheduler at %s is unreachable: %d node(s) in flight will run "
            "again as recoveries once it is back; reconnecting",
            self.address,
            len(lost),
        )
        threading.Thread(target=self._reconnect, daemon=True, name="fm-dask-reconnect").start()
        return events

    def _reconnect(self) -> None:
        """On a thread of its own, until connected (or shut down): Dask's client
        reconnects by itself for a while; once it has given up, a new one is made."""
        from distributed import Client

        while not self.closing:
            try:
                status = self.client.status
                if status in ("closed", "closing", "failed"):
                    new = Client(self.address, set_as_default=False, timeout=self.connect_timeout)
                    old, self.client = self.client, new
                    try:
                        old.close(timeout=1)
                    except Exception:  # noqa: BLE001
                        pass
                elif status != "running":
                    time.sleep(0.5)  # Dask's own reconnection, still trying
                    continue
                self._connected()
                return
            except Exception:  # noqa: BLE001 - not back yet
                time.sleep(1.0)

    def status(self) -> str:
        """The cluster as ``fm workers`` shows it."""
        if self.state != "connected":
            return f"{self.address}: {self.state}"
        return f"{self.address}: connected, {self.threads} worker threads"

    def wait_ready(self, timeout: float) -> None:
        """At least one Dask worker (or ``timeout`` passed: tasks wait for one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.threads:
            time.sleep(0.1)

    def shutdown(self) -> None:
        if self.client is None:
            return
        self.closing = True
        ids = list(self.inflight)
        self.inflight.clear()
        client, self.client = self.client, None

        def close() -> None:
            try:
                for f in self.futures.values():
                    f.cancel()
                # Only this supervisor's tasks: other daemons may share the cluster.
                # (The Dask workers' idle fm processes stay, for the next tasks; they
                # end with their Dask worker.)
                if ids:
                    client.run(daskwork.stop, ids, self.owner, self.generation, on_error="ignore")
            except Exception:  # noqa: BLE001 - the cluster may be gone
                pass
            try:
                client.close(timeout=5)
            except Exception:  # noqa: BLE001
                pass

        # Bounded: a hung scheduler must not hold the daemon's exit.
        t = threading.Thread(target=close, daemon=True, name="fm-dask-close")
        t.start()
        t.join(10)
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass

    # --- tasks --------------------------------------------------------------------

    def offers(self, backlog: Callable[[], int]) -> Iterator[Offer]:
        if self.state != "connected":
            return
        room = self.threads * MAX_BATCH * BATCHES_PER_THREAD - len(self.inflight)
        # Room is offered a batch's worth at a time, unless a thread may be short of
        # work: offered as soon as a few tasks end, batches would shrink (each
        # split across the threads) until Dask's per-task cost is all there is.
        if room >= MAX_BATCH or (room > 0 and len(self.inflight) < self.threads * MAX_BATCH):
            yield DaskOffer(room)

    def submit(self, offer: Offer) -> list[tuple[Task, BaseException]]:
        assert isinstance(offer, DaskOffer)
        tasks = offer.tasks
        if not tasks:
            return []
        alone = [t for t in tasks if t.get("timeout")]
        rest = [t for t in tasks if not t.get("timeout")]
        threads = max(1, self.threads)
        size = max(1, min(MAX_BATCH, -(-len(rest) // threads)))
        batches = [[t] for t in alone] + [rest[i : i + size] for i in range(0, len(rest), size)]
        now_m = self._clock()
        bad: list[tuple[Task, BaseException]] = []
        for batch in batches:
            self._seq += 1
            key = f"fm-{self._token}-{self._seq}"
            try:
                future = self.client.submit(
                    daskwork.run_batch,
                    batch,
                    self.owner,
                    self.generation,
                    key=key,
                    pure=False,
                    retries=0,
                )
            except Exception as exc:  # noqa: BLE001 - not picklable, or no client
                bad.extend((t, exc) for t in batch)
                continue
            for t in batch:
                self.inflight[t["id"]] = (t, None if t.get("timeout") else now_m, key)
            self.futures[key] = future
            future.add_done_callback(self._on_done)
        return bad

    def _on_started(self, event: Any) -> None:
        """On Dask's client thread: a node with a timeout started on a worker."""
        try:
            owner, generation, tid, at = event[1]
        except (TypeError, ValueError, IndexError):
            return
        if owner == self.owner:
            self.started.append((generation, tid, at))

    def _on_done(self, future: Any) -> None:
        """On Dask's client thread: note it, wake :meth:`poll`."""
        try:
            value, exc = future.result(), None
        except BaseException as e:  # noqa: BLE001 - KilledWorker, cancelled, the node's
            value, exc = None, e
        self.done.append((future.key, value, exc))
        try:
            os.write(self._w, b"x")
        except OSError:
            pass

    def poll(self, timeout: float, extra: Any = None) -> list[Event]:
        events = self._watch()
        if events:
            return events
        if not self.done:
            waiting = [self._r]
            if extra is not None and extra.fileno() >= 0:
                waiting.append(extra)
            select.select(waiting, [], [], min(timeout, 0.5))
        try:
            while os.read(self._r, 4096):
                pass
        except OSError:
            pass
        done = []
        while self.done:  # Dask's client thread appends: take what is there now
            done.append(self.done.popleft())
        if any(exc is not None for _, _, exc in done):
            # A batch that failed: if the scheduler is gone, that is why, and every
            # task in flight is lost once — not this batch now and the rest later.
            self.watched = 0.0
            events = self._watch()
        for key, value, exc in done:
            self.futures.pop(key, None)
            mine = [tid for tid, (_, _, k) in self.inflight.items() if k == key]
            finished: list[tuple[Task, tuple[Any, ...]]] = []
            lost: list[tuple[Task, bool]] = []
            if exc is None:
                for result in value:
                    item = self.inflight.pop(result[0], None)
                    if item is None:
                        continue  # stopped since: its result is not wanted
                    if result[1] == daskwork.LOST:
                        lost.append((item[0], True))
                    else:
                        finished.append((item[0], result))
            # What the batch did not answer for: its worker died, or it failed.
            for tid in mine:
                item = self.inflight.pop(tid, None)
                if item is not None:
                    lost.append((item[0], True))
            if finished:
                events.append(Finished(finished))
            if lost:
                why = (
                    f"dask worker lost ({type(exc).__name__})"
                    if exc is not None
                    else "its process died on the dask worker"
                )
                events.append(Lost(lost, why))
                if exc is not None:
                    # Dask gave the batch up (a dropped connection cancels it) but its
                    # tasks may still run on a worker: they run again elsewhere, so
                    # these are stopped.
                    self._stop_async([task["id"] for task, _ in lost])
        return events

    def running(self) -> list[tuple[int, float]]:
        while self.started:
            generation, tid, at = self.started.popleft()
            item = self.inflight.get(tid)
            if generation == self.generation and item is not None and item[1] is None:
                since = self._clock() - max(0.0, time.time() - at)
                self.inflight[tid] = (item[0], since, item[2])
        return [(tid, since) for tid, (_, since, _) in self.inflight.items() if since is not None]

    def stop(self, task_ids: Collection[int]) -> list[tuple[Task, bool]]:
        out = []
        ids = []
        for tid in task_ids:
            item = self.inflight.pop(tid, None)
            if item is not None:
                # A node with a timeout that did not say it started has not.
                out.append((item[0], item[1] is not None))
                ids.append(tid)
        if ids:
            self._stop_async(ids)
        return out

    def _stop_async(self, ids: list[int]) -> None:
        # Client.run waits for every worker's answer: not on the scheduling thread.
        threading.Thread(target=self._stop_remote, args=(ids,), daemon=True).start()

    def _stop_remote(self, ids: list[int]) -> None:
        try:
            self.client.run(daskwork.stop, ids, self.owner, self.generation, on_error="ignore")
        except Exception:  # noqa: BLE001 - the cluster is gone: so is the work
            pass

    def hand_back(self, task_ids: Collection[int]) -> None:
        pass  # nothing is prefetched here (offers start what they take)

    def can_follow(self, task_id: int) -> bool:
        return False  # no task waits behind another here

    def follow(self, task_id: int, task: Task) -> bool:
        return False

    def reclaim(self, now_m: float) -> None:
        pass

    def next_check(self, now_m: float) -> float | None:
        return None

    def workers(self) -> list[tuple[int, int | None]]:
        return []  # no local worker processes to sample

    def io_workers(self) -> list[tuple[int, int]]:
        return []
