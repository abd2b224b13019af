"""The worker process: runs node tasks the supervisor sends, one at a time.

Invariants: a worker never opens the database; it dies with the supervisor
(PR_SET_PDEATHSIG, and EOF on its pipe); it runs in its own process group so that
stopping it stops every child a node started; it never lets node code write to
the protocol pipe. Started as ``python -m fm_local.worker RFD WFD PPID``.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from fm_local.nodes import runners

# Results are flushed at the end of a batch, or when this many seconds passed.
FLUSH_INTERVAL = 0.002


def _die_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # not Linux: EOF on the pipe still ends us between tasks
        pass


def _on_term(signum: int, frame: Any) -> None:
    # Stop our whole process group (node children included), ourselves last.
    try:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(143)


def main(argv: list[str]) -> int:
    rfd, wfd, ppid = int(argv[1]), int(argv[2]), int(argv[3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    signal.signal(signal.SIGTERM, _on_term)
    _die_with_parent()
    if os.getppid() != ppid:
        return 0
    inbox = Connection(rfd, writable=False)
    outbox = Connection(wfd, readable=False)
    # Import the node runtimes now, so a task starts within a millisecond of its
    # dispatch (rate limits count starts at dispatch).
    from fm_local.nodes import http, python, shell  # noqa: F401

    outbox.send_bytes(pickle.dumps(("ready", os.getpid())))
    pending: list[tuple[Any, ...]] = []
    queue: deque[dict[str, Any]] = deque()
    dropped: set[int] = set()
    last_flush = time.monotonic()
    while True:
        # Take every message waiting; block only when there is nothing to run.
        while not queue or inbox.poll(0):
            try:
                msg = pickle.loads(inbox.recv_bytes())
            except (EOFError, OSError):
                return 0
            if msg[0] == "stop":
                return 0
            if msg[0] == "drop":  # tasks the supervisor wants back before they start
                dropped.update(msg[1])
            else:
                queue.extend(msg[1])
        task = queue.popleft()
        if task["id"] in dropped:
            dropped.discard(task["id"])
            now = time.time()
            pending.append((task["id"], None, None, None, [], now, now))
        else:
            pending.append(runners.run_task(task))
        mono = time.monotonic()
        if not queue or mono - last_flush >= FLUSH_INTERVAL:
            outbox.send_bytes(pickle.dumps(("results", pending), protocol=5))
            pending = []
            last_flush = mono


if __name__ == "__main__":
    sys.exit(main(sys.argv))
