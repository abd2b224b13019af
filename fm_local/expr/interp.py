"""The interpreter: walks a checked, annotated syntax tree, one handler per node type."""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any

from fm_local.expr.budget import (
    _ATOMIC,
    _DICT_SLOT,
    _SET_SLOT,
    _SLOT,
    MAX_SEQ,
    MAX_STR,
    ExpressionError,
    _charge_key,
    _charge_weight,
    _Ctx,
    _iterable,
    _seq_too_long,
    _short_repr,
    _str_bytes,
    _str_too_long,
    _tname,
    _to_str,
)
from fm_local.expr.functions import _Args, _check_kwargs, _Kwargs
from fm_local.expr.methods import _call_method
from fm_local.expr.ops import _seq_alloc

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
