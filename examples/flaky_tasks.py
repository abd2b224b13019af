"""The Python task of flaky_api.json: a pretend API call that fails for some items
while an "outage" file exists (the README tour's step 8 creates it, then removes it
and retries the execution)."""

from __future__ import annotations

import time
from pathlib import Path


def call_api(
    i: int, outage: str = ".fm/outage", seconds: float = 0.3, calls: str | None = None
) -> dict:
    """Call the API for item ``i``: ``seconds`` of waiting, one printed line.

    While the file ``outage`` exists (relative to the daemon's working directory),
    the API is down for the items ``i % 15 == 7`` (7 of 100) and the call raises.
    ``calls``, when given, is a file that gets one line per call (the tests count
    them)."""
    if calls:
        with open(calls, "a") as f:
            f.write(f"{i}\n")
    time.sleep(seconds)
    if i % 15 == 7 and Path(outage).exists():
        raise ConnectionError(f"API down for item {i} ({outage} exists)")
    print(f"item {i}: ok")
    return {"item": i, "value": i * i}
