"""The str, list, tuple and dict methods an expression may call."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fm_local.expr.budget import (
    _DICT_SLOT,
    _SLOT,
    _SMALL_OBJECT,
    _STR_STEP_SHIFT,
    MAX_STR,
    ExpressionError,
    _charge_key,
    _charge_search,
    _Ctx,
    _iterable,
    _str_bytes,
    _str_too_long,
    _tname,
)
from fm_local.expr.functions import _Args, _Kwargs, _one_arg

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
