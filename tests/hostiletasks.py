"""Node functions for tests/test_hostile.py: node code that misbehaves on purpose."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any


def prints_surrogate() -> str:
    print("bad \ud800 text")
    return "printed"


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def echo(x: Any = None) -> str:
    return "got it"


def noop(**kw: Any) -> None:
    return None


def sleep(seconds: float = 1.0) -> float:
    time.sleep(seconds)
    return seconds


def keyboard_interrupt() -> None:
    raise KeyboardInterrupt("the node raised KeyboardInterrupt itself")


def spawn_and_sleep(pidfile: str, seconds: float = 60.0) -> None:
    """Start a child in its own session (it would escape a process-group kill),
    record its pid, then sleep."""
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    with open(pidfile, "a") as f:
        f.write(f"{child.pid}\n")
    time.sleep(seconds)


def spawn_and_return(pidfile: str) -> str:
    """Start a background child in its own session and return at once."""
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    with open(pidfile, "a") as f:
        f.write(f"{child.pid}\n")
    return "left a child behind"


def fork_and_die(pidfile: str) -> None:
    """Fork a child that keeps the worker's pipes open, then kill the worker."""
    pid = os.fork()
    if pid == 0:
        time.sleep(300)
        os._exit(0)
    with open(pidfile, "a") as f:
        f.write(f"{pid}\n")
    os._exit(1)  # the worker dies; its forked child still holds its pipes


def grow(mb: int) -> int:
    """Keep ``mb`` MB alive in this worker process (a leak)."""
    global _LEAK
    _LEAK = bytearray(mb * 1024 * 1024)
    for i in range(0, len(_LEAK), 4096):
        _LEAK[i] = 1
    return os.getpid()


def pid() -> int:
    return os.getpid()


_LEAK: Any = None


def chatty(size: int = 2000) -> str:
    """Print a long line (fills the logs table)."""
    print("x" * size)
    return "said it"


def spawn_and_die(pidfile: str) -> None:
    """Start a child in its own session, then kill this worker (a crash)."""
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    with open(pidfile, "a") as f:
        f.write(f"{child.pid}\n")
    os._exit(1)


def start_detached(pidfile: str, ctx: Any = None) -> int:
    """Start a process meant to outlive the node, and say so (ctx.detach)."""
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    with open(pidfile, "a") as f:
        f.write(f"{child.pid}\n")
    ctx.detach(child.pid)
    return child.pid
