"""Node functions for the loop crash tests (tests/test_crash_loops.py); worker
processes import this module from a copy written beside each test's workflow.

``work`` appends two JSON lines to the ``mark`` file, each in a single ``write``
call: ``{phase: "start", path, index, pid, t_start}`` when it begins and
``{phase: "end", path, index, pid, t_start, t_end}`` when it is done, so a test
sees every start (even one its worker did not survive) and every complete run.
"""

from __future__ import annotations

import json
import os
import time

from fm_local import FatalError


def _mark(mark: str, **fields) -> None:
    line = json.dumps(fields) + "\n"
    fd = os.open(mark, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def work(
    mark: str,
    index: int,
    seconds: float = 0.05,
    slow_at: int | None = None,
    slow: float = 1.0,
    fail_at: int | None = None,
    ctx=None,
):
    """Sleep ``seconds`` (``slow`` for item ``slow_at``), fail for good at item
    ``fail_at``; return ``{index, square, pid}``."""
    pid = os.getpid()
    t_start = time.time()
    _mark(mark, phase="start", path=ctx.nodePath, index=index, pid=pid, t_start=t_start)
    time.sleep(slow if index == slow_at else seconds)
    if index == fail_at:
        raise FatalError(f"item {index} is poisoned")
    t_end = time.time()
    _mark(mark, phase="end", path=ctx.nodePath, index=index, pid=pid, t_start=t_start, t_end=t_end)
    return {"index": index, "square": index * index, "pid": pid}
