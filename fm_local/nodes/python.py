"""The ``python`` node's declaration: a worker calls ``module:function`` with the
rendered ``args`` (its runner: :mod:`fm_local.runners.python`)."""

from __future__ import annotations

import ast
import os
import time
from typing import Annotated, Any, Literal

from pydantic import Field

from fm_local import expr
from fm_local.model import NodeBase
from fm_local.nodes.kind import Kind, Runs, Scope


class PythonNode(NodeBase):
    type: Literal["python"]
    call: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    args: dict[str, Any] = {}
    # Where it runs (SPEC §11): "auto" — an ``async def`` function on the I/O lane
    # (many at once on a worker's event loop), any other in a worker process of its
    # own; "io" — a sync function too, in a thread on the I/O lane (for blocking
    # I/O; see docs/lanes.md for what a timeout means there); "process" — always a
    # process of its own.
    lane: Literal["auto", "process", "io"] = "auto"


def lane(node: PythonNode, folder: str) -> str:
    if node.lane != "auto":
        return node.lane
    return "io" if is_async(folder, node.call) else "process"


# (folder, call) -> (when last looked, the module file's (mtime, size), async?)
_async: dict[tuple[str, str], tuple[float, tuple[int, int] | None, bool]] = {}
RECHECK = 1.0  # seconds before a module file is looked at again


def is_async(folder: str, call: str) -> bool:
    """Whether ``call`` names an ``async def`` function at the top level of its
    module's source file beside the workflow (read, never imported: the supervisor
    runs no user code). A function it cannot see there counts as sync."""
    key = (folder, call)
    now = time.monotonic()
    seen = _async.get(key)
    if seen is not None and now - seen[0] < RECHECK:
        return seen[2]
    modname, _, attr = call.partition(":")
    rel = os.path.join(folder, *modname.split("."))
    path, stamp = None, None
    for candidate in (rel + ".py", os.path.join(rel, "__init__.py")):
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        path, stamp = candidate, (st.st_mtime_ns, st.st_size)
        break
    if seen is not None and stamp == seen[1]:
        _async[key] = (now, stamp, seen[2])
        return seen[2]
    found = False
    if path is not None:
        try:
            with open(path, "rb") as f:
                tree = ast.parse(f.read(), path)
        except (OSError, SyntaxError, ValueError):
            tree = None
        if tree is not None:
            for stmt in tree.body:
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == attr:
                    found = isinstance(stmt, ast.AsyncFunctionDef)  # the last one wins
    _async[key] = (now, stamp, found)
    return found


def task(node: PythonNode, scope: Scope) -> dict[str, Any]:
    return {"call": node.call, "args": expr.render_field(node.args, scope)}


KIND = Kind(
    "python",
    PythonNode,
    Runs.WORKER,
    templates=(("args", "args"),),
    task=task,
    lane=lane,
    order=10,
)
