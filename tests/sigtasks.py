"""Node functions for tests/test_signals.py; copied beside each workflow.

Every function appends one JSON line per event to the ``mark`` file it is given
(``{"event", "tag", "pid", "t", "path", "attempt"}``): the tests' view of what
really ran, in which process, and when.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from fm_local import NodeError


def _mark(mark: str, event: str, tag: str, ctx: Any = None, **fields: Any) -> None:
    line = json.dumps(
        {
            "event": event,
            "tag": tag,
            "pid": os.getpid(),
            "t": time.time(),
            "path": ctx.nodePath if ctx is not None else None,
            "attempt": ctx.attempt if ctx is not None else None,
            **fields,
        }
    )
    with open(mark, "a") as f:
        f.write(line + "\n")
        f.flush()


def work(mark: str, tag: str, seconds: float = 0.0, ctx: Any = None) -> dict[str, Any]:
    """Marks its start, sleeps ``seconds``, marks its end."""
    _mark(mark, "start", tag, ctx)
    time.sleep(seconds)
    _mark(mark, "end", tag, ctx)
    return {"tag": tag, "pid": os.getpid()}


def gated(mark: str, tag: str, gate: str, ctx: Any = None) -> dict[str, Any]:
    """Marks its start, then runs until the file ``gate`` exists (the test opens it)."""
    _mark(mark, "start", tag, ctx)
    while not os.path.exists(gate):
        time.sleep(0.02)
    _mark(mark, "end", tag, ctx)
    return {"tag": tag, "pid": os.getpid()}


def fail_first(mark: str, tag: str, ctx: Any = None) -> dict[str, Any]:
    """Fails its first attempt (TRANSIENT), succeeds after."""
    _mark(mark, "start", tag, ctx)
    if ctx.attempt == 1:
        raise NodeError("first attempt fails", "TRANSIENT")
    _mark(mark, "end", tag, ctx)
    return {"tag": tag, "attempt": ctx.attempt}


def record(mark: str, tag: str, value: Any = None, ctx: Any = None) -> Any:
    """Marks the value it was given and returns it."""
    _mark(mark, "record", tag, ctx, value=value)
    return value


def on_signal(mark: str, signal: Any, ctx: Any = None) -> Any:
    """A signal handler: marks the signal it ran for, returns its data's ``n``."""
    data = signal.get("data") or {}
    _mark(mark, "handler", str(signal.get("id")), ctx, data=data)
    return {"n": data.get("n"), "signal": signal.get("id")}


def compensate(mark: str, tag: str, compensated: Any = None, ctx: Any = None) -> str:
    _mark(mark, "compensate", tag, ctx, compensated=compensated)
    return f"undid {tag}"


def touch(path: str) -> None:
    Path(path).touch()
