"""Dead-letter replay: a one-node workflow that runs a failed node instance again
with the input it was recorded with (SPEC §8, ``fm dlq replay``).

The node's templated fields are replaced by the values they had when it failed,
so the replay needs none of the nodes it depended on.
"""

from __future__ import annotations

import copy
import re
from typing import Any

_INDEX = re.compile(r"\[\d+\]")


def _escape(value: Any) -> Any:
    """Recorded values are data, not templates: make any '{{' in them literal."""
    if isinstance(value, str):
        return value.replace("{{", "{{ '{{' }}") if "{{" in value else value
    if isinstance(value, list):
        return [_escape(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    return value


def find_node(doc: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The node spec at a node path (``each[3].enrich`` -> node enrich of each's body)."""
    parts = _INDEX.sub("", path).split(".")
    nodes = doc.get("nodes", [])
    node = None
    for i, part in enumerate(parts):
        node = next((n for n in nodes if n.get("id") == part), None)
        if node is None:
            return None
        if i < len(parts) - 1:
            nodes = (node.get("body") or {}).get("nodes", [])
    return node


def replay_document(doc: dict[str, Any], dead: dict[str, Any]) -> dict[str, Any]:
    import json

    node = find_node(doc, dead["path"])
    if node is None:
        raise ValueError(f"node '{dead['path']}' is not in the workflow any more")
    spec = copy.deepcopy(node)
    recorded = json.loads(dead["input"]) if dead.get("input") else None
    if isinstance(recorded, dict):
        kind = spec.get("type")
        if kind == "python":
            spec["args"] = _escape(recorded.get("args") or {})
        elif kind == "http":
            for key in ("method", "url", "headers", "query", "json", "body"):
                if recorded.get(key) is not None:
                    spec[key] = _escape(recorded[key])
        elif kind == "shell":
            for key in ("command", "env", "cwd"):
                if recorded.get(key) is not None:
                    spec[key] = _escape(recorded[key])
    for key in (
        "errorStrategy",
        "fallbackNodeId",
        "gotoNodeId",
        "error_strategy",
        "fallback_node_id",
        "goto_node_id",
        "compensate",
    ):
        spec.pop(key, None)
    settings = {k: v for k, v in (doc.get("settings") or {}).items() if k != "signalHandlers"}
    return {
        "name": f"{doc['name']}:replay",
        "description": f"replay of dead letter {dead['id']} ({dead['path']} of execution {dead['execution_id']})",
        "settings": settings,
        "nodes": [spec],
        "edges": [],
    }


# Model fields a recorded task input replaces, per node type.
RECORDED_FIELDS = {
    "python": {"args": "args"},
    "http": {
        "method": "method",
        "url": "url",
        "headers": "headers",
        "query": "query",
        "json": "json_body",
        "body": "body",
    },
    "shell": {"command": "command", "env": "env", "cwd": "cwd"},
}


def node_with_input(node: Any, recorded: Any) -> Any:
    """A copy of a node model whose templated fields hold the recorded values."""
    fields = RECORDED_FIELDS.get(getattr(node, "type", ""), {})
    update: dict[str, Any] = {}
    if isinstance(recorded, dict):
        for key, attr in fields.items():
            if recorded.get(key) is not None:
                update[attr] = _escape(recorded[key])
    update["error_strategy"] = "fail"
    update["compensate"] = None
    return node.model_copy(update=update)


def model_node(nodes: list[Any], path: str) -> Any:
    """The node model at a node path (``each[3].enrich``), or None."""
    parts = _INDEX.sub("", path).split(".")
    node = None
    for i, part in enumerate(parts):
        node = next((n for n in nodes if n.id == part), None)
        if node is None:
            return None
        if i < len(parts) - 1:
            body = getattr(node, "body", None)
            nodes = body.nodes if body is not None else []
    return node
