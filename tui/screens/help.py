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
| `ctrl+p` | everywhere | command palette: every action of the screen, by name |
| `q` | everywhere | quit |
| `ctrl+r` | everywhere | read again now (screens refresh about once a second anyway) |
| `↑` `↓` `j` `k` `pgup` `pgdn` `home` `end` | tables | move |
| `enter` | executions | open the execution's detail |
| `/` | executions | search: words match id, workflow, status or error text; `status:failed`, `wf:name`, `id:3f2a`, `error:text` match one field; `enter` back to the table |
| `escape` | executions | clear the search |
| `f` | executions | next status filter (or pick one in the list) |
| `s` / `S` | executions | sort by the next column / reverse (or click a header) |
| `l` | executions, detail | logs of the execution (detail: of the selected node and what is under it), followed |
| `p` | executions, detail | pause: nothing new starts; running nodes finish |
| `r` | executions, detail | resume, with optional JSON data (`signals.resume.data`) |
| `c` | executions, detail | cancel, after a confirmation |
| `enter` | detail | expand or collapse a loop (a page of its items) or an item (its nodes) |
| `]` / `[` | detail | next / previous page of 300 items of the loop the cursor is in |
| `n` / `N` | detail | next / previous failed item of that loop |
| `escape` | detail | back to the executions |
| `f` | logs | follow on / off (scrolling up pauses it) |
| `end` `G` / `home` `g` | logs | bottom (and follow) / top |
| `escape` | logs | back |

The detail screen opens with the cursor on the first failed node, if any.

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
        width: 100%; max-width: 110; height: 90%; border: thick $accent; background: $surface; padding: 0 1;
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
