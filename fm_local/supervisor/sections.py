"""Merges: the sections before a merge, first success, section and branch
timeouts, the merge's value, and fallback/goto auxiliary nodes."""

from __future__ import annotations

from typing import Any

from fm_local import errors, graph
from fm_local.model import NodeBase
from fm_local.nodes.kinds import Runs, kind_of
from fm_local.nodes.merge import MergeNode
from fm_local.store import dumps
from fm_local.supervisor.state import (
    Frame,
    Part,
    Run,
    SectionState,
    _error_list,
)


class Sections(Part):
    def _section_state(self, frame: Frame, mid: str) -> SectionState:
        st = frame.sections.get(mid)
        if st is None:
            node = frame.graph.nodes[mid]
            assert isinstance(node, MergeNode)
            policy = self._section_policy(frame.ex, node.policy)
            st = SectionState(frame.graph.sections[mid], node, policy)
            frame.sections[mid] = st
        return st

    def _in_halted_section(self, frame: Frame, nid: str) -> bool:
        return any(st.halted and nid in st.sec.members for st in frame.sections.values())

    def _merge_readiness(self, frame: Frame, nid: str) -> str | None:
        """When a merge runs: ``first_success`` as soon as a branch succeeded;
        otherwise when every branch finished — also if some failed, so that its
        policy decides (a merge whose branches were all skipped is skipped)."""
        st = self._section_state(frame, nid)
        runs = frame.runs
        deps = [d for d in frame.graph.deps[nid] if not d.is_ref]
        if st.node.mode == "first_success":
            for d in deps:
                r = runs.get(d.source)
                if r is not None and r.terminal and graph.dep_taken(d, r.status, r.port):
                    return "run"
            if any(p in st.overrides for p in st.sec.branches):
                return "run"
        taken = False
        for d in frame.graph.deps[nid]:
            r = runs.get(d.source)
            if r is None or not r.terminal:
                return None
            if not d.is_ref and graph.dep_taken(d, r.status, r.port):
                taken = True
        if taken or st.failures or st.overrides or st.timed_out:
            return "run"
        if any(runs[d.source].status == "failed" for d in deps):
            return "run"
        return "skip"

    def _section_started(self, run: Run, now: float) -> None:
        frame = run.frame
        nid = run.node.id
        for mid, sec in frame.graph.sections.items():
            if nid not in sec.members:
                continue
            st = self._section_state(frame, mid)
            if st.first_start is None:
                st.first_start = now
                if st.policy.total_timeout:
                    due = now + st.policy.total_timeout / 1000.0
                    self._timer(due, "section_timeout", (frame, mid))
            if st.node.timeout:
                for p, members in sec.branches.items():
                    if nid in members and p not in st.branch_start:
                        st.branch_start[p] = now
                        due = now + st.node.timeout / 1000.0
                        self._timer(due, "branch_timeout", (frame, mid, p))

    def _section_failure(
        self, frame: Frame, st: SectionState, nid: str, err: dict[str, Any]
    ) -> None:
        for p, members in st.sec.branches.items():
            if nid in members:
                st.failures.setdefault(p, err)
        if st.node.mode != "first_success" and st.policy.fail_fast:
            st.halted = True
            if st.policy.cancel_on_failure:
                self._stop_section(frame, st, st.sec.members, "cancelled: another branch failed")

    def _top_node(self, frame: Frame, run: Run) -> str | None:
        """The id, in ``frame``, of the node ``run`` is (or is inside of)."""
        f = run.frame
        nid = run.node.id
        while f is not frame:
            if f.loop is None:
                return None
            nid = f.loop.run.node.id
            f = f.loop.run.frame
        return None if run.aux_kind is not None else nid

    def _stop_section(
        self, frame: Frame, st: SectionState, targets: frozenset[str] | set[str], reason: str
    ) -> None:
        """Stop the section nodes ``targets`` now: running workers too."""

        def hit(r: Run) -> bool:
            return r.frame.within(frame) and self._top_node(frame, r) in targets

        self._kill_tasks(hit, "cancelled", reason)
        self._cancel_pending(frame.ex, hit, reason)
        for nid in targets:
            lr = frame.runs.get(nid)
            if lr is not None and lr.loop is not None and not lr.terminal:
                lr.loop.stopped = True
                for f in list(lr.loop.open.values()):
                    self._stop_frame(f, "cancelled", reason)
                self._cancel_run(lr, reason)

    def _section_timeout(self, frame: Frame, mid: str) -> None:
        st = frame.sections.get(mid)
        merge_run = frame.runs.get(mid)
        if st is None or st.done or (merge_run is not None and merge_run.terminal):
            return
        st.timed_out = True
        st.halted = True
        self._stop_section(
            frame, st, st.sec.members, "cancelled: the section's totalTimeout passed"
        )
        self.work.append((frame, mid))

    def _branch_timeout(self, frame: Frame, mid: str, branch: str) -> None:
        st = frame.sections.get(mid)
        r = frame.runs.get(branch)
        if st is None or st.done or (r is not None and r.terminal):
            return
        node = st.node
        if node.on_timeout == "cancel":
            st.absent.add(branch)
        elif node.on_timeout == "continue":
            st.overrides[branch] = node.output_on_error
        else:
            st.failures[branch] = {
                "code": errors.TIMEOUT,
                "message": f"branch '{branch}' timed out after {node.timeout} ms",
                "nodeId": branch,
                "nodePath": frame.path_of(branch),
                "attempt": 1,
                "timestamp": int(self.clock.time() * 1000),
                "details": None,
            }
        members = st.sec.branches[branch]
        self._stop_section(frame, st, members, f"cancelled: branch '{branch}' timed out")
        self.work.append((frame, mid))

    def _merge_value(self, run: Run) -> tuple[Any, str | None]:
        """The merge's output by mode and policy (SPEC §5, §6); raises NodeError."""
        frame = run.frame
        node = run.node
        assert isinstance(node, MergeNode)
        st = self._section_state(frame, node.id)
        policy = st.policy
        oks: dict[str, Any] = {}
        fails: dict[str, dict[str, Any]] = {}
        finished: dict[str, float] = {}
        for d in frame.graph.deps[node.id]:
            p = d.source
            if d.is_ref or p in oks or p in fails:
                continue
            r = frame.runs.get(p)
            if p in st.overrides:
                oks[p] = st.overrides[p]
                finished[p] = self.clock.time()
            elif p in st.absent:
                continue
            elif r is not None and r.status == "succeeded" and graph.dep_taken(d, r.status, r.port):
                oks[p] = r.value()
                finished[p] = r.finished_at or self.clock.time()
            elif p in st.failures:
                fails[p] = st.failures[p]
            elif r is not None and r.status == "failed":
                fails[p] = r.error or {"code": errors.NODE_ERROR, "message": "failed"}
            elif st.timed_out:
                fails[p] = {
                    "code": errors.TOTAL_TIMEOUT,
                    "message": "the section's totalTimeout passed first",
                }
            elif st.halted and r is not None and r.status in ("skipped", "cancelled"):
                fails[p] = r.error or {
                    "code": errors.CANCELLED,
                    "message": "not run: failFast stopped the section after a failure",
                    "nodeId": p,
                    "nodePath": frame.path_of(p),
                }
        name = run.path
        if node.mode == "first_success":
            if oks:
                winner = min(oks, key=lambda k: finished[k])
                self._log_line(run)(f"winner: branch '{winner}'")
                return oks[winner], winner
            first = next(iter(fails.values()), {})
            raise errors.NodeError(
                f"all {len(fails)} branches of merge '{name}' failed; first: "
                f"{first.get('nodePath', '?')}: {first.get('message')}",
                first.get("code") or errors.NODE_ERROR,
                {"errors": _error_list(fails)},
            )
        total = len(oks) + len(fails)
        if st.timed_out and policy.on_timeout == "fail":
            raise errors.NodeError(
                f"the section of merge '{name}' passed its totalTimeout ({policy.total_timeout} ms)",
                errors.TOTAL_TIMEOUT,
            )
        collect = policy.on_partial_failure == "collect" or st.timed_out
        if policy.on_partial_failure == "fail" and fails and not st.timed_out:
            first = next(iter(fails.values()))
            details: dict[str, Any] = {"failedCount": len(fails), "total": total}
            if policy.collect_errors:
                details["errors"] = _error_list(fails)
            raise errors.NodeError(
                f"{len(fails)} of {total} branches of merge '{name}' failed; first: "
                f"{first.get('nodePath', '?')}: {first.get('message')}",
                first.get("code") or errors.NODE_ERROR,
                details,
            )
        rate = policy.min_success_rate
        if rate is not None and total and len(oks) / total < rate:
            raise errors.NodeError(
                f"only {len(oks)} of {total} branches of merge '{name}' succeeded "
                f"({len(oks) / total:.0%}); minSuccessRate is {rate:.0%}",
                "PARTIAL_FAILURE",
                {"successCount": len(oks), "failureCount": len(fails)},
            )
        if collect:
            results: dict[str, Any] = {}
            for d in frame.graph.deps[node.id]:
                p = d.source
                if p in oks:
                    results[p] = {"success": True, "data": oks[p]}
                elif p in fails:
                    results[p] = {"success": False, "error": fails[p]}
            out: dict[str, Any] = {
                "results": results,
                "successCount": len(oks),
                "failureCount": len(fails),
            }
            if st.timed_out:
                out["timedOut"] = True
            if policy.collect_errors:
                out["errors"] = _error_list(fails)
            return out, None
        value: dict[str, Any] = dict(oks)
        if policy.collect_errors and fails:
            value["errors"] = _error_list(fails)
        return value, None

    def _merge_done(self, run: Run) -> None:
        frame = run.frame
        st = self._section_state(frame, run.node.id)
        st.done = True
        if st.node.mode == "first_success" and run.port is not None:
            # The others lost the race: stop them now.
            losers = st.sec.members - st.sec.branches.get(run.port, frozenset())
            st.halted = True
            for p in st.sec.branches:
                if p != run.port:
                    st.absent.add(p)
            self._stop_section(frame, st, losers, "cancelled: another branch succeeded first")

    def _aux_node(self, frame: Frame, nid: str) -> NodeBase | None:
        node = frame.graph.nodes.get(nid)
        if node is not None:
            return node
        for h in frame.ex.workflow.handlers:
            if h.id == nid:
                return h
        return None

    def _start_aux(
        self,
        parent: Run | None,
        node: NodeBase,
        extra: dict[str, Any],
        kind: str,
        frame: Frame | None = None,
        path: str | None = None,
    ) -> Run:
        """Run a node outside the graph: a fallback or goto target (``error`` in
        scope), a compensation, or a signal handler (``signal`` in scope)."""
        if frame is None:
            assert parent is not None
            frame = parent.frame
        aux = Run(frame.ex, frame, node, path or f"{parent.path if parent else ''}->{node.id}")
        aux.parent = parent
        aux.aux_kind = kind
        aux.extra = extra
        if parent is not None:
            aux.trace_id = parent.trace_id
            aux.branch = parent.branch
        aux.queued_at = self.clock.time()
        frame.active += 1
        if kind_of(node).runs is Runs.LOOP:
            aux.status = "queued"
            self._inline_failed(
                aux,
                errors.NodeError(
                    "a loop cannot be a fallback or goto target", errors.VALIDATION_ERROR
                ),
            )
        else:
            self._start_run(aux)
        return aux

    def _aux_done(self, aux: Run) -> None:
        kind = aux.aux_kind
        ex = aux.ex
        if kind == "handler":
            sig = (aux.extra or {}).get("signal") or {}
            typ, sid = str(sig.get("type")), sig.get("id")
            ok = aux.status == "succeeded"
            value = aux.value() if ok else None
            entry = ex.signal_scope.get(typ)
            if entry is not None and ex.signal_latest.get(typ) == sid:
                entry["result"] = value  # only the newest signal of a type shows
            if sid is not None:
                self.signals_in_progress.discard(sid)
                outcome = f"handler '{aux.node.id}' {aux.status}"
                self._event(ex, None, f"signal:{typ}", {"signal": sid, "outcome": [outcome]})
                result = value if ok else {"error": aux.error}
                self.batch.signals.append(
                    (
                        "applied",
                        f"handler '{aux.node.id}' {aux.status}",
                        self.clock.time(),
                        dumps(result),
                        sid,
                    )
                )
            return
        if kind == "compensate":
            self._next_compensation(ex)
            return
        if kind == "replay":
            return  # a dead letter replayed in place: recorded, it serves no node
        parent = aux.parent
        assert parent is not None
        if parent.terminal:
            return  # a goto handler: the node had already failed (handled)
        if aux.status == "succeeded":
            parent.set_output(aux.value())
            self._succeeded(parent)
            return
        parent.frame.active -= 1
        err = aux.error or parent.error or {"code": errors.NODE_ERROR, "message": "fallback failed"}
        self._final_failure(parent, err)
