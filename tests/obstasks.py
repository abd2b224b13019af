"""Node functions for tests/test_observability.py; worker processes import this
module. A node that must wait for the test waits for a gate file the test creates,
so the test decides when each line can appear."""

from __future__ import annotations

import os
import time


def say(text: str, gate: str | None = None, fail: bool = False):
    """Wait for the file ``gate`` (if given), print ``text``, then fail or return it."""
    while gate and not os.path.exists(gate):
        time.sleep(0.02)
    print(text)
    if fail:
        raise ValueError(f"failed after {text!r}")
    return text


def flaky_once(counter: str):
    """Fails on its first call (counted in a file), then succeeds."""
    n = int(open(counter).read()) if os.path.exists(counter) else 0
    with open(counter, "w") as f:
        f.write(str(n + 1))
    print(f"call {n + 1}")
    if n == 0:
        raise RuntimeError("first call fails")
    return n + 1


def talk(first: str, gate: str, last: str, hang: bool = False):
    """Print ``first``, wait for the file ``gate`` (or forever if ``hang``), print
    ``last``: a long node whose first line must be visible while it runs."""
    print(first, flush=True)
    while hang or not os.path.exists(gate):
        time.sleep(0.02)
    print(last)
    return last
