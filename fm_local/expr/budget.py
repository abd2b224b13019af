"""Limits, the error type, the budget of one evaluation (:class:`_Ctx`) and cost estimates.

Every operation that could allocate or loop in C asks these for its cost first:
steps (:meth:`_Ctx.charge`), memory (:meth:`_Ctx.alloc`), sizes and integer bits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

# -- Limits ---------------------------------------------------------------------------

MAX_SOURCE = 10_000  # characters of one expression
MAX_DEPTH = 100  # nesting depth of the syntax tree
MAX_STR = 1_000_000  # characters of any string an operation produces
MAX_SEQ = 1_000_000  # elements of any list/tuple/set/dict/range an operation produces
MAX_INT_BITS = 4096  # bits of any integer an operation produces
MAX_MEMORY = 100_000_000  # approximate bytes one evaluation may allocate, cumulatively
TIME_LIMIT = 1.0  # seconds of wall time for one evaluation (or one render)
MAX_STEPS = 5_000_000  # interpreted steps plus the estimated cost of bulk operations

_CHECK_EVERY = 1000  # steps between two looks at the clock
_MAX_INT_LITERAL_DIGITS = 5000  # int("...") longer than this cannot fit MAX_INT_BITS anyway
_MAX_ROUND_DIGITS = 1000  # round(x, -n) computes 10**n; keep n small
_MAX_TEMPLATE_TRIES = 50  # candidate closing "}}" tried for one "{{"
_REASON_MAX = 300  # characters of one error reason

# Rough per-object costs used by the memory budget: a list slot, a set slot, a dict
# entry, and a small object created per element (split results, items() tuples).
_SLOT = 8
_SET_SLOT = 32
_DICT_SLOT = 64
_SMALL_OBJECT = 64

_NoneType = type(None)


class ExpressionError(Exception):
    """An expression failed to parse, was refused, or failed while evaluating.

    ``str(error)`` is one line: the reason. ``expression`` holds the source text.
    """

    def __init__(self, message: str, expression: str = "") -> None:
        message = _one_line(message)
        super().__init__(message)
        self.message = message
        self.expression = expression

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.expression))


def _one_line(text: str) -> str:
    # Some Python messages embed a full repr (float("<1 MB>")): cut before collapsing.
    text = " ".join(str(text)[: 2 * _REASON_MAX].split())
    if len(text) > _REASON_MAX:
        text = text[: _REASON_MAX - 3] + "..."
    return text


def _tname(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _short_repr(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:60] + "...") if len(value) > 60 else repr(value)
    if isinstance(value, int | float | bool) or value is None:
        return repr(value) if not isinstance(value, int) or value.bit_length() < 200 else "<int>"
    return f"<{_tname(value)}>"


def _str_too_long() -> ExpressionError:
    return ExpressionError(f"string too long (limit {MAX_STR} characters)")


def _seq_too_long() -> ExpressionError:
    return ExpressionError(f"sequence too long (limit {MAX_SEQ} elements)")


def _int_too_large() -> ExpressionError:
    return ExpressionError(f"integer too large (limit {MAX_INT_BITS} bits)")


# -- Evaluation context ---------------------------------------------------------------


class _Ctx:
    """Budgets and variables of one evaluation (or of one whole render)."""

    __slots__ = ("scope", "log", "locals", "steps", "check_at", "deadline", "memory")

    def __init__(
        self,
        scope: Mapping[str, Any],
        log: Callable[[str], None] | None,
        time_limit: float | None,
    ) -> None:
        self.scope = scope
        self.log = log
        self.locals: dict[str, Any] | None = None  # comprehension variables
        self.steps = 0
        self.check_at = _CHECK_EVERY
        limit = TIME_LIMIT if time_limit is None else time_limit
        self.deadline = time.monotonic() + limit
        self.memory = 0

    def check(self) -> None:
        if self.steps > MAX_STEPS:
            raise ExpressionError("expression exceeded its step limit")
        if time.monotonic() > self.deadline:
            raise ExpressionError("expression exceeded its time limit")
        self.check_at = self.steps + _CHECK_EVERY

    def charge(self, steps: int) -> None:
        """Account for work done in C (sorting, searching, copying) before doing it."""
        self.steps += steps
        if self.steps >= self.check_at:
            self.check()

    def remaining(self) -> int:
        return max(0, MAX_STEPS - self.steps)

    def alloc(self, nbytes: int) -> None:
        self.memory += nbytes
        if self.memory > MAX_MEMORY:
            raise ExpressionError("expression exceeded its memory limit")


def _str_bytes(s: str) -> int:
    # isascii() is O(1) on CPython; non-ASCII strings use up to 4 bytes a character.
    return 49 + (len(s) if s.isascii() else 4 * len(s))


# -- Cost estimates -------------------------------------------------------------------

_ATOMIC: frozenset[type] = frozenset({int, float, bool, _NoneType, range})
_CONTAINERS: frozenset[type] = frozenset({list, tuple, dict, set, frozenset})
_STR_STEP_SHIFT = 7  # comparing or scanning 128 characters costs about one step


def _weight(ctx: _Ctx, value: Any) -> int:
    """Upper bound on the cost of comparing, hashing or scanning ``value`` once.

    Counts every element of nested containers as unfolded (comparison does not share
    work between repeated references) and long strings by length. Stops early as soon
    as the total exceeds the remaining step budget, so the walk itself is bounded.
    """
    t = type(value)
    if t is str:
        return 1 + (len(value) >> _STR_STEP_SHIFT)
    if t in _ATOMIC:
        return 1
    cap = ctx.remaining()
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str:
            total += 1 + (len(v) >> _STR_STEP_SHIFT)
        elif t in _ATOMIC:
            total += 1
        elif t is list or t is tuple or t is set or t is frozenset:
            total += 1 + len(v)
            if total > cap:
                return total
            for item in v:
                ti = type(item)
                if ti is str:
                    total += len(item) >> _STR_STEP_SHIFT
                elif ti not in _ATOMIC:
                    stack.append(item)
        elif isinstance(v, Mapping):
            total += 1 + 2 * len(v)
            if total > cap:
                return total
            for key, item in v.items():
                for x in (key, item):
                    tx = type(x)
                    if tx is str:
                        total += len(x) >> _STR_STEP_SHIFT
                    elif tx not in _ATOMIC:
                        stack.append(x)
        else:
            total += 1
        if total > cap:
            return total
    return total


def _charge_weight(ctx: _Ctx, value: Any, factor: int = 1) -> None:
    ctx.charge(_weight(ctx, value) * factor)


def _charge_key(ctx: _Ctx, key: Any) -> None:
    """Hashing a tuple is linear; equal-but-distinct long string keys compare in full."""
    t = type(key)
    if t is str:
        if len(key) >> _STR_STEP_SHIFT:
            ctx.charge(len(key) >> _STR_STEP_SHIFT)
    elif t is tuple or t is frozenset:
        _charge_weight(ctx, key)


def _charge_search(ctx: _Ctx, needle: Any, haystack: Any) -> None:
    """Cost of a linear search: at most len(haystack) comparisons, each bounded by
    both the needle's and the element's weight."""
    n = len(haystack)
    w = _weight(ctx, needle)
    quick = n * w
    if quick <= ctx.remaining():
        ctx.charge(max(quick, 1))
    else:
        ctx.charge(min(quick, _weight(ctx, haystack)))


def _charge_compare(ctx: _Ctx, a: Any, b: Any) -> None:
    ta = type(a)
    tb = type(b)
    if ta is str and tb is str:
        n = min(len(a), len(b)) >> _STR_STEP_SHIFT
        if n:
            ctx.charge(n)
    elif ta in _CONTAINERS and tb in _CONTAINERS:
        # Comparing stops at the shorter side, so its weight bounds the work.
        ctx.charge(_weight(ctx, a if len(a) <= len(b) else b))


def _text_size(value: Any, cap: int) -> int:
    """Upper bound on len(str(value)), len(repr(value)) and its compact JSON length.

    Stops as soon as the total exceeds ``cap``.
    """
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str:
            n = len(v)
            if v.isprintable():
                total += n + 2 + v.count("\\") + v.count("'") + v.count('"')
            else:
                total += 10 * n + 2  # \U0001xxxx is the longest escape
        elif t is bool or v is None:
            total += 5
        elif t is int:
            total += v.bit_length() * 31 // 100 + 2
        elif t is float:
            total += 24
        elif t is list or t is tuple or t is set or t is frozenset:
            total += 11 + 2 * len(v)  # brackets or "frozenset({...})", separators
            if total > cap:
                return total
            stack.extend(v)
        elif isinstance(v, Mapping):
            total += 2 + 4 * len(v)
            if total > cap:
                return total
            for key, item in v.items():
                stack.append(key)
                stack.append(item)
        else:
            # Foreign objects only come from the engine's own scope, never from the
            # expression, so asking them for their text is safe.
            total += max(len(str(v)), len(repr(v)))
        if total > cap:
            return total
    return total


def _to_str(ctx: _Ctx, value: Any, use_repr: bool = False) -> str:
    t = type(value)
    if t is str and not use_repr:
        return value
    if t is int or t is float or t is bool or value is None:
        return repr(value)
    size = _text_size(value, MAX_STR)
    if size > MAX_STR:
        raise _str_too_long()
    ctx.charge(size >> _STR_STEP_SHIFT)
    text = repr(value) if use_repr else str(value)
    ctx.alloc(_str_bytes(text))
    return text


def _iterable(value: Any) -> Any:
    """The value itself when it is something an expression may iterate over."""
    t = type(value)
    if t is list or t is tuple or t is str or t is dict or t is range:
        return value
    if isinstance(value, list | tuple | str | set | frozenset | range | Mapping):
        return value
    raise ExpressionError(f"cannot iterate over {_tname(value)}")


def _check_result(r: Any, a: Any, b: Any) -> Any:
    """Post-check the result of an operation whose size was bounded beforehand."""
    t = type(r)
    if t is int:
        if r.bit_length() > MAX_INT_BITS:
            raise _int_too_large()
    elif t is float:
        if math.isinf(r) and not (_is_inf(a) or _is_inf(b)):
            raise ExpressionError("float overflow")
    elif t is complex:
        raise ExpressionError("result is a complex number")
    elif t is str:
        if len(r) > MAX_STR:
            raise _str_too_long()
    elif t in _CONTAINERS:
        if len(r) > MAX_SEQ:
            raise _seq_too_long()
    return r


def _is_inf(x: Any) -> bool:
    return type(x) is float and math.isinf(x)
