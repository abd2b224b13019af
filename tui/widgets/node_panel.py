"""Below the timeline: the selected node instance (the code it ran, input,
output, error, attempts, log) or, with no node selected, the execution's input,
output, error.

At the top, for a node that is not running, why (``fm explain``'s reason for
it: waiting for dependencies, queued, a gate, a back-off, paused, finished…) and,
for a failed node, its traceback right below. The reason is asked in a thread
(a supervisor round trip, :func:`fm_local.explain.explain`), at most about once a
second per node; the panel draws the last answer and never waits for one.

A worker node's "input" is the resolved input the worker received (recorded in
``node_runs.input``); a supervisor-side node shows its definition instead. A
python node's ``code`` (``tasks.py@<sha256 prefix>``) names the module file and
hash of the code that ran."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from tui import format as fmt
from tui.records import ExecutionInfo, NodeDetail


def heading(title: str, note: str = "") -> Text:
    text = Text().append(f"── {title} ", style="bold")
    if note:
        text.append(f"({note}) ", style="dim")
    return text


def json_block(value: Any) -> Text:
    if value is None:
        return Text("-", style="dim")
    return Text(fmt.pretty_json(value))


def traceback_of(error: Any) -> str | None:
    details = error.get("details") if isinstance(error, dict) else None
    trace = details.get("traceback") if isinstance(details, dict) else None
    return trace if isinstance(trace, str) and trace else None


def error_block(error: Any, with_traceback: bool = True) -> Text:
    if error is None:
        return Text("-", style="dim")
    if not isinstance(error, dict):
        return Text(fmt.pretty_json(error), style="red")
    text = Text().append(f"{error.get('code', '?')}: {error.get('message', '')}", style="red")
    details = error.get("details")
    if isinstance(details, dict):
        trace = traceback_of(error)
        if trace is not None and with_traceback:
            text.append("\n" + trace.rstrip(), style="dim")
        rest = {k: v for k, v in details.items() if k not in ("traceback", "exceptionTypes")}
        if rest:
            text.append("\n" + fmt.pretty_json(rest))
    return text


def attempts_table(node: NodeDetail, now: float) -> RenderableType:
    if not node.attempts:
        return Text("no tries recorded", style="dim")
    table = Table(box=None, padding=(0, 1), show_edge=False)
    for name in ("try", "attempt", "kind", "status", "worker", "started", "took", "error"):
        table.add_column(name)
    for a in node.attempts:
        error = ""
        if isinstance(a.error, dict):
            error = f"{a.error.get('code', '')}: {a.error.get('message', '')}"
        table.add_row(
            str(a.seq),
            str(a.attempt),
            a.kind,
            fmt.status_text(a.status),
            str(a.worker_pid or "-"),
            fmt.short_clock(a.started_at),
            fmt.duration(fmt.span(a.started_at, a.finished_at, now)) if a.finished_at else "-",
            Text(error, style="red"),
        )
    return table


def log_block(node: NodeDetail) -> Text:
    if not node.logs:
        return Text("no log lines", style="dim")
    text = Text()
    if node.logs_dropped:
        text.append(f"… {node.logs_dropped} earlier lines (fm logs)\n", style="dim")
    for i, line in enumerate(node.logs):
        style = "red" if line.stream == "stderr" else ""
        text.append(f"{fmt.short_clock(line.ts)} [{line.attempt}] ", style="dim")
        text.append(line.stream.ljust(7), style="cyan")
        text.append(line.line + ("\n" if i < len(node.logs) - 1 else ""), style=style)
    return text


# The reasons of fm explain, coloured as the timeline colours the state they hold.
REASON_STYLES = {
    "finished": "green",
    "running": "yellow",
    "retry_backoff": "magenta",
    "paused": "yellow",
    "no_supervisor": "red",
    "not_reached": "dim",
}
ASK_EVERY = 1.0  # seconds between two explain requests for the node shown
FINISHED = ("succeeded", "failed", "cancelled", "skipped", "timed_out")
ASK_TIMEOUT = 2.0  # seconds an explain request waits for the supervisor


class Why:
    """The answer about one node instance: its reason, or why there is none."""

    def __init__(self, reason: Any = None, note: str | None = None, error: str | None = None):
        self.reason = reason  # fm_local.explain.Reason, or None
        self.note = note  # the rows alone spoke: why
        self.error = error  # the request failed: why


def why_block(node: NodeDetail, why: Why | None) -> Text | None:
    """The top of the panel: why the node is where it is, then a failed node's
    traceback. None when there is nothing to say yet."""
    text = Text()
    if why is not None and why.reason is not None:
        r = why.reason
        text.append("why ", style="bold")
        text.append(r.reason, style="bold " + REASON_STYLES.get(r.reason, "cyan"))
        text.append(f"  {r.detail}")
        if why.note and r.source == "database":
            text.append(f"\n    ({why.note})", style="dim")
    elif why is not None and why.error:
        text.append("why ", style="bold").append(f"not known: {why.error}", style="dim")
    trace = traceback_of(node.error) if node.status == "failed" else None
    if trace is not None:
        if text:
            text.append("\n")
        text.append(trace.rstrip(), style="red")
    return text if text else None


def wants_reason(node: NodeDetail) -> bool:
    """A node running its own code has nothing to explain; one that holds no worker
    while it is 'running' (a loop, an item, a delay, a wait) has."""
    return node.status != "running" or node.node_type in ("loop", "item", "delay", "wait")


def node_view(node: NodeDetail, now: float, why: Why | None = None) -> Group:
    top = why_block(node, why)
    head = Text().append(node.path, style="bold")
    head.append(f"  {node.node_type}  ")
    head.append_text(fmt.status_text(node.status))
    head.append(f"  attempts {node.attempts_spent}")
    if node.recoveries:
        head.append(f" (+{node.recoveries} recoveries)")
    if node.worker_pid:
        head.append(f"  worker {node.worker_pid}")
    if node.lane and node.lane != "process":
        head.append(f"  lane {node.lane}")  # the I/O lane, or the Dask worker that ran it
    if node.trace_id:
        head.append(f"  {node.trace_id}", style="dim")
    if node.items is not None:
        head.append(f"  items {node.items}")
    if node.code:
        head.append("\ncode ", style="dim").append(node.code)
    times = Text(
        f"queued {fmt.short_clock(node.queued_at)}  started {fmt.short_clock(node.started_at)}  "
        f"finished {fmt.short_clock(node.finished_at)}  took "
        f"{fmt.duration(fmt.span(node.started_at, node.finished_at, now))}",
        style="dim",
    )
    definition = {
        k: v for k, v in (node.definition or {}).items() if k not in ("id", "type", "name")
    }
    if node.input is not None:
        input_head = heading("input", "resolved, as the worker received it")
        input_body = json_block(node.input)
    else:
        input_head = heading("input", "the node's definition: it runs in the supervisor")
        input_body = json_block(definition or None)
    parts: list[RenderableType] = [] if top is None else [top]
    return Group(
        *parts,
        head,
        times,
        input_head,
        input_body,
        heading("output"),
        json_block(node.output),
        heading("error"),
        error_block(node.error, with_traceback=top is None or node.status != "failed"),
        heading("attempts"),
        attempts_table(node, now),
        heading("log", "newest lines"),
        log_block(node),
    )


def execution_view(info: ExecutionInfo) -> Group:
    return Group(
        Text("No node selected: move the cursor in the timeline.", style="dim"),
        heading("execution input"),
        json_block(info.input),
        heading("execution output"),
        json_block(info.output),
        heading("execution error"),
        error_block(info.error),
    )


class NodePanel(VerticalScroll):
    DEFAULT_CSS = """
    NodePanel { height: 1fr; border-top: solid $primary; }
    NodePanel > Static { width: 100%; }
    """

    shown: object = None  # what is drawn now, so an unchanged refresh costs nothing

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._why: dict[tuple[str, str], Why] = {}  # (execution, path) -> last answer
        self._asked: dict[tuple[str, str], float] = {}  # monotonic time of the last ask
        self._asking = threading.Lock()  # one request in flight at a time
        self._drawn_why: Why | None = None
        self._ended: tuple[Any, Why] | None = None  # the finished node drawn, and its reason
        self._now = 0.0

    def compose(self) -> Any:
        yield Static(id="node-body")

    def show(self, what: NodeDetail | ExecutionInfo | None, now: float) -> None:
        self._now = now
        running = isinstance(what, NodeDetail) and what.finished_at is None
        key = self._key(what)
        why = self._why.get(key) if key is not None else None
        if isinstance(what, NodeDetail) and what.status in FINISHED and what.status != "skipped":
            # Its record says how it ended: no need to ask (kept while it reads the same).
            sign = (what.path, what.status, what.attempts_spent, repr(what.error))
            if self._ended is None or self._ended[0] != sign:
                self._ended = (sign, finished_why(what))
            why = self._ended[1]
        elif key is not None and isinstance(what, NodeDetail) and wants_reason(what):
            self._ask(key)
        if what == self.shown and not running and why is self._drawn_why:
            return
        self.shown = what
        self._draw(what, now, why)

    def _draw(self, what: Any, now: float, why: Why | None) -> None:
        self._drawn_why = why
        body = self.query_one("#node-body", Static)
        if isinstance(what, NodeDetail):
            body.update(node_view(what, now, why if wants_reason(what) else None))
        elif isinstance(what, ExecutionInfo):
            body.update(execution_view(what))
        else:
            body.update("")

    def _key(self, what: Any) -> tuple[str, str] | None:
        eid = getattr(self.screen, "execution_id", None)
        if not isinstance(what, NodeDetail) or not isinstance(eid, str):
            return None
        return (eid, what.path)

    def _db(self) -> Path | None:
        session = getattr(self.app, "session", None)
        db = getattr(session, "db", None)
        return Path(db) if db is not None else None

    def _ask(self, key: tuple[str, str]) -> None:
        """Ask about ``key`` in a thread, unless asked less than ASK_EVERY ago or a
        request is in flight; the answer redraws the panel when it is still shown."""
        db = self._db()
        if db is None or time.monotonic() - self._asked.get(key, -1e9) < ASK_EVERY:
            return
        if not self._asking.acquire(blocking=False):
            return
        self._asked[key] = time.monotonic()

        def work() -> None:
            try:
                why = explain_one(db, *key)
            finally:
                self._asking.release()
            try:
                self.app.call_from_thread(self._answered, key, why)
            except RuntimeError:
                pass  # the app is closing

        try:
            self.run_worker(work, thread=True, group="explain", exit_on_error=False)
        except Exception:
            self._asking.release()
            raise

    def _answered(self, key: tuple[str, str], why: Why) -> None:
        self._why[key] = why
        if self._key(self.shown) == key:
            self._draw(self.shown, self._now, why)


def finished_why(node: NodeDetail) -> Why:
    """A finished node's reason from its own record, at once (no thread)."""
    from fm_local.explain import Reason
    from fm_local.explain.rows import ended

    detail = ended(node.status, node.error, node.attempts_spent)
    return Why(Reason(node.path, node.status, "finished", detail, source="database"))


def explain_one(db: Path, execution_id: str, path: str) -> Why:
    """Why one node instance is where it is (runs in a worker thread: its own
    connection; a supervisor round trip of at most ASK_TIMEOUT seconds)."""
    from fm_local import explain
    from fm_local.lock import is_served
    from fm_local.store import Store

    try:
        store = Store(db, create=False, readonly=is_served(db) is None)
    except Exception:  # noqa: BLE001 - a file this process cannot write: read it
        try:
            store = Store(db, create=False, readonly=True)
        except Exception as exc:  # noqa: BLE001 - says why in the panel
            return Why(error=str(exc))
    try:
        got = explain.explain(store, db, execution_id, path, timeout=ASK_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - says why in the panel, never stops it
        return Why(error=str(exc))
    finally:
        store.close()
    exact = [r for r in got.reasons if r.path == path]
    return Why(exact[0] if exact else None, got.note)
