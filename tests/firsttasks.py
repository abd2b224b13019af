"""Node functions for tests/test_first_hour.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fm_local import NodeError


def item(i: int, bad: list[int] | None = None) -> int:
    if i in (bad or []):
        raise NodeError(f"item {i} is bad")
    return i


def nap(seconds: float = 0.05) -> float:
    time.sleep(seconds)
    return seconds


def fail_once(counter: str) -> str:
    """Fails on its first call (counted in a file), succeeds after."""
    p = Path(counter)
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    if n == 0:
        raise NodeError("first call fails")
    return "replayed fine"


def echo(**kw: Any) -> dict[str, Any]:
    return kw
