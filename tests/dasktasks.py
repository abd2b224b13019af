"""Task module for the Dask executor's tests (copied beside their workflows)."""

from __future__ import annotations

import json
import os
import time


def square(i):
    return {"i": i, "sq": i * i}


def where():
    return {"pid": os.getpid(), "parent": os.getppid()}


def sleeper(folder, seconds):
    """Notes its pid (and its Dask worker's), then sleeps."""
    with open(os.path.join(folder, "sleepers.jsonl"), "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "parent": os.getppid()}) + "\n")
    time.sleep(seconds)
    return "woke"


def sleep_once(folder, seconds):
    """The first call notes its pid and sleeps; the next returns at once."""
    mark = os.path.join(folder, "slept")
    if not os.path.exists(mark):
        with open(mark, "w") as f:
            f.write(json.dumps({"pid": os.getpid(), "parent": os.getppid()}))
        time.sleep(seconds)
    return "done"


def counted_nap(folder, seconds):
    """Notes each call (one line), sleeps, then notes that it ended."""
    with open(os.path.join(folder, "calls.jsonl"), "a") as f:
        f.write(json.dumps({"pid": os.getpid()}) + "\n")
    time.sleep(seconds)
    with open(os.path.join(folder, "ended"), "a") as f:
        f.write("x")
    return {"slept": seconds}


def slow_square(i, folder):
    """Notes the call, naps 50 ms, returns i*i."""
    with open(os.path.join(folder, "calls.jsonl"), "a") as f:
        f.write(json.dumps({"i": i, "pid": os.getpid(), "parent": os.getppid()}) + "\n")
    time.sleep(0.05)
    return i * i


def chatty(seconds):
    """Prints, sleeps past the worker's log streaming interval, prints again."""
    print("before", flush=True)
    time.sleep(seconds)
    print("after")
    return "done"
