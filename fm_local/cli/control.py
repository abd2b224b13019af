"""Controlling a running execution: ``fm signal`` and its shorthands ``fm pause``,
``fm resume``, ``fm cancel`` (through ``fm_local.client``), and ``fm token``, the
HTTP API's token for sending them over HTTP."""

from __future__ import annotations

from typing import Any

import click

from fm_local import errors
from fm_local.cli.base import Ctx, cli, find_execution, json_option, load_json_option, pass_ctx
from fm_local.cli.render import emit_json
from fm_local.errors import EXIT_FAILED, FmError


def _send_signal(
    ctx: Ctx, execution: str, type_: str, reason: str | None, data_text: str | None, wait: float
) -> None:
    """Write a signal row; refuse at once what the supervisor would refuse; report
    the outcome once a supervisor applied it (SPEC §8; fm_local.client)."""
    from fm_local.client import SignalRefused, send_signal

    data = load_json_option(data_text, None, "data")
    eid = find_execution(ctx, execution)["id"]
    try:
        sent = send_signal(ctx.store(), eid, type_, reason, data, wait=wait)
    except SignalRefused as exc:
        if exc.why == "finished":
            raise FmError(f"{exc}: signal '{type_}' refused", EXIT_FAILED) from None
        raise FmError(f"execution {eid}: {exc}", errors.EXIT_USAGE) from None
    out = sent.as_json()
    if not sent.served:
        done = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}.get(type_)
        effect = f"execution {eid} is not {done} yet" if done else "nothing applied it yet"
        msg = (
            f"signal {sent.id} ({type_}) queued until a supervisor starts: no supervisor serves "
            f"{ctx.db}, so {effect} — start `fm daemon`"
        )
        _say(ctx, out, msg)
        return
    if sent.status == "refused":
        if ctx.json:
            emit_json(out)
        raise FmError(f"signal '{type_}' refused: {sent.outcome}", EXIT_FAILED)
    if sent.status == "pending":
        _say(ctx, out, f"signal {sent.id} ({type_}) sent; not applied yet")
    else:
        _say(ctx, out, f"execution {eid}: {sent.outcome}")


def _say(ctx: Ctx, value: Any, line: str) -> None:
    if ctx.json:
        emit_json(value)
    else:
        click.echo(line)


SIGNAL_OPTIONS = [
    click.option("--reason", help="Why (recorded with the signal)."),
    click.option("--data", "data_text", help="Signal data as JSON (e.g. for resume)."),
    click.option(
        "--wait",
        type=float,
        default=10.0,
        show_default=True,
        help="Seconds to wait for the outcome.",
    ),
]


def signal_options(f: Any) -> Any:
    for opt in reversed(SIGNAL_OPTIONS):
        f = opt(f)
    return f


@cli.command(name="signal")
@click.argument("execution")
@click.argument("type_", metavar="TYPE")
@signal_options
@json_option
@pass_ctx
def signal_cmd(
    ctx: Ctx, execution: str, type_: str, reason: str | None, data_text: str | None, wait: float
) -> None:
    """Send a signal (pause, resume, cancel, or a type the workflow handles)."""
    _send_signal(ctx, execution, type_, reason, data_text, wait)


def _shorthand(type_: str, doc: str) -> None:
    @cli.command(name=type_, help=doc)
    @click.argument("execution")
    @signal_options
    @json_option
    @pass_ctx
    def cmd(
        ctx: Ctx, execution: str, reason: str | None, data_text: str | None, wait: float
    ) -> None:
        _send_signal(ctx, execution, type_, reason, data_text, wait)


_shorthand("pause", "Pause an execution: nothing new starts; running nodes finish.")
_shorthand("resume", "Resume a paused execution (--data is readable as signals.resume.data).")
_shorthand("cancel", "Cancel an execution: running nodes are stopped, nothing new starts.")


@cli.command()
@pass_ctx
def token(ctx: Ctx) -> None:
    """Print the HTTP API's bearer token (created on first use, mode 0600)."""
    from fm_local.apitoken import ensure_token

    click.echo(ensure_token(ctx.db))
