"""Below the timeline: the selected node instance (the code it ran, input,
output, error, attempts, log) or, with no node selected, the execution's input,
output, error.

A worker node's "input" is the resolved input the worker received (recorded in
``node_runs.input``); a supervisor-side node shows its definition instead. A
python node's ``code`` (``tasks.py@<sha256 prefix>``) names the module file and
hash of the code that ran."""

from __future__ import annotations

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


def error_block(error: Any) -> Text:
    if error is None:
        return Text("-", style="dim")
    if not isinstance(error, dict):
        return Text(fmt.pretty_json(error), style="red")
    text = Text().append(f"{error.get('code', '?')}: {error.get('message', '')}", style="red")
    details = error.get("details")
    if isinstance(details, dict):
        trace = details.get("traceback")
        if isinstance(trace, str) and trace:
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


def node_view(node: NodeDetail, now: float) -> Group:
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
    return Group(
        head,
        times,
        input_head,
        input_body,
        heading("output"),
        json_block(node.output),
        heading("error"),
        error_block(node.error),
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

    def compose(self) -> Any:
        yield Static(id="node-body")

    def show(self, what: NodeDetail | ExecutionInfo | None, now: float) -> None:
        running = isinstance(what, NodeDetail) and what.finished_at is None
        if what == self.shown and not running:
            return
        self.shown = what
        body = self.query_one("#node-body", Static)
        if isinstance(what, NodeDetail):
            body.update(node_view(what, now))
        elif isinstance(what, ExecutionInfo):
            body.update(execution_view(what))
        else:
            body.update("")
