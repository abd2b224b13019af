"""Resource sampling: CPU % and RSS of the supervisor, each worker and the machine.

The supervisor calls :meth:`Sampler.sample` about once a second; rows go to the
``resource_samples`` table in its group commit, with the node each worker runs.
psutil's CPU percentages are measured between two calls, so processes are kept
between samples; the first sample of a process reads 0.0.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

SAMPLE_INTERVAL = 1.0  # seconds
KEEP_SECONDS = 3600.0  # history kept in the table


class Sampler:
    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self.last = 0.0
        self.last_prune = time.monotonic()
        psutil.cpu_percent(None)  # prime the machine-wide counter

    def _proc(self, pid: int) -> psutil.Process | None:
        p = self._procs.get(pid)
        if p is None:
            try:
                p = psutil.Process(pid)
                p.cpu_percent(None)
            except psutil.Error:
                return None
            self._procs[pid] = p
        return p

    def due(self) -> bool:
        return time.monotonic() - self.last >= SAMPLE_INTERVAL

    def sample(
        self,
        workers: list[tuple[int, str | None, str | None]],
        io_workers: list[tuple[int, str]] | None = None,
        helpers: list[tuple[int, str, str]] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Rows ``(ts, pid, role, cpu_percent, rss_bytes, execution_id, node_path)``
        for the supervisor, each ``(pid, execution_id, node_path)`` worker, each
        ``(pid, what it runs)`` I/O worker (role ``io-worker``; what it runs, such as
        "12 tasks", in ``node_path``), each ``(pid, role, what it does)`` helper
        process of the supervisor (its commit process: role ``commit``), and the
        machine."""
        self.last = time.monotonic()
        now = time.time()
        rows: list[tuple[Any, ...]] = []
        io_workers = io_workers or []
        helpers = helpers or []
        alive = (
            {os.getpid()}
            | {pid for pid, _, _ in workers}
            | {pid for pid, _ in io_workers}
            | {pid for pid, _, _ in helpers}
        )
        for pid, role, eid, path in [
            (os.getpid(), "supervisor", None, None),
            *((pid, "worker", eid, path) for pid, eid, path in workers),
            *((pid, "io-worker", None, what) for pid, what in io_workers),
            *((pid, role, None, what) for pid, role, what in helpers),
        ]:
            p = self._proc(pid)
            if p is None:
                continue
            try:
                with p.oneshot():
                    rows.append(
                        (now, pid, role, p.cpu_percent(None), p.memory_info().rss, eid, path)
                    )
            except psutil.Error:
                continue
        vm = psutil.virtual_memory()
        rows.append((now, None, "machine", psutil.cpu_percent(None), vm.used, None, None))
        for pid in list(self._procs):
            if pid not in alive:
                del self._procs[pid]
        return rows
