"""The model objects of a workflow document that is plainly valid, built without
pydantic's validator.

Building ``Workflow``'s validator costs ~0.07 s of every fresh process that checks a
new document (``fm submit`` with no daemon serving, ``fm validate``), more than the
rest of the check. Most documents are valid and written plainly: the right JSON
type for every field, the documented key spellings. For those, :func:`construct`
walks the model's own field declarations (``fm_local.model`` stays the one
definition of the shape) and builds the same objects with ``model_construct``.

It is a fast path, never a second judge: anything it is not sure of — a wrong or
merely coercible type (``true`` for an integer, ``5.0`` for one), an unknown or
doubled key, a missing field, a constraint or validator it does not know, a
validator that refuses — returns ``None``, and the caller validates with pydantic,
which accepts or reports exactly as before. tests/test_construct.py holds it to
that: whatever it builds equals what pydantic builds, down to each value's type
and each model's set fields.
"""

from __future__ import annotations

import dataclasses
import operator
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fm_local import model


class _Unsure(Exception):
    """The fast path cannot vouch for a value: let pydantic decide."""


def construct(raw: Any) -> model.Workflow | None:
    """``Workflow.model_validate(raw)``'s result when ``raw`` is plainly valid, else
    ``None`` (then validate with pydantic: it may still be valid)."""
    try:
        built = _model(model.Workflow, raw)
    except Exception:  # noqa: BLE001 - a fast path never fails: pydantic decides
        return None
    assert isinstance(built, model.Workflow)
    return built


# -- one checker per type, made once per process --------------------------------

_Check = Callable[[Any], Any]  # the value as pydantic would hold it, or _Unsure


@dataclasses.dataclass
class _Field:
    name: str
    check: _Check
    required: bool
    before: list[Callable[[Any], Any]]
    after: list[Callable[[Any], Any]]


@dataclasses.dataclass
class _Plan:
    by_key: dict[str, _Field]  # alias and name -> field
    required: list[str]  # names
    after: list[Callable[[Any], Any]]  # model validators, mode "after"


_PLANS: dict[type[BaseModel], _Plan] = {}
_NAMESPACE = dict(vars(model))


def _plan(cls: type[BaseModel]) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is not None:
        return plan
    decorators = cls.__pydantic_decorators__
    for kind in ("validators", "root_validators", "field_serializers", "model_serializers"):
        if getattr(decorators, kind, None):
            raise _Unsure(f"{cls.__name__} has {kind}")
    model_after = []
    for mdec in decorators.model_validators.values():
        if mdec.info.mode != "after":
            raise _Unsure(f"{cls.__name__}: a {mdec.info.mode} model validator")
        model_after.append(mdec.func)
    befores: dict[str, list[Callable[[Any], Any]]] = {}
    afters: dict[str, list[Callable[[Any], Any]]] = {}
    for dec in decorators.field_validators.values():
        mode = dec.info.mode
        if mode not in ("before", "after") or dec.info.check_fields is False:
            raise _Unsure(f"{cls.__name__}: a {mode} field validator")
        for name in dec.info.fields:
            (befores if mode == "before" else afters).setdefault(name, []).append(dec.func)
    by_key: dict[str, _Field] = {}
    for name, info in cls.model_fields.items():
        annotation: Any = info.annotation
        if isinstance(annotation, typing.ForwardRef):
            annotation = eval(annotation.__forward_arg__, _NAMESPACE)  # the model's own names
        check = _checker(annotation, info.metadata)
        field = _Field(name, check, info.is_required(), befores.get(name, []), afters.get(name, []))
        alias = info.validation_alias or info.alias or name
        if not isinstance(alias, str):
            raise _Unsure(f"{cls.__name__}.{name}: alias {alias!r}")
        by_key[name] = field
        by_key[alias] = field
    if cls.model_config.get("extra") != "forbid" or not cls.model_config.get("populate_by_name"):
        raise _Unsure(f"{cls.__name__}: a model config the fast path does not know")
    required = [f.name for f in by_key.values() if f.required]
    plan = _Plan(by_key, list(dict.fromkeys(required)), model_after)
    _PLANS[cls] = plan
    return plan


def _model(cls: type[BaseModel], raw: Any) -> BaseModel:
    if type(raw) is not dict:
        raise _Unsure
    plan = _plan(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        field = plan.by_key.get(key)
        if field is None:
            raise _Unsure  # unknown key: pydantic says which
        if field.name in values:
            raise _Unsure  # both spellings of one key
        for fn in field.before:
            value = _call(fn, value)
        value = field.check(value)
        for fn in field.after:
            value = _call(fn, value)
        values[field.name] = value
    for name in plan.required:
        if name not in values:
            raise _Unsure  # a missing field
    built = cls.model_construct(**values)
    for fn in plan.after:
        built = _call(fn, built)
        if not isinstance(built, cls):
            raise _Unsure
    return built


def _call(fn: Callable[[Any], Any], value: Any) -> Any:
    try:
        return fn(value)
    except (ValueError, AssertionError, TypeError) as e:
        raise _Unsure from e


_CHECKERS: dict[Any, _Check] = {}


def _checker(annotation: Any, metadata: list[Any]) -> _Check:
    """The check of one declared type (with its constraints)."""
    base = _plain(annotation)
    if metadata:
        return _constrained(base, metadata)
    return base


def _plain(t: Any) -> _Check:
    origin = typing.get_origin(t)
    if origin is typing.Annotated:
        inner, *extras = typing.get_args(t)
        metadata: list[Any] = []
        discriminator = None
        for extra in extras:
            if isinstance(extra, FieldInfo):
                metadata.extend(extra.metadata)
                discriminator = extra.discriminator or discriminator
            else:
                metadata.append(extra)
        if discriminator is not None:
            if metadata or not isinstance(discriminator, str):
                raise _Unsure(f"constraints beside a discriminator: {t!r}")
            return _tagged(inner, discriminator)
        return _constrained(_plain(inner), metadata)
    if t is Any:
        return _any
    if t is str:
        return _str
    if t is bool:
        return _bool
    if t is int:
        return _int
    if t is float:
        return _float
    if t is type(None):
        return _none
    if origin is Literal:
        allowed = typing.get_args(t)
        if not all(type(a) is str for a in allowed):
            raise _Unsure(f"a non-text literal: {t!r}")
        return lambda v: v if type(v) is str and v in allowed else _unsure()
    if origin in (Union, types.UnionType):
        return _union([_plain(m) for m in typing.get_args(t)])
    if origin is list:
        (item_t,) = typing.get_args(t)
        item = _plain(item_t)
        return lambda v: [item(x) for x in v] if type(v) is list else _unsure()
    if origin is dict:
        key_t, value_t = typing.get_args(t)
        if key_t is not str:
            raise _Unsure(f"a dict keyed by {key_t!r}")
        value = _plain(value_t)
        return lambda v: {_str(k): value(x) for k, x in v.items()} if type(v) is dict else _unsure()
    if isinstance(t, type) and issubclass(t, BaseModel):
        return lambda v: _model(t, v)
    raise _Unsure(f"a type the fast path does not know: {t!r}")


def _tagged(union: Any, tag: str) -> _Check:
    members: dict[str, type[BaseModel]] = {}
    for member in typing.get_args(union):
        (value,) = typing.get_args(member.model_fields[tag].annotation)
        members[value] = member

    def check(v: Any) -> Any:
        if type(v) is not dict:
            raise _Unsure
        kind = v.get(tag)
        cls = members.get(kind) if type(kind) is str else None
        if cls is None:
            raise _Unsure
        return _model(cls, v)

    return check


def _union(members: list[_Check]) -> _Check:
    """Exactly one member must take the value as it is (conversions aside, pydantic's
    "smart" choice among several is not re-derived here)."""

    def check(v: Any) -> Any:
        found: list[Any] = []
        for member in members:
            try:
                found.append(member(v))
            except _Unsure:
                continue
        if len(found) != 1:
            raise _Unsure
        return found[0]

    return check


# annotated_types constraint -> (its field, how a value must compare, of its length?)
_BOUNDS: list[tuple[type, str, Callable[[Any, Any], bool], bool]] = [
    (Gt, "gt", operator.gt, False),
    (Ge, "ge", operator.ge, False),
    (Lt, "lt", operator.lt, False),
    (Le, "le", operator.le, False),
    (MinLen, "min_length", operator.ge, True),
    (MaxLen, "max_length", operator.le, True),
]


def _constrained(check: _Check, metadata: list[Any]) -> _Check:
    # (compare, bound, of the length?) for each constraint; at most one pattern.
    bounds: list[tuple[Callable[[Any, Any], bool], Any, bool]] = []
    pattern: re.Pattern[str] | None = None
    for m in metadata:
        bound = next((b for b in _BOUNDS if isinstance(m, b[0])), None)
        if bound is not None:
            _, attr, compare, of_length = bound
            bounds.append((compare, getattr(m, attr), of_length))
        elif _only_pattern(m) and pattern is None:
            pattern = re.compile(m.pattern)
        else:
            raise _Unsure(f"a constraint the fast path does not know: {m!r}")

    def constrained(v: Any) -> Any:
        value = check(v)
        for compare, bound, of_length in bounds:
            if not compare(len(value) if of_length else value, bound):
                raise _Unsure
        # pydantic matches with Rust's regex engine; for ASCII text without a line
        # break Python's agrees on our anchored patterns.
        if pattern is not None and not (
            value.isascii() and "\n" not in value and pattern.search(value) is not None
        ):
            raise _Unsure
        return value

    return constrained


def _only_pattern(m: Any) -> bool:
    fields = getattr(m, "__dict__", None)
    return isinstance(fields, dict) and set(fields) == {"pattern"} and isinstance(m.pattern, str)


def _unsure() -> Any:
    raise _Unsure


def _any(v: Any) -> Any:
    return v


def _str(v: Any) -> str:
    if type(v) is not str:
        raise _Unsure
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise _Unsure from None  # a lone surrogate: pydantic refuses it
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _Unsure
    return v


def _int(v: Any) -> int:
    if type(v) is not int or not -(2**63) <= v < 2**63:
        raise _Unsure  # true, 5.0 and "5" are ints to pydantic: its call
    return v


def _float(v: Any) -> float:
    if type(v) is int:
        try:
            return float(v)
        except OverflowError:
            raise _Unsure from None  # past a float's range: pydantic's to report
    if type(v) is not float or v != v:
        raise _Unsure
    return v


def _none(v: Any) -> None:
    if v is not None:
        raise _Unsure
    return None
