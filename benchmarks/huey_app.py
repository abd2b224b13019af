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
