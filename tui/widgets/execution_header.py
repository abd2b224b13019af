"""The detail screen's header: which execution, its status, times and progress,
and why it failed."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui import format as fmt
from tui.records import ExecutionInfo

NBSP = "\u00a0"


def progress_text(info: ExecutionInfo, now: float) -> Text:
    """``  items ███░░ 600/1000 60%  12.3 items/s  ETA 32.5 s`` (its loops' items),
    or ``  nodes ███░░ 3/5 60%`` for an execution without loops."""
    p = info.progress
    text = Text(f"  {p.unit} ").append_text(fmt.progress(p.done, p.total, width=10))
    if p.unit == "items":
        end = p.ended_at if p.ended_at is not None else (info.finished_at or now)
        pace = fmt.pace(p.total, p.done, p.started_at, end)
        # No-break spaces inside a figure: a narrow terminal wraps between figures,
        # never inside one ("38.7" on one line, "items/s" on the next).
        if pace.rate is not None:
            text.append("  " + fmt.rate(pace.rate, " items/s").replace(" ", NBSP))
        if info.status == "running" and p.ended_at is None:
            text.append("  " + f"ETA {fmt.duration(pace.eta)}".replace(" ", NBSP))
    return text


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
    text.append_text(progress_text(info, now))
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
