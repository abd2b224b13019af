"""The ``shell`` node's declaration: a worker runs a command (its runner:
:mod:`fm_local.runners.shell`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from fm_local import expr
from fm_local.model import NodeBase
from fm_local.nodes.kind import Kind, Runs, Scope, io_lane


class ShellNode(NodeBase):
    type: Literal["shell"]
    command: str | Annotated[list[str], Field(min_length=1)]
    env: dict[str, str] = {}
    cwd: str | None = None
    allow_failure: bool = False


def task(node: ShellNode, scope: Scope) -> dict[str, Any]:
    return {
        # A string is a shell script: template values are quoted (expr.render_shell).
        "command": expr.render_shell(node.command, scope),
        "env": expr.render_field(node.env, scope),
        "cwd": expr.render_value(node.cwd, scope),
        "allowFailure": node.allow_failure,
    }


KIND = Kind(
    "shell",
    ShellNode,
    Runs.WORKER,
    templates=(("command", "command"), ("env", "env"), ("cwd", "cwd")),
    task=task,
    lane=io_lane,
    order=40,
)
