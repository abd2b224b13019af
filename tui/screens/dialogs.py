"""Small modal dialogs: a yes/no confirmation and a JSON prompt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

DIALOG_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{
    width: 72; height: auto; padding: 1 2; border: thick $accent; background: $surface;
}}
{name} Horizontal {{ height: auto; margin-top: 1; align-horizontal: right; }}
{name} Button {{ margin-left: 2; }}
{name} Label, {name} Static {{ width: 100%; height: auto; }}
{name} .error {{ color: $error; }}
"""


class ConfirmScreen(ModalScreen[bool]):
    """Ask a yes/no question; ``y``/``n``/escape answer it."""

    DEFAULT_CSS = DIALOG_CSS.format(name="ConfirmScreen")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="question")
            with Horizontal():
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


@dataclass(frozen=True)
class JsonAnswer:
    """The value typed (None when the field was left empty)."""

    value: Any


class JsonPromptScreen(ModalScreen[JsonAnswer | None]):
    """Ask for an optional JSON value; Enter submits, escape cancels (None)."""

    DEFAULT_CSS = DIALOG_CSS.format(name="JsonPromptScreen")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, placeholder: str = '{"key": "value"}') -> None:
        super().__init__()
        self.title_text = title
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text)
            yield Input(placeholder=self.placeholder, id="json")
            yield Static("", classes="error", id="problem")
            with Horizontal():
                yield Button("Send (enter)", id="send", variant="primary")
                yield Button("Cancel (esc)", id="cancel")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit(event.value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "send":
            self._submit(self.query_one(Input).value)
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def _submit(self, text: str) -> None:
        if not text.strip():
            self.dismiss(JsonAnswer(None))
            return
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except ValueError as exc:
            self.query_one("#problem", Static).update(f"not JSON: {exc}")
            return
        self.dismiss(JsonAnswer(value))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (JSON only)")
