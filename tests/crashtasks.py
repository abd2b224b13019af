"""Node functions for the crash tests (tests/test_crash.py); worker processes import
this module from a copy written beside each test's workflow.

Every function appends one JSON line ``{path, pid, t, ...}`` to the ``mark`` file,
in a single ``write`` call, so a test can see which node ran, in which worker
process and when, however the processes around it die.
"""

from __future__ import annotations

import json
import os
import time


def _mark(mark: str, path: str | None, **fields) -> None:
    line = json.dumps({"path": path, "pid": os.getpid(), "t": time.time(), **fields}) + "\n"
    fd = os.open(mark, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _starts(mark: str, path: str) -> int:
    """How many times ``path`` was started before (as recorded in ``mark``)."""
    try:
        with open(mark) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return 0
    n = 0
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("path") == path and rec.get("phase") == "start":
            n += 1
    return n


def step(mark: str, seconds: float = 0.05, ctx=None):
    """Mark the start, sleep, then mark the node as done."""
    _mark(mark, ctx.nodePath, phase="start")
    time.sleep(seconds)
    _mark(mark, ctx.nodePath, phase="done")
    return {"pid": os.getpid()}


def start_sleep(mark: str, first: float = 30.0, then: float = 0.1, ctx=None):
    """Mark the start, then sleep ``first`` seconds on the first run of this node
    path and ``then`` seconds on every later run (a re-run after a crash)."""
    n = _starts(mark, ctx.nodePath)
    _mark(mark, ctx.nodePath, phase="start", run=n + 1)
    time.sleep(first if n == 0 else then)
    return {"pid": os.getpid(), "run": n + 1}
