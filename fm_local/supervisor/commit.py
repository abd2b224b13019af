"""The group commit: runs and executions marked dirty, attempt rows and events,
written together every few milliseconds (:class:`fm_local.store.Batch`)."""

from __future__ import annotations

import sqlite3
from collections import Counter
from typing import Any, NoReturn

from fm_local.errors import StorageError
from fm_local.nodes.kinds import Runs, kind_of
from fm_local.store import Batch, dumps, storage_error
from fm_local.supervisor.state import (
    ACTIVE_STATUSES,
    FLUSH_INTERVAL,
    FLUSH_MAX,
    QUEUE_COUNT_INTERVAL,
    Exec,
    Frame,
    Part,
    Run,
    _priority,
)


class Commit(Part):
    def _mark(self, run: Run) -> None:
        """``run`` changed: its row is written with the next group commit.

        First writes (docs/guarantees.md): a deferrable run (a worker node or a
        loop item, under no rate limit) that was never written needs no row while
        it has not started, since a restart makes it again; once started, its row
        waits DEFER_FIRST_WRITE (in ``self.young``), so that one which ends sooner
        costs one row, written as it ended. After a crash, a run without a row
        runs again from the start (at-least-once)."""
        if run.deferrable and not run.written:
            st = run._status
            if st == "running":
                if run.ntype == "item" and not run.frame.started:
                    return  # an item whose body has not started
                if run.dirty_at is None:
                    run.dirty_at = self.clock.monotonic()
                    self.young.append(run)
                return
            if st == "queued" and run.dirty_at is None:
                return
        self.dirty_runs[id(run)] = run

    def _mark_exec(self, ex: Exec) -> None:
        self.dirty_execs[ex.id] = ex

    def _attempt_row(
        self, run: Run, status: str, err: dict[str, Any] | None, kind: str | None = None
    ) -> None:
        if run.deferrable and not run.written and id(run) not in self.dirty_runs:
            if status == "running":
                return  # written with its run's first row (_promote)
            self.dirty_runs[id(run)] = run  # a try ended: its run is written with it
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

    def _promote(self, run: Run) -> None:
        """``run``'s first row is written now (it is old enough, or a row inside
        it is being written)."""
        run.dirty_at = None
        self.dirty_runs[id(run)] = run
        if run._status == "running" and run.task_id is not None and not run.prefetched:
            self._attempt_row(run, "running", None)

    def _promote_aged(self, everything: bool) -> None:
        young = self.young
        due = self.clock.monotonic() - self.defer_first_write
        while young:
            run = young[0]
            at = run.dirty_at
            if at is not None and at > due and not everything:
                break
            young.popleft()
            if at is not None:
                self._promote(run)

    def _count_unrecorded(self) -> None:
        """queue_counts: the tasks held without a queue row (their first write
        waits), by status and priority, for ``fm queue`` and the TUI. Counted from
        the ready queues and running tasks, written when it changed."""
        counts: Counter[tuple[str, int]] = Counter()
        for ex in self.execs.values():
            for ready in (ex.ready, ex.ready_io):
                for run in ready:
                    if run.deferrable and not run.written:
                        counts["queued", _priority(run)] += 1
        for waiting in self.parked.values():
            for run in waiting:
                if run.deferrable and not run.written:
                    counts["queued", _priority(run)] += 1
        for run in self.tasks.values():
            if run.deferrable and not run.written and run._status in ("queued", "running"):
                counts[run._status, _priority(run)] += 1
        rows = sorted((st, p, n) for (st, p), n in counts.items())
        if rows != self.queue_counts:
            self.queue_counts = rows
            self.batch.queue_counts = rows

    def _maybe_flush(self) -> None:
        now_m = self.clock.monotonic()
        if now_m - self.last_count >= QUEUE_COUNT_INTERVAL and (
            self.execs or self.queue_counts or self.queue_counts is None
        ):
            self.last_count = now_m
            self._count_unrecorded()
        young = self.young
        if young and ((young[0].dirty_at or 0.0) + self.defer_first_write <= now_m):
            self._promote_aged(False)
        if not (self.dirty_runs or self.dirty_execs or len(self.batch)):
            return
        if (
            now_m - self.last_flush >= FLUSH_INTERVAL
            or len(self.dirty_runs) + len(self.batch) >= FLUSH_MAX
        ):
            self.flush(sync=False)

    def flush(self, everything: bool = False, sync: bool = True) -> None:
        """One group commit of everything changed since the last one (with
        ``everything``, the runs whose first row waits too).

        With ``sync`` (the default) it returns once committed; the periodic group
        commit (``sync=False``) hands the batch to the commit process and goes on,
        unless it acknowledges signals, which are committed before the next look
        for new ones."""
        assert self.store is not None
        self._promote_aged(everything)
        if everything:
            self._count_unrecorded()
        b = self.batch
        dirty = self.dirty_runs
        for run in list(dirty.values()):
            # A row inside a loop item needs the item's row: write it now too.
            f: Frame | None = run.frame
            while f is not None:
                item = f.item
                if item is not None and not item.written and id(item) not in dirty:
                    self._promote(item)
                f = f.parent
        recount = False
        for run in dirty.values():
            run.dirty_at = None
            if run.deferrable and not run.written and run._status in ACTIVE_STATUSES:
                recount = True  # it leaves queue_counts for the queue table
            run.written = True
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
        if recount:
            # In the same commit as the queue rows, so no task is counted twice.
            self._count_unrecorded()
        self.dirty_runs = {}
        self.dirty_execs = {}
        self.batch = Batch()
        writer = self.writer
        try:
            if writer is None:
                if len(b):
                    self.rejected.extend(self.store.commit_batch(b))
            else:
                if len(b):
                    writer.submit(b)
                if sync or b.signals or self.clock_is_stepped:
                    writer.wait()
        except (sqlite3.Error, OSError) as exc:
            self._storage_failed(exc)
        self._check_writer()
        self.last_flush = self.clock.monotonic()

    def _check_writer(self) -> None:
        """Take the commit process's acknowledgements and the rows its commits
        refused; if a commit failed, stop serving, as a failed commit here does."""
        writer = self.writer
        if writer is None:
            return
        writer.poll()
        if writer.rejected:
            self.rejected.extend(writer.take_rejected())
        if writer.error is not None:
            if isinstance(writer.error, (sqlite3.Error, OSError, StorageError)):
                self._storage_failed(writer.error)
            self.storage_failed = True
            raise writer.error

    def _storage_failed(self, exc: BaseException) -> NoReturn:
        """The storage itself failed: stop serving (what was committed stays)."""
        self.storage_failed = True
        raise storage_error(exc, self.db, "write") from exc
