"""Every node type, in one table.

A node type is one module of this package, ``fm_local.nodes.<type>``: its model class
(the document's shape), its :class:`Kind` (where it runs, which of its fields are
expressions or hold ``{{templates}}``, its named output ports, whether it has a body
graph) and how the supervisor evaluates it or which task it hands a worker. For a
worker type the code a worker process runs is its runner, ``fm_local.runners.<type>``
(a worker never imports this package or pydantic).

:data:`KINDS` lists those modules' kinds (found by looking, not registered by
hand); ``fm_local.model`` builds the ``Node`` union
and ``NODE_TYPES`` from it. ``graph``, ``validate`` and the supervisor ask
:func:`kind_of` instead of testing a node's class.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Any

from fm_local.model import NodeBase
from fm_local.nodes.kind import (
    DEFAULT_HANDLE,
    ERROR_HANDLE,
    Evaluate,
    Kind,
    Runs,
    Scope,
    TaskSpec,
)

__all__ = [
    "DEFAULT_HANDLE",
    "ERROR_HANDLE",
    "KINDS",
    "Evaluate",
    "Kind",
    "Runs",
    "Scope",
    "TaskSpec",
    "body_nodes",
    "kind_of",
    "runs_on_worker",
]

# Modules of this package that declare no node type.
_NOT_TYPES = {"kind", "kinds"}


def _discover() -> tuple[Kind, ...]:
    """Every module of this package that declares a ``KIND``: a new node type is a
    new module, nothing else to register. In ``Kind.order`` (then name): the order of
    the document's ``Node`` union, which pydantic's messages (the expected tags) and
    the JSON schema (``fm schema``) follow."""
    kinds = []
    # This package may be half imported here (its __init__ imports fm_local.model,
    # which imports this module): read its path from sys.modules.
    package = sys.modules[__name__.rpartition(".")[0]]
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in _NOT_TYPES or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"fm_local.nodes.{info.name}")
        kind = getattr(module, "KIND", None)
        if isinstance(kind, Kind):
            kinds.append(kind)
    return tuple(sorted(kinds, key=lambda k: (k.order, k.name)))


KINDS: tuple[Kind, ...] = _discover()

_BY_MODEL: dict[type, Kind] = {k.model: k for k in KINDS}
assert len(_BY_MODEL) == len({k.name for k in KINDS}) == len(KINDS), "a node type twice"


def kind_of(node: NodeBase) -> Kind:
    """The :class:`Kind` of a node (of a model class of ``NODE_TYPES``)."""
    return _BY_MODEL[type(node)]


def runs_on_worker(node: NodeBase) -> bool:
    return _BY_MODEL[type(node)].runs is Runs.WORKER


def body_nodes(node: NodeBase) -> list[Any]:
    """The nodes of a node's body graph (a loop's), else none."""
    return getattr(node, "body").nodes if kind_of(node).has_body else []  # noqa: B009
