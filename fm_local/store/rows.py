"""Values as they go into rows (JSON text, checked integers, new ids) and SQL
fragments shared by the verbs and the queries."""

from __future__ import annotations

import json
from typing import Any

from fm_local.errors import UsageError
from fm_local.jsonio import INT64_MAX, INT64_MIN, compact_dumps, find_problem, format_path


def _at_or_under(path: str) -> tuple[str, tuple[Any, ...]]:
    """SQL (and its arguments) for "``path`` itself, or a node instance inside it":
    ``a`` matches ``a``, ``a.b`` and ``a[3].b``, not ``ab``."""
    return "(path=? OR substr(path, 1, ?) IN (?, ?))", (
        path,
        len(path) + 1,
        path + ".",
        path + "[",
    )


def _check_value(value: Any, what: str) -> None:
    """Refuse a value that is not storable JSON (exit 2, naming where)."""
    problem = find_problem(value)
    if problem is not None:
        raise UsageError(f"{format_path(problem[0], what)}: {problem[1]}")


def _check_int64(value: int, what: str) -> None:
    if not INT64_MIN <= value <= INT64_MAX:
        raise UsageError(f"{what} {value} does not fit in 64 bits")


def dumps(value: Any) -> str:
    return compact_dumps(value)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def new_execution_id() -> str:
    import uuid  # here, not at the top: commands that only read start faster

    return uuid.uuid4().hex[:12]


def new_trace_id() -> str:
    import secrets  # here, not at the top: commands that only read start faster

    return "trace-" + secrets.token_hex(6)


def glob_escape(text: str) -> str:
    """Escape GLOB's special characters so ``text`` matches itself."""
    return "".join(f"[{c}]" if c in "[*?" else c for c in text)
