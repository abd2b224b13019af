"""The help screen (``?``): every key, per screen."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# fm tui — keys

| key | where | what |
|---|---|---|
| `1` `2` `3` `4` (or click a tab) | everywhere | executions, detail, queue, resources |
| `?` | everywhere | this help |
| `q` | everywhere | quit |
| `ctrl+r` | everywhere | read again now (screens refresh about once a second anyway) |
| `↑` `↓` `pgup` `pgdn` | tables | move |
| `enter` | executions | open the execution's detail |
| `f` | executions | next status filter (or pick one in the list) |
| `p` | executions, detail | pause: nothing new starts; running nodes finish |
| `r` | executions, detail | resume, with optional JSON data (`signals.resume.data`) |
| `c` | executions, detail | cancel, after a confirmation |
| `enter` | detail | expand or collapse a loop (its items) or an item (its nodes) |
| `escape` | detail | back to the executions |

Signals are rows in the `signals` table: the daemon applies them. With no daemon
running they wait there, and are applied when one starts. A signal the execution
would refuse (it is finished, or its workflow does not handle that type) is refused
at once.

The TUI only reads the database (read-only connections, in background threads),
except for those signal rows.
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 96; height: 80%; border: thick $accent; background: $surface; padding: 0 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "close", "Close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
