"""Node functions for tests/test_retry.py; worker processes import this module from
a copy written beside each test's workflow.

Every call appends its node path as one line to ``calls.txt`` beside this file
(one ``write`` call), so a test counts exactly which node instances were run.
Whether a call fails is decided by data: ``bad.txt`` beside this file lists the
node paths or item values that raise; ``slow.txt`` lists those that sleep first
(a test edits the files between a run and its retry).
"""

from __future__ import annotations

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _call(path: str) -> None:
    fd = os.open(os.path.join(HERE, "calls.txt"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (path + "\n").encode())
    finally:
        os.close(fd)


def _listed(name: str, key: str) -> bool:
    try:
        with open(os.path.join(HERE, name)) as f:
            return key in f.read().split()
    except FileNotFoundError:
        return False


def step(name, value=0, ctx=None):
    """A chain's node: fails when its path is in bad.txt."""
    _call(ctx.nodePath)
    if _listed("slow.txt", ctx.nodePath):
        time.sleep(30)
    if _listed("bad.txt", ctx.nodePath):
        raise ValueError(f"{ctx.nodePath} is listed in bad.txt")
    return {"name": name, "value": value + 1}


def prep(x, ctx=None):
    """The first node of a loop body: never fails."""
    _call(ctx.nodePath)
    return {"x": x}


def work(x, ctx=None):
    """A loop item's work: fails when the item value is in bad.txt, sleeps first
    when it is in slow.txt."""
    _call(ctx.nodePath)
    if _listed("slow.txt", str(x)):
        time.sleep(0.4)
    if _listed("bad.txt", str(x)):
        raise ValueError(f"item {x} is listed in bad.txt")
    return x * 2


def race(delay, ctx=None):
    """A branch of a first_success merge: sleeps ``delay`` seconds."""
    _call(ctx.nodePath)
    time.sleep(delay)
    if _listed("bad.txt", ctx.nodePath):
        raise ValueError(f"{ctx.nodePath} is listed in bad.txt")
    return ctx.nodePath
