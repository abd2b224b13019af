"""The resources screen's areas: one row per process (supervisor, workers) from
the newest samples, the machine's totals, and sparklines of recent history."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Grid
from textual.widgets import DataTable, Label, Sparkline, Static

from tui import format as fmt
from tui.records import ResourceSnapshot
from tui.widgets.table_sync import VI_KEYS, sync_rows

SERIES = (
    ("machine_cpu", "machine CPU %"),
    ("machine_mem", "machine memory used"),
    ("supervisor_cpu", "supervisor CPU %"),
    ("supervisor_rss", "supervisor RSS"),
    ("workers_cpu", "workers CPU % (sum)"),
    ("workers_rss", "workers RSS (sum)"),
)


def state_line(snapshot: ResourceSnapshot) -> Text:
    if snapshot.live:
        return Text(
            f"sampled at {fmt.short_clock(snapshot.newest_ts)} by the supervisor (about once a second)",
            style="green",
        )
    text = Text().append("no daemon running", style="bold yellow")
    text.append(f": no resource samples in the last {snapshot.recent_seconds:.0f} s")
    if snapshot.newest_ts is not None:
        text.append(f" (last one at {fmt.clock(snapshot.newest_ts)})", style="dim")
    return text


def machine_line(snapshot: ResourceSnapshot) -> Text:
    machine = [s for s in snapshot.latest if s.role == "machine"]
    if not snapshot.live or not machine:
        return Text("machine: -", style="dim")
    m = machine[0]
    return Text(f"machine: CPU {m.cpu_percent:.1f} %   memory used {fmt.size(m.rss_bytes)}")


class StateLine(Static):
    DEFAULT_CSS = "StateLine { height: auto; padding: 0 1; }"  # wraps when narrow

    def show(self, snapshot: ResourceSnapshot) -> None:
        self.update(state_line(snapshot))


class MachineLine(Static):
    DEFAULT_CSS = "MachineLine { height: auto; padding: 0 1; }"

    def show(self, snapshot: ResourceSnapshot) -> None:
        self.update(machine_line(snapshot))


class ProcessTable(DataTable[Any]):
    DEFAULT_CSS = "ProcessTable { height: 1fr; }"
    BINDINGS: ClassVar[list[BindingType]] = VI_KEYS

    def on_mount(self) -> None:
        self.cursor_type = "row"
        for name in ("role", "pid", "CPU %", "RSS", "execution", "node"):
            self.add_column(name, key=name)

    def show(self, snapshot: ResourceSnapshot) -> None:
        rows = []
        if snapshot.live:
            for s in snapshot.latest:
                if s.role == "machine":
                    continue
                rows.append(
                    (
                        f"{s.role}:{s.pid}",
                        (
                            s.role,
                            str(s.pid) if s.pid is not None else "-",
                            f"{s.cpu_percent:.1f}",
                            fmt.size(s.rss_bytes),
                            s.execution_id or "-",
                            f"I/O lane: {s.node_path or '0 tasks'}"
                            if s.role == "io-worker"
                            else f"cluster {s.node_path}"  # the Dask executor's scheduler
                            if s.role == "dask"
                            else s.node_path or ("idle" if s.role == "worker" else "-"),
                        ),
                    )
                )
        sync_rows(self, rows)


class History(Grid):
    """A label and a sparkline per series, oldest on the left."""

    DEFAULT_CSS = """
    History { grid-size: 2; grid-columns: 44 1fr; grid-rows: 2; height: auto; padding: 0 1; }
    History Sparkline { height: 2; }
    """

    def compose(self) -> ComposeResult:
        for key, title in SERIES:
            yield Label(title, id=f"label-{key}")
            yield Sparkline([], id=f"spark-{key}")

    def show(self, snapshot: ResourceSnapshot) -> None:
        for key, title in SERIES:
            data = snapshot.history.get(key, [])
            last = snapshot.current(key)
            if last is None:
                value = "-"
            elif key.endswith(("_mem", "_rss")):
                value = fmt.size(last)
            else:
                value = f"{last:.1f}"
            self.query_one(f"#label-{key}", Label).update(f"{title}: {value}")
            self.query_one(f"#spark-{key}", Sparkline).data = data
