"""Shape: pydantic errors -> problems."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from fm_local.model import NODE_TYPES, NodeBase, Workflow, complete_models
from fm_local.validate.text import (
    PathPart,
    Problem,
    _child,
    _format_path,
    _got,
    _node_prefix,
    _one_line,
    _value,
)

_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}

_NAME_FIELDS = {
    "outputVariable",
    "output_variable",
    "itemVariable",
    "item_variable",
    "indexVariable",
    "index_variable",
}


def _is_type_error(err_type: str) -> bool:
    return err_type in _TYPE_WORDS or err_type.endswith("_type") or err_type.endswith("_parsing")


def _strip(t: Any) -> Any:
    """Remove ``Annotated`` and ``Optional`` wrappers; a real union stays a union."""
    while True:
        if typing.get_origin(t) is typing.Annotated:
            t = typing.get_args(t)[0]
            continue
        members = _union_args(t)
        if members is not None:
            rest = [m for m in members if m is not type(None)]
            if len(rest) == 1:
                t = rest[0]
                continue
        return t


def _union_args(t: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(t)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(t)
    return None


def _union_members(t: Any) -> list[Any] | None:
    members = _union_args(t)
    if members is None:
        return None
    rest = [m for m in members if m is not type(None)]
    return rest if len(rest) > 1 else None


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _is_node_union(members: list[Any]) -> bool:
    return all(isinstance(m, type) and issubclass(m, NodeBase) for m in members)


def _member_for_tag(members: list[Any], tag: str) -> Any:
    for m in members:
        base = m
        if typing.get_origin(base) is typing.Annotated:
            base = typing.get_args(base)[0]
        origin = typing.get_origin(base)
        name = getattr(origin or base, "__name__", str(base))
        if tag == name or tag.endswith("-" + name) or tag.startswith(name + "["):
            return m
    return Any


def _field_of(model: type[BaseModel], key: str) -> Any:
    for name, f in model.model_fields.items():
        if key == name or key == f.alias:
            return f
    return None


def _model_keys(model: type[BaseModel]) -> dict[str, str]:
    """Every accepted spelling of a model's keys -> the documented (camelCase) one."""
    keys: dict[str, str] = {}
    for name, f in model.model_fields.items():
        alias = f.alias or name
        keys[alias] = alias
        keys[name] = alias
    return keys


@dataclass
class _Loc:
    parts: list[PathPart]
    node_id: str | None
    owner: type[BaseModel] | None  # the model whose key the last part is
    union_at: tuple[PathPart, ...] | None  # where the first non-node union was met
    tags: list[str]


def _resolve(raw: Any, loc: tuple[int | str, ...]) -> _Loc:
    """Map a pydantic error location onto the document: drop union member tags,
    keep keys as the user wrote them, and find the innermost node."""
    cur_t: Any = Workflow
    cur_raw: Any = raw
    parts: list[PathPart] = []
    node_id: str | None = None
    owner: type[BaseModel] | None = None
    union_at: tuple[PathPart, ...] | None = None
    tags: list[str] = []
    for el in loc:
        t = _strip(cur_t)
        members = _union_members(t)
        if members is not None and isinstance(el, str):
            if _is_node_union(members):
                cur_t = NODE_TYPES.get(el, Any)
            else:
                if union_at is None:
                    union_at = tuple(parts)
                tags.append(el)
                cur_t = _member_for_tag(members, el)
            continue
        if _is_model(t) and isinstance(el, str):
            owner = t
            f = _field_of(t, el)
            cur_t = f.annotation if f is not None else Any
        else:
            origin = typing.get_origin(t)
            args = typing.get_args(t)
            if origin is list and args:
                cur_t = args[0]
            elif origin is dict and len(args) == 2:
                cur_t = args[1]
            else:
                cur_t = Any
        parts.append(el)
        cur_raw = _child(cur_raw, el)
        members = _union_members(_strip(cur_t))
        if members is not None and _is_node_union(members) and isinstance(cur_raw, dict):
            nid = cur_raw.get("id")
            node_id = nid if isinstance(nid, str) else None
    return _Loc(parts, node_id, owner, union_at, tags)


def _subject(parts: list[PathPart]) -> str:
    if not parts:
        return "the workflow"
    last = parts[-1]
    if isinstance(last, int):
        prev = next((p for p in reversed(parts) if isinstance(p, str)), "")
        return f"'{prev}[{last}]'"
    return f"'{last}'"


def _expected_list(ctx_expected: str) -> str:
    found = re.findall(r"'([^']*)'", ctx_expected)
    return ", ".join(found) if found else ctx_expected


def _message(err: Mapping[str, Any], loc: _Loc) -> tuple[list[PathPart], str]:
    """The path and message of one pydantic error (no node prefix)."""
    kind = err["type"]
    parts = list(loc.parts)
    value = err.get("input")
    ctx = err.get("ctx") or {}
    subject = _subject(parts)
    if kind == "missing":
        return parts, f"missing required key '{parts[-1]}'" if parts else "missing value"
    if kind == "extra_forbidden":
        key = str(parts[-1])
        keys = _model_keys(loc.owner) if loc.owner is not None else {}
        match = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.6)
        hint = f" (did you mean '{keys[match[0]]}'?)" if match else ""
        return parts, f"unknown key '{key}'{hint}"
    if kind == "union_tag_invalid":
        tag = str(ctx.get("tag", value))
        names = ", ".join(NODE_TYPES)
        match = difflib.get_close_matches(tag, list(NODE_TYPES), n=1, cutoff=0.6)
        hint = f"did you mean '{match[0]}'? " if match else ""
        return parts + ["type"], f"unknown node type '{tag}' ({hint}expected one of: {names})"
    if kind == "union_tag_not_found":
        if isinstance(value, dict):
            return parts + ["type"], "missing required key 'type'"
        return parts, f"a node must be an object, got {_got(value)}"
    if kind == "literal_error":
        expected = _expected_list(str(ctx.get("expected", "")))
        return parts, f"bad value {_value(value)} for {subject} (expected one of: {expected})"
    if kind in _TYPE_WORDS or _is_type_error(kind):
        words = _TYPE_WORDS.get(kind)
        if words is None:
            return parts, f"{subject}: {_pydantic_text(err)}"
        return parts, f"{subject} must be {words}, got {_got(value)}"
    if kind == "string_pattern_mismatch":
        last = parts[-1] if parts else ""
        if last == "id":
            return parts, (
                f"invalid node id {value!r}: an id is a name (a letter or '_', then "
                "letters, digits or '_') so that expressions can read it"
            )
        if last in _NAME_FIELDS:
            return parts, (
                f"{subject} must be a name (a letter or '_', then letters, digits or '_'), "
                f"got {value!r}"
            )
        if last == "call":
            return (
                parts,
                f"invalid call {value!r}: expected 'module:function' (e.g. 'tasks:enrich')",
            )
        return parts, f"{subject} {value!r} must match the pattern {ctx.get('pattern')}"
    if kind in ("value_error", "assertion_error"):
        return parts, _pydantic_text(err)
    if kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return parts, f"{subject} must not be empty"
    text = _pydantic_text(err)
    if text.startswith("should "):
        return parts, f"{subject} {text}, got {_value(value)}"
    return parts, f"{subject}: {text}"


def _pydantic_text(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    msg = msg.replace(" after validation", "")
    if msg.startswith("Input should"):
        msg = "should" + msg[len("Input should") :]
    elif msg[:1].isupper() and not msg[1:2].isupper():
        msg = msg[0].lower() + msg[1:]
    return _one_line(msg)


def _describe_tag(tag: str) -> str:
    base = tag.removeprefix("constrained-")
    words = {
        "float": "a number",
        "int": "an integer",
        "str": "a string",
        "bool": "true or false",
        "RateSpec": "an object {rate, per}",
    }
    if base in words:
        return words[base]
    if base.startswith("list"):
        return "an array" + (" of strings" if base == "list[str]" else "")
    if base.startswith("dict"):
        return "an object"
    return "an object"


def _join_or(items: list[str]) -> str:
    items = list(dict.fromkeys(items))
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


def _shape_problems(raw: dict[str, Any], exc: ValidationError) -> list[Problem]:
    complete_models()  # reporting the errors reads the fields of the models they are in
    errs = [(e, _resolve(raw, tuple(e["loc"]))) for e in exc.errors(include_url=False)]
    groups: dict[tuple[PathPart, ...], list[tuple[Mapping[str, Any], _Loc]]] = {}
    for e, loc in errs:
        if loc.union_at is not None:
            groups.setdefault(loc.union_at, []).append((e, loc))
    problems: list[Problem] = []
    for e, loc in errs:
        if loc.union_at is None:
            problems.append(_problem(e, loc))
            continue
        group = groups.pop(loc.union_at, None)
        if group is None:
            continue  # already reported with the first error of its union
        specific = [(ge, gl) for ge, gl in group if not _is_type_error(ge["type"])]
        if specific:
            # One member of the union matched the value's type: its errors say
            # what is wrong; the other members' type mismatches are noise.
            problems.extend(_problem(ge, gl) for ge, gl in specific)
            continue
        expected = _join_or([_describe_tag(gl.tags[0]) for _, gl in group if gl.tags])
        msg = f"{_subject(list(loc.union_at))} must be {expected}, got {_got(e.get('input'))}"
        problems.append(Problem(_format_path(loc.union_at), _node_prefix(loc.node_id) + msg))
    return problems


def _problem(err: Mapping[str, Any], loc: _Loc) -> Problem:
    parts, msg = _message(err, loc)
    return Problem(_format_path(parts), _node_prefix(loc.node_id) + msg)
