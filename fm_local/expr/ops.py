"""Binary, unary and comparison operators, each size-checked before it runs."""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any

from fm_local.expr.budget import (
    _DICT_SLOT,
    _SLOT,
    _STR_STEP_SHIFT,
    MAX_INT_BITS,
    MAX_SEQ,
    MAX_STR,
    ExpressionError,
    _charge_compare,
    _charge_key,
    _charge_search,
    _check_result,
    _Ctx,
    _int_too_large,
    _seq_too_long,
    _str_bytes,
    _str_too_long,
    _tname,
)

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
