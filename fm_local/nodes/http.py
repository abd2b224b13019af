"""The ``http`` node's declaration: a worker makes one request (its runner:
:mod:`fm_local.runners.http`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from fm_local import expr
from fm_local.model import NodeBase
from fm_local.nodes.kind import Kind, Runs, Scope, io_lane


class HttpNode(NodeBase):
    type: Literal["http"]
    method: str = "GET"
    url: str
    headers: dict[str, Any] = {}
    query: dict[str, Any] = {}
    json_body: Any = Field(default=None, alias="json")
    body: Any = None

    @model_validator(mode="after")
    def _one_body(self) -> HttpNode:
        if self.json_body is not None and self.body is not None:
            raise ValueError("give either 'json' or 'body', not both")
        return self


def task(node: HttpNode, scope: Scope) -> dict[str, Any]:
    # One rendering of all the fields: one time, step and memory budget for the node.
    spec: dict[str, Any] = expr.render_field(_fields(node), scope)
    return {**spec, "timeout": node.timeout}


# The fields a request renders, per node (the same dict each time: its render plan
# is kept, expr.render_field).
_FIELDS: dict[int, tuple[HttpNode, dict[str, Any]]] = {}


def _fields(node: HttpNode) -> dict[str, Any]:
    entry = _FIELDS.get(id(node))
    if entry is None or entry[0] is not node:
        if len(_FIELDS) >= 4096:
            _FIELDS.clear()
        fields = {
            "method": node.method,
            "url": node.url,
            "headers": node.headers,
            "query": node.query,
            "json": node.json_body,
            "body": node.body,
        }
        _FIELDS[id(node)] = entry = (node, fields)
    return entry[1]


_TEMPLATES = (
    ("method", "method"),
    ("url", "url"),
    ("headers", "headers"),
    ("query", "query"),
    ("json", "json_body"),
    ("body", "body"),
)

KIND = Kind("http", HttpNode, Runs.WORKER, templates=_TEMPLATES, task=task, lane=io_lane, order=30)
