"""The ``python`` node's declaration: a worker calls ``module:function`` with the
rendered ``args`` (its runner: :mod:`fm_local.runners.python`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from fm_local import expr
from fm_local.model import NodeBase
from fm_local.nodes.kind import Kind, Runs, Scope


class PythonNode(NodeBase):
    type: Literal["python"]
    call: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    args: dict[str, Any] = {}


def task(node: PythonNode, scope: Scope) -> dict[str, Any]:
    return {"call": node.call, "args": expr.render_value(node.args, scope)}


KIND = Kind("python", PythonNode, Runs.WORKER, templates=(("args", "args"),), task=task, order=10)
