"""``{{ }}`` templates: :func:`compile_template`, :func:`render_value`,
:func:`render_shell`, and :func:`value_names` (the names a nested value's templates read)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from fm_local.expr.budget import (
    _MAX_TEMPLATE_TRIES,
    _STR_STEP_SHIFT,
    MAX_STR,
    ExpressionError,
    _Ctx,
    _str_too_long,
    _text_size,
    _to_str,
)
from fm_local.expr.compiler import Expr, _reason, compile_expr
from fm_local.expr.interp import _plain

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
    return _render(_planned(value), value, scope, log, time_limit)


def render_field(
    value: Any,
    scope: Mapping[str, Any],
    log: Callable[[str], None] | None = None,
    *,
    time_limit: float | None = None,
) -> Any:
    """:func:`render_value` of a value that does not change once loaded (a node's
    field): where its templates are is worked out once and kept (a loop renders the
    same field for every item)."""
    entry = _plans.get(id(value))
    if entry is None or entry[0] is not value:
        plan = _planned(value)
        if len(_plans) >= _PLANS_MAX:
            _plans.clear()
        # The value is kept with its plan: its id cannot name another value meanwhile.
        _plans[id(value)] = entry = (value, plan)
    return _render(entry[1], value, scope, log, time_limit)


# A render plan: None (no template inside), a Template (a templated string), or
# (is_dict, [(key or index, plan), ...]) for the templated members of a dict/list.
_plans: dict[int, tuple[Any, Any]] = {}
_PLANS_MAX = 4096


def _planned(value: Any) -> Any:
    try:
        return _plan(value)
    except RecursionError:
        raise ExpressionError("value nested too deeply") from None


def _render(
    plan: Any,
    value: Any,
    scope: Mapping[str, Any],
    log: Callable[[str], None] | None,
    time_limit: float | None,
) -> Any:
    if plan is None:
        return value  # nothing in it is a template
    try:
        return _run_plan(plan, value, _Ctx(scope, log, time_limit))
    except RecursionError:
        raise ExpressionError("value nested too deeply") from None


def _plan(v: Any) -> Any:
    if isinstance(v, str):
        return compile_template(v) if "{{" in v else None
    if isinstance(v, dict):
        subs = [(k, p) for k, item in v.items() if (p := _plan(item)) is not None]
        return (True, subs) if subs else None
    if isinstance(v, list):
        subs = [(i, p) for i, item in enumerate(v) if (p := _plan(item)) is not None]
        return (False, subs) if subs else None
    return None


def _run_plan(plan: Any, v: Any, ctx: _Ctx) -> Any:
    if type(plan) is Template:
        return plan._render(ctx)
    is_dict, subs = plan
    out: Any = dict(v) if is_dict else list(v)
    for k, p in subs:
        out[k] = _run_plan(p, v[k], ctx)
    return out


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
