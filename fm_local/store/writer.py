"""The group commit on a thread of its own.

The supervisor hands each :class:`Batch` to a :class:`Writer` and goes on
scheduling; the writer applies it on its own connection while the supervisor
builds the next one (SQLite and the fsync of a commit run without the GIL). What
must be committed before the supervisor goes on — an execution's end, applied
signals, the rows a loop's output is read back from — waits for it
(:meth:`Writer.wait`). Batches waiting behind a commit are merged into one
transaction, and at most ``max_pending`` wait, so a writer that falls behind
slows the supervisor down instead of growing without bound.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import fields
from pathlib import Path

from fm_local.store.batch import Batch, Rejected
from fm_local.store.core import Store


def merge(batches: list[Batch]) -> Batch:
    """Batches in the order they were made, as one: a row's later value wins (the
    dicts, keyed by row), lists follow one another, a later ``queue_counts`` wins."""
    if len(batches) == 1:
        return batches[0]
    out = Batch()
    for b in batches:
        for f in fields(Batch):
            theirs = getattr(b, f.name)
            if f.default is None:  # a whole value, when set (queue_counts)
                if theirs is not None:
                    setattr(out, f.name, theirs)
            elif isinstance(theirs, dict):
                getattr(out, f.name).update(theirs)
            else:
                getattr(out, f.name).extend(theirs)
    return out


class Writer:
    """Commits batches, in the order given, on a thread and connection of its own."""

    def __init__(self, path: str | Path, durability: str = "full", max_pending: int = 3):
        self.store = Store(path, durability=durability)
        self.max_pending = max_pending
        self.cv = threading.Condition()
        self.pending: deque[Batch] = deque()
        self.submitted = 0  # batches handed over
        self.committed = 0  # of which committed (or rejected row by row)
        self.rejected: list[Rejected] = []
        self.error: BaseException | None = None  # a storage failure: nothing more is written
        self.closing = False
        self.thread = threading.Thread(target=self._loop, name="fm-writer", daemon=True)
        self.thread.start()

    def submit(self, b: Batch) -> None:
        """Queue ``b`` for commit (waits while ``max_pending`` batches wait)."""
        with self.cv:
            while len(self.pending) >= self.max_pending and self.error is None:
                self.cv.wait()
            self._raise()
            self.pending.append(b)
            self.submitted += 1
            self.cv.notify_all()

    def wait(self) -> None:
        """Return once every batch submitted so far is committed."""
        with self.cv:
            target = self.submitted
            while self.committed < target and self.error is None:
                self.cv.wait()
            self._raise()

    def take_rejected(self) -> list[Rejected]:
        """Rows the database refused in the commits since the last call."""
        if not self.rejected:
            return []
        with self.cv:
            out, self.rejected = self.rejected, []
        return out

    def close(self) -> None:
        """Commit what is queued (unless storage failed), then stop."""
        with self.cv:
            self.closing = True
            self.cv.notify_all()
        self.thread.join()
        self.store.close()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.pending and not self.closing:
                    self.cv.wait()
                if not self.pending:
                    return
                batches = list(self.pending)
            try:
                rejected = self.store.commit_batch(merge(batches))
            except BaseException as exc:  # noqa: BLE001 - handed to the supervisor
                with self.cv:
                    self.error = exc
                    self.pending.clear()
                    self.cv.notify_all()
                return
            with self.cv:
                for _ in batches:
                    self.pending.popleft()
                self.committed += len(batches)
                self.rejected.extend(rejected)
                self.cv.notify_all()
