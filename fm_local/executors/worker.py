"""The worker process: runs node tasks the supervisor sends, one at a time.

Invariants: a worker never opens the database; it dies with the supervisor
(PR_SET_PDEATHSIG, and EOF on its pipe); it runs in its own process group and is
a child subreaper, so every process a node starts stays its descendant, and no
process a node started outlives that node (killed when the node ends, when the
worker is stopped, and when the supervisor dies). Tasks queued behind a running one
can be handed back at once, however long the running one takes: the supervisor
follows a "drop" message with SIG_DROP, whose handler answers it. Node code never
writes to the protocol pipe. A worker whose
memory passes its limit hands back what it holds and retires between tasks.
Started as ``python -m fm_local.executors.worker RFD WFD PPID``.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from fm_local import runners
from fm_local.pipes import Readable

# Results are flushed at the end of a batch, or when this many seconds passed.
FLUSH_INTERVAL = 0.002
# A running task's new log lines are sent this often ("logs" messages), so that
# `fm logs -f` shows a long node's lines while it runs, and a try that is killed
# (timeout, cancel) keeps what it printed until then.
STREAM_INTERVAL = 0.5
# A worker over this much resident memory retires between tasks (0: no limit).
DEFAULT_MAX_RSS_MB = 2048
MEMORY_CHECK_INTERVAL = 0.05  # seconds between looks at our own RSS

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_WORKER_PID = 0  # this worker's pid (a process forked by node code is not us)


def _prctl(option: int, value: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(option, value, 0, 0, 0)
    except Exception:  # not Linux: EOF on the pipe still ends us between tasks
        pass


def _descendants() -> list[Any]:
    """Every process below this worker, but those node code detached (ctx.detach)
    and theirs."""
    import psutil

    try:
        procs = psutil.Process(_WORKER_PID).children(recursive=True)
    except psutil.Error:
        return []
    if not runners.detached:
        return procs
    keep: set[int] = set()
    for pid in runners.detached:
        try:
            keep.add(pid)
            keep.update(p.pid for p in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
    return [p for p in procs if p.pid not in keep]


def left_behind(children: bytes) -> bool:
    """Whether our direct children (the /proc children file) include a process that
    is not detached; reaps detached ones that have exited."""
    pids = {int(p) for p in children.split()}
    if not pids:
        return False
    gone = set()
    for pid in pids & runners.detached:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                gone.add(pid)
        except ChildProcessError:
            gone.add(pid)
    runners.detached.difference_update(gone)
    return bool(pids - runners.detached - gone)


def kill_descendants() -> int:
    """SIGKILL every process below this worker (a subreaper: orphans of node code
    are ours too) and reap them. Returns how many were killed."""
    import psutil

    killed = 0
    for _ in range(20):  # a process may fork while we kill: look again
        procs = _descendants()
        if not procs:
            break
        for p in procs:
            try:
                p.kill()
                killed += 1
            except psutil.Error:
                pass
        _reap()
    _reap()
    return killed


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


_terminating = False


def _on_term(signum: int, frame: Any) -> None:
    """Stopped (by the supervisor, or because it died): take every process the
    node started down with us, our own process group included.

    Runs once: the parent-death signal comes again for each thread of a dying
    supervisor (the kernel hands us to its next thread, then signals again), and a
    second call inside the first would cut the first's kill short."""
    global _terminating
    if _terminating:
        return
    _terminating = True
    if os.getpid() == _WORKER_PID:
        try:
            kill_descendants()
        except Exception:  # noqa: BLE001 - we are going anyway
            pass
        try:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        except OSError:
            pass
    os._exit(143)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# The supervisor sends this signal after a "drop" message, so that a worker busy
# with a long node answers at once (a real-time signal: node code is unlikely to
# use it). Nothing else interrupts node code.
SIG_DROP = signal.SIGRTMIN + 3


class Protocol:
    """The worker's side of the pipes: tasks waiting to run, and the answers it
    gives. Only the main thread touches it: between tasks from the main loop, and
    during a task from the SIG_DROP handler — except :meth:`send`, which the log
    streaming thread also calls (``runners.STREAM_LOCK`` keeps messages whole)."""

    def __init__(self, inbox: Connection, outbox: Connection) -> None:
        self.inbox = inbox
        self.outbox = outbox
        self.has_message = Readable(inbox)  # inbox.poll(0), kept (fm_local.pipes)
        self.queue: deque[dict[str, Any]] = deque()
        self.stopped = False
        self.retiring = False
        self.in_task = False

    def send(self, msg: tuple[Any, ...]) -> None:
        data = pickle.dumps(msg, protocol=5)
        with runners.STREAM_LOCK:
            self.outbox.send_bytes(data)

    def stream_logs(self) -> None:
        """The streaming thread: every STREAM_INTERVAL, the running task's new log
        lines as ``("logs", task_id, lines)``. Taking and sending under the one
        lock the main thread takes to send and to end a task (runners.STREAM_LOCK)
        keeps them ahead of the task's result, which carries only the rest, and
        never takes a line twice."""
        while not self.stopped:
            time.sleep(STREAM_INTERVAL)
            if runners.current is None:
                continue
            with runners.STREAM_LOCK:
                now = runners.current
                if now is None:
                    continue
                lines = now[1].take_new()
                if lines:
                    try:
                        self.outbox.send_bytes(pickle.dumps(("logs", now[0], lines), protocol=5))
                    except OSError:
                        return  # the supervisor is gone: the main loop ends us

    def take(self, block: bool) -> None:
        """Handle the messages waiting (``block``: wait for one if none is)."""
        while block or self.has_message():
            block = False
            try:
                msg = pickle.loads(self.inbox.recv_bytes())
            except Exception:  # noqa: BLE001 - EOF (the supervisor is gone) or garbage
                msg = ("stop",)
            kind = msg[0]
            if kind == "stop":
                self.stopped = True
                return
            if kind == "drop":  # tasks the supervisor wants back before they start
                self._hand_back(set(msg[1]))
            elif kind == "tasks":
                if self.retiring:
                    self._hand_back(set(), msg[1])
                else:
                    self.queue.extend(msg[1])

    def on_drop_signal(self, signum: int, frame: Any) -> None:
        if self.in_task:  # between tasks the main loop reads the pipe itself
            self.take(block=False)

    def _hand_back(self, ids: set[int], extra: list[dict[str, Any]] | None = None) -> None:
        back = [t for t in self.queue if t["id"] in ids]
        if back:
            self.queue = deque(t for t in self.queue if t["id"] not in ids)
        back.extend(extra or ())
        if back:
            now = time.time()
            self.send(("results", [(t["id"], None, None, None, [], now, now) for t in back]))

    def retire(self) -> None:
        """Hand back everything queued and refuse what comes later, until "stop"."""
        self.retiring = True
        back = list(self.queue)
        self.queue.clear()
        now = time.time()
        self.send(("retire", [(t["id"], None, None, None, [], now, now) for t in back]))
        while not self.stopped:
            self.take(block=True)


def main(argv: list[str]) -> int:
    global _WORKER_PID
    rfd, wfd, ppid = int(argv[1]), int(argv[2]), int(argv[3])
    _WORKER_PID = os.getpid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    signal.signal(signal.SIGTERM, _on_term)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != ppid:
        return 0
    max_rss = int(os.environ.get("FM_WORKER_MAX_RSS_MB") or DEFAULT_MAX_RSS_MB) * 1024 * 1024
    box = Protocol(Connection(rfd, writable=False), Connection(wfd, readable=False))
    signal.signal(SIG_DROP, box.on_drop_signal)
    signal.siginterrupt(SIG_DROP, False)  # system calls of node code restart after it
    # Our direct children (orphans of node code are reparented to us, a subreaper):
    # empty after a task means the node left nothing running.
    try:
        children_fd: int | None = os.open(f"/proc/self/task/{_WORKER_PID}/children", os.O_RDONLY)
    except OSError:
        children_fd = None
    # Import the node runtimes now, so a task starts within a millisecond of its
    # dispatch (rate limits count starts at dispatch).
    import psutil  # noqa: F401 - kill_descendants needs it, in a signal handler too

    runners.load_runners()

    box.send(("ready", _WORKER_PID))
    threading.Thread(target=box.stream_logs, name="fm-log-stream", daemon=True).start()
    pending: list[tuple[Any, ...]] = []
    last_flush = last_memory_check = time.monotonic()
    last: tuple[int, bool] | None = None  # the task run last here, and whether it succeeded
    while True:
        # Take every message waiting; block only when there is nothing to run.
        if not box.queue or box.has_message():
            if pending and not box.queue:
                box.send(("results", pending))
                pending = []
                last_flush = time.monotonic()
            box.take(block=not box.queue)
        if box.stopped:
            break
        if not box.queue:
            continue
        task = box.queue.popleft()
        after = task.get("after")
        if after is not None:
            # Chained behind the task before it (Dispatch._chain): the supervisor
            # hears that one ended first, and this one starts only if it succeeded.
            if pending:
                box.send(("results", pending))
                pending = []
                last_flush = time.monotonic()
            if last != (after, True):
                now = time.time()
                box.send(("results", [(task["id"], None, None, None, [], now, now)]))
                continue
        box.in_task = True
        try:
            result = runners.run_task(task)
        finally:
            box.in_task = False
        pending.append(result)
        last = (result[0], result[1] is True)
        if os.getpid() != _WORKER_PID:
            os._exit(0)  # a child forked by node code came back here: it is not us
        mono = time.monotonic()
        if runners.newly_detached:
            box.send(("detached", list(runners.newly_detached)))
            runners.newly_detached.clear()
        if children_fd is not None:
            children = os.pread(children_fd, 4096, 0)
            if children and left_behind(children):
                kill_descendants()  # the node left processes behind: they end with it
        elif mono - last_memory_check >= MEMORY_CHECK_INTERVAL:
            kill_descendants()  # no /proc children file here: look now and then
        if mono - last_flush >= FLUSH_INTERVAL:
            box.send(("results", pending))
            pending = []
            last_flush = mono
        if max_rss and mono - last_memory_check >= MEMORY_CHECK_INTERVAL:
            last_memory_check = mono
            if _rss_bytes() > max_rss:
                if pending:
                    box.send(("results", pending))
                    pending = []
                box.retire()
                break
    if pending:
        box.send(("results", pending))
    kill_descendants()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
