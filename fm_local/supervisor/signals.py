"""Signals (SPEC §8): pause, resume, cancel with compensation, custom handlers,
dead-letter replay in place, notifications, and wait nodes."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any

from fm_local import errors, jsonio
from fm_local import signals as sigs
from fm_local.nodes.kinds import runs_on_worker
from fm_local.nodes.wait import WaitNode
from fm_local.status import EXEC_TERMINAL
from fm_local.store import loads
from fm_local.supervisor.state import (
    Exec,
    Part,
    Run,
    _internal,
    log,
)


class Signals(Part):
    def _poll_signals(self) -> None:
        assert self.store is not None
        # Applied or refused, but not committed yet: the file still says pending.
        uncommitted = {entry[4] for entry in self.batch.signals}
        for row in self.store.pending_signals(0):
            if row["type"] == sigs.EXPLAIN:
                continue  # answered by _poll_explains (supervisor/explain.py)
            if self.only_execution and row["execution_id"] != self.only_execution:
                continue
            if row["id"] in self.signals_in_progress or row["id"] in uncommitted:
                continue
            ex = self.execs.get(row["execution_id"])
            self._signal_applying = False
            try:
                self._apply_signal(row, ex)
            except errors.StorageError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bad signal must not stop the daemon
                if self._signal_applying and ex is not None:
                    # It was being applied: it is applied, and its execution failed.
                    err = _internal(exc, f"applying signal {row['id']} ({row['type']})")
                    self.batch.signals.append(
                        ("applied", err["message"], self.clock.time(), None, row["id"])
                    )
                    self._contain(ex, exc, f"applying signal {row['id']}")
                else:
                    log.exception("signal %s: internal error", row["id"])
                    msg = jsonio.clean_text(f"internal error: {type(exc).__name__}: {exc}")
                    self.batch.signals.append(("refused", msg, self.clock.time(), None, row["id"]))
            self._settle()
        # Applied signals are acknowledged only once committed.
        if self.batch.signals:
            self.flush(everything=True)  # what a client reads next shows it all

    def _refuse(self, row: dict[str, Any], why: str) -> None:
        self.batch.signals.append(("refused", why, self.clock.time(), None, row["id"]))

    def _apply_signal(self, row: dict[str, Any], ex: Exec | None) -> None:
        """Check a signal (refusing it changes nothing), then apply it. Once
        ``_signal_applying`` is set, a failure fails the execution instead."""
        assert self.store is not None
        sid, eid, typ = row["id"], row["execution_id"], row["type"]
        if ex is None:
            st = self.store.get_execution(eid)
            if st is None:
                self._refuse(row, f"no execution '{eid}'")
            elif st["status"] in EXEC_TERMINAL:
                self._refuse(row, f"execution {eid} is already {st['status']}")
            return  # queued, not admitted yet: it waits for the next poll
        why = sigs.refusal(ex.workflow, typ)
        if why is None and row["reason"] is not None and "\0" in row["reason"]:
            why = "the reason contains a NUL character"
        if why is not None:
            self._refuse(row, why)
            return
        data = loads(row["data"])
        if typ == sigs.REPLAY:
            self._replay_in_place(ex, row, data)
            return
        handler = sigs.handler_for(ex.workflow, typ)
        action = handler.action if handler is not None else None
        prio = None
        if action == "set_priority":
            prio = data.get("priority") if isinstance(data, dict) else data
            if isinstance(prio, bool) or not isinstance(prio, int):
                self._refuse(row, 'set_priority needs data {"priority": <integer>}')
                return
            if not jsonio.INT64_MIN <= prio <= jsonio.INT64_MAX:
                self._refuse(row, "set_priority: the priority must fit in 64 bits")
                return
        node = None
        if action == "custom":
            assert handler is not None
            node = sigs.handler_node(ex.workflow, handler)
            if node is None:
                self._refuse(row, f"handler '{handler.handler}' is not in the workflow's handlers")
                return
        self._signal_applying = True
        now = self.clock.time()
        ex.signal_scope[typ] = {
            "data": data,
            "reason": row["reason"],
            "receivedAt": int(row["created_at"] * 1000),
            "result": None,
        }
        ex.signal_latest[typ] = sid
        outcome: list[str] = []
        waiting = ex.waits.pop(typ, [])
        for w in waiting:
            self._complete_wait(w, data)
            outcome.append(f"completed wait node '{w.path}'")
        if not waiting and typ in sigs.wait_types(ex.workflow):
            # No wait node of this type is waiting yet: keep it for the one that will.
            ex.unconsumed[typ] = data
            outcome.append("kept for the wait node that will ask for it")
        if handler is None:
            pass  # a wait node's type: handled above
        elif action == "pause":
            outcome.append(self._pause(ex, handler.cleanup))
        elif action == "resume":
            outcome.append(self._resume(ex))
        elif action == "cancel":
            outcome.append(self._cancel(ex, handler, row))
        elif action == "set_priority":
            assert prio is not None
            ex.priority = prio
            self._mark_exec(ex)
            outcome.append(f"priority set to {prio}")
        elif action == "custom":
            assert node is not None
            sig = {"id": sid, "type": typ, "data": data, "reason": row["reason"]}
            # Applied when the handler has run (a crash before re-runs it).
            self.signals_in_progress.add(sid)
            self._start_aux(
                None,
                node,
                {"signal": sig},
                "handler",
                frame=ex.top,
                path=f"signal:{typ}#{sid}->{node.id}",
            )
            return  # applied (and its event written) when the handler has run
        self.batch.signals.append(("applied", "; ".join(outcome) or "applied", now, None, sid))
        self._event(ex, None, f"signal:{typ}", {"signal": sid, "outcome": outcome})

    def _replay_in_place(self, ex: Exec, row: dict[str, Any], data: Any) -> None:
        """``fm dlq replay`` of a node whose execution still runs: run it again,
        with its recorded input, as ``<path>->replay#<dead letter>`` there."""
        from fm_local import replay

        data = data if isinstance(data, dict) else {}
        path = str(data.get("path") or "")
        node = replay.model_node(list(ex.workflow.nodes), path)
        if node is None or not runs_on_worker(node):
            self._refuse(
                row, f"no python/http/shell node at '{path}' in workflow '{ex.workflow.name}'"
            )
            return
        copy = replay.node_with_input(node, data.get("input"))
        run = self._start_aux(
            None, copy, {}, "replay", frame=ex.top, path=f"{path}->replay#{data.get('deadLetter')}"
        )
        self.batch.signals.append(
            ("applied", f"replaying {path} as {run.path}", self.clock.time(), None, row["id"])
        )

    def _rebuild_signal_scope(self, ex: Exec) -> None:
        """After a restart: ``signals.<type>`` from the signals already applied. A
        retry starts with the scope of the execution it retries, as it ended
        (docs/retry.md), then its own signals."""
        assert self.store is not None
        chain = self.store.retry_chain(ex.id) if ex.retry_of is not None else []
        rows = [r for eid in reversed(chain) for r in self.store.applied_signals(eid)]
        for row in [*rows, *self.store.applied_signals(ex.id)]:
            ex.signal_latest[row["type"]] = row["id"]
            ex.signal_scope[row["type"]] = {
                "data": loads(row["data"]),
                "reason": row["reason"],
                "receivedAt": int(row["created_at"] * 1000),
                "result": loads(row["result"]) if row.get("result") else None,
            }

    def _pause(self, ex: Exec, cleanup: bool) -> str:
        if ex.status == "paused":
            return "already paused"
        ex.status = "paused"
        self._mark_exec(ex)
        self._drop_prefetched(lambda r: r.ex is ex)
        if cleanup:
            n = self._interrupt_tasks(lambda r: r.ex is ex)
            return f"paused; {n} running nodes stopped, to run again on resume"
        return "paused; running nodes finish, nothing new starts"

    def _resume(self, ex: Exec) -> str:
        if ex.status != "paused":
            return f"not paused ({ex.status})"
        ex.status = "running"
        self._mark_exec(ex)
        self.work.extend(ex.deferred_work)
        self.loops_to_open.extend(ex.deferred_loops)
        ex.deferred_work = []
        ex.deferred_loops = []
        if ex.has_ready() and not ex.queued:
            self._list_ready(ex)
        return "resumed"

    def _interrupt_tasks(self, pred: Callable[[Run], bool]) -> int:
        """Stop the workers running selected tasks; the tasks go back to the queue
        without spending an attempt (pause with cleanup)."""
        executor = self.executor
        assert executor is not None
        count = 0
        ids = [tid for tid, r in self.tasks.items() if pred(r)]
        if not ids:
            return count
        for r, started in self._take_back(executor.stop(ids)):
            if r.terminal:
                continue
            if started and pred(r):
                count += 1
            self._interrupted_aside(r, started)
        return count

    def _cancel(self, ex: Exec, handler: Any, row: dict[str, Any]) -> str:
        reason = row["reason"]
        ex.cancel_error = {
            "code": errors.CANCELLED,
            "message": "cancelled" + (f": {reason}" if reason else " by a signal"),
        }
        if ex.status == "paused":
            ex.status = "running"
            ex.deferred_work = []
            ex.deferred_loops = []
        # Recorded now (status still running while compensations run), so a
        # restart knows the execution is being cancelled.
        ex.error = ex.cancel_error
        self._mark_exec(ex)
        top = ex.top
        top.failure = top.failure or ex.cancel_error
        done = [
            r
            for r in top.runs.values()
            if r.status == "succeeded" and r.node.compensate is not None
        ]
        self._stop_frame(top, "cancelled", "stopped: the execution was cancelled")
        notes = []
        for who in handler.notify:
            self.batch.notifications.append(
                (ex.id, row["id"], who, ex.cancel_error["message"], self.clock.time())
            )
            self._notify(ex, who, ex.cancel_error["message"])
        if handler.notify:
            notes.append(f"{len(handler.notify)} notifications")
        if handler.rollback and done:
            done.sort(key=lambda r: r.finished_at or 0.0, reverse=True)
            ex.compensations = deque(done)
            self._next_compensation(ex)
            notes.append(f"compensating {len(done)} nodes, newest first")
        self.frames_to_check.append(top)
        return "cancelled" + (f" ({', '.join(notes)})" if notes else "")

    def _resume_cancelling(self, ex: Exec, err: dict[str, Any]) -> None:
        """After a restart: an execution that was being cancelled goes on with the
        compensations that had not finished, newest first."""
        assert self.store is not None
        ex.cancel_error = err
        top = ex.top
        top.failure = top.failure or err
        self._halt(top)
        done = self.store.compensated(ex.id)
        todo = [
            r
            for r in top.runs.values()
            if r.status == "succeeded"
            and r.node.compensate is not None
            and f"{r.path}->compensate" not in done
        ]
        todo.sort(key=lambda r: r.finished_at or 0.0, reverse=True)
        ex.compensations = deque(todo)
        self._next_compensation(ex)
        self.frames_to_check.append(top)

    def _next_compensation(self, ex: Exec) -> None:
        """Run the next compensation of a cancelled execution (one at a time)."""
        while ex.compensations:
            run = ex.compensations.popleft()
            node = run.node.compensate
            if node is None:
                continue
            extra = {
                "compensated": {"nodeId": run.node.id, "path": run.path, "output": run.value()}
            }
            self._start_aux(run, node, extra, "compensate", path=f"{run.path}->compensate")
            return

    def _notify(self, ex: Exec, recipient: str, message: str) -> None:
        cmd = ex.workflow.settings.notify_command
        if not cmd:
            return
        import subprocess

        def env_text(value: str) -> str:  # an environment value can hold neither
            return jsonio.clean_text(value).replace("\0", "\\0")  # NUL nor a surrogate

        env = dict(
            os.environ,
            FM_EXECUTION_ID=ex.id,
            FM_WORKFLOW=env_text(ex.workflow.name),
            FM_RECIPIENT=env_text(recipient),
            FM_MESSAGE=env_text(message),
        )
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        try:
            subprocess.Popen(
                argv,
                env=env,
                cwd=ex.folder,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            log.error("execution %s: notifyCommand failed: %s", ex.id, exc)

    def _start_wait(self, run: Run, restoring: bool = False) -> None:
        node = run.node
        assert isinstance(node, WaitNode)
        ex = run.ex
        if not restoring:
            run.status = "running"
            self._mark(run)
            self._attempt_row(run, "running", None)
        if node.signal in ex.unconsumed:
            self._complete_wait(run, ex.unconsumed.pop(node.signal))
            return
        ex.waits.setdefault(node.signal, []).append(run)
        if node.timeout:
            self._timer(
                (run.started_at or self.clock.time()) + node.timeout / 1000.0, "wait_timeout", run
            )

    def _complete_wait(self, run: Run, data: Any) -> None:
        if run.terminal:
            return
        run.set_output(data)
        run.finished_at = self.clock.time()
        self._attempt_row(run, "succeeded", None)
        self._succeeded(run)

    def _wait_timed_out(self, run: Run) -> None:
        if run.terminal:
            return
        ex = run.ex
        waiting = ex.waits.get(run.node.signal, [])  # type: ignore[attr-defined]
        if run in waiting:
            waiting.remove(run)
        run.finished_at = self.clock.time()
        self._timed_out(run)
