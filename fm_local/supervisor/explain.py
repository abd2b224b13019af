"""Explain: why each node instance of an execution is not running, answered by
the supervisor from its own state (``fm explain``, the TUI's node panel).

The reasons are read through the functions the scheduler decides with — never a
copy of their logic: readiness (:func:`fm_local.graph.readiness`, a merge's
``_merge_readiness``), the execution's ``maxConcurrency`` (:func:`at_capacity`),
a run's rate limiters and pool (``_run_limiters``, ``_run_pool``, then
``RateLimiter.wait_time`` and ``Pool.available``), a loop's window and batches
(:func:`window_full`, :func:`batch_hold`), the timers' heap, the parked runs, the
ready queues and the executor's workers.

A client asks with an internal signal row (type ``__explain``, data
``{"path": PATTERN or null}``, see :mod:`fm_local.explain`); the supervisor answers
it at its next look at the file (``_poll_db``), records the answer as the row's
``result`` and commits it. Invariants: answering only reads the engine's state
(it flushes the group commit first, so the rows a client reads beside the answer
are as new); it costs the scheduling loop nothing until a request comes (one
indexed look for pending requests per poll); a bad request, or a bug while
answering, is answered as an error and logged — it never fails an execution nor
stops the loop. The answer covers what the supervisor holds in memory (unfinished
node instances, nodes not started, loop items not opened); a finished instance is
read from its row by the client. It is bounded (:data:`MAX_ENTRIES`; a loop's
unopened items beyond :data:`ITEMS_LISTED` are one range entry).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from fm_local import errors, graph, jsonio
from fm_local.explain.paths import Pattern, covers, parse, relevant
from fm_local.limits import Pool, RateLimiter
from fm_local.nodes.kinds import Runs, kind_of
from fm_local.store import dumps, loads
from fm_local.store.explain import pending_explains, prune_explains
from fm_local.supervisor.explain_look import (
    Entry,
    _clock,
    _err_text,
    _in,
    _Look,
    _secs,
    _who,
    entry,
)
from fm_local.supervisor.loops import (
    BATCH_DELAY,
    BATCH_RUNNING,
    batch_hold,
    window_full,
)
from fm_local.supervisor.state import (
    Exec,
    Frame,
    LoopState,
    Part,
    Run,
    _exec_order,
    at_capacity,
    log,
)

MAX_ENTRIES = 1000  # entries in one answer; the rest are counted
ITEMS_LISTED = 10  # unopened items of a loop listed one by one before a range entry
MAX_PATTERN = 2000  # characters of a requested path
KEEP_ANSWERS = 60.0  # seconds an answered request row is kept (the client deletes it)
MAX_REQUEST_AGE = 30.0  # seconds after which an unanswered request is stale (its client left)


class Explain(Part):
    def _poll_explains(self) -> None:
        """Answer the pending explain requests (one indexed look when there are none)."""
        assert self.store is not None
        rows = pending_explains(self.store)
        if not rows:
            return
        self.flush(everything=True)  # the rows a client reads beside the answer
        now = self.clock.time()
        for row in rows:
            if now - float(row["created_at"] or 0.0) > MAX_REQUEST_AGE:
                answer: dict[str, Any] = {"ok": False, "error": "request too old"}
            else:
                answer = self._explain_request(row, now)
            try:
                text = jsonio.bounded_dumps(answer)
            except Exception as exc:  # noqa: BLE001 - an answer too large is an error answer
                text = dumps({"ok": False, "error": f"answer not recorded: {exc}"})
            outcome = "explained" if answer.get("ok") else "not explained"
            self.batch.signals.append(("applied", outcome, now, text, row["id"]))
        self.flush()
        try:
            prune_explains(self.store, now - KEEP_ANSWERS)
        except errors.StorageError:
            raise
        except Exception:  # noqa: BLE001 - housekeeping only
            log.exception("could not prune answered explain requests")

    def _explain_request(self, row: dict[str, Any], now: float) -> dict[str, Any]:
        """The answer to one request row; never raises (but for the storage's sake)."""
        eid = str(row["execution_id"])
        try:
            data = loads(row["data"])
            pattern_text = data.get("path") if isinstance(data, dict) else None
            if pattern_text is not None and (
                not isinstance(pattern_text, str) or len(pattern_text) > MAX_PATTERN
            ):
                return {"ok": False, "error": "path must be a string (at most 2000 characters)"}
            pattern = parse(pattern_text) if pattern_text else None
            answer: dict[str, Any] = {"ok": True, "pid": os.getpid(), "execution": eid}
            ex = self.execs.get(eid)
            if ex is None:
                answer["active"] = False
                if self.only_execution and eid != self.only_execution:
                    answer["servesOnly"] = self.only_execution
                return answer
            entries, left_out, running = self._explain_exec(ex, pattern, now)
            answer.update(active=True, status=ex.status, entries=entries)
            answer["leftOut"] = left_out
            answer["running"] = running
            return answer
        except errors.StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad request never harms the engine
            log.exception("explain request %s (execution %s) failed", row.get("id"), eid)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}

    # --- one execution -------------------------------------------------------------

    def _look(self) -> _Look:
        parked: dict[int, Any] = {}
        gates: dict[int, Any] = {id(o): o for o in self.limiters.values()}
        gates.update({id(p): p for p in self.pools.values()})
        for key, q in self.parked.items():
            gate = gates.get(key)
            for r in q:
                parked[id(r)] = gate
        batch_due = {id(obj): due for due, _, kind, obj in self.timers if kind == "batch"}
        on_worker: dict[int, Run] = {}
        if self.executor is not None:
            for pid, tid in self.executor.workers():
                run = self.tasks.get(tid) if tid is not None else None
                if run is not None:
                    on_worker[pid] = run
        return _Look(parked, batch_due, on_worker)

    def _explain_exec(
        self, ex: Exec, pattern: Pattern | None, now: float
    ) -> tuple[list[Entry], int, int]:
        """(entries, how many were left out, how many instances run on workers)."""
        look = self._look()
        out: list[Entry] = []
        seen: set[str] = set()
        left_out = 0
        for e in self._walk_frame(ex.top, pattern, now, look):
            seen.add(e["path"])
            if len(out) < MAX_ENTRIES:
                out.append(e)
                look.full = len(out) >= MAX_ENTRIES
            else:
                left_out += 1
        # Runs outside the graph's frames (fallbacks, handlers, compensations, replays).
        for run in self._loose_runs(ex):
            if run.path in seen or run.terminal:
                continue
            if pattern is not None and not covers(pattern, parse(run.path)):
                continue
            loose = self._explain_run(run, now, look, pattern is not None)
            if loose is None:
                continue
            seen.add(run.path)
            if len(out) < MAX_ENTRIES:
                out.append(loose)
                look.full = len(out) >= MAX_ENTRIES
            else:
                left_out += 1
        running = sum(1 for r in self.tasks.values() if r.ex is ex and not r.prefetched)
        return out, left_out, running

    def _loose_runs(self, ex: Exec) -> Iterator[Run]:
        yield from ex.ready
        yield from ex.ready_io
        for q in self.parked.values():
            yield from (r for r in q if r.ex is ex)
        yield from (r for r in self.tasks.values() if r.ex is ex)
        for _, _, kind, obj in self.timers:
            if kind == "retry" and isinstance(obj, Run) and obj.ex is ex:
                yield obj

    def _walk_frame(
        self, frame: Frame, pattern: Pattern | None, now: float, look: _Look
    ) -> Iterator[Entry]:
        g = frame.graph
        for nid in g.order:
            path = frame.prefix + nid
            segs = parse(path)
            if pattern is not None and not relevant(pattern, segs):
                continue
            asked = pattern is None or covers(pattern, segs)
            exact = pattern is not None and len(pattern) == len(segs) and asked
            run = frame.runs.get(nid)
            if run is None:
                if asked:
                    yield self._explain_unstarted(frame, nid, path, now)
                continue
            if run.terminal:
                continue  # its row says how it ended (the client reads it)
            ls = run.loop
            if ls is not None:
                if exact:
                    line = entry(path, run.status, "running", self._loop_line(ls))
                    yield self._paused(run.ex, line)
                for i in sorted(ls.open):
                    f = ls.open[i]
                    item = f.item
                    if item is None or item.terminal:
                        continue
                    item_segs = parse(item.path)
                    if pattern is not None:
                        if not relevant(pattern, item_segs):
                            continue
                        if len(pattern) == len(item_segs) and covers(pattern, item_segs):
                            summary = f"its body runs: {self._item_summary(f)}"
                            yield entry(item.path, item.status, "running", summary)
                    yield from self._walk_frame(f, pattern, now, look)
                yield from self._unopened(ls, segs, pattern, now, look)
                continue
            if asked:
                e = self._explain_run(run, now, look, pattern is not None)
                if e is not None:
                    yield e

    @staticmethod
    def _loop_line(ls: LoopState) -> str:
        done = ls.succeeded + ls.failed + ls.cancelled
        return (
            f"a loop: {done} of {ls.n} items done ({ls.failed} failed), {len(ls.open)} open "
            f"(at most {ls.window} at once)"
        )

    @staticmethod
    def _item_summary(f: Frame) -> str:
        active = [r.path for r in f.runs.values() if not r.terminal]
        return ", ".join(active[:5]) + (" …" if len(active) > 5 else "") if active else "-"

    def _paused(self, ex: Exec, e: Entry) -> Entry:
        """A paused execution starts nothing: that is the reason for whatever does
        not run; what would hold it after ``fm resume`` follows."""
        if ex.status != "paused" or e["reason"] in ("running", "paused", "finished"):
            return e
        e["detail"] = f"the execution is paused (fm resume {ex.id}); then: {e['detail']}"
        e["reason"] = "paused"
        return e

    # --- a node with no run yet ------------------------------------------------------

    def _explain_unstarted(self, frame: Frame, nid: str, path: str, now: float) -> Entry:
        ex = frame.ex
        if frame.stopped():
            return entry(path, "pending", "not_reached", self._stopped_why(frame))
        g = frame.graph
        deps = g.deps[nid]
        node = g.nodes[nid]
        if nid in g.sections and kind_of(node).runs is Runs.MERGE:
            verdict = self._merge_readiness(frame, nid)
        else:
            verdict = graph.readiness(deps, frame.runs, g.has_edges[nid]) if deps else "run"
        if verdict is None:
            waiting = []
            for d in dict.fromkeys(d.source for d in deps):
                r = frame.runs.get(d)
                if r is None or not r.terminal:
                    waiting.append((frame.prefix + d, r.status if r is not None else "not started"))
            detail = "waiting for " + ", ".join(f"{p} ({s})" for p, s in waiting)
            return self._paused(
                ex, entry(path, "pending", "dependencies", detail, None, [p for p, _ in waiting])
            )
        if ex.status == "paused":
            return self._paused(ex, entry(path, "pending", "queued", "ready to start"))
        return entry(path, "pending", "queued", "ready: the supervisor takes it at its next turn")

    def _stopped_why(self, frame: Frame) -> str:
        f: Frame | None = frame
        while f is not None:
            if f.halted:
                failure = f.failure or f.ex.cancel_error
                where = "the execution" if f.parent is None else f"item {f.prefix.rstrip('.')}"
                if failure is not None:
                    return f"{where} stopped starting nodes: {_err_text(failure)}"
                return f"{where} stopped starting nodes"
            ls = f.loop
            if ls is not None and ls.stopped:
                return f"loop {ls.run.path} stopped: {_err_text(ls.first_error)}"
            f = f.parent
        return f"the execution is {frame.ex.status}"

    # --- a run -------------------------------------------------------------------------

    def _explain_run(self, run: Run, now: float, look: _Look, asked: bool) -> Entry | None:
        """The entry of an unfinished run; a node running on a worker only when the
        request named it (``asked``)."""
        ex = run.ex
        path = run.path
        st = run.status
        runs = kind_of(run.node).runs
        if st == "retry_wait":
            policy = run.node.retry or ex.default_retry
            due = run.next_attempt_at
            detail = (
                f"attempt {run.attempt + 1} of {policy.max_attempts} at {_clock(due)} "
                f"({_in(due, now)}); attempt {run.attempt} failed: {_err_text(run.error)}"
            )
            return self._paused(ex, entry(path, st, "retry_backoff", detail, due))
        if runs is Runs.DELAY and st == "running":
            due = run.next_attempt_at
            return entry(
                path, st, "timer", f"a delay node: it ends at {_clock(due)} ({_in(due, now)})", due
            )
        if runs is Runs.WAIT and st == "running":
            sig = getattr(run.node, "signal", "?")
            timeout = run.node.timeout
            due = (run.started_at or now) + timeout / 1000.0 if timeout else None
            more = f" (times out at {_clock(due)})" if due else ""
            return entry(
                path,
                st,
                "signal",
                f"waiting for a '{sig}' signal (fm signal {ex.id} {sig}){more}",
                due,
            )
        if run.task_id is not None:
            before = run.after
            if before is not None:
                # Chained (Dispatch._chain): it still waits for the node before it.
                detail = (
                    f"waiting for {before.path} ({before.status}); handed to worker "
                    f"{run.worker_pid}, to start there when {before.path} succeeds"
                )
                return self._paused(
                    ex, entry(path, "pending", "dependencies", detail, None, [before.path])
                )
            if run.prefetched:
                holder = look.on_worker.get(run.worker_pid or -1)
                blockers = [_who(holder, ex)] if holder is not None else None
                detail = (
                    f"handed to worker {run.worker_pid}: it starts when that worker's running "
                    "task ends"
                )
                return entry(path, st, "queued", detail, None, blockers)
            if not asked:
                return None
            policy = run.node.retry or ex.default_retry
            where = f"worker {run.worker_pid}" if run.worker_pid else (run.lane or "a worker")
            detail = (
                f"running on {where} since {_clock(run.started_at)} "
                f"(attempt {run.attempt} of {policy.max_attempts})"
            )
            return entry(path, st, "running", detail)
        if st != "queued":
            if st == "running" and asked:
                return entry(path, st, "running", f"running since {_clock(run.started_at)}")
            if st == "running":
                return None
            return entry(path, st, "unknown", f"{st}: the supervisor holds no gate for it")
        if look.full:
            return entry(path, st, "queued", "")  # only counted (MAX_ENTRIES)
        gate = look.parked.get(id(run))
        if gate is not None:
            return self._paused(ex, self._gated(run, gate, now))
        lane = ex.ready_io if run.lane == "io" else ex.ready
        pos = look.position(lane, run)
        if pos is not None:
            return self._paused(ex, self._in_queue(run, lane, pos, now, look))
        if ex.status == "paused":
            return self._paused(ex, entry(path, st, "queued", "queued"))
        if run.frame.stopped():
            return entry(path, st, "not_reached", self._stopped_why(run.frame))
        return entry(path, st, "queued", "queued: the supervisor takes it at its next turn")

    def _gated(self, run: Run, gate: Any, now: float) -> Entry:
        path, st = run.path, run.status
        if isinstance(gate, Pool):
            holders = [_who(r, run.ex) for r in self.tasks.values() if r.held_pool is gate]
            detail = (
                f"pool '{gate.name}' is full: {gate.held} of {gate.size} held "
                f"(settings.concurrencyLimits)"
                + (f" by {', '.join(holders[:5])}" if holders else "")
            )
            return entry(path, st, "pool", detail, None, holders)
        if isinstance(gate, RateLimiter):
            wait = gate.wait_time(now)
            due = now + wait
            detail = (
                f"{self._limiter_label(run, gate)} ({gate.rate} per {_secs(gate.per)}): "
                f"next start at {_clock(due)} ({_in(due, now)})"
            )
            return entry(path, st, "rate_limit", detail, due, [self._limiter_label(run, gate)])
        return entry(path, st, "queued", "parked until a gate opens")

    def _limiter_label(self, run: Run, lim: RateLimiter) -> str:
        ls = run.frame.loop
        if ls is not None and ls.limiter is lim:
            return f"loop {ls.run.path} rateLimit"
        spec = run.node.rate_limit
        if isinstance(spec, str):
            return f"rate limiter '{spec}'"
        return f"node {run.node.id} rateLimit"

    def _in_queue(self, run: Run, ready: Any, pos: int, now: float, look: _Look) -> Entry:
        ex = run.ex
        path, st = run.path, run.status
        if at_capacity(ex):
            hkey = ("holders", id(ex))
            holders = look.memo.get(hkey)
            if holders is None:
                holders = look.memo[hkey] = [
                    r.path for r in self.tasks.values() if r.ex is ex and not r.prefetched
                ]
            detail = (
                f"settings.maxConcurrency {ex.max_concurrency}: {_count(len(holders), 'node')} "
                f"of this execution {'runs' if len(holders) == 1 else 'run'}: "
                f"{', '.join(holders[:5])}"
            )
            return entry(path, st, "max_concurrency", detail, None, holders)
        for lim in self._run_limiters(run):
            wait = lim.wait_time(now)
            if wait > 0 and ready[0] is run:
                due = now + wait
                label = self._limiter_label(run, lim)
                detail = f"next in its queue; {label} lets it start at {_clock(due)}"
                return entry(path, st, "rate_limit", detail, due, [label])
        pool = self._run_pool(run)
        if pool is not None and not pool.available() and ready[0] is run:
            holders = [_who(r, ex) for r in self.tasks.values() if r.held_pool is pool]
            detail = f"next in its queue; pool '{pool.name}' is full ({pool.held} of {pool.size})"
            return entry(path, st, "pool", detail, None, holders)
        io = run.lane == "io"
        key = ("ahead", id(ex), io)
        got = look.memo.get(key)
        if got is None:
            ahead_wf = 0
            execs = self.wf_execs.get(ex.wf_key) or []
            for other in sorted(execs, key=_exec_order):
                if other is ex:
                    break
                if other.status == "running":
                    ahead_wf += len(other.ready_io if io else other.ready)
            # Other workflows' queued tasks, summed once per answer.
            others = [
                sum(len(e.ready_io if io else e.ready) for e in self.wf_execs.get(k) or ())
                for k in self.rr
                if k != ex.wf_key
            ]
            got = look.memo[key] = (ahead_wf, others)
        ahead_wf, others = got
        turns = pos + ahead_wf + 1
        ahead_other = sum(min(n, turns) for n in others)
        ahead = pos + ahead_wf + ahead_other
        busy = list(look.on_worker.values())
        lane = "I/O lane" if io else "process lane"
        detail = (
            f"queued behind {_count(ahead, 'task')} ({lane}): position {pos + 1} of {len(ready)} in "
            f"its execution's queue"
        )
        if ahead_wf:
            detail += f", {ahead_wf} in earlier executions of its workflow"
        if ahead_other:
            detail += f", about {ahead_other} of other workflows (served in turn)"
        if not io:
            detail += f"; {len(busy)} of {self.n_workers} workers busy"
        return entry(path, st, "queued", detail, None, [_who(r, ex) for r in busy] or None)

    # --- loop items not opened yet -------------------------------------------------------

    def _unopened(
        self, ls: LoopState, loop_segs: Any, pattern: Pattern | None, now: float, look: _Look
    ) -> Iterator[Entry]:
        if ls.finished:
            return
        want: int | None = None
        if pattern is not None and len(pattern) >= len(loop_segs):
            want = pattern[len(loop_segs) - 1][1]
        path = ls.run.path
        if want is not None:
            if want < ls.n and not ls.started[want]:
                yield self._item_entry(ls, want, now, look)
            return
        first = ls.started.find(0, ls.next_index)
        if first < 0:
            first = ls.started.find(0)
        if first < 0:
            return
        listed = 0
        i = first
        while i >= 0 and listed < ITEMS_LISTED:
            yield self._item_entry(ls, i, now, look)
            listed += 1
            i = ls.started.find(0, i + 1)
        if i >= 0:
            rest = ls.n - i - ls.started[i:].count(1)
            e = self._item_entry(ls, i, now, look)
            e["path"] = f"{path}[{i}..{ls.n - 1}]"
            e["detail"] = f"{rest} more items wait the same way: " + e["detail"]
            e["count"] = rest
            yield e

    def _item_entry(self, ls: LoopState, i: int, now: float, look: _Look) -> Entry:
        """Why item ``i`` of a loop is not open: what ``_open_items`` stops at."""
        path = f"{ls.run.path}[{i}]"
        if look.full:
            return entry(path, "pending", "queued", "")  # only counted (MAX_ENTRIES)
        ex = ls.run.ex
        node = ls.node
        if ls.stopped or ls.run.frame.stopped():
            why = (
                self._stopped_why(ls.run.frame)
                if ls.run.frame.stopped()
                else (
                    f"the loop opens no more items: {_err_text(ls.first_error)}"
                    if ls.first_error
                    else "the loop opens no more items"
                )
            )
            return entry(path, "pending", "not_reached", why)
        open_items = [ls.open[k].item.path for k in sorted(ls.open) if ls.open[k].item is not None]  # type: ignore[union-attr]
        if window_full(ls):
            if not node.is_parallel:
                limit = "parallel: false, one item at a time"
            elif node.max_concurrency and node.max_concurrency <= ls.window:
                limit = f"maxConcurrency {node.max_concurrency}"
            else:
                limit = f"settings.queue.maxSize {ex.workflow.settings.queue.max_size}"
            detail = (
                f"{len(ls.open)} of {ls.window} items open ({limit}): "
                + ", ".join(open_items[:5])
                + (" …" if len(open_items) > 5 else "")
            )
            return self._paused(
                ex, entry(path, "pending", "max_concurrency", detail, None, open_items)
            )
        hold = batch_hold(ls, i)
        bs = ls.batch_size or 0
        if hold == BATCH_DELAY:
            due = look.batch_due.get(id(ls))
            detail = (
                f"the pause between batches (delayBetweenBatches {node.delay_between_batches} ms): "
                f"batch {i // bs if bs else 0} starts at {_clock(due)} ({_in(due, now)})"
            )
            return self._paused(ex, entry(path, "pending", "batch", detail, due))
        if hold == BATCH_RUNNING:
            detail = (
                f"in batch {i // bs if bs else 0} (batchSize {bs}): it starts when the open "
                f"items of the batch before it end: " + ", ".join(open_items[:5])
            )
            return self._paused(ex, entry(path, "pending", "batch", detail, None, open_items))
        if ls.limiter is not None and ls.gate_inline:
            wait = ls.limiter.wait_time(now)
            if wait > 0:
                due = now + wait
                detail = (
                    f"loop {ls.run.path} rateLimit ({ls.limiter.rate} per {_secs(ls.limiter.per)}): "
                    f"next item at {_clock(due)} ({_in(due, now)})"
                )
                return self._paused(ex, entry(path, "pending", "rate_limit", detail, due))
        if ex.status == "paused":
            return self._paused(ex, entry(path, "pending", "queued", "opens when there is room"))
        return entry(path, "pending", "queued", "opens at the supervisor's next turn")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
