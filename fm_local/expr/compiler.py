"""Compilation: parse, refuse what is not whitelisted, annotate the tree for the
interpreter and collect its free names (:class:`Expr`, :func:`compile_expr`,
:func:`check_syntax`)."""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, NoReturn

from fm_local.expr.budget import (
    MAX_DEPTH,
    MAX_INT_BITS,
    MAX_SOURCE,
    ExpressionError,
    _Ctx,
    _NoneType,
    _short_repr,
    _tname,
)
from fm_local.expr.functions import _ANY_KW, _FUNCTIONS
from fm_local.expr.interp import _ev, _plain
from fm_local.expr.methods import _METHOD_NAMES
from fm_local.expr.ops import _BINOPS, _CMPOPS, _UNARYOPS

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
