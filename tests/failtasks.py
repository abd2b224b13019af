"""Node functions for the failure-policy tests (tests/test_failures.py); worker
processes import this module from a copy written beside each test's workflow.

Every function appends JSON lines to the ``mark`` file, each line in a single
``write`` call: ``{phase: "start", tag, path, pid, child_pid, t}`` when it begins
and ``{phase: "end", ...}`` only when its sleep is over (so a process stopped
in its sleep never writes ``end``), or ``{phase: "fail", ...}`` before it raises.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from fm_local import NodeError


def _mark(mark: str | None, **fields: Any) -> None:
    if not mark:
        return
    line = json.dumps({"pid": os.getpid(), "t": time.time(), **fields}) + "\n"
    fd = os.open(mark, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def work(
    tag: str = "",
    seconds: float = 0.0,
    fail: bool = False,
    code: str = "NODE_ERROR",
    mark: str | None = None,
    child: bool = False,
    ctx=None,
):
    """Sleep ``seconds`` (optionally with a child process that sleeps too), then
    fail with ``code`` when ``fail``, else return ``{"tag": tag}``."""
    path = ctx.nodePath if ctx is not None else None
    child_pid = None
    if child:
        child_pid = subprocess.Popen(["sleep", "300"]).pid
    _mark(mark, phase="start", tag=tag, path=path, child_pid=child_pid)
    time.sleep(seconds)
    if fail:
        _mark(mark, phase="fail", tag=tag, path=path)
        raise NodeError(f"{tag} failed", code)
    _mark(mark, phase="end", tag=tag, path=path)
    return {"tag": tag}


def see_error(error: Any = None, tag: str = "", mark: str | None = None, ctx=None):
    """A fallback/goto/error-edge target: returns the ``error`` it was given."""
    _mark(mark, phase="end", tag=tag, path=ctx.nodePath if ctx is not None else None)
    return {"tag": tag, "error": error}


def flaky(counter: str, fail_times: int = 2, mark: str | None = None, ctx=None):
    """Fails ``fail_times`` times (counted in a file), then succeeds."""
    p = Path(counter)
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    _mark(mark, phase="attempt", tag="flaky", attempt=ctx.attempt if ctx is not None else None)
    if n < fail_times:
        raise NodeError(f"flaky failure {n + 1}", "TRANSIENT")
    return {"calls": n + 1}
