"""JSON at the engine's boundaries: strict parsing, bounded encoding, clean text.

Invariants: a document a user hands us (workflow file, ``--input``, ``--data``,
an HTTP body) is parsed by :func:`strict_loads`, which refuses what JSON or our
storage cannot carry — NaN/Infinity, integers beyond Python's digit limit,
duplicate keys, nesting deeper than :data:`MAX_DEPTH` — naming the JSON path.
Every value the supervisor makes is encoded by :func:`bounded_dumps`, which
refuses a value over the output limit *before* building its text. Text columns
get :func:`clean_text`, so a lone surrogate never reaches SQLite.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import Any

# Deepest nesting of a JSON value anywhere in the engine (inputs, outputs, node
# inputs): deep enough for any real document, far from Python's recursion limit.
MAX_DEPTH = 200


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


# The one size limit on a value's JSON text: worker outputs, and every value the
# supervisor makes (transform/merge/loop outputs, resolved node inputs).
DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024
MAX_OUTPUT_BYTES = _env_int("FM_MAX_OUTPUT_BYTES", DEFAULT_MAX_OUTPUT_BYTES)

_DIGIT_LIMIT = sys.get_int_max_str_digits() or 4300
_MAX_INT_BITS = int(_DIGIT_LIMIT * 3.3219)  # bits of the largest int JSON can carry here
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

PathPart = str | int


def format_path(parts: Iterable[PathPart], root: str = "$") -> str:
    """``$.users[2].email`` style; keys that are not identifiers are quoted."""
    parts = list(parts)
    if len(parts) > 12:  # a deep path: its start and its end say enough
        head = format_path(parts[:6], root)
        tail = format_path(parts[-3:], "")
        return f"{head}…{tail} ({len(parts)} levels)"
    out = root
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p.isidentifier():
            out += f".{p}" if out else p
        else:
            out += f"[{json.dumps(p)}]"
    return out


class JsonProblem(ValueError):
    """A document we refuse; ``path`` is where (a JSON path), ``reason`` what.

    ``parts`` is the same place as keys and indexes (``("nodes", 2)``), for callers
    that print paths their own way; None when the text itself is not JSON."""

    def __init__(
        self, reason: str, path: str = "", *, parts: tuple[PathPart, ...] | None = None
    ) -> None:
        self.reason = reason
        self.path = path
        self.parts = parts
        super().__init__(f"{path}: {reason}" if path else reason)


class _Bad:
    """A value the parser met that JSON (or we) cannot carry; found by the walk."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


class _Obj(dict):  # type: ignore[type-arg]
    """A parsed object that had duplicate keys."""

    __slots__ = ("dups",)
    dups: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) == len(pairs):
        return d
    seen: set[str] = set()
    dups = []
    for k, _ in pairs:
        if k in seen and k not in dups:
            dups.append(k)
        seen.add(k)
    obj = _Obj(d)
    obj.dups = dups
    return obj


def _constant(name: str) -> _Bad:
    return _Bad(f"{name} is not valid JSON (use null or a string)")


def _int(text: str) -> Any:
    if len(text.lstrip("-")) > _DIGIT_LIMIT:
        return _Bad(
            f"an integer of {len(text.lstrip('-'))} digits is over the limit of {_DIGIT_LIMIT}"
        )
    return int(text)


def _float(text: str) -> Any:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        return _Bad(f"the number {text[:30]} is out of range (it would be Infinity)")
    return value


_DECODER = json.JSONDecoder(
    parse_constant=_constant, parse_int=_int, parse_float=_float, object_pairs_hook=_pairs
)


def strict_loads(text: str | bytes, *, root: str = "$", what: str = "") -> Any:
    """Parse JSON text, refusing what the engine cannot carry (see the module doc).

    Raises :class:`JsonProblem` whose message reads ``<what>: not valid JSON: line
    L, column C: <reason>`` for malformed text, or ``<path>: <reason>``."""
    prefix = f"{what}: " if what else ""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonProblem(f"{prefix}not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as e:
        msg = e.msg[:1].lower() + e.msg[1:]
        raise JsonProblem(
            f"{prefix}not valid JSON: line {e.lineno}, column {e.colno}: {msg}"
        ) from None
    except RecursionError:
        raise JsonProblem(f"{prefix}nested deeper than {MAX_DEPTH} levels") from None
    problem = find_problem(value)
    if problem is not None:
        parts, reason = problem
        raise JsonProblem(reason, format_path(parts, root), parts=tuple(parts))
    return value


def find_problem(value: Any, max_depth: int = MAX_DEPTH) -> tuple[list[PathPart], str] | None:
    """The first thing in ``value`` that is not storable JSON, as (path, reason):
    NaN/Infinity, parser markers, duplicate keys, non-string keys, other types,
    nesting deeper than ``max_depth``. None when it is clean."""
    # Iterative, so a deep value cannot exhaust the stack while we look at it.
    stack: list[tuple[Any, list[PathPart]]] = [(value, [])]
    while stack:
        v, path = stack.pop()
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if v.bit_length() > _MAX_INT_BITS:
                return path, f"an integer over {_DIGIT_LIMIT} digits"
            continue
        if t is float:
            if v != v or v in (float("inf"), float("-inf")):
                return path, f"{v!r} is not valid JSON (NaN and Infinity have no JSON form)"
            continue
        if len(path) >= max_depth:
            return path, f"nested deeper than {max_depth} levels"
        if isinstance(v, dict):
            dups = getattr(v, "dups", None)
            if dups:
                return path, f"duplicate key {dups[0]!r} (a key may appear once)"
            for k, item in reversed(list(v.items())):
                if not isinstance(k, str):
                    return path, f"key {k!r} is not a string"
                stack.append((item, [*path, k]))
        elif isinstance(v, (list, tuple)):
            for i in range(len(v) - 1, -1, -1):
                stack.append((v[i], [*path, i]))
        elif isinstance(v, _Bad):
            return path, v.why
        elif isinstance(v, int):  # bool handled above; IntEnum and the like
            continue
        elif isinstance(v, str):
            continue
        else:
            return path, f"a {type(v).__name__} is not a JSON value"
    return None


class ValueTooLarge(ValueError):
    """A value whose JSON text is over the limit (``size`` is a lower bound)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"{_mb(size)} or more of JSON; the limit is {_mb(limit)}")


class ValueTooDeep(ValueError):
    def __init__(self, depth: int) -> None:
        self.depth = depth
        super().__init__(f"nested deeper than {depth} levels")


def _mb(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    return f"{n} bytes"


def json_size(value: Any, limit: int, max_depth: int = MAX_DEPTH) -> int:
    """A lower bound of the size of ``value``'s JSON text, computed without building
    it; raises :class:`ValueTooLarge` as soon as it passes ``limit`` and
    :class:`ValueTooDeep` past ``max_depth`` levels (recursion is bounded by it)."""
    n = _size(value, limit, max_depth)
    if n > limit:
        raise ValueTooLarge(n, limit)
    return n


def _size(v: Any, budget: int, depth: int) -> int:
    t = type(v)
    if t is str:
        return len(v) + 2
    if t is dict or t is list or isinstance(v, (dict, list, tuple)):
        if depth <= 0:
            raise ValueTooDeep(MAX_DEPTH)
        if isinstance(v, dict):
            n = 2
            for k, x in v.items():
                tx = type(x)
                if tx is str:
                    n += len(k) + len(x) + 6
                elif tx is int or tx is float or tx is bool or x is None:
                    n += len(k) + 8
                else:
                    n += len(k) + 4 + _size(x, budget - n, depth - 1)
                if n > budget:
                    raise ValueTooLarge(n, budget)
            return n
        n = 2 + len(v)
        for x in v:
            tx = type(x)
            if tx is str:
                n += len(x) + 2
            elif tx is int or tx is float or tx is bool or x is None:
                n += 4
            else:
                n += _size(x, budget - n, depth - 1)
            if n > budget:
                raise ValueTooLarge(n, budget)
        return n
    return 4


def _not_json(o: Any) -> Any:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


# json.dumps(value, separators=(",", ":"), allow_nan=False), made once: json.dumps
# with arguments builds a new encoder per call, a third of the cost of a small
# value. Without a check for cycles (a cycle is too deep: RecursionError).
_c_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_compact: Any = (
    _c_encoder(
        None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    if _c_encoder is not None
    else None
)


def _encode(value: Any) -> str:
    """Compact JSON text; a cycle or too deep a value raises RecursionError."""
    if _compact is None:
        return json.dumps(value, separators=(",", ":"), allow_nan=False, check_circular=False)
    return "".join(_compact(value, 0))


def compact_dumps(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"), allow_nan=False)``, faster;
    a cycle raises ``ValueError`` as there."""
    try:
        return _encode(value)
    except RecursionError:
        raise ValueError("Circular reference detected (or a value nested too deeply)") from None


def bounded_dumps(value: Any, limit: int | None = None) -> str:
    """Compact JSON text of ``value``; raises :class:`ValueTooLarge`,
    :class:`ValueTooDeep`, or ``ValueError``/``TypeError`` for what is not JSON."""
    lim = MAX_OUTPUT_BYTES if limit is None else limit
    t = type(value)
    if t is not str and t is not int and t is not bool and value is not None:
        json_size(value, lim)
    try:
        text = _encode(value)
    except RecursionError:
        raise ValueTooDeep(MAX_DEPTH) from None
    if len(text) > lim:
        raise ValueTooLarge(len(text), lim)
    return text


def clean_text(text: str) -> str:
    """``text`` as valid UTF-8: lone surrogates become ``\\udXXX`` escapes."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def clean(value: Any) -> Any:
    """``clean_text`` for a str; anything else unchanged."""
    return clean_text(value) if isinstance(value, str) else value
