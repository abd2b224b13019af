"""The detail screen's header: which execution, its status, times and progress,
and why it failed."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui import format as fmt
from tui.records import ExecutionInfo


def header_text(info: ExecutionInfo, now: float) -> Text:
    text = Text().append(info.id, style="bold")
    text.append(f"  {info.workflow}  ")
    text.append_text(fmt.status_text(info.status))
    text.append(f"  priority {info.priority}")
    if info.trace_id:
        text.append(f"  {info.trace_id}", style="dim")
    text.append("\n")
    text.append(f"started {fmt.clock(info.started_at)}  took ")
    text.append(fmt.duration(fmt.span(info.started_at, info.finished_at, now)))
    text.append("  nodes ")
    text.append_text(fmt.progress(info.done, info.total))
    if isinstance(info.error, dict) and info.error.get("message"):
        text.append(f"\n{info.error['message']}", style="red")
    return text


class ExecutionHeader(Static):
    DEFAULT_CSS = "ExecutionHeader { height: auto; padding: 0 1; background: $boost; }"

    def show(self, info: ExecutionInfo | None, now: float) -> None:
        if info is None:
            self.update(Text("no such execution", style="red"))
        else:
            self.update(header_text(info, now))
