"""``fm tui``: contributed to the ``fm`` command line by this package (the
``fm_local.commands`` entry point in pyproject.toml), so that the engine never
imports the UI."""

from __future__ import annotations

import click

from fm_local.cli import Ctx, pass_ctx


@click.command()
@pass_ctx
def tui(ctx: Ctx) -> None:
    """The terminal UI: executions, timelines, queue, resources; sends signals."""
    from tui.app import main

    main(ctx.db)
