"""Expressions and ``{{ }}`` templates (SPEC §7): a safe evaluator of Python expressions.

Invariant: nothing an expression does can escape the whitelist, allocate beyond the
size limits or run past its time limit. Source text is parsed with :mod:`ast`, checked
against a whitelist of node types, names, functions and methods, and then walked by a
small interpreter; user code is never compiled to bytecode. Every operation that could
allocate or loop in C is pre-checked (sizes, integer bits, comparison cost) before it
runs, every interpreted step counts against a step and time budget, and every failure
inside an evaluation surfaces as :class:`ExpressionError` with a one-line reason.

Decisions callers should know:

- A builtin name (``len``, ``now``, ``log``...) is the builtin only where it is called;
  anywhere else it is an ordinary name read from the scope (so a node called ``log``
  stays reachable as ``log.output``).
- ``a.b`` on a mapping is ``a.get("b")`` (``None`` when missing); ``a["b"]`` keeps
  Python semantics.
- Values returned by :meth:`Expr.evaluate` are plain data: tuples, sets and ranges the
  expression built become lists (sets sorted when their items are comparable).
- A template string that must contain a literal ``{{`` can write ``{{ '{{' }}``.
- A shell script (:func:`render_shell`) quotes every template's text as one shell word
  (:func:`shlex.quote`), except ``{{ raw: expr }}`` and a template that is only a string
  literal (the author's own text, such as the ``{{ '{{' }}`` escape). Elsewhere
  ``raw:`` changes nothing: templates are never quoted outside shell scripts.
"""

from __future__ import annotations

import ast
import json
import math
import re
import shlex
import time
import warnings
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, NoReturn

__all__ = [
    "FUNCTION_NAMES",
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_MEMORY",
    "MAX_SEQ",
    "MAX_SOURCE",
    "MAX_STEPS",
    "MAX_STR",
    "TIME_LIMIT",
    "Expr",
    "ExpressionError",
    "Template",
    "check_syntax",
    "compile_expr",
    "compile_template",
    "render_shell",
    "render_value",
    "value_names",
]

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


# -- Operators ------------------------------------------------------------------------


def _is_seq(x: Any) -> bool:
    return isinstance(x, str | list | tuple)


def _seq_alloc(ctx: _Ctx, r: Any) -> None:
    if isinstance(r, str):
        ctx.alloc(_str_bytes(r))
    else:
        ctx.alloc(56 + _SLOT * len(r))


def _check_seq_len(a: Any, n: int) -> None:
    if isinstance(a, str):
        if n > MAX_STR:
            raise _str_too_long()
    elif n > MAX_SEQ:
        raise _seq_too_long()


def _op_add(ctx: _Ctx, a: Any, b: Any) -> Any:
    ta = type(a)
    tb = type(b)
    if ta is int and tb is int:
        r = a + b
        if r.bit_length() > MAX_INT_BITS:
            raise _int_too_large()
        return r
    if _is_seq(a) and _is_seq(b):
        _check_seq_len(a, len(a) + len(b))
        r = a + b
        _seq_alloc(ctx, r)
        return r
    return _check_result(a + b, a, b)


def _op_sub(ctx: _Ctx, a: Any, b: Any) -> Any:
    return _check_result(a - b, a, b)


def _op_mul(ctx: _Ctx, a: Any, b: Any) -> Any:
    ta = type(a)
    tb = type(b)
    if ta is int and tb is int:
        # The product has at most the sum of the operands' bits.
        if a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
            raise _int_too_large()
        return _check_result(a * b, a, b)
    if _is_seq(a) and isinstance(b, int):
        _check_seq_len(a, len(a) * b)
        r = a * b
        _seq_alloc(ctx, r)
        return r
    if isinstance(a, int) and _is_seq(b):
        _check_seq_len(b, len(b) * a)
        r = a * b
        _seq_alloc(ctx, r)
        return r
    return _check_result(a * b, a, b)


def _op_truediv(ctx: _Ctx, a: Any, b: Any) -> Any:
    return _check_result(a / b, a, b)


def _op_floordiv(ctx: _Ctx, a: Any, b: Any) -> Any:
    return _check_result(a // b, a, b)


def _op_mod(ctx: _Ctx, a: Any, b: Any) -> Any:
    if isinstance(a, str):
        # printf-style formatting can pad to any width ("%9999999d"): refuse it.
        raise ExpressionError("'%' string formatting is not allowed; use an f-string")
    return _check_result(a % b, a, b)


def _op_pow(ctx: _Ctx, a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and b > 0:
        # log2|a| >= bit_length-1, so this refuses only results that are surely too big;
        # whatever passes is at most twice the limit and cheap to compute and post-check.
        if (abs(a).bit_length() - 1) * b > MAX_INT_BITS:
            raise _int_too_large()
    return _check_result(a**b, a, b)


def _op_lshift(ctx: _Ctx, a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and a and b > 0:
        if a.bit_length() + b > MAX_INT_BITS:
            raise _int_too_large()
    return _check_result(a << b, a, b)


def _op_rshift(ctx: _Ctx, a: Any, b: Any) -> Any:
    return _check_result(a >> b, a, b)


def _op_bitor(ctx: _Ctx, a: Any, b: Any) -> Any:
    if isinstance(a, set | frozenset | Mapping) and isinstance(b, set | frozenset | Mapping):
        if len(a) + len(b) > MAX_SEQ:
            raise _seq_too_long()
        ctx.charge(len(a) + len(b))
        ctx.alloc(_DICT_SLOT * (len(a) + len(b)))
    return _check_result(a | b, a, b)


def _op_bitand(ctx: _Ctx, a: Any, b: Any) -> Any:
    if isinstance(a, set | frozenset) and isinstance(b, set | frozenset):
        ctx.charge(min(len(a), len(b)))
    return _check_result(a & b, a, b)


def _op_bitxor(ctx: _Ctx, a: Any, b: Any) -> Any:
    if isinstance(a, set | frozenset) and isinstance(b, set | frozenset):
        ctx.charge(len(a) + len(b))
    return _check_result(a ^ b, a, b)


_BinOp = Callable[[_Ctx, Any, Any], Any]
_BINOPS: dict[type, _BinOp] = {
    ast.Add: _op_add,
    ast.Sub: _op_sub,
    ast.Mult: _op_mul,
    ast.Div: _op_truediv,
    ast.FloorDiv: _op_floordiv,
    ast.Mod: _op_mod,
    ast.Pow: _op_pow,
    ast.LShift: _op_lshift,
    ast.RShift: _op_rshift,
    ast.BitOr: _op_bitor,
    ast.BitAnd: _op_bitand,
    ast.BitXor: _op_bitxor,
}


def _un_neg(v: Any) -> Any:
    return -v


def _un_pos(v: Any) -> Any:
    return +v


def _un_not(v: Any) -> Any:
    return not v


def _un_invert(v: Any) -> Any:
    if type(v) is not int:
        raise ExpressionError(f"bad operand type for unary ~: '{_tname(v)}'")
    return ~v


_UNARYOPS: dict[type, Callable[[Any], Any]] = {
    ast.USub: _un_neg,
    ast.UAdd: _un_pos,
    ast.Not: _un_not,
    ast.Invert: _un_invert,
}


def _cmp_eq(ctx: _Ctx, a: Any, b: Any) -> Any:
    _charge_compare(ctx, a, b)
    return a == b


def _cmp_ne(ctx: _Ctx, a: Any, b: Any) -> Any:
    _charge_compare(ctx, a, b)
    return a != b


def _cmp_lt(ctx: _Ctx, a: Any, b: Any) -> Any:
    _charge_compare(ctx, a, b)
    return a < b


def _cmp_le(ctx: _Ctx, a: Any, b: Any) -> Any:
    _charge_compare(ctx, a, b)
    return a <= b


def _cmp_gt(ctx: _Ctx, a: Any, b: Any) -> Any:
    _charge_compare(ctx, a, b)
    return a > b


def _cmp_ge(ctx: _Ctx, a: Any, b: Any) -> Any:
    _charge_compare(ctx, a, b)
    return a >= b


def _cmp_is(ctx: _Ctx, a: Any, b: Any) -> Any:
    return a is b


def _cmp_is_not(ctx: _Ctx, a: Any, b: Any) -> Any:
    return a is not b


def _contains(ctx: _Ctx, needle: Any, haystack: Any) -> bool:
    t = type(haystack)
    if t is str:
        if type(needle) is str:
            ctx.charge((len(needle) + len(haystack)) >> _STR_STEP_SHIFT)
        return needle in haystack
    if t is list or t is tuple:
        _charge_search(ctx, needle, haystack)
        return needle in haystack
    if t is range:
        if type(needle) is not int:
            ctx.charge(len(haystack))  # range scans linearly for non-int needles
        return needle in haystack
    if isinstance(haystack, Mapping | set | frozenset):
        _charge_key(ctx, needle)
        return needle in haystack
    if isinstance(haystack, str | list | tuple):
        _charge_search(ctx, needle, haystack)
        return needle in haystack
    raise ExpressionError(f"argument of type '{_tname(haystack)}' is not iterable")


def _cmp_in(ctx: _Ctx, a: Any, b: Any) -> Any:
    return _contains(ctx, a, b)


def _cmp_not_in(ctx: _Ctx, a: Any, b: Any) -> Any:
    return not _contains(ctx, a, b)


_CMPOPS: dict[type, _BinOp] = {
    ast.Eq: _cmp_eq,
    ast.NotEq: _cmp_ne,
    ast.Lt: _cmp_lt,
    ast.LtE: _cmp_le,
    ast.Gt: _cmp_gt,
    ast.GtE: _cmp_ge,
    ast.Is: _cmp_is,
    ast.IsNot: _cmp_is_not,
    ast.In: _cmp_in,
    ast.NotIn: _cmp_not_in,
}


# -- Builtin functions ----------------------------------------------------------------

_Args = list[Any]
_Kwargs = dict[str, Any]
_Builtin = Callable[[_Ctx, _Args, _Kwargs], Any]


def _one_arg(name: str, args: _Args) -> Any:
    if len(args) != 1:
        raise ExpressionError(f"{name}() takes exactly one argument ({len(args)} given)")
    return args[0]


def _b_len(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    return len(_one_arg("len", args))


def _minmax(name: str, fn: Callable[..., Any]) -> _Builtin:
    def call(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
        seq = _iterable(args[0]) if len(args) == 1 else args
        _charge_weight(ctx, seq)
        return fn(seq, **kwargs)

    call.__name__ = f"_b_{name}"
    return call


def _b_sum(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    if not 1 <= len(args) <= 2:
        raise ExpressionError(f"sum() takes 1 or 2 arguments ({len(args)} given)")
    seq = _iterable(args[0])
    start = args[1] if len(args) == 2 else kwargs.get("start", 0)
    ctx.charge(len(seq))
    # Numbers only: summing lists or strings is quadratic and can build huge values.
    for item in seq:
        if type(item) not in (int, float, bool):
            raise ExpressionError(f"sum() adds numbers only, not {_tname(item)}")
    if type(start) not in (int, float, bool):
        raise ExpressionError(f"sum() adds numbers only, not {_tname(start)}")
    return _check_result(sum(seq, start), 0, 0)


def _b_sorted(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    seq = _iterable(_one_arg("sorted", args))
    n = len(seq)
    _charge_weight(ctx, seq, max(1, n.bit_length() // 4))
    ctx.alloc(56 + _SLOT * n)
    return sorted(seq, **kwargs)


def _b_abs(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    return abs(_one_arg("abs", args))


def _b_round(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    ndigits = args[1] if len(args) > 1 else kwargs.get("ndigits")
    if isinstance(ndigits, int) and not -_MAX_ROUND_DIGITS <= ndigits <= _MAX_ROUND_DIGITS:
        # round(int, -n) computes 10**n.
        raise ExpressionError(f"round() ndigits must be within ±{_MAX_ROUND_DIGITS}")
    return _check_result(round(*args, **kwargs), 0, 0)


def _b_int(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    if args and isinstance(args[0], str) and len(args[0]) > _MAX_INT_LITERAL_DIGITS:
        raise _int_too_large()
    return _check_result(int(*args, **kwargs), 0, 0)


def _b_float(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    return float(*args)


def _b_str(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    if not args:
        return ""
    return _to_str(ctx, _one_arg("str", args))


def _b_bool(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    return bool(*args)


def _b_list(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    if not args:
        return []
    seq = _iterable(_one_arg("list", args))
    n = len(seq)
    if n > MAX_SEQ:
        raise _seq_too_long()
    ctx.charge(n)
    ctx.alloc(56 + _SLOT * n)
    return list(seq)


def _b_dict(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    if len(args) > 1:
        raise ExpressionError(f"dict() takes at most one argument ({len(args)} given)")
    source: Any = args[0] if args else ()
    if not isinstance(source, Mapping):
        source = _iterable(source)
    n = len(source) + len(kwargs)
    if n > MAX_SEQ:
        raise _seq_too_long()
    _charge_weight(ctx, source)
    ctx.alloc(_DICT_SLOT * n)
    return dict(source, **kwargs)


def _b_any(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    seq = _iterable(_one_arg("any", args))
    ctx.charge(len(seq))
    return any(seq)


def _b_all(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    seq = _iterable(_one_arg("all", args))
    ctx.charge(len(seq))
    return all(seq)


def _b_range(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    for a in args:
        if not isinstance(a, int):
            raise ExpressionError(f"range() takes integers, not {_tname(a)}")
    r = range(*args)
    try:
        n = len(r)
    except OverflowError:
        n = MAX_SEQ + 1
    if n > MAX_SEQ:
        raise ExpressionError(f"range too long (limit {MAX_SEQ} elements)")
    return r


def _b_now(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    if args:
        raise ExpressionError("now() takes no arguments")
    return time.time_ns() // 1_000_000


def _b_log(ctx: _Ctx, args: _Args, kwargs: _Kwargs) -> Any:
    parts = []
    total = 0
    for a in args:
        text = _to_str(ctx, a)
        total += len(text) + 1
        if total > MAX_STR:
            raise _str_too_long()
        parts.append(text)
    if ctx.log is not None:
        ctx.log(" ".join(parts))
    return None


_ANY_KW: frozenset[str] = frozenset({"*"})  # marker: any keyword is accepted

# name -> (implementation, keyword arguments it accepts)
_FUNCTIONS: dict[str, tuple[_Builtin, frozenset[str]]] = {
    "len": (_b_len, frozenset()),
    "min": (_minmax("min", min), frozenset({"default"})),
    "max": (_minmax("max", max), frozenset({"default"})),
    "sum": (_b_sum, frozenset({"start"})),
    "sorted": (_b_sorted, frozenset({"reverse"})),
    "abs": (_b_abs, frozenset()),
    "round": (_b_round, frozenset({"ndigits"})),
    "int": (_b_int, frozenset({"base"})),
    "float": (_b_float, frozenset()),
    "str": (_b_str, frozenset()),
    "bool": (_b_bool, frozenset()),
    "list": (_b_list, frozenset()),
    "dict": (_b_dict, _ANY_KW),
    "any": (_b_any, frozenset()),
    "all": (_b_all, frozenset()),
    "range": (_b_range, frozenset()),
    "now": (_b_now, frozenset()),
    "log": (_b_log, frozenset()),
}

#: Names that are functions when called (they never appear in ``Expr.names`` then).
FUNCTION_NAMES: frozenset[str] = frozenset(_FUNCTIONS)


def _check_kwargs(name: str, allowed: frozenset[str], kwargs: _Kwargs) -> None:
    if allowed is _ANY_KW:
        return
    for key in kwargs:
        if key not in allowed:
            raise ExpressionError(f"{name}() got an unexpected keyword argument {key!r}")


# -- Methods --------------------------------------------------------------------------

_Method = Callable[[_Ctx, Any, _Args, _Kwargs], Any]


def _no_kwargs(name: str, kwargs: _Kwargs) -> None:
    if kwargs:
        raise ExpressionError(f"{name}() takes no keyword arguments")


def _scan_cost(ctx: _Ctx, s: str, args: _Args) -> None:
    n = len(s)
    for a in args:
        if type(a) is str:
            n += len(a)
    if n >> _STR_STEP_SHIFT:
        ctx.charge(n >> _STR_STEP_SHIFT)


def _str_query(name: str) -> _Method:
    """Methods that scan the string and return a bool, int or short tuple."""
    fn = getattr(str, name)

    def call(ctx: _Ctx, s: str, args: _Args, kwargs: _Kwargs) -> Any:
        _scan_cost(ctx, s, args)
        return fn(s, *args, **kwargs)

    return call


def _str_shrink(name: str) -> _Method:
    """Methods whose result is no longer than the string (or at most 3x for case maps)."""
    fn = getattr(str, name)

    def call(ctx: _Ctx, s: str, args: _Args, kwargs: _Kwargs) -> Any:
        _scan_cost(ctx, s, args)
        r = fn(s, *args, **kwargs)
        if type(r) is str:
            if len(r) > MAX_STR:
                raise _str_too_long()
            ctx.alloc(_str_bytes(r))
        else:
            ctx.alloc(56 + _SMALL_OBJECT * len(r))
        return r

    return call


def _str_split(name: str) -> _Method:
    fn = getattr(str, name)

    def call(ctx: _Ctx, s: str, args: _Args, kwargs: _Kwargs) -> Any:
        _scan_cost(ctx, s, args)
        r = fn(s, *args, **kwargs)
        ctx.alloc(56 + _SMALL_OBJECT * len(r) + _str_bytes(s))
        return r

    return call


def _str_pad(name: str) -> _Method:
    fn = getattr(str, name)

    def call(ctx: _Ctx, s: str, args: _Args, kwargs: _Kwargs) -> Any:
        _no_kwargs(name, kwargs)
        if args and isinstance(args[0], int) and args[0] > MAX_STR:
            raise _str_too_long()
        r = fn(s, *args)
        ctx.alloc(_str_bytes(r))
        return r

    return call


def _str_replace(ctx: _Ctx, s: str, args: _Args, kwargs: _Kwargs) -> Any:
    _no_kwargs("replace", kwargs)
    if 2 <= len(args) <= 3 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        count = args[2] if len(args) == 3 else -1
        _scan_cost(ctx, s, args)
        hits = len(s) + 1 if old == "" else s.count(old)
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        if len(s) + hits * (len(new) - len(old)) > MAX_STR:
            raise _str_too_long()
    r = str.replace(s, *args)
    ctx.alloc(_str_bytes(r))
    return r


def _str_join(ctx: _Ctx, s: str, args: _Args, kwargs: _Kwargs) -> Any:
    _no_kwargs("join", kwargs)
    items = _iterable(_one_arg("join", args))
    n = len(items)
    ctx.charge(n)
    total = len(s) * max(0, n - 1)
    for item in items:
        if type(item) is str:
            total += len(item)
    if total > MAX_STR:
        raise _str_too_long()
    r = s.join(items)
    ctx.alloc(_str_bytes(r))
    return r


def _seq_search(name: str, fn: Callable[..., Any]) -> _Method:
    def call(ctx: _Ctx, seq: Any, args: _Args, kwargs: _Kwargs) -> Any:
        _no_kwargs(name, kwargs)
        if args:
            _charge_search(ctx, args[0], seq)
        return fn(seq, *args)

    return call


def _seq_copy(ctx: _Ctx, seq: Any, args: _Args, kwargs: _Kwargs) -> Any:
    _no_kwargs("copy", kwargs)
    if args:
        raise ExpressionError("copy() takes no arguments")
    ctx.charge(len(seq))
    ctx.alloc(56 + _SLOT * len(seq))
    return list(seq)


def _dict_get(ctx: _Ctx, d: Any, args: _Args, kwargs: _Kwargs) -> Any:
    _no_kwargs("get", kwargs)
    if not 1 <= len(args) <= 2:
        raise ExpressionError(f"get() takes 1 or 2 arguments ({len(args)} given)")
    _charge_key(ctx, args[0])
    if type(d) is dict:
        return d.get(*args)
    try:
        return d[args[0]]
    except KeyError:
        return args[1] if len(args) == 2 else None


def _dict_view(name: str) -> _Method:
    def call(ctx: _Ctx, d: Any, args: _Args, kwargs: _Kwargs) -> Any:
        _no_kwargs(name, kwargs)
        if args:
            raise ExpressionError(f"{name}() takes no arguments")
        n = len(d)
        ctx.charge(n)
        ctx.alloc(56 + (_SMALL_OBJECT if name == "items" else _SLOT) * n)
        if name == "keys":
            return list(d.keys())
        if name == "values":
            return list(d.values())
        return list(d.items())

    return call


def _dict_copy(ctx: _Ctx, d: Any, args: _Args, kwargs: _Kwargs) -> Any:
    _no_kwargs("copy", kwargs)
    if args:
        raise ExpressionError("copy() takes no arguments")
    ctx.charge(len(d))
    ctx.alloc(_DICT_SLOT * len(d))
    return dict(d)


_STR_METHODS: dict[str, _Method] = {
    **{
        name: _str_query(name)
        for name in (
            "startswith endswith find rfind index count isdigit isalpha isalnum isspace "
            "isupper islower"
        ).split()
    },
    **{
        name: _str_shrink(name)
        for name in (
            "upper lower strip lstrip rstrip title capitalize casefold removeprefix "
            "removesuffix partition rpartition"
        ).split()
    },
    **{name: _str_split(name) for name in ("split", "rsplit", "splitlines")},
    **{name: _str_pad(name) for name in ("zfill", "center", "ljust", "rjust")},
    "replace": _str_replace,
    "join": _str_join,
}
_LIST_METHODS: dict[str, _Method] = {
    "index": _seq_search("index", list.index),
    "count": _seq_search("count", list.count),
    "copy": _seq_copy,
}
_TUPLE_METHODS: dict[str, _Method] = {
    "index": _seq_search("index", tuple.index),
    "count": _seq_search("count", tuple.count),
}
_DICT_METHODS: dict[str, _Method] = {
    "get": _dict_get,
    "keys": _dict_view("keys"),
    "values": _dict_view("values"),
    "items": _dict_view("items"),
    "copy": _dict_copy,
}
_METHOD_TABLES: dict[type, dict[str, _Method]] = {
    str: _STR_METHODS,
    list: _LIST_METHODS,
    tuple: _TUPLE_METHODS,
    dict: _DICT_METHODS,
}
_METHOD_NAMES: frozenset[str] = frozenset().union(*_METHOD_TABLES.values())


def _call_method(ctx: _Ctx, obj: Any, name: str, args: _Args, kwargs: _Kwargs) -> Any:
    table = _METHOD_TABLES.get(type(obj))
    if table is None:
        # Subclasses use the base class's (unbound) methods, never their own overrides.
        if isinstance(obj, str):
            table = _STR_METHODS
        elif isinstance(obj, list):
            table = _LIST_METHODS
        elif isinstance(obj, tuple):
            table = _TUPLE_METHODS
        elif isinstance(obj, Mapping):
            table = _DICT_METHODS
        else:
            table = {}
    method = table.get(name)
    if method is None:
        raise ExpressionError(f"method {name!r} is not allowed on {_tname(obj)}")
    return method(ctx, obj, args, kwargs)


# -- The interpreter ------------------------------------------------------------------

_Handler = Callable[[Any, _Ctx], Any]
_HANDLERS: dict[type, _Handler] = {}
_MISSING = object()


def _ev(node: Any, ctx: _Ctx) -> Any:
    ctx.steps += 1
    if ctx.steps >= ctx.check_at:
        ctx.check()
    return _HANDLERS[type(node)](node, ctx)


def _h_constant(node: Any, ctx: _Ctx) -> Any:
    return node.value


def _h_name(node: Any, ctx: _Ctx) -> Any:
    name = node.id
    loc = ctx.locals
    if loc is not None:
        v = loc.get(name, _MISSING)
        if v is not _MISSING:
            return v
    try:
        return ctx.scope[name]
    except KeyError:
        raise ExpressionError(f"name {name!r} is not defined") from None


def _h_attribute(node: Any, ctx: _Ctx) -> Any:
    obj = _ev(node.value, ctx)
    if type(obj) is dict:
        return obj.get(node.attr)
    if isinstance(obj, Mapping):
        try:
            return obj[node.attr]
        except KeyError:
            return None
    raise ExpressionError(f"cannot read attribute {node.attr!r} of {_tname(obj)}")


def _h_subscript(node: Any, ctx: _Ctx) -> Any:
    obj = _ev(node.value, ctx)
    sl = node.slice
    if type(sl) is ast.Slice:
        key: Any = slice(
            None if sl.lower is None else _ev(sl.lower, ctx),
            None if sl.upper is None else _ev(sl.upper, ctx),
            None if sl.step is None else _ev(sl.step, ctx),
        )
        if isinstance(obj, Mapping):
            raise ExpressionError(f"cannot slice {_tname(obj)}")
        r = obj[key]
        if isinstance(r, str | list | tuple):
            _seq_alloc(ctx, r)
        return r
    key = _ev(sl, ctx)
    if isinstance(obj, Mapping):
        _charge_key(ctx, key)
        try:
            return obj[key]
        except KeyError:
            raise ExpressionError(f"key {_short_repr(key)} not found") from None
    if isinstance(obj, str | list | tuple | range):
        try:
            return obj[key]
        except IndexError:
            raise ExpressionError(f"{_tname(obj)} index out of range") from None
    raise ExpressionError(f"'{_tname(obj)}' object is not subscriptable")


def _h_binop(node: Any, ctx: _Ctx) -> Any:
    return node.fm_op(ctx, _ev(node.left, ctx), _ev(node.right, ctx))


def _h_unaryop(node: Any, ctx: _Ctx) -> Any:
    return node.fm_op(_ev(node.operand, ctx))


def _h_boolop(node: Any, ctx: _Ctx) -> Any:
    # Python semantics: return the deciding operand, short-circuiting.
    values = node.values
    if type(node.op) is ast.And:
        for v in values[:-1]:
            r = _ev(v, ctx)
            if not r:
                return r
    else:
        for v in values[:-1]:
            r = _ev(v, ctx)
            if r:
                return r
    return _ev(values[-1], ctx)


def _h_compare(node: Any, ctx: _Ctx) -> Any:
    left = _ev(node.left, ctx)
    r: Any = True
    for op, comp in zip(node.fm_ops, node.comparators, strict=True):
        right = _ev(comp, ctx)
        r = op(ctx, left, right)
        if not r:
            return r
        left = right
    return r


def _h_ifexp(node: Any, ctx: _Ctx) -> Any:
    return _ev(node.body, ctx) if _ev(node.test, ctx) else _ev(node.orelse, ctx)


def _elements(elts: list[Any], ctx: _Ctx) -> list[Any]:
    out: list[Any] = []
    for e in elts:
        if type(e) is ast.Starred:
            seq = _iterable(_ev(e.value, ctx))
            n = len(out) + len(seq)
            if n > MAX_SEQ:
                raise _seq_too_long()
            ctx.charge(len(seq))
            ctx.alloc(_SLOT * len(seq))
            out.extend(seq)
        else:
            out.append(_ev(e, ctx))
    return out


def _h_list(node: Any, ctx: _Ctx) -> Any:
    return _elements(node.elts, ctx)


def _h_tuple(node: Any, ctx: _Ctx) -> Any:
    return tuple(_elements(node.elts, ctx))


def _h_set(node: Any, ctx: _Ctx) -> Any:
    items = _elements(node.elts, ctx)
    for item in items:
        _charge_key(ctx, item)
    ctx.alloc(_SET_SLOT * len(items))
    return set(items)


def _h_dict(node: Any, ctx: _Ctx) -> Any:
    out: dict[Any, Any] = {}
    for k, v in zip(node.keys, node.values, strict=True):
        if k is None:  # {**mapping}
            m = _ev(v, ctx)
            if not isinstance(m, Mapping):
                raise ExpressionError(f"'{_tname(m)}' object is not a mapping")
            if len(out) + len(m) > MAX_SEQ:
                raise _seq_too_long()
            ctx.charge(len(m))
            ctx.alloc(_DICT_SLOT * len(m))
            out.update(m)
        else:
            key = _ev(k, ctx)
            _charge_key(ctx, key)
            out[key] = _ev(v, ctx)
    return out


def _h_joinedstr(node: Any, ctx: _Ctx) -> Any:
    parts: list[str] = []
    total = 0
    for v in node.values:
        if type(v) is ast.Constant:
            s: Any = v.value
        else:  # FormattedValue; the analyser refused format specs and !a
            s = _to_str(ctx, _ev(v.value, ctx), v.conversion == ord("r"))
        total += len(s)
        if total > MAX_STR:
            raise _str_too_long()
        parts.append(s)
    r = "".join(parts)
    ctx.alloc(_str_bytes(r))
    return r


def _eval_args(node: Any, ctx: _Ctx) -> tuple[_Args, _Kwargs]:
    args = _elements(node.args, ctx) if node.args else []
    kwargs: _Kwargs = {}
    for kw in node.keywords:
        value = _ev(kw.value, ctx)
        if kw.arg is not None:
            kwargs[kw.arg] = value
            continue
        if not isinstance(value, Mapping):
            raise ExpressionError(f"argument after ** must be a mapping, not {_tname(value)}")
        ctx.charge(len(value))
        for key in value:
            if not isinstance(key, str) or key.startswith("_"):
                raise ExpressionError(f"keyword argument {_short_repr(key)} is not allowed")
        kwargs.update(value)
    return args, kwargs


def _h_call(node: Any, ctx: _Ctx) -> Any:
    fn = node.fm_fn
    if fn is not None:
        args, kwargs = _eval_args(node, ctx)
        if kwargs:
            _check_kwargs(node.func.id, node.fm_kw, kwargs)
        return fn(ctx, args, kwargs)
    obj = _ev(node.func.value, ctx)
    args, kwargs = _eval_args(node, ctx)
    return _call_method(ctx, obj, node.func.attr, args, kwargs)


def _assign(ctx: _Ctx, target: Any, value: Any, loc: dict[str, Any]) -> None:
    if type(target) is ast.Name:
        loc[target.id] = value
        return
    elts = target.elts
    seq = _iterable(value)
    if len(seq) != len(elts):
        raise ExpressionError(f"cannot unpack {len(seq)} values into {len(elts)} names")
    for t, v in zip(elts, seq, strict=True):
        _assign(ctx, t, v, loc)


def _comp_loop(gens: list[Any], i: int, iterable: Any, ctx: _Ctx, emit: Callable[[], None]) -> None:
    gen = gens[i]
    target = gen.target
    name = target.id if type(target) is ast.Name else None
    ifs = gen.ifs
    nxt = i + 1 if i + 1 < len(gens) else 0
    loc = ctx.locals
    assert loc is not None
    for item in _iterable(iterable):
        ctx.steps += 1
        if ctx.steps >= ctx.check_at:
            ctx.check()
        if name is not None:
            loc[name] = item
        else:
            _assign(ctx, target, item, loc)
        for cond in ifs:
            if not _ev(cond, ctx):
                break
        else:
            if nxt:
                _comp_loop(gens, nxt, _ev(gens[nxt].iter, ctx), ctx, emit)
            else:
                emit()


def _comprehension(node: Any, ctx: _Ctx, emit: Callable[[], None]) -> None:
    gens = node.generators
    saved = ctx.locals
    # The first iterable is evaluated in the enclosing scope, as in Python.
    first = _ev(gens[0].iter, ctx)
    ctx.locals = dict(saved) if saved else {}
    try:
        _comp_loop(gens, 0, first, ctx, emit)
    finally:
        ctx.locals = saved


def _h_listcomp(node: Any, ctx: _Ctx) -> Any:
    out: list[Any] = []
    elt = node.elt

    def emit() -> None:
        out.append(_ev(elt, ctx))
        if len(out) > MAX_SEQ:
            raise _seq_too_long()
        ctx.alloc(_SLOT)

    _comprehension(node, ctx, emit)
    return out


def _h_setcomp(node: Any, ctx: _Ctx) -> Any:
    out: set[Any] = set()
    elt = node.elt

    def emit() -> None:
        v = _ev(elt, ctx)
        _charge_key(ctx, v)
        out.add(v)
        if len(out) > MAX_SEQ:
            raise _seq_too_long()
        ctx.alloc(_SET_SLOT)

    _comprehension(node, ctx, emit)
    return out


def _h_dictcomp(node: Any, ctx: _Ctx) -> Any:
    out: dict[Any, Any] = {}
    key_node = node.key
    value_node = node.value

    def emit() -> None:
        k = _ev(key_node, ctx)
        _charge_key(ctx, k)
        out[k] = _ev(value_node, ctx)
        if len(out) > MAX_SEQ:
            raise _seq_too_long()
        ctx.alloc(_DICT_SLOT)

    _comprehension(node, ctx, emit)
    return out


_HANDLERS.update(
    {
        ast.Constant: _h_constant,
        ast.Name: _h_name,
        ast.Attribute: _h_attribute,
        ast.Subscript: _h_subscript,
        ast.BinOp: _h_binop,
        ast.UnaryOp: _h_unaryop,
        ast.BoolOp: _h_boolop,
        ast.Compare: _h_compare,
        ast.IfExp: _h_ifexp,
        ast.List: _h_list,
        ast.Tuple: _h_tuple,
        ast.Set: _h_set,
        ast.Dict: _h_dict,
        ast.JoinedStr: _h_joinedstr,
        ast.Call: _h_call,
        ast.ListComp: _h_listcomp,
        ast.GeneratorExp: _h_listcomp,  # consumed at once: no generator ever escapes
        ast.SetComp: _h_setcomp,
        ast.DictComp: _h_dictcomp,
    }
)


def _plain(value: Any, ctx: _Ctx) -> Any:
    """Tuples, sets and ranges become lists, recursively; unchanged parts are not copied."""
    t = type(value)
    if t is str or (t in _ATOMIC and t is not range):
        return value
    if t is list:
        out: list[Any] | None = None
        for i, item in enumerate(value):
            new = _plain(item, ctx)
            if out is None and new is not item:
                out = value[:i]
            if out is not None:
                out.append(new)
        return value if out is None else out
    if t is dict:
        changed: dict[Any, Any] | None = None
        for k, item in value.items():
            new = _plain(item, ctx)
            if new is not item:
                if changed is None:
                    changed = dict(value)
                changed[k] = new
        return value if changed is None else changed
    if t is tuple or t is range:
        ctx.charge(len(value))
        return [_plain(item, ctx) for item in value]
    if t is set or t is frozenset:
        _charge_weight(ctx, value, max(1, len(value).bit_length() // 4))
        try:
            items = sorted(value)
        except TypeError:
            items = list(value)
        return [_plain(item, ctx) for item in items]
    return value


# -- Compilation ----------------------------------------------------------------------


class Expr:
    """A compiled expression: compile once with :func:`compile_expr`, evaluate often."""

    __slots__ = ("source", "names", "_root", "_convert")

    def __init__(self, source: str, root: ast.expr, names: frozenset[str], convert: bool) -> None:
        self.source = source
        self.names = names
        self._root = root
        self._convert = convert  # the expression may build tuples/sets/ranges

    def __repr__(self) -> str:
        return f"Expr({self.source!r})"

    def _is_string_literal(self) -> bool:
        return type(self._root) is ast.Constant and type(self._root.value) is str

    def evaluate(
        self,
        scope: Mapping[str, Any],
        log: Callable[[str], None] | None = None,
        *,
        time_limit: float | None = None,
    ) -> Any:
        """The value of the expression in ``scope``; raises only :class:`ExpressionError`."""
        return self._run(_Ctx(scope, log, time_limit))

    def _run(self, ctx: _Ctx) -> Any:
        try:
            r = _ev(self._root, ctx)
            if self._convert:
                r = _plain(r, ctx)
            return r
        except ExpressionError as e:
            if not e.expression:
                e.expression = self.source
            raise
        except RecursionError:
            raise ExpressionError("expression is nested too deeply", self.source) from None
        except MemoryError:
            raise ExpressionError("expression exceeded its memory limit", self.source) from None
        except Exception as e:  # anything Python raises inside becomes a one-line reason
            raise ExpressionError(_reason(e), self.source) from None


def _reason(e: BaseException) -> str:
    if isinstance(e, KeyError):
        return f"key {_short_repr(e.args[0])} not found" if e.args else "key not found"
    if isinstance(e, OverflowError) and e.args and isinstance(e.args[0], int):
        return "numeric result out of range"  # float pow: (34, 'Numerical result ...')
    return str(e) or type(e).__name__


def compile_expr(source: str) -> Expr:
    """Parse and check ``source``; raise :class:`ExpressionError` if it is not allowed.

    Results are cached, so compiling the same text again is a dictionary lookup.
    """
    if not isinstance(source, str):
        raise ExpressionError(f"an expression must be a string, not {_tname(source)}")
    if len(source) > MAX_SOURCE:
        raise ExpressionError(
            f"expression too long (limit {MAX_SOURCE} characters)", source[:MAX_SOURCE]
        )
    return _compile_cached(source)


@lru_cache(maxsize=4096)
def _compile_cached(source: str) -> Expr:
    text = source.strip()
    if not text:
        raise ExpressionError("empty expression", source)
    tree = _parse(text, source)
    _check_depth(tree, source)
    analyser = _Analyser(source)
    try:
        analyser.visit(tree.body, frozenset())
    except RecursionError:  # compiled from deep inside the caller's own stack
        raise ExpressionError("expression is nested too deeply", source) from None
    return Expr(source, tree.body, frozenset(analyser.names), analyser.convert)


def _parse(text: str, source: str) -> ast.Expression:
    try:
        with warnings.catch_warnings():
            # Invalid escapes ("\d") warn at parse time; the string is still fine.
            warnings.simplefilter("ignore")
            return ast.parse(text, mode="eval")
    except SyntaxError as e:
        if _is_statement(text):
            raise ExpressionError(
                "only an expression is allowed here, not a statement", source
            ) from None
        raise ExpressionError(_syntax_reason(e, text), source) from None
    except (RecursionError, MemoryError):
        raise ExpressionError("expression is too complex (nested too deeply)", source) from None
    except ValueError as e:  # e.g. "source code string cannot contain null bytes"
        raise ExpressionError(str(e), source) from None


def _is_statement(text: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = ast.parse(text, mode="exec")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return False
    return any(not isinstance(stmt, ast.Expr) for stmt in module.body)


def _syntax_reason(e: SyntaxError, text: str) -> str:
    msg = e.msg or "invalid syntax"
    if e.offset is None:
        return f"syntax error: {msg}"
    if "\n" in text and e.lineno:
        return f"syntax error at line {e.lineno}, column {e.offset}: {msg}"
    return f"syntax error at column {e.offset}: {msg}"


def _check_depth(tree: ast.AST, source: str) -> None:
    # Iterative, so a deep tree cannot exhaust the stack before it is refused; the
    # recursive analyser and interpreter only ever see trees within MAX_DEPTH.
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ExpressionError(f"expression nested too deeply (limit {MAX_DEPTH})", source)
        for child in ast.iter_child_nodes(node):
            stack.append((child, depth + 1))


_UNDERSCORE = "names starting with '_' are not allowed"
_REFUSED: dict[type, str] = {
    ast.Lambda: "lambda is not allowed",
    ast.NamedExpr: "assignment expressions (:=) are not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Await: "await is not allowed",
    ast.Starred: "starred expressions are only allowed in list, tuple, set and call arguments",
    ast.Slice: "slices are only allowed directly inside [ ]",
    ast.FormattedValue: "unexpected formatted value",
}


class _Analyser:
    """Checks a tree against the whitelist, annotates it for the interpreter
    (operator functions, builtin implementations) and collects its free names."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.names: set[str] = set()
        self.convert = False

    def fail(self, reason: str) -> NoReturn:
        raise ExpressionError(reason, self.source)

    def ident(self, name: str) -> None:
        if name.startswith("_"):
            self.fail(_UNDERSCORE)

    def visit(self, node: Any, bound: frozenset[str]) -> None:
        method = _VISITORS.get(type(node))
        if method is None:
            self.fail(_REFUSED.get(type(node), f"{type(node).__name__} is not allowed"))
            return
        method(self, node, bound)

    def visit_elements(self, elts: list[Any], bound: frozenset[str]) -> None:
        for e in elts:
            self.visit(e.value if type(e) is ast.Starred else e, bound)

    def v_constant(self, node: Any, bound: frozenset[str]) -> None:
        v = node.value
        t = type(v)
        if t is complex:
            self.fail("complex numbers are not allowed")
        elif t is int:
            if v.bit_length() > MAX_INT_BITS:
                self.fail(f"integer literal too large (limit {MAX_INT_BITS} bits)")
        elif t not in (str, float, bool, _NoneType):
            self.fail(f"{t.__name__} literals are not allowed")

    def v_name(self, node: Any, bound: frozenset[str]) -> None:
        self.ident(node.id)
        if node.id not in bound:
            self.names.add(node.id)

    def v_attribute(self, node: Any, bound: frozenset[str]) -> None:
        self.ident(node.attr)
        self.visit(node.value, bound)

    def v_subscript(self, node: Any, bound: frozenset[str]) -> None:
        self.visit(node.value, bound)
        sl = node.slice
        if type(sl) is ast.Slice:
            for part in (sl.lower, sl.upper, sl.step):
                if part is not None:
                    self.visit(part, bound)
        else:
            self.visit(sl, bound)

    def v_binop(self, node: Any, bound: frozenset[str]) -> None:
        op = _BINOPS.get(type(node.op))
        if op is None:
            self.fail(f"operator {type(node.op).__name__} is not allowed")
        if type(node.op) is ast.Mod and (
            type(node.left) is ast.JoinedStr
            or (type(node.left) is ast.Constant and isinstance(node.left.value, str))
        ):
            self.fail("'%' string formatting is not allowed; use an f-string")
        node.fm_op = op
        self.visit(node.left, bound)
        self.visit(node.right, bound)

    def v_unaryop(self, node: Any, bound: frozenset[str]) -> None:
        node.fm_op = _UNARYOPS[type(node.op)]
        self.visit(node.operand, bound)

    def v_boolop(self, node: Any, bound: frozenset[str]) -> None:
        for v in node.values:
            self.visit(v, bound)

    def v_compare(self, node: Any, bound: frozenset[str]) -> None:
        node.fm_ops = [_CMPOPS[type(op)] for op in node.ops]
        self.visit(node.left, bound)
        for c in node.comparators:
            self.visit(c, bound)

    def v_ifexp(self, node: Any, bound: frozenset[str]) -> None:
        self.visit(node.test, bound)
        self.visit(node.body, bound)
        self.visit(node.orelse, bound)

    def v_list(self, node: Any, bound: frozenset[str]) -> None:
        self.visit_elements(node.elts, bound)

    def v_tuple_or_set(self, node: Any, bound: frozenset[str]) -> None:
        self.convert = True
        for e in node.elts:
            if type(e) is ast.Slice:
                self.fail("multi-dimensional slicing is not supported")
        self.visit_elements(node.elts, bound)

    def v_dict(self, node: Any, bound: frozenset[str]) -> None:
        for k, v in zip(node.keys, node.values, strict=True):
            if k is not None:
                self.visit(k, bound)
            self.visit(v, bound)

    def v_joinedstr(self, node: Any, bound: frozenset[str]) -> None:
        for v in node.values:
            if type(v) is ast.Constant:
                continue
            if v.format_spec is not None:
                self.fail("format specs (':...') are not allowed in f-strings")
            if v.conversion not in (-1, ord("s"), ord("r")):
                self.fail(f"conversion !{chr(v.conversion)} is not allowed in f-strings")
            self.visit(v.value, bound)

    def v_call(self, node: Any, bound: frozenset[str]) -> None:
        self.convert = True  # range(), items(), partition() return tuples/ranges
        func = node.func
        if type(func) is ast.Name:
            self.ident(func.id)
            entry = _FUNCTIONS.get(func.id)
            if entry is None:
                self.fail(f"function {func.id!r} is not allowed")
                return
            node.fm_fn, node.fm_kw = entry
            for kw in node.keywords:
                if kw.arg is not None and entry[1] is not _ANY_KW and kw.arg not in entry[1]:
                    self.fail(f"{func.id}() got an unexpected keyword argument {kw.arg!r}")
        elif type(func) is ast.Attribute:
            self.ident(func.attr)
            if func.attr not in _METHOD_NAMES:
                self.fail(f"method {func.attr!r} is not allowed")
            node.fm_fn = None
            self.visit(func.value, bound)
        else:
            self.fail("only built-in functions and methods can be called")
        self.visit_elements(node.args, bound)
        for kw in node.keywords:
            if kw.arg is not None:
                self.ident(kw.arg)
            self.visit(kw.value, bound)

    def comprehension(self, node: Any, bound: frozenset[str], elts: tuple[Any, ...]) -> None:
        for gen in node.generators:
            if gen.is_async:
                self.fail("async comprehensions are not allowed")
            self.visit(gen.iter, bound)
            bound = bound | self.targets(gen.target)
            for cond in gen.ifs:
                self.visit(cond, bound)
        for e in elts:
            self.visit(e, bound)

    def targets(self, target: Any) -> frozenset[str]:
        if type(target) is ast.Name:
            self.ident(target.id)
            return frozenset({target.id})
        if type(target) in (ast.Tuple, ast.List):
            out: frozenset[str] = frozenset()
            for e in target.elts:
                out |= self.targets(e)
            return out
        self.fail("a comprehension variable must be a name or a tuple of names")
        return frozenset()

    def v_listcomp(self, node: Any, bound: frozenset[str]) -> None:
        self.comprehension(node, bound, (node.elt,))

    def v_setcomp(self, node: Any, bound: frozenset[str]) -> None:
        self.convert = True
        self.comprehension(node, bound, (node.elt,))

    def v_dictcomp(self, node: Any, bound: frozenset[str]) -> None:
        self.comprehension(node, bound, (node.key, node.value))


_VISITORS: dict[type, Callable[[_Analyser, Any, frozenset[str]], None]] = {
    ast.Constant: _Analyser.v_constant,
    ast.Name: _Analyser.v_name,
    ast.Attribute: _Analyser.v_attribute,
    ast.Subscript: _Analyser.v_subscript,
    ast.BinOp: _Analyser.v_binop,
    ast.UnaryOp: _Analyser.v_unaryop,
    ast.BoolOp: _Analyser.v_boolop,
    ast.Compare: _Analyser.v_compare,
    ast.IfExp: _Analyser.v_ifexp,
    ast.List: _Analyser.v_list,
    ast.Tuple: _Analyser.v_tuple_or_set,
    ast.Set: _Analyser.v_tuple_or_set,
    ast.Dict: _Analyser.v_dict,
    ast.JoinedStr: _Analyser.v_joinedstr,
    ast.Call: _Analyser.v_call,
    ast.ListComp: _Analyser.v_listcomp,
    ast.GeneratorExp: _Analyser.v_listcomp,
    ast.SetComp: _Analyser.v_setcomp,
    ast.DictComp: _Analyser.v_dictcomp,
}


def check_syntax(source: str) -> str | None:
    """None when ``source`` is an allowed expression, else the reason it is not."""
    try:
        compile_expr(source)
    except ExpressionError as e:
        return str(e)
    return None


# -- Templates ------------------------------------------------------------------------


# "{{ raw: expr }}": no Python expression starts with a name and a colon (":=" aside).
_RAW_PREFIX = re.compile(r"\s*raw\s*:(?!=)")


class Template:
    """A string containing one or more ``{{ expr }}``.

    ``raw`` holds the indices of the parts written ``{{ raw: expr }}``.
    """

    __slots__ = ("source", "names", "_parts", "_single", "_verbatim")

    def __init__(
        self, source: str, parts: tuple[str | Expr, ...], raw: frozenset[int] = frozenset()
    ) -> None:
        self.source = source
        self._parts = parts
        exprs = [p for p in parts if isinstance(p, Expr)]
        self.names: frozenset[str] = frozenset().union(*(e.names for e in exprs))
        # "{{ users }}" (whitespace around allowed) yields the raw value.
        only_space = all(isinstance(p, Expr) or not p.strip() for p in parts)
        self._single: Expr | None = exprs[0] if len(exprs) == 1 and only_space else None
        # Parts a quoting render pastes as they are: "raw:" ones, and string literals,
        # whose text the author wrote (the "{{ '{{' }}" escape, dead-letter replay's too).
        self._verbatim = raw | frozenset(
            i for i, p in enumerate(parts) if isinstance(p, Expr) and p._is_string_literal()
        )

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def render(
        self,
        scope: Mapping[str, Any],
        log: Callable[[str], None] | None = None,
        *,
        time_limit: float | None = None,
        quote: Callable[[str], str] | None = None,
    ) -> Any:
        """The raw value for a single template, else the rendered string.

        With ``quote``, always a string: each template's text goes through ``quote``
        unless it is written ``{{ raw: expr }}`` or is only a string literal.
        """
        return self._render(_Ctx(scope, log, time_limit), quote)

    def _render(self, ctx: _Ctx, quote: Callable[[str], str] | None = None) -> Any:
        if self._single is not None and quote is None:
            return self._single._run(ctx)
        out: list[str] = []
        # The literal text may already be long; only what templates add is limited.
        budget = MAX_STR + sum(len(p) for p in self._parts if isinstance(p, str))
        total = 0
        for i, part in enumerate(self._parts):
            if isinstance(part, str):
                text = part
            else:
                value = part._run(ctx)
                try:
                    text = _render_piece(ctx, value)
                    if quote is not None and i not in self._verbatim:
                        ctx.charge(len(text) >> _STR_STEP_SHIFT)
                        text = quote(text)
                except ExpressionError as e:
                    e.expression = e.expression or part.source
                    raise
                except Exception as e:
                    raise ExpressionError(_reason(e), part.source) from None
            total += len(text)
            if total > budget:
                raise ExpressionError(
                    f"rendered text too long (limit {MAX_STR} characters)", self.source
                )
            out.append(text)
        return "".join(out)


def _render_piece(ctx: _Ctx, value: Any) -> str:
    t = type(value)
    if t is str:
        return value
    if value is None:
        return ""
    if t is bool:
        return "true" if value else "false"
    if t is int or t is float:
        return repr(value)
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        size = _text_size(value, MAX_STR)
        if size > MAX_STR:
            raise _str_too_long()
        ctx.charge(size >> _STR_STEP_SHIFT)
        return json.dumps(
            _plain_json(value, ctx), separators=(",", ":"), ensure_ascii=False, default=str
        )
    return _to_str(ctx, value)


def _plain_json(value: Any, ctx: _Ctx) -> Any:
    value = _plain(value, ctx)
    if isinstance(value, Mapping) and type(value) is not dict:
        return {k: _plain_json(v, ctx) for k, v in value.items()}
    return value


def compile_template(text: str) -> Template | None:
    """The template in ``text``, or None when it has no ``{{``. Cached."""
    if not isinstance(text, str) or "{{" not in text:
        return None
    return _compile_template_cached(text)


@lru_cache(maxsize=4096)
def _compile_template_cached(text: str) -> Template:
    parts: list[str | Expr] = []
    raw: set[int] = set()
    pos = 0
    while True:
        start = text.find("{{", pos)
        if start < 0:
            break
        if start > pos:
            parts.append(text[pos:start])
        prefix = _RAW_PREFIX.match(text, start + 2)
        if prefix is not None:
            raw.add(len(parts))
        expr, pos = _parse_one(text, start, prefix.end() if prefix is not None else start + 2)
        parts.append(expr)
    if pos < len(text):
        parts.append(text[pos:])
    return Template(text, tuple(parts), frozenset(raw))


def _parse_one(text: str, start: int, begin: int) -> tuple[Expr, int]:
    """The expression opened by the ``{{`` at ``start`` and the index after its ``}}``.

    The expression's text begins at ``begin`` (after a ``raw:``, if any). It may itself
    contain "}}" (a nested dict literal, a string), so try each following "}}" until
    the text between parses.
    """
    close = text.find("}}", begin)
    if close < 0:
        raise ExpressionError("unclosed '{{' in template (no matching '}}')", text)
    first_error: ExpressionError | None = None
    for _ in range(_MAX_TEMPLATE_TRIES):
        if close < 0:
            break
        try:
            return compile_expr(text[begin:close]), close + 2
        except ExpressionError as e:
            first_error = first_error or e
        close = text.find("}}", close + 1)
    assert first_error is not None
    raise first_error


def value_names(value: Any) -> frozenset[str]:
    """Names read by every template in the string leaves of a nested dict/list."""
    try:
        return _value_names(value)
    except RecursionError:
        raise ExpressionError("value nested too deeply") from None


def _value_names(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        t = compile_template(value)
        return t.names if t is not None else frozenset()
    if isinstance(value, Mapping):
        items: Any = value.values()
    elif isinstance(value, list | tuple):
        items = value
    else:
        return frozenset()
    names: set[str] = set()
    for item in items:
        names |= _value_names(item)
    return frozenset(names)


def render_value(
    value: Any,
    scope: Mapping[str, Any],
    log: Callable[[str], None] | None = None,
    *,
    time_limit: float | None = None,
) -> Any:
    """Render every templated string leaf of a nested dict/list.

    Returns ``value`` itself when nothing in it is a template; one time, step and
    memory budget covers the whole structure.
    """
    ctx: _Ctx | None = None

    def walk(v: Any) -> Any:
        nonlocal ctx
        if isinstance(v, str):
            if "{{" not in v:
                return v
            t = compile_template(v)
            if t is None:
                return v
            if ctx is None:
                ctx = _Ctx(scope, log, time_limit)
            return t._render(ctx)
        if isinstance(v, dict):
            changed: dict[Any, Any] | None = None
            for k, item in v.items():
                new = walk(item)
                if new is not item:
                    if changed is None:
                        changed = dict(v)
                    changed[k] = new
            return v if changed is None else changed
        if isinstance(v, list):
            out: list[Any] | None = None
            for i, item in enumerate(v):
                new = walk(item)
                if out is None and new is not item:
                    out = v[:i]
                if out is not None:
                    out.append(new)
            return v if out is None else out
        return v

    try:
        return walk(value)
    except RecursionError:
        raise ExpressionError("value nested too deeply") from None


def render_shell(
    command: Any,
    scope: Mapping[str, Any],
    log: Callable[[str], None] | None = None,
    *,
    time_limit: float | None = None,
) -> Any:
    """Render a shell node's ``command``.

    A string is a ``/bin/sh -c`` script: each template becomes one shell word, its text
    (as :meth:`Template.render` writes it) quoted by :func:`shlex.quote`, so a value can
    never add words, operators or substitutions; the result is always a string, even
    for a script that is exactly one template. ``{{ raw: expr }}`` pastes the text
    unquoted, and so does a template that is only a string literal (``{{ '{{' }}``).
    Anything else (a list is an argv, each element one argument already) is rendered
    by :func:`render_value`, unquoted.
    """
    if not isinstance(command, str):
        return render_value(command, scope, log, time_limit=time_limit)
    template = compile_template(command)
    if template is None:
        return command
    return template.render(scope, log, time_limit=time_limit, quote=shlex.quote)
