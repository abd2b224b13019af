"""The builtin functions an expression may call (``len``, ``sum``, ``sorted``, ``now``,
``log``...) and the keyword arguments each accepts."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from fm_local.expr.budget import (
    _DICT_SLOT,
    _MAX_INT_LITERAL_DIGITS,
    _MAX_ROUND_DIGITS,
    _SLOT,
    MAX_SEQ,
    MAX_STR,
    ExpressionError,
    _charge_weight,
    _check_result,
    _Ctx,
    _int_too_large,
    _iterable,
    _seq_too_long,
    _str_too_long,
    _tname,
    _to_str,
)

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
