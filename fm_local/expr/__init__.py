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

Where things are (this package re-exports the public names):

- :mod:`.budget`: the limits (``MAX_STR``...), :class:`ExpressionError`, the budget of
  one evaluation (``_Ctx``: steps, time, memory) and the cost estimates every
  operation charges before it runs.
- :mod:`.ops`: binary, unary and comparison operators.
- :mod:`.functions`: the builtin functions (``len``, ``sorted``, ``now``, ``log``...).
- :mod:`.methods`: the str, list, tuple and dict methods.
- :mod:`.interp`: the interpreter, one handler per node type.
- :mod:`.compiler`: :class:`Expr`, :func:`compile_expr`, the whitelist and the
  analyser that checks a tree and collects its free names; :func:`check_syntax`.
- :mod:`.template`: ``{{ }}`` templates, :func:`render_value`, :func:`render_field`, :func:`render_shell`,
  :func:`value_names`.
"""

from __future__ import annotations

from fm_local.expr.budget import (
    MAX_DEPTH,
    MAX_INT_BITS,
    MAX_MEMORY,
    MAX_SEQ,
    MAX_SOURCE,
    MAX_STEPS,
    MAX_STR,
    TIME_LIMIT,
    ExpressionError,
)
from fm_local.expr.compiler import Expr, check_syntax, compile_expr
from fm_local.expr.functions import FUNCTION_NAMES
from fm_local.expr.template import (
    Template,
    compile_template,
    render_field,
    render_shell,
    render_value,
    value_names,
)

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
    "render_field",
    "render_shell",
    "render_value",
    "value_names",
]
