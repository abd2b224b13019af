"""Node functions for tests/test_visibility.py; worker processes import this module
(the tests copy it beside their workflow files)."""

from __future__ import annotations

import os
import time


def nap(ms: float = 20, item: object = None) -> object:
    time.sleep(ms / 1000)
    return item


def explode(value: str = "x") -> None:
    _check_value(value)


def _check_value(value: str) -> None:
    # A message longer than a table column: its useful part (END) comes last.
    raise ValueError(f"bad value {value!r}: " + "this explains what went wrong; " * 4 + "END")


def fail_odd(item: int) -> int:
    if item % 2:
        raise RuntimeError(f"odd item {item}")
    return item


def wait_for(gate: str, item: object = None, limit: float = 60.0) -> object:
    """Block until the file ``gate`` exists (at most ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return item


def deep(n: int) -> None:
    """Recurse through two functions (so the traceback does not fold repeats), then fail."""
    if n <= 0:
        raise KeyError("bottom of the recursion")
    _deeper(n)


def _deeper(n: int) -> None:
    deep(n - 1)
