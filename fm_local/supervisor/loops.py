"""Loops: section policies, rate limiters and pools per loop, opening items as
concurrency allows, an item's end and result, the loop's end, and item and total
timeouts."""

from __future__ import annotations

from typing import Any

from fm_local import errors
from fm_local.limits import RateLimiter, rate_spec
from fm_local.model import SectionPolicy
from fm_local.nodes import loop
from fm_local.nodes.kinds import runs_on_worker
from fm_local.nodes.loop import LoopNode
from fm_local.supervisor.state import (
    _UNSET,
    Exec,
    Frame,
    LoopState,
    Part,
    Run,
)


def window_full(ls: LoopState) -> bool:
    """The loop has as many items open as it may (its maxConcurrency, or the
    queue's maxSize): the next one waits for one of them to end."""
    return len(ls.open) >= ls.window


# What holds item ``i`` at a batch boundary (batch_hold).
BATCH_RUNNING = "batch"  # a later batch: the current one is still open
BATCH_DELAY = "batch_delay"  # the pause between two batches (a timer)
BATCH_NEXT = "next"  # the next batch may begin now


def batch_hold(ls: LoopState, i: int) -> str | None:
    """Whether item ``i`` waits for a batch (one of the names above), or None: it
    is in the current batch, or the loop has no batches."""
    if not ls.batch_size or i < ls.batch_end:
        return None
    if ls.batch_wait:
        return BATCH_DELAY
    if ls.open:
        return BATCH_RUNNING
    return BATCH_NEXT


class Loops(Part):
    def _section_policy(self, ex: Exec, own: SectionPolicy | None) -> SectionPolicy:
        """A loop's or merge's policy: its own keys over ``settings.parallel``."""
        base = ex.workflow.settings.parallel
        merged = base.model_dump()
        own_keys = own.model_fields_set if own is not None else set()
        if own is not None:
            merged.update(own.model_dump(include=own_keys))
            if "on_partial_failure" in own_keys and "fail_fast" not in own_keys:
                # A section that says its own mode does not inherit failFast.
                merged["fail_fast"] = None
        if merged.get("fail_fast") is None:
            # SPEC §6: failFast defaults to true only under "fail"; continue and
            # collect exist to run every item.
            merged["fail_fast"] = merged["on_partial_failure"] == "fail"
        return SectionPolicy.model_validate(merged)

    def _limiter(self, spec: Any, ex: Exec, key: Any) -> RateLimiter | None:
        """The rate limiter for a rateLimit value: named ones are shared by every
        node and execution naming them; inline ones belong to ``key``."""
        if spec is None:
            return None
        if isinstance(spec, str):
            named = ex.workflow.settings.rate_limits.get(spec)
            if named is None:
                return None
            lk: Any = ("named", spec)
            lim = self.limiters.get(lk)
            if lim is None or (lim.rate, lim.per) != (named.rate, named.per / 1000.0):
                lim = RateLimiter(named.rate, named.per, spec)
                self.limiters[lk] = lim
            return lim
        rp = rate_spec(spec)
        assert rp is not None
        lim = self.limiters.get(key)
        if lim is None:
            lim = RateLimiter(rp[0], rp[1], str(key))
            self.limiters[key] = lim
        return lim

    def _loop_state(self, run: Run) -> LoopState | None:
        """Evaluate a loop's items and build its state; fails the run on error."""
        node = run.node
        assert isinstance(node, LoopNode)
        try:
            items, n = loop.items_of(node, self._scope(run))
        except Exception as exc:  # noqa: BLE001 - fails this node only (_inline_failed)
            self._inline_failed(run, exc, "items")
            return None
        body = self._body(node)
        ls = LoopState(run, node, body, items, n)
        if run.items != n:
            run.items = n  # the total is known from the start: progress is done / items
            self._mark(run)
        ex = run.ex
        ls.policy = self._section_policy(ex, node.section_policy)
        if node.is_parallel:
            ls.window = min(node.max_concurrency or n or 1, ex.workflow.settings.queue.max_size)
        ls.window = max(1, ls.window)
        ls.limiter = self._limiter(node.rate_limit, ex, ("loop", ex.id, run.path))
        ls.gate_inline = not any(runs_on_worker(body.nodes[r]) for r in body.roots)
        run.loop = ls
        return ls

    def _start_loop(self, run: Run) -> None:
        run.seq += 1
        run.attempt += 1
        run.started_at = self.clock.time()
        if not run.frame.started:
            self._item_started(run.frame, run.started_at)
        if run.frame.graph.sections:
            self._section_started(run, run.started_at)
        run.status = "running"
        self._mark(run)
        self._attempt_row(run, "running", None)
        ls = self._loop_state(run)
        if ls is None:
            return
        if run.ex.retry_of is not None and not self._reuse_items(ls):
            return
        self._schedule_loop_timers(ls)
        self.loops_to_open.append(ls)

    def _reuse_items(self, ls: LoopState) -> bool:
        """A retry's loop starting: the items whose results it reuses count as done,
        and those reused in part open from their rows (docs/retry.md). The items
        are matched by index, so the loop must count as many as it did then; if
        not, it fails (False) rather than mix items."""
        assert self.store is not None
        run = ls.run
        ex = run.ex
        done, inside = self.store.reused_items(ex.id, run.path)
        if not done and not inside:
            return True
        then = ex.retry_loops.get(run.path)
        if then is not None and then != ls.n:
            self._inline_failed(
                run,
                errors.NodeError(
                    f"loop '{run.path}' has {ls.n} items, and {then} in execution "
                    f"{ex.retry_of}, whose item results this retry reuses by index: "
                    "they cannot be matched; run the workflow afresh (fm run)",
                    errors.VALIDATION_ERROR,
                ),
                "items",
            )
            return False
        for idx, status in done:
            if idx >= ls.n:
                continue
            ls.started[idx] = 1
            if status == "succeeded":
                ls.succeeded += 1
            elif status == "failed":
                ls.failed += 1
            else:
                ls.cancelled += 1
        ls.partial = inside or None
        return True

    def _schedule_loop_timers(self, ls: LoopState) -> None:
        total = ls.policy.total_timeout
        if total and ls.run.started_at:
            self._timer(ls.run.started_at + total / 1000.0, "total_timeout", ls)

    def _new_item_frame(
        self, ls: LoopState, i: int, *, restoring: bool = False, started_at: float | None = None
    ) -> Frame:
        """Open item ``i`` (``restoring``: an item the database says is open)."""
        run = ls.run
        node = ls.node
        item = ls.items[i] if ls.items is not None else i
        bs = node.batch_size
        info = {"index": i, "total": ls.n, "batchId": i // bs if bs else 0}
        variables = {
            node.item_variable: item,
            node.index_variable: i,
            "parallel": info,
            "loop": {
                "item": item,
                "index": i,
                "length": ls.n,
                "isFirst": i == 0,
                "isLast": i == ls.n - 1,
            },
        }
        f = Frame(
            run.ex,
            ls.body,
            f"{run.path}[{i}].",
            run.frame,
            f"{run.trace_id}-{i + 1:03d}",
            variables,
        )
        f.loop = ls
        f.index = i
        item = Run(run.ex, f, node, f"{run.path}[{i}]")
        item.ntype = "item"
        item.item_index = i
        item.attempt = 1
        item.trace_id = f.trace_root
        item.branch = None
        item.status = "running"
        item.queued_at = self.clock.time()
        f.item = item
        # A restored item's re-run is a start too: it goes through the limiter.
        f.gated = ls.limiter is not None and not ls.gate_inline
        # An item's row may wait (Commit.flush); not under a rate limit, whose
        # memory across a restart is its items' start times.
        item.written = restoring
        item.deferrable = self.defer_writes and ls.limiter is None and not restoring
        ls.open[i] = f
        ls.started[i] = 1
        self._mark(item)
        if restoring and started_at is not None:
            self._item_started(f, started_at)
        return f

    def _item_started(self, f: Frame, now: float) -> None:
        """The first node of an item (or of an item it is inside) started: the
        item's clock starts now, and with it the loop's per-item timeout."""
        while f is not None and not f.started:
            f.started = True
            item = f.item
            ls = f.loop
            if item is not None and ls is not None:
                item.started_at = now
                self._mark(item)
                if ls.node.timeout:
                    self._timer(now + ls.node.timeout / 1000.0, "item_timeout", f)
            f = f.parent  # type: ignore[assignment]

    def _open_items(self, ls: LoopState) -> None:
        """Open as many items as the window, batches and rate allow."""
        run = ls.run
        if ls.finished or run.terminal:
            return
        if ls.stopped or run.frame.stopped():
            self._loop_check(ls)
            return
        if run.ex.status == "paused":
            run.ex.deferred_loops.append(ls)
            return
        now = self.clock.time()
        while not window_full(ls) and ls.next_index < ls.n:
            i = ls.next_index
            if ls.started[i]:
                ls.next_index += 1
                continue
            hold = batch_hold(ls, i)
            if hold is not None:
                if hold != BATCH_NEXT:
                    return
                delay_ms = ls.node.delay_between_batches
                if delay_ms:
                    ls.batch_wait = True
                    self._timer(now + delay_ms / 1000.0, "batch", ls)
                    return
                ls.batch_end = min(ls.n, ls.batch_end + (ls.batch_size or ls.n))
            if ls.limiter is not None and ls.gate_inline:
                wait = ls.limiter.wait_time(now)
                if wait > 0:
                    self._wake(ls.limiter, now + wait)
                    self._park_loop(ls)
                    return
                ls.limiter.acquire(now)
            ls.next_index = i + 1
            f = self._new_item_frame(ls, i)
            if ls.partial is not None and i in ls.partial:
                self._restore_frame(f)  # a retry's item with results reused inside
                continue
            self._advance_frame(f)
            self.frames_to_check.append(f)
        self._loop_check(ls)

    def _park_loop(self, ls: LoopState) -> None:
        assert ls.limiter is not None
        self.parked_loops.setdefault(id(ls.limiter), set()).add(ls)

    def _item_done(self, f: Frame) -> None:
        ls = f.loop
        item = f.item
        assert ls is not None and item is not None and f.index is not None
        ls.open.pop(f.index, None)
        now = self.clock.time()
        item.finished_at = now
        if item.status == "running":
            if f.failure is not None:
                item.status = "failed"
                item.error = f.failure
            elif f.stopped() or f.resolved < len(f.graph.nodes):
                # Stopped from above too (the execution cancelled, a fail-fast of an
                # enclosing frame): its body was cut short, whatever ended it.
                item.status = "cancelled"
                item.error = item.error or {
                    "code": errors.CANCELLED,
                    "message": "stopped before it finished",
                    "nodePath": item.path,
                }
            else:
                item.status = "succeeded"
                sinks = f.graph.sinks
                sink = f.runs.get(sinks[0]) if len(sinks) == 1 else None
                if sink is not None and sink.status == "succeeded" and sink.ntype != "loop":
                    # A one-sink body's output is the item's: its compact JSON text as
                    # it is (an inner loop's assembled text is not always compact).
                    item.share_output(sink)
                else:
                    item.set_output(self._item_result(f))
        if item.status == "succeeded":
            ls.succeeded += 1
        elif item.status == "failed":
            ls.failed += 1
            err = item.error or {}
            if ls.first_error is None:
                ls.first_error = err
            if ls.policy.collect_errors and len(ls.errors) < 1000:
                ls.errors.append(
                    {
                        "index": f.index,
                        "code": err.get("code"),
                        "message": err.get("message"),
                        "attempt": err.get("attempt"),
                    }
                )
            if ls.policy.fail_fast:
                ls.stopped = True
                if ls.policy.cancel_on_failure:
                    for other in list(ls.open.values()):
                        self._stop_frame(other, "cancelled", "cancelled: another item failed")
        else:
            ls.cancelled += 1
        self._mark(item)
        # No reference cycle is left between the item's frame and its runs (the
        # frame's runs, its item): once written, they are freed at once, without
        # waiting for the garbage collector (a long loop's memory stays flat).
        f.runs.clear()
        f.item = None
        self.loops_to_open.append(ls)

    def _item_result(self, f: Frame) -> Any:
        sinks = f.graph.sinks
        if len(sinks) == 1:
            r = f.runs.get(sinks[0])
            return r.value() if r is not None and r.status == "succeeded" else None
        out: dict[str, Any] = {}
        for sid in sinks:
            r = f.runs.get(sid)
            if r is not None and r.status == "succeeded":
                out[sid] = r.value()
        return out

    def _loop_check(self, ls: LoopState) -> None:
        if ls.finished or ls.open or ls.batch_wait:
            return
        if not ls.stopped and not ls.run.frame.stopped() and ls.next_index < ls.n:
            if any(not ls.started[i] for i in range(ls.next_index, ls.n)):
                return
        self._finish_loop(ls)

    def _finish_loop(self, ls: LoopState) -> None:
        ls.finished = True
        run = ls.run
        if run.terminal:
            return
        if run.frame.stopped() and not ls.timed_out and not all(ls.started):
            self._cancel_run(run, "stopped before all its items ran")
            return
        self.flush()  # the item records are what the output is assembled from
        assert self.store is not None
        text, ok, err = loop.assemble(
            self.store.loop_results(run.ex.id, run.path),
            ls.n,
            ls.policy,
            succeeded=ls.succeeded,
            failed=ls.failed,
            timed_out=ls.timed_out,
            errors_list=ls.errors,
            first_error=ls.first_error,
            loop_path=run.path,
            not_started=ls.n - ls.started.count(1),
        )
        run.finished_at = self.clock.time()
        if ok:
            run._value = _UNSET
            run.output_json = text
            run.error = None
            self._attempt_row(run, "succeeded", None)
            self._succeeded(run)
        else:
            assert err is not None
            error = self._error(run, err["code"], err["message"], err.get("details"))
            self._attempt_row(run, "failed", error)
            run.frame.active -= 1
            self._final_failure(run, error)

    def _stop_frame(self, f: Frame, status: str, reason: str) -> None:
        """Stop everything in ``f`` now, running workers included."""
        f.halted = True
        self._kill_tasks(lambda r: r.frame.within(f), status, reason)
        self._cancel_pending(f.ex, lambda r: r.frame.within(f), reason, status)
        self._recheck_up(f)

    def _item_timed_out(self, f: Frame) -> None:
        ls = f.loop
        item = f.item
        if f.done or ls is None or item is None or item.terminal:
            return
        node = ls.node
        err = {
            "code": errors.TIMEOUT,
            "message": f"item {f.index} timed out after {node.timeout} ms",
            "nodePath": item.path,
            "nodeId": node.id,
            "attempt": 1,
        }
        item.error = err
        if node.on_timeout == "cancel":
            item.status = "cancelled"
        elif node.on_timeout == "continue":
            item.status = "succeeded"
            err["timedOut"] = True
            item.set_output(node.output_on_error)
        else:
            item.status = "failed"
            f.failure = err
        self._stop_frame(f, "cancelled", f"cancelled: item {f.index} timed out")

    def _total_timeout(self, ls: LoopState) -> None:
        if ls.finished or ls.run.terminal:
            return
        ls.timed_out = True
        ls.stopped = True
        for f in list(ls.open.values()):
            item = f.item
            if item is not None and not item.terminal:
                item.status = "cancelled"
                item.error = {
                    "code": errors.TOTAL_TIMEOUT,
                    "message": "the loop's totalTimeout passed first",
                    "nodePath": item.path,
                }
            self._stop_frame(f, "cancelled", "cancelled: the loop's totalTimeout passed")
        self._loop_check(ls)
