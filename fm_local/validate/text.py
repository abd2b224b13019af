"""Problems and the helpers that write their one line: JSON paths, what the user
wrote, "did you mean" hints (and the budget that keeps them linear), the names an
expression may read, and reading keys as the user spelled them."""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic.alias_generators import to_snake

from fm_local import jsonio
from fm_local.prepare import message_path

PathPart = str | int


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) in a workflow document."""

    path: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"warning: {text}" if self.severity == "warning" else text


# --- helpers ------------------------------------------------------------------------


def _json_problem(e: jsonio.JsonProblem, what: str) -> str:
    """``<what>: <path>: <reason>``, the path in this module's style (``nodes[2]``)."""
    if e.parts is None:
        return str(e)  # malformed text: strict_loads already named the file
    where = _json_path(e.parts)
    return f"{what}: {where}: {e.reason}" if where else f"{what}: {e.reason}"


def _json_path(parts: Sequence[PathPart]) -> str:
    """:func:`_format_path`, shortened to its start and end when it is deep (as
    ``jsonio.format_path`` does), so that the line stays readable."""
    if len(parts) > 12:
        head = _format_path(parts[:6])
        tail = _format_path(parts[-3:])
        return f"{head}…{tail} ({len(parts)} levels)"
    return _format_path(parts)


_format_path = message_path


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _got(v: Any) -> str:
    """``a string 'x'``, ``an array``: what the user wrote, briefly."""
    kind = _json_type(v)
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        text = json.dumps(v) if not isinstance(v, str) else repr(v)
        if len(text) <= 40:
            return f"{kind} {text}"
    if isinstance(v, bool):
        return "true" if v else "false"
    return kind


def _value(v: Any) -> str:
    """What the user wrote, briefly: ``'x'``, ``-1``, ``an array``."""
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        text = repr(v) if isinstance(v, str) else json.dumps(v)
        if len(text) <= 40:
            return text
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    return _json_type(v)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _short(text: str, limit: int = 60) -> str:
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _suggest(name: str, candidates: Iterable[str]) -> str:
    return _hint(name, _Budget(), _Names(candidates))


# Name comparisons "did you mean" hints may cost in one document. Hints are exact
# until then and left out after, so that thousands of misspelled names among
# thousands of ids (each hint compares one name with every id) stay linear.
HINT_BUDGET = 500_000


class _Budget:
    __slots__ = ("left",)

    def __init__(self, left: int = HINT_BUDGET) -> None:
        self.left = left

    def take(self, n: int) -> bool:
        if n > self.left:
            return False
        self.left -= n
        return True


def _best_match(word: str, names: Iterable[str], cutoff: float = 0.6) -> tuple[float, str] | None:
    """``difflib.get_close_matches(word, names, n=1, cutoff)`` with its score: the
    largest (ratio, name). A maximum, so the best of a union of sets is the best of
    each set's best."""
    s = difflib.SequenceMatcher()
    s.set_seq2(word)
    best: tuple[float, str] | None = None
    for x in names:
        s.set_seq1(x)
        if s.real_quick_ratio() >= cutoff and s.quick_ratio() >= cutoff:
            r = s.ratio()
            if r >= cutoff and (best is None or (r, x) > best):
                best = (r, x)
    return best


class _Names:
    """A set of names to suggest from. It remembers the best match of each word
    asked, so a graph that misspells the same name in many nodes compares it with
    all of its names once, not once per node."""

    __slots__ = ("names", "_best")

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        self._best: dict[str, tuple[float, str] | None] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def knows(self, word: str) -> bool:
        return word in self._best

    def best(self, word: str) -> tuple[float, str] | None:
        if word not in self._best:
            self._best[word] = _best_match(word, self.names)
        return self._best[word]


def _hint(word: str, budget: _Budget, *sets: _Names) -> str:
    """`` (did you mean 'x'?)`` for the closest name in any of ``sets``; "" when
    there is none, or when the document's hint budget cannot pay for the search."""
    cost = sum(len(s.names) for s in sets if not s.knows(word))
    if cost and not budget.take(cost):
        return ""
    found = [b for b in (s.best(word) for s in sets) if b is not None]
    return f" (did you mean '{max(found)[1]}'?)" if found else ""


class _Scope:
    """The names an expression of one graph may read: the graph's own layer, then
    the enclosing graphs' layers. Linked, not copied, so that a loop body costs
    what its own nodes cost however big the graph around it is."""

    __slots__ = ("layer", "outer")

    def __init__(self, layer: _Names, outer: _Scope | None = None) -> None:
        self.layer = layer
        self.outer = outer

    def __contains__(self, name: object) -> bool:
        s: _Scope | None = self
        while s is not None:
            if name in s.layer:
                return True
            s = s.outer
        return False

    def layers(self) -> list[_Names]:
        out = []
        s: _Scope | None = self
        while s is not None:
            out.append(s.layer)
            s = s.outer
        return out


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    out = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


@functools.cache
def _snake(camel: str) -> str:
    return to_snake(camel)  # a few regex substitutions: worth remembering per key


def _raw_key(raw: Any, camel: str) -> str:
    """The spelling the user wrote for a key (camelCase or snake_case)."""
    if isinstance(raw, dict):
        if camel in raw:
            return camel
        snake = _snake(camel)
        if snake in raw:
            return snake
        if camel == "json" and "json_body" in raw:
            return "json_body"
    return camel


def _child(raw: Any, key: PathPart) -> Any:
    if isinstance(raw, dict) and isinstance(key, str):
        return raw.get(key)
    if isinstance(raw, list) and isinstance(key, int) and 0 <= key < len(raw):
        return raw[key]
    return None


def _list(raw: Any, key: str) -> list[Any]:
    v = raw.get(key) if isinstance(raw, dict) else None
    return v if isinstance(v, list) else []


def _node_prefix(node_id: str | None) -> str:
    return f"node '{node_id}': " if node_id else ""
