"""Advancing a frame: readiness of a node, the ready queues, nodes evaluated in
the supervisor (transform, condition, switch, merge, output, delay), success, and
the end of a frame and of an execution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fm_local import errors, expr, graph, jsonio
from fm_local.nodes import delay, merge
from fm_local.nodes.delay import DelayNode
from fm_local.nodes.kinds import Runs, kind_of
from fm_local.nodes.output import OutputNode
from fm_local.supervisor.scope import Scope
from fm_local.supervisor.state import (
    Exec,
    Frame,
    Part,
    Run,
    _internal,
    _priority,
    log,
)


class Advance(Part):
    def _advance_frame(self, frame: Frame) -> None:
        """Queue every node of ``frame`` that has no run yet for consideration."""
        for nid in frame.graph.order:
            if nid not in frame.runs:
                self.work.append((frame, nid))

    def _consider(self, frame: Frame, nid: str) -> None:
        """Start or skip ``nid`` if all its dependencies are finished."""
        if nid in frame.runs or frame.done or frame.stopped():
            return
        if frame.ex.status == "paused":
            frame.ex.deferred_work.append((frame, nid))
            return
        runs = frame.runs
        g = frame.graph
        deps = g.deps[nid]
        node = g.nodes[nid]
        verdict: str | None = "run"
        if nid in g.sections and kind_of(node).runs is Runs.MERGE:
            verdict = self._merge_readiness(frame, nid)
            if verdict is None:
                return
        elif deps:
            verdict = graph.readiness(deps, runs, g.has_edges[nid])
            if verdict is None:
                return
        if verdict == "run" and frame.sections and self._in_halted_section(frame, nid):
            verdict = "skip"
        ex = frame.ex
        run = Run(ex, frame, node, frame.prefix + nid)
        runs[nid] = run
        now = self.clock.time()
        if verdict == "skip":
            run.status = "skipped"
            run.finished_at = now
            self._mark(run)
            self._resolved(run)
            return
        run.queued_at = now
        frame.active += 1
        self._start_run(run)

    def _start_run(self, run: Run) -> None:
        """Hand a run just made to where its node's type runs (fm_local.nodes.kinds):
        a worker's queue, the loop machinery, or the supervisor itself."""
        runs = kind_of(run.node).runs
        if runs is Runs.WORKER:
            # Its first row may wait (Commit.flush) unless a rate limit's memory
            # across a restart is read from its start (Recovery._seed_limiter).
            run.deferrable = (
                self.defer_writes and run.node.rate_limit is None and not run.frame.gated
            )
            run.status = "queued"
            self._mark(run)
            self._enqueue(run)
        elif runs is Runs.LOOP:
            self._start_loop(run)
        else:
            self._run_inline(run)

    def _enqueue(self, run: Run, front: bool = False) -> None:
        """Put ``run`` in its execution's ready queue, in queue-policy order."""
        ex = run.ex
        run.ready_at = self.clock.time()
        if not ex.queued:
            self._list_ready(ex)
        run.lane = self._lane_of(run)
        if run.lane == "io":
            ready = ex.ready_io
            self.ready_io_count += 1
        else:
            ready = ex.ready
        policy = ex.policy
        if front or policy == "lifo":
            ready.appendleft(run)
        elif policy == "priority" and ready:
            p = _priority(run)
            if _priority(ready[-1]) >= p:
                ready.append(run)
            else:
                i = 0
                while _priority(ready[i]) >= p:
                    i += 1
                ready.insert(i, run)
        else:
            ready.append(run)
        self.ready_count += 1

    def _list_ready(self, ex: Exec) -> None:
        ex.queued = True
        execs = self.wf_execs.get(ex.wf_key)
        if execs is None:
            execs = self.wf_execs[ex.wf_key] = []
        execs.append(ex)
        if len(execs) == 1:
            self.rr.append(ex.wf_key)

    def _unlist_ready(self, ex: Exec) -> None:
        if not ex.queued:
            return
        ex.queued = False
        execs = self.wf_execs.get(ex.wf_key)
        if execs is not None and ex in execs:
            execs.remove(ex)
            if not execs:
                del self.wf_execs[ex.wf_key]
                if ex.wf_key in self.rr:
                    self.rr.remove(ex.wf_key)

    def _scope(self, run: Run, extra: dict[str, Any] | None = None) -> Scope:
        b = run.branch
        if b is not None and b.id is not None:
            extra = dict(extra or {})
            extra.setdefault("branch", b.scope())
        if run.extra:
            extra = {**(extra or {}), **run.extra}
        frame = run.frame
        for d in frame.graph.deps.get(run.node.id, ()):
            if d.handle == graph.ERROR_HANDLE:
                src = frame.runs.get(d.source)
                if src is not None and src.status == "failed":
                    extra = {**(extra or {}), "error": src.error}
        return Scope(frame, extra)

    def _log_line(self, run: Run) -> Callable[[str], None]:
        def write(line: str) -> None:
            line = jsonio.clean_text(str(line))[:4000]
            self.batch.logs.append((run.ex.id, run.path, run.seq, self.clock.time(), "log", line))

        return write

    def _run_inline(self, run: Run) -> None:
        """Evaluate a supervisor-side node now (expressions, merges, timers)."""
        node = run.node
        run.seq += 1
        run.attempt += 1
        now = self.clock.time()
        run.started_at = now
        if not run.frame.started:
            self._item_started(run.frame, now)
        if run.frame.graph.sections:
            self._section_started(run, now)
        kind = kind_of(node)
        if kind.runs is Runs.WAIT:
            self._start_wait(run)
            return
        if kind.runs is Runs.DELAY:
            assert isinstance(node, DelayNode)
            try:
                ms = delay.duration_ms(node, self._scope(run))
            except (errors.NodeError, expr.ExpressionError) as exc:
                self._inline_failed(run, exc)
                return
            run.status = "running"
            run.next_attempt_at = now + ms / 1000.0
            self._mark(run)
            self._attempt_row(run, "running", None)
            self._timer(run.next_attempt_at, "delay", run)
            return
        try:
            value: Any
            port: str | None
            scope = self._scope(run)
            logger = self._log_line(run)
            if kind.evaluate is not None:
                value, port = kind.evaluate(node, scope, logger)
            elif kind.runs is Runs.MERGE:
                if node.id in run.frame.graph.sections and run.aux_kind is None:
                    value, port = self._merge_value(run)
                else:
                    value, port = merge.automatic(self._predecessor_outputs(run))
            else:
                raise errors.NodeError(
                    f"node type '{run.ntype}' is not supported by this version of fm_local",
                    errors.VALIDATION_ERROR,
                )
            text = jsonio.bounded_dumps(value)
        except Exception as exc:  # noqa: BLE001 - fails this node only (_inline_failed)
            self._inline_failed(run, exc)
            return
        run.port = port
        run.set_output(value, text)
        run.finished_at = self.clock.time()
        self._attempt_row(run, "succeeded", None)
        if kind.runs is Runs.MERGE and node.id in run.frame.graph.sections:
            self._merge_done(run)
        self._succeeded(run)

    def _inline_failed(self, run: Run, exc: Exception, making: str = "output") -> None:
        """A supervisor-side step of ``run`` failed (its evaluation, its output, or
        its task input when ``making`` is "input"): the node fails with a code that
        says which; an unexpected exception is INTERNAL_ERROR, logged once."""
        if isinstance(exc, errors.StorageError):
            raise exc
        if isinstance(exc, expr.ExpressionError):
            src = getattr(exc, "expression", None)
            msg = f"expression {src!r} failed: {exc}" if src else f"expression failed: {exc}"
            err = self._error(run, errors.EXPRESSION_ERROR, msg)
        elif isinstance(exc, errors.NodeError):
            err = self._error(run, exc.code, str(exc), exc.details)
        elif isinstance(exc, jsonio.ValueTooLarge):
            code = errors.INPUT_TOO_LARGE if making == "input" else errors.OUTPUT_TOO_LARGE
            err = self._error(
                run,
                code,
                f"node '{run.path}': its {making} is {exc} (FM_MAX_OUTPUT_BYTES); "
                "pass smaller values, e.g. a file path instead of the data",
            )
        elif isinstance(exc, (jsonio.ValueTooDeep, RecursionError)):
            code = errors.INPUT_TOO_DEEP if making == "input" else errors.OUTPUT_NOT_SERIALIZABLE
            err = self._error(
                run,
                code,
                f"node '{run.path}': its {making} is nested deeper than {jsonio.MAX_DEPTH} levels",
            )
        elif isinstance(exc, (ValueError, TypeError)) and making == "output":
            err = self._error(run, errors.OUTPUT_NOT_SERIALIZABLE, f"value is not JSON: {exc}")
        else:
            log.error("execution %s: internal error at node %s", run.ex.id, run.path, exc_info=exc)
            err = _internal(exc, f"making the {making} of node '{run.path}'")
            err = self._error(run, err["code"], err["message"])
        run.finished_at = self.clock.time()
        self._attempt_row(run, "failed", err)
        self._attempt_failed(run, err)

    def _predecessor_outputs(self, run: Run) -> dict[str, Any]:
        frame = run.frame
        out: dict[str, Any] = {}
        for d in frame.graph.deps[run.node.id]:
            if d.is_ref:
                continue
            r = frame.runs.get(d.source)
            if r is not None and r.status == "succeeded" and graph.dep_taken(d, r.status, r.port):
                out[d.source] = r.value()
        return out

    def _error(self, run: Run, code: str, message: str, details: Any = None) -> dict[str, Any]:
        return {
            "code": code,
            "message": message,
            "nodeId": run.node.id,
            "nodePath": run.path,
            "attempt": run.attempt,
            "timestamp": int(self.clock.time() * 1000),
            "details": details,
        }

    def _succeeded(self, run: Run) -> None:
        run.status = "succeeded"
        if run.finished_at is None:
            run.finished_at = self.clock.time()
        run.frame.active -= 1
        self._mark(run)
        self._resolved(run)

    def _check_frame(self, frame: Frame) -> None:
        if frame.done or frame.active > 0:
            return
        if not frame.stopped() and frame.resolved < len(frame.graph.nodes):
            return
        frame.done = True
        if frame.loop is None:
            self._finish_top(frame.ex)
        else:
            self._item_done(frame)

    def _finish_top(self, ex: Exec) -> None:
        if ex.status != "running":
            return
        top = ex.top
        if ex.cancel_error is not None:
            self._finish_execution(ex, "cancelled", None, ex.cancel_error)
        elif top.failure is not None:
            self._finish_execution(ex, "failed", None, top.failure)
        else:
            out = self._execution_output(ex)
            try:
                jsonio.json_size(out, jsonio.MAX_OUTPUT_BYTES)
            except (jsonio.ValueTooLarge, jsonio.ValueTooDeep) as exc:
                err = {
                    "code": errors.OUTPUT_TOO_LARGE,
                    "message": f"the execution's output is {exc} (FM_MAX_OUTPUT_BYTES)",
                }
                self._finish_execution(ex, "failed", None, err)
                return
            self._finish_execution(ex, "succeeded", out, None)

    def _execution_output(self, ex: Exec) -> Any:
        top = ex.top
        outs = [n for n in top.graph.nodes.values() if isinstance(n, OutputNode)]
        result: dict[str, Any] = {}
        if outs:
            for n in outs:
                r = top.runs.get(n.id)
                if r is not None and r.status == "succeeded":
                    result[n.key] = r.value()
            return result
        for sid in top.graph.sinks:
            r = top.runs.get(sid)
            if r is not None and r.status == "succeeded":
                result[sid] = r.value()
        return result

    def _finish_execution(
        self, ex: Exec, status: str, out: Any, error: dict[str, Any] | None
    ) -> None:
        ex.status = status
        ex.output = out
        ex.error = error
        ex.finished_at = self.clock.time()
        self._mark_exec(ex)
        self._event(ex, None, status, error)
        # The result becomes observable only once committed.
        self.flush()
        self.finished.add(ex.id)
        if self.wake is not None:
            self.wake.ended(ex.id)
        if self.on_finished is not None:
            self.on_finished(ex.id)
        self.execs.pop(ex.id, None)
        self._unlist_ready(ex)
        self.ready_count -= len(ex.ready) + len(ex.ready_io)
        self.ready_io_count -= len(ex.ready_io)
        ex.ready.clear()
        ex.ready_io.clear()
