"""``fm daemon --retain AGE``: keep the last AGE of finished executions, pruning
older ones in the background.

Invariant: the pruning runs in a thread of its own with its own connection, off
the scheduling loop; it deletes through :class:`fm_local.store.prune.Pruner`, whose
write transactions are short and spaced (so the supervisor's group commits wait
for one short transaction at most), and it touches only finished executions, which
the supervisor no longer reads. It never runs a full ``VACUUM`` (the daemon holds
the file): an incremental-vacuum file gets its pages back in steps; an older file
reuses them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("fm_local.retention")

INTERVAL = 60.0  # seconds between two rounds
FIRST_DELAY = 5.0  # seconds after the daemon starts: its recovery comes first
# The daemon's share: each transaction aims at this, and a round pauses as long.
TARGET_TXN_SECONDS = 0.02


class Retention:
    """A background thread that prunes finished executions older than ``keep``
    seconds, every ``interval`` seconds, and reports each round that deleted
    something through ``report`` (one line)."""

    def __init__(
        self,
        db: Path,
        keep: float,
        *,
        interval: float = INTERVAL,
        first_delay: float = FIRST_DELAY,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.db = Path(db)
        self.keep = keep
        self.interval = interval
        self.first_delay = first_delay
        self.report = report or log.warning
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fm-retention", daemon=True)
        self.rounds = 0

    def start(self) -> Retention:
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped.set()
        self.thread.join(timeout)

    def _run(self) -> None:
        from fm_local.errors import StorageError
        from fm_local.store import Store

        if self.stopped.wait(self.first_delay):
            return
        try:
            store = Store(self.db, create=False, durability="normal")
        except StorageError as exc:
            log.error("retention: cannot open %s: %s; no pruning", self.db, exc)
            return
        try:
            while not self.stopped.is_set():
                try:
                    self.round(store)
                except Exception:  # noqa: BLE001 - pruning must never stop the daemon
                    log.exception("retention: a pruning round failed (the next one retries)")
                self.rounds += 1
                if self.stopped.wait(self.interval):
                    break
        finally:
            store.close()

    def round(self, store: object) -> None:
        """One pass: delete what is older than ``keep``, give incremental-vacuum
        pages back, say what was done."""
        from fm_local.store.prune import Pruner, file_bytes

        conn = store.conn  # type: ignore[attr-defined]
        pruner = Pruner(
            conn,
            self.db,
            target=TARGET_TXN_SECONDS,
            sleep=self._pause,
            should_stop=self.stopped.is_set,
        )
        ids = pruner.candidates(time.time() - self.keep)
        if not ids:
            return
        before = file_bytes(self.db)
        r = pruner.prune(ids)
        pruner.reclaim(full_vacuum_ok=False)
        self.report(
            f"retention: pruned {r.executions} executions finished over "
            f"{_age(self.keep)} ago ({r.total_rows} rows, {r.workflows} workflows; "
            f"space: {r.vacuum.split(':')[0]}, {r.reclaimed_bytes / 2**20:.1f} MB "
            f"reclaimed; file {before / 2**20:.1f} -> {file_bytes(self.db) / 2**20:.1f} MB; "
            f"longest transaction {r.longest_txn_ms:.0f} ms)"
        )

    def _pause(self, seconds: float) -> None:
        self.stopped.wait(seconds)


def _age(seconds: float) -> str:
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
