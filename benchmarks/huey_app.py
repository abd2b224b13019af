"""The reference: the same no-op work on Huey's SqliteHuey (process consumer)."""

import os

from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ.get("HUEY_DB", "/tmp/huey-bench.db"))


@huey.task()
def noop(i: int) -> int:
    return i


@huey.task()
def stamp() -> float:
    """When the task's code started (for the submit-to-start latency)."""
    import time

    return time.time()


@huey.task()
def fetch(url: str) -> int:
    """One HTTP call (the I/O benchmark, with the thread consumer)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as r:
        r.read()
        return r.status
