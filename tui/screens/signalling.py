"""Pause (p), resume (r, with a JSON data prompt) and cancel (c, confirmed) the
execution a screen points at. The write runs in a thread worker
(:func:`tui.control.send_signal`); its outcome comes back as a notification."""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

from textual.binding import Binding, BindingType

from tui.control import SignalOutcome, send_signal
from tui.messages import SignalFinished
from tui.records import TERMINAL_EXEC
from tui.screens.base import PollingScreen
from tui.screens.dialogs import ConfirmScreen, JsonAnswer, JsonPromptScreen


class SignalScreen(PollingScreen):
    """Subclasses say which execution the keys act on: :meth:`target`."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("c", "cancel_execution", "Cancel"),
    ]

    def target(self) -> tuple[str, str, str] | None:
        """(execution id, workflow, status) of the execution the keys act on."""
        raise NotImplementedError

    def _checked_target(self, type_: str) -> tuple[str, str, str] | None:
        found = self.target()
        if found is None:
            self.notify("no execution selected", severity="warning")
            return None
        eid, _, status = found
        if status in TERMINAL_EXEC:
            self._report(
                SignalOutcome(
                    eid,
                    type_,
                    "refused",
                    f"execution {eid} is already {status}: signal '{type_}' refused",
                )
            )
            return None
        return found

    def action_pause(self) -> None:
        found = self._checked_target("pause")
        if found is not None:
            self.send(found[0], "pause")

    def action_resume(self) -> None:
        found = self._checked_target("resume")
        if found is None:
            return
        eid = found[0]

        def answered(answer: JsonAnswer | None) -> None:
            if answer is not None:
                self.send(eid, "resume", answer.value)

        self.app.push_screen(
            JsonPromptScreen(
                f"Resume {eid} ({found[1]}). Data, readable as signals.resume.data "
                "(JSON, optional):"
            ),
            answered,
        )

    def action_cancel_execution(self) -> None:
        found = self._checked_target("cancel")
        if found is None:
            return
        eid, workflow, _ = found

        def answered(yes: bool | None) -> None:
            if yes:
                self.send(eid, "cancel")

        self.app.push_screen(
            ConfirmScreen(
                f"Cancel execution {eid} ({workflow})?\n"
                "Running nodes are stopped and nothing new starts. This cannot be undone."
            ),
            answered,
        )

    def send(self, execution_id: str, type_: str, data: Any = None) -> None:
        self.run_worker(
            partial(self._send, execution_id, type_, data),
            thread=True,
            group="signal",
            name=f"signal {type_} {execution_id}",
        )

    def _send(self, execution_id: str, type_: str, data: Any) -> None:
        self.post_message(SignalFinished(send_signal(self.session.db, execution_id, type_, data)))

    def on_signal_finished(self, message: SignalFinished) -> None:
        self._report(message.outcome)
        self.request_refresh()

    def _report(self, outcome: SignalOutcome) -> None:
        self.notify(
            outcome.message,
            title=f"{outcome.type}: {outcome.status}",
            severity=outcome.severity,  # type: ignore[arg-type]
            timeout=8,
        )
