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
    return {
        "method": expr.render_value(node.method, scope),
        "url": expr.render_value(node.url, scope),
        "headers": expr.render_value(node.headers, scope),
        "query": expr.render_value(node.query, scope),
        "json": expr.render_value(node.json_body, scope),
        "body": expr.render_value(node.body, scope),
        "timeout": node.timeout,
    }


_TEMPLATES = (
    ("method", "method"),
    ("url", "url"),
    ("headers", "headers"),
    ("query", "query"),
    ("json", "json_body"),
    ("body", "body"),
)

KIND = Kind("http", HttpNode, Runs.WORKER, templates=_TEMPLATES, task=task, lane=io_lane, order=30)
