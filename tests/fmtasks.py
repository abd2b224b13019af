"""Node functions for the test suite; worker processes import this module.

Side effects go to files named by the caller (``mark``), so tests can see what
really ran, in which process and when.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

from fm_local import FatalError, NodeError


def noop() -> None:
    return None


def echo(**kwargs):
    return kwargs


def add(a, b):
    return a + b


def _record(mark: str | None, **fields) -> None:
    if not mark:
        return
    line = json.dumps({"pid": os.getpid(), "t": time.time(), **fields})
    with open(mark, "a") as f:
        f.write(line + "\n")
        f.flush()


def sleep(seconds: float = 0.1, mark: str | None = None, tag: str = "", ctx=None):
    start = time.time()
    time.sleep(seconds)
    _record(mark, tag=tag, start=start, end=time.time(), path=ctx.nodePath if ctx else None)
    return {"tag": tag, "slept": seconds, "start": start, "end": time.time(), "pid": os.getpid()}


def record(mark: str, tag: str = "", ctx=None):
    _record(mark, tag=tag, path=ctx.nodePath, attempt=ctx.attempt, key=ctx.idempotencyKey)
    return {"tag": tag, "pid": os.getpid()}


def flaky(counter: str, fail_times: int = 2, code: str = "TRANSIENT", ctx=None):
    """Fails ``fail_times`` times (counted in a file), then succeeds."""
    p = Path(counter)
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    with open(counter + ".times", "a") as f:
        f.write(f"{time.time()}\n")
    if n < fail_times:
        raise NodeError(f"flaky failure {n + 1}", code)
    return {"calls": n + 1, "attempt": ctx.attempt if ctx else None}


def always_fail(message: str = "boom"):
    raise ValueError(message)


def fatal(message: str = "no retry"):
    raise FatalError(message)


def crash(counter: str | None = None, times: int = 1000):
    """Kills its own worker process (like a segfault) the first ``times`` calls."""
    if counter:
        p = Path(counter)
        n = int(p.read_text()) if p.exists() else 0
        p.write_text(str(n + 1))
        if n >= times:
            return {"survived": n + 1}
    os._exit(9)


def hang(mark: str | None = None, child: bool = False, ctx=None):
    """Never returns; optionally starts a child that would outlive a careless stop."""
    if child:
        proc = subprocess.Popen(["sleep", "300"])
        _record(mark, child_pid=proc.pid, path=ctx.nodePath if ctx else None)
    else:
        _record(mark, path=ctx.nodePath if ctx else None)
    while True:
        time.sleep(1)


def returns_nan():
    return float("nan")


def returns_object():
    return object()


def prints(n: int = 3, ctx=None):
    import logging

    for i in range(n):
        print(f"line {i}")
    logging.getLogger("fmtasks").warning("a warning")
    if ctx is not None:
        ctx.log("from ctx.log")
    return n


def flood(lines: int = 100000):
    for i in range(lines):
        print("x" * 100, i)
    return lines


def ctx_info(ctx):
    return {
        "executionId": ctx.executionId,
        "nodePath": ctx.nodePath,
        "attempt": ctx.attempt,
        "traceId": ctx.traceId,
        "idempotencyKey": ctx.idempotencyKey,
        "branch": ctx.branch,
        "parallel": ctx.parallel,
    }


async def async_add(a, b):
    await asyncio.sleep(0.01)
    return a + b


def which_file():
    return {"file": __file__}
