"""Task module for the I/O lane tests (copied beside their workflows)."""

from __future__ import annotations

import asyncio
import json
import os
import time


def _note(folder: str, what: str, i: int) -> None:
    # One line per event, appended: what the tests read back to see overlap.
    with open(os.path.join(folder, "events.jsonl"), "a") as f:
        f.write(json.dumps({"what": what, "i": i, "t": time.time(), "pid": os.getpid()}) + "\n")


async def nap(i, seconds, folder):
    _note(folder, "start", i)
    await asyncio.sleep(seconds)
    _note(folder, "end", i)
    return i


def blocking_nap(i, seconds, folder):
    _note(folder, "start", i)
    time.sleep(seconds)
    _note(folder, "end", i)
    return i


def pid():
    return os.getpid()


async def async_pid():
    return os.getpid()


async def noisy(i):
    # Each concurrent call's prints belong to its own attempt.
    for k in range(3):
        print(f"item {i} line {k}")
        await asyncio.sleep(0.01)
    return i


_kept: list[bytes] = []


async def leak(i, mb, seconds):
    """Keeps ``mb`` MB for as long as its worker lives (a leak), then naps."""
    _kept.append(os.urandom(mb * 2**20))
    await asyncio.sleep(seconds)
    return {"i": i, "pid": os.getpid()}
