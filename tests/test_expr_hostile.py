"""Hostile expressions: each must fail with ExpressionError, and nothing else.

The evaluator runs inside the supervisor, so an expression must never escape the
whitelist, hang, exhaust memory or crash the process (SPEC §7). How quickly each is
refused is a speed, measured by ``make bench`` (the slowest refusal of CORPUS), not
asserted here: a busy machine is slow, not wrong.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fm_local import expr
from fm_local.expr import (
    MAX_SOURCE,
    ExpressionError,
    compile_expr,
    compile_template,
    render_value,
)

# Two equal but distinct strings of about a million characters: comparing them costs
# a full memcmp, so repeated comparisons are the classic way to hang a C loop.
BIG_A = "a" * 999_999 + "b"
BIG_B = ("a" * 1_000_000 + "b")[1:]

SCOPE: dict[str, Any] = {
    "x": 3,
    "s": "text",
    "d": {"k": 1},
    "l": [1, 2],
    "big_a": BIG_A,
    "big_b": BIG_B,
    "hundred_k": "x" * 100_000,
}

CORPUS: list[str] = [
    # Escapes through names, attributes and functions.
    "__import__('os')",
    "().__class__.__bases__[0].__subclasses__()",
    "x.__class__",
    "_x",
    "__builtins__",
    "log.__self__",
    "now.__globals__",
    "'a'.__len__()",
    "getattr(x, 'y')",
    "type(1)",
    "vars()",
    "globals()",
    "eval('1')",
    "exec('1')",
    "compile('1', 'f', 'eval')",
    "open('/etc/passwd')",
    "print(1)",
    "(lambda: 1)()",
    "lambda: 1",
    "[f(1) for f in [len]]",
    "dict(**{'__class__': 1})",
    "sorted(l, key=len)",
    # Format-string tricks.
    "'{0.__class__}'.format(1)",
    "'{x.__globals__}'.format_map({})",
    "f'{x!r:>{10**9}}'",
    "f'{x:{1}}'",
    "'%s' % x",
    "s % x",
    "'%9999999d' % 1",
    # Mutation.
    "[].append(1)",
    "l.append(1)",
    "l.pop()",
    "{}.update(a=1)",
    "d.clear()",
    "s.expandtabs(10**9)",
    # Huge integers and floats.
    "9**9**9",
    "2**100000",
    "10**10**10",
    "str(10**5000)",
    "1 << 10**6",
    "(2**4000) * (2**4000)",
    "int('9' * 10000)",
    "round(1, -10**6)",
    "10.0 ** 400",
    "1e308 * 10",
    "(-1) ** 0.5",
    "1j",
    # Huge strings and sequences.
    "'a' * 10**9",
    "[1] * 10**9",
    "'ab' * 600000 + 'ab' * 600000",
    "range(10**12)",
    "list(range(10**9))",
    "sum(range(10**8))",
    "sorted(range(10**9))",
    "max(range(10**9))",
    "hundred_k.replace('', 'y' * 100000)",
    "('x' * 500000).join(['a'] * 10)",
    "','.join('a' * 10**6)",
    "'a'.zfill(10**9)",
    "'a'.center(10**9)",
    "'a'.ljust(10**9)",
    "str([big_a] * 10**6)",
    "f'{[big_a] * 10**6}'",
    "log(*[big_a] * 10)",
    "[*range(10**6), *range(10**6)]",
    "sum([[1]] * 10, [])",
    # Work that is cheap to write and expensive to run.
    "[x for x in range(10**6) for y in range(10**6)]",
    "[0 for a in range(10**6) for b in range(10**6) if 0]",
    "[[0] * 10**5 for x in range(10**4)]",
    "[big_a[::-1] for x in range(1000)]",
    "[big_a.upper() for x in range(1000)]",
    "[big_a.split('a') for x in range(1000)]",
    "[big_a.count('a') for x in range(10**6)]",
    "[big_a == big_b for x in range(10**6)]",
    "[big_a] * 10**6 == [big_b] * 10**6",
    "([big_a] * 10**6).count(big_b)",
    "big_b in [big_a] * 10**6",
    "sorted([big_a, big_b] * 500000)",
    "max([big_a, big_b] * 500000)",
    "{k: 1 for k in [big_a, big_b] * 500000}",
    "{*([big_a, big_b] * 500000)}",
    "[[0] * 10**6] * 10**6 == [[0] * 10**6] * 10**6",
    "((1,) * 10**6,) * 10**6 in {1}",
    "{((1,) * 10**6,) * 10**6}",
    "dict.fromkeys(range(10**6))",
    # Parser and nesting limits.
    "(" * 500 + "1" + ")" * 500,
    "-" * 100_000 + "1",
    "-" * 9000 + "1",
    "not " * 2400 + "x",
    "1+" * 4999 + "1",
    "a" + ".b" * 4000,
    "[" * 1000 + "]" * 1000,
    "x" * 1_000_000,
    "'" + "a" * (MAX_SOURCE + 1) + "'",
    # Not expressions at all.
    "(yield)",
    "yield 1",
    "await x",
    "(y := 1)",
    "import os",
    "x = 1",
    "del x",
    "\x00",
    # Plain runtime errors.
    "1/0",
    "[][0]",
    "None.x",
    "d['missing']",
    "int('x')",
]


def _attempt(source: str, scope: dict[str, Any]) -> None:
    compile_expr(source).evaluate(scope)


@pytest.mark.parametrize("source", CORPUS, ids=lambda s: repr(s[:50]))
def test_hostile_expression_is_refused(source: str) -> None:
    with pytest.raises(ExpressionError):
        _attempt(source, dict(SCOPE))


def test_corpus_is_large() -> None:
    assert len(CORPUS) >= 40


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("1/0", "division by zero"),
        ("[][0]", "list index out of range"),
        ("None.x", "cannot read attribute 'x' of None"),
        ("d['missing']", "key 'missing' not found"),
        ("_x", "names starting with '_' are not allowed"),
        ("x.__class__", "names starting with '_' are not allowed"),
        ("'a' * 10**9", "string too long (limit 1000000 characters)"),
        ("[1] * 10**9", "sequence too long (limit 1000000 elements)"),
        ("2**100000", "integer too large (limit 4096 bits)"),
        ("'%s' % x", "'%' string formatting is not allowed; use an f-string"),
        ("[].append(1)", "method 'append' is not allowed"),
        ("type(1)", "function 'type' is not allowed"),
        ("x = 1", "only an expression is allowed here, not a statement"),
        ("[0 for a in range(10**6) for b in range(10**6) if 0]", "expression exceeded its"),
    ],
)
def test_hostile_reasons(source: str, reason: str) -> None:
    with pytest.raises(ExpressionError) as info:
        _attempt(source, dict(SCOPE))
    assert str(info.value).startswith(reason)


def test_scope_is_never_mutated() -> None:
    scope = {"l": [1, 2], "d": {"k": 1}}
    for source in ("l.append(3)", "d.update(k=2)", "l.sort()", "d.pop('k')"):
        with pytest.raises(ExpressionError):
            _attempt(source, scope)
    assert scope == {"l": [1, 2], "d": {"k": 1}}


def test_deep_call_stack_does_not_break_evaluation() -> None:
    # Evaluated near the recursion limit, a nested expression fails cleanly.
    def recurse(n: int) -> None:
        if n:
            recurse(n - 1)
            return
        with pytest.raises(ExpressionError):
            compile_expr("[[[[[[[[[[x]]]]]]]]]] + " * 30 + "1").evaluate({"x": 1})

    import sys

    recurse(sys.getrecursionlimit() - 60)


def test_hostile_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExpressionError):
        compile_template("{{ __import__('os') }}")
    template = compile_template("a{{ 'x' * 999999 }}b{{ 'y' * 999999 }}c")
    assert template is not None
    with pytest.raises(ExpressionError, match="too long"):
        template.render({})
    # With the default limit out of reach, only time_limit (0.2 s) can stop these
    # endless loops with "time limit" (else the step limit would, seconds later).
    monkeypatch.setattr(expr, "TIME_LIMIT", 3600.0)
    with pytest.raises(ExpressionError, match="time limit"):
        render_value(
            ["{{ [0 for a in range(10**6) for b in range(10**6) if 0] }}"] * 5,
            {},
            time_limit=0.2,
        )

    # One budget covers the whole structure, not 0.2 s per string: the first string
    # spends 0.3 s (in log), so the second, short one starts over the shared budget.
    # With a budget per string it would pass: 5000 steps take milliseconds.
    def slow_log(line: str) -> None:
        time.sleep(0.3)

    with pytest.raises(ExpressionError, match="time limit"):
        render_value(
            ["{{ log('first') }}", "{{ len([0 for a in range(5000)]) }}"],
            {},
            slow_log,
            time_limit=0.2,
        )


def test_deeply_nested_value_is_refused() -> None:
    value: Any = "{{ 1 }}"
    for _ in range(100_000):
        value = [value]
    with pytest.raises(ExpressionError):
        render_value(value, {})


TOKENS = [
    "x", "s", "l", "d", "k", "_", "__class__", "1", "0", "9", "-1", "1.5", "'a'", '"b"',
    "True", "None", "(", ")", "[", "]", "{", "}", ",", ":", ".", "+", "-", "*", "**",
    "/", "//", "%", "<<", ">>", "&", "|", "^", "~", "<", ">", "==", "!=", "not", "and",
    "or", "in", "is", "if", "else", "for", "lambda", "=", ":=", "*", "f'{x}'", "len",
    "range", "sum", "sorted", "max", "str", "int", "dict", "list", "now", "log", "upper",
    "join", "split", "get", "items", "replace", "zfill", "format", "append", " ", "10**9",
    "yield", "await", "import", "'{0}'", "\\", "\n", "#", "'",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=16), st.booleans())
def test_random_token_soup_only_raises_expression_error(tokens: list[str], spaced: bool) -> None:
    source = (" " if spaced else "").join(tokens)
    lines: list[str] = []
    try:
        compile_expr(source).evaluate(
            {"x": 3, "s": "ab", "l": [1, 2], "d": {"k": 1}, "k": "k"}, lines.append
        )
    except ExpressionError:
        pass


ATOMS = st.sampled_from(
    ["x", "s", "l", "d", "d.k", "d.zz", "0", "1", "-7", "2.5", "'ab'", "None", "True", "[]",
     "[1, 'a']", "{}", "{'k': l}", "(1, 2)", "{1, 2}", "range(5)", "10**6", "now()"]
)  # fmt: skip
UNARY = ["-{}", "not {}", "~{}", "len({})", "str({})", "sorted({})", "list({})", "sum({})",
         "max({})", "{}.upper()", "{}.split()", "{}.items()", "{}.get('k')", "{}.count(1)",
         "[v for v in {}]", "{{v: v for v in {}}}", "f'{{{}!r}}'", "{}[0]", "{}[1:]",
         "({},)", "[{}]", "{}.zfill(12)", "log({})", "int({})", "bool({})"]  # fmt: skip
BINARY = ["{} + {}", "{} - {}", "{} * {}", "{} / {}", "{} // {}", "{} % {}", "{} ** {}",
          "{} << {}", "{} | {}", "{} and {}", "{} or {}", "{} == {}", "{} < {}",
          "{} in {}", "{} if {} else 0", "{}.join({})", "{}.replace('a', {})",
          "[{}, {}]", "{{{}: {}}}", "{}[{}]", "max({}, {})", "range({}, {})",
          "{}.get({})", "[a * {} for a in {}]"]  # fmt: skip


def _expressions() -> st.SearchStrategy[str]:
    return st.recursive(
        ATOMS,
        lambda inner: st.one_of(
            st.tuples(st.sampled_from(UNARY), inner).map(lambda t: t[0].format(f"({t[1]})")),
            st.tuples(st.sampled_from(BINARY), inner, inner).map(
                lambda t: t[0].format(f"({t[1]})", f"({t[2]})")
            ),
        ),
        max_leaves=12,
    )


@settings(max_examples=300, deadline=None)
@given(_expressions())
def test_random_expressions_only_raise_expression_error(source: str) -> None:
    try:
        result = compile_expr(source).evaluate(
            {"x": 3, "s": "ab", "l": [1, 2], "d": {"k": 1}}, lambda line: None
        )
    except ExpressionError:
        pass
    else:
        _assert_plain(result)


def _assert_plain(value: Any) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            _assert_plain(item)
    else:
        assert value is None or isinstance(value, str | int | float | bool), type(value)
