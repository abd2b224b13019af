"""The group commit: runs and executions marked dirty, attempt rows and events,
written together every few milliseconds (:class:`fm_local.store.Batch`)."""

from __future__ import annotations

import sqlite3
from typing import Any

from fm_local.nodes.kinds import Runs, kind_of
from fm_local.store import Batch, dumps, storage_error
from fm_local.supervisor.state import (
    ACTIVE_STATUSES,
    FLUSH_INTERVAL,
    FLUSH_MAX,
    Exec,
    Part,
    Run,
)


class Commit(Part):
    def _mark(self, run: Run) -> None:
        self.dirty_runs[id(run)] = run

    def _mark_exec(self, ex: Exec) -> None:
        self.dirty_execs[ex.id] = ex

    def _attempt_row(
        self, run: Run, status: str, err: dict[str, Any] | None, kind: str | None = None
    ) -> None:
        ex = run.ex
        self.batch.attempts[(ex.id, run.path, run.seq)] = (
            ex.id,
            run.path,
            run.seq,
            run.attempt,
            kind or run.attempt_kind,
            status,
            None if err is None else dumps(err),
            run.worker_pid,
            run.started_at,
            None if status == "running" else run.finished_at,
        )

    def _event(self, ex: Exec, path: str | None, kind: str, detail: Any) -> None:
        self.batch.events.append(
            (ex.id, path, self.clock.time(), kind, None if detail is None else dumps(detail))
        )

    def _maybe_flush(self) -> None:
        if not (self.dirty_runs or self.dirty_execs or len(self.batch)):
            return
        now_m = self.clock.monotonic()
        if (
            now_m - self.last_flush >= FLUSH_INTERVAL
            or len(self.dirty_runs) + len(self.batch) >= FLUSH_MAX
        ):
            self.flush()

    def flush(self) -> None:
        """One group commit of everything changed since the last one."""
        assert self.store is not None
        b = self.batch
        for run in self.dirty_runs.values():
            ex = run.ex
            key = (ex.id, run.path)
            err = run.error
            status = run.status
            b.node_runs[key] = (
                ex.id,
                run.path,
                run.node.id,
                run.ntype,
                status,
                # A prefetched task has not begun: its attempt is not spent yet.
                run.attempt - 1
                if run.prefetched and run.attempt_kind == "attempt"
                else run.attempt,
                run.recoveries,
                run.output_json if status == "succeeded" else None,
                None if err is None else dumps(err),
                run.port,
                int(run.handled),
                run.trace_id,
                run.branch.id if run.branch is not None else None,
                run.worker_pid,
                run.queued_at,
                run.started_at,
                run.finished_at,
                run.next_attempt_at,
                run.item_index,
                run.input_json,
                run.code,
                run.items,
                run.lane,
            )
            if status in ACTIVE_STATUSES and run.ntype != "item" and run.ntype != "loop":
                qstatus = "timer" if kind_of(run.node).runs is Runs.DELAY else status
                b.queue[key] = (
                    ex.id,
                    run.path,
                    run.node.id,
                    qstatus,
                    run.node.priority if run.node.priority is not None else ex.priority,
                    run.next_attempt_at,
                    run.queued_at or self.clock.time(),
                    run.worker_pid if status == "running" else None,
                )
                run.in_queue_table = True
            elif run.in_queue_table:
                b.queue[key] = None
                run.in_queue_table = False
        now = self.clock.time()
        for ex in self.dirty_execs.values():
            b.executions[ex.id] = (
                ex.id,
                ex.status,
                None if ex.output is None and ex.status != "succeeded" else dumps(ex.output),
                None if ex.error is None else dumps(ex.error),
                ex.priority,
                ex.started_at,
                ex.finished_at,
                ex.deadline_at,
                now,
            )
        self.dirty_runs = {}
        self.dirty_execs = {}
        self.batch = Batch()
        if len(b):
            try:
                self.rejected.extend(self.store.commit_batch(b))
            except (sqlite3.Error, OSError) as exc:
                # The storage itself failed: stop serving (what was committed stays).
                self.storage_failed = True
                raise storage_error(exc, self.db, "write") from exc
        self.last_flush = self.clock.monotonic()
