"""Semantics of expressions and templates (SPEC §7)."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from fm_local import expr
from fm_local.expr import (
    Expr,
    ExpressionError,
    Template,
    check_syntax,
    compile_expr,
    compile_template,
    render_value,
    value_names,
)

SCOPE: dict[str, Any] = {
    "a": {"b": {"c": 3}, "n": 2},
    "users": [{"name": "ann", "age": 31}, {"name": "bob", "age": 17}],
    "nums": [3, 1, 2],
    "s": "Hello World",
    "x": 10,
    "y": 4,
    "f": 2.5,
    "t": True,
    "nothing": None,
    "empty": [],
    "signals": {},
    "input": {"count": 5},
}


def ev(source: str, scope: Mapping[str, Any] | None = None, **kw: Any) -> Any:
    return compile_expr(source).evaluate(SCOPE if scope is None else scope, **kw)


def err(source: str, scope: Mapping[str, Any] | None = None) -> str:
    with pytest.raises(ExpressionError) as info:
        ev(source, scope)
    return str(info.value)


# -- Literals and operators -----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1", 1),
        ("-1.5", -1.5),
        ("'a'", "a"),
        ('"a" "b"', "ab"),
        ("True", True),
        ("None", None),
        ("[1, 2]", [1, 2]),
        ("(1, 2)", [1, 2]),  # tuples come back as lists
        ("(1, (2, 3))", [1, [2, 3]]),
        ("{'k': 1}", {"k": 1}),
        ("{3, 1, 2}", [1, 2, 3]),  # sets come back sorted
        ("{1, 'a'}", None),  # unsortable set: a list in some order, checked below
        ("[*nums, 4]", [3, 1, 2, 4]),
        ("{**a, 'n': 9}", {"b": {"c": 3}, "n": 9}),
    ],
)
def test_literals(source: str, expected: Any) -> None:
    result = ev(source)
    if expected is None and source.startswith("{1"):
        assert sorted(map(str, result)) == ["1", "a"]
    else:
        assert result == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x + y", 14),
        ("x - y", 6),
        ("x * y", 40),
        ("x / y", 2.5),
        ("x // y", 2),
        ("x % y", 2),
        ("x ** 2", 100),
        ("2 ** -1", 0.5),
        ("-x", -10),
        ("+x", 10),
        ("not x", False),
        ("not empty", True),
        ("~x", -11),
        ("x << 2", 40),
        ("x >> 1", 5),
        ("x & 6", 2),
        ("x | 1", 11),
        ("x ^ 3", 9),
        ("f * 2", 5.0),
        ("'ab' + 'cd'", "abcd"),
        ("'ab' * 3", "ababab"),
        ("3 * 'ab'", "ababab"),
        ("[1] * 3", [1, 1, 1]),
        ("[1, 2] + [3]", [1, 2, 3]),
        ("{1, 2} | {3}", [1, 2, 3]),
        ("{1, 2} & {2}", [2]),
        ("{1, 2} - {2}", [1]),
        ("{'a': 1} | {'b': 2}", {"a": 1, "b": 2}),
        ("x > y", True),
        ("x >= 10", True),
        ("x < y", False),
        ("x <= 9", False),
        ("x == 10", True),
        ("x != 10", False),
        ("1 < 2 < 3", True),
        ("1 < 3 < 2", False),
        ("3 > 2 == 2", True),
        ("2 in nums", True),
        ("5 not in nums", True),
        ("'World' in s", True),
        ("'k' in {'k': 1}", True),
        ("nothing is None", True),
        ("x is not None", True),
        ("x if t else y", 10),
        ("x if nothing else y", 4),
    ],
)
def test_operators(source: str, expected: Any) -> None:
    assert ev(source) == expected


def test_and_or_return_operands_and_short_circuit() -> None:
    assert ev("empty or 'default'") == "default"
    assert ev("x or undefined_name") == 10  # right side never evaluated
    assert ev("nothing and undefined_name") is None
    assert ev("x and y") == 4
    assert ev("0 or '' or []") == []
    assert ev("1 and 2 and 3") == 3


def test_chained_comparison_evaluates_each_operand_once() -> None:
    calls: list[str] = []
    assert ev("0 < len([log('m')]) < 3", log=calls.append) is True
    assert calls == ["m"]


def test_subscripts_and_slices() -> None:
    assert ev("nums[0]") == 3
    assert ev("nums[-1]") == 2
    assert ev("nums[1:]") == [1, 2]
    assert ev("nums[::-1]") == [2, 1, 3]
    assert ev("s[:5]") == "Hello"
    assert ev("users[0]['name']") == "ann"
    assert ev("a['b']['c']") == 3
    assert ev("range(10)[2:5]") == [2, 3, 4]
    assert err("a['missing']") == "key 'missing' not found"
    assert err("nums[10]") == "list index out of range"
    assert err("x[0]") == "'int' object is not subscriptable"


# -- Attribute access -----------------------------------------------------------------


def test_dot_access_on_dicts() -> None:
    assert ev("a.b.c") == 3
    assert ev("a.missing") is None
    assert ev("users[1].name") == "bob"
    # Before any resume, every level of a signal's path reads as None.
    scope = {"signals": {"resume": None}}
    assert err("signals.resume.data.approved", scope) == "cannot read attribute 'data' of None"
    assert ev("signals.resume", scope) is None
    assert ev("signals.resume.data", {"signals": {"resume": {}}}) is None


def test_dot_access_on_other_values_is_refused() -> None:
    assert err("nothing.x") == "cannot read attribute 'x' of None"
    assert err("nums.x") == "cannot read attribute 'x' of list"
    assert err("s.upper") == "cannot read attribute 'upper' of str"  # methods must be called


def test_dot_access_on_any_mapping() -> None:
    class Lazy(Mapping[str, Any]):
        def __getitem__(self, key: str) -> Any:
            if key == "k":
                return 1
            raise KeyError(key)

        def __iter__(self) -> Iterator[str]:
            return iter(["k"])

        def __len__(self) -> int:
            return 1

    scope = {"m": Lazy()}
    assert ev("m.k", scope) == 1
    assert ev("m.other", scope) is None
    assert ev("m.get('k')", scope) == 1
    assert ev("m.keys()", scope) == ["k"]
    assert ev("len(m)", scope) == 1
    # The scope itself may be any mapping.
    assert compile_expr("k + 1").evaluate(Lazy()) == 2


# -- Comprehensions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("[n * 2 for n in nums]", [6, 2, 4]),
        ("[n for n in nums if n > 1]", [3, 2]),
        ("[n for n in nums if n > 1 if n < 3]", [2]),
        ("[(i, j) for i in range(2) for j in range(i, 2)]", [[0, 0], [0, 1], [1, 1]]),
        ("[u.name for u in users if u.age >= 18]", ["ann"]),
        ("{u.name: u.age for u in users}", {"ann": 31, "bob": 17}),
        ("{n % 2 for n in nums}", [0, 1]),
        ("sum(n for n in nums)", 6),
        ("[k + str(v) for k, v in {'a': 1}.items()]", ["a1"]),
        ("[a + b for (a, b), c in [((1, 2), 3)]]", [3]),
        ("[[y for y in range(x)] for x in range(3)]", [[], [0], [0, 1]]),
        ("[x for x in [x, x + 1]]", [10, 11]),  # the first iterable sees the outer x
        ("[c for c in 'ab']", ["a", "b"]),
        ("[k for k in a]", ["b", "n"]),
    ],
)
def test_comprehensions(source: str, expected: Any) -> None:
    assert ev(source) == expected


def test_comprehension_variables_do_not_leak() -> None:
    assert ev("[x for x in range(3)] + [x]") == [0, 1, 2, 10]
    assert err("[n for n in nums] and n") == "name 'n' is not defined"


def test_comprehension_unpack_mismatch() -> None:
    assert err("[a for a, b in [(1, 2, 3)]]") == "cannot unpack 3 values into 2 names"
    assert err("[a for a in 5]") == "cannot iterate over int"


# -- f-strings ------------------------------------------------------------------------


def test_f_strings() -> None:
    assert ev("f'{x} and {s!r}'") == "10 and 'Hello World'"
    assert ev("f'{nums}'") == "[3, 1, 2]"
    assert ev("f'{nothing!s}-{t}'") == "None-True"
    assert check_syntax("f'{x:>10}'") == "format specs (':...') are not allowed in f-strings"
    assert check_syntax("f'{x!a}'") == "conversion !a is not allowed in f-strings"


# -- Functions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("len(nums)", 3),
        ("len(s)", 11),
        ("len(a)", 2),
        ("min(nums)", 1),
        ("max(nums)", 3),
        ("max(4, 9, 2)", 9),
        ("max(empty, default=0)", 0),
        ("sum(nums)", 6),
        ("sum(nums, 10)", 16),
        ("sum([0.5, 0.25])", 0.75),
        ("sorted(nums)", [1, 2, 3]),
        ("sorted(nums, reverse=True)", [3, 2, 1]),
        ("abs(-3)", 3),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("int('42')", 42),
        ("int('ff', 16)", 255),
        ("int(3.9)", 3),
        ("float('1.5')", 1.5),
        ("str(42)", "42"),
        ("str()", ""),
        ("str([1, 'a'])", "[1, 'a']"),
        ("bool(empty)", False),
        ("list('ab')", ["a", "b"]),
        ("list(a)", ["b", "n"]),
        ("list()", []),
        ("dict(x=1, y=2)", {"x": 1, "y": 2}),
        ("dict([('k', 1)])", {"k": 1}),
        ("dict(a, n=5)", {"b": {"c": 3}, "n": 5}),
        ("any([0, 1])", True),
        ("all([0, 1])", False),
        ("all(n > 0 for n in nums)", True),
        ("range(3)", [0, 1, 2]),
        ("list(range(1, 10, 4))", [1, 5, 9]),
    ],
)
def test_functions(source: str, expected: Any) -> None:
    assert ev(source) == expected


def test_now_is_epoch_milliseconds() -> None:
    before = int(time.time() * 1000)
    value = ev("now()")
    after = int(time.time() * 1000)
    assert isinstance(value, int)
    assert before - 1 <= value <= after + 1


def test_log_calls_the_callback() -> None:
    lines: list[str] = []
    assert ev("log('count', x, nums, nothing)", log=lines.append) is None
    assert lines == ["count 10 [3, 1, 2] None"]
    assert ev("log('ignored')") is None  # no callback: nothing happens


def test_function_errors() -> None:
    assert check_syntax("sorted(nums, key=len)") == (
        "sorted() got an unexpected keyword argument 'key'"
    )
    assert check_syntax("print(1)") == "function 'print' is not allowed"
    assert err("sorted(nums, **{'key': 1})") == "sorted() got an unexpected keyword argument 'key'"
    assert err("sum(['a'])") == "sum() adds numbers only, not str"
    assert err("len(1, 2)") == "len() takes exactly one argument (2 given)"
    assert err("int('x')") == "invalid literal for int() with base 10: 'x'"
    assert err("range('a')") == "range() takes integers, not str"
    assert err("min([])") == "min() arg is an empty sequence"


def test_builtin_names_resolve_to_builtins_only_when_called() -> None:
    # A node called "log" or "max" is still readable as data.
    scope = {"log": {"output": 7}, "max": 1}
    assert ev("log.output + max", scope) == 8
    assert compile_expr("log.output + max").names == frozenset({"log", "max"})
    assert ev("max(1, 2)", scope) == 2
    assert compile_expr("max(1, 2) + len(nums)").names == frozenset({"nums"})


# -- Methods --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("s.upper()", "HELLO WORLD"),
        ("s.lower()", "hello world"),
        ("'  a '.strip()", "a"),
        ("'xxa'.lstrip('x')", "a"),
        ("'axx'.rstrip('x')", "a"),
        ("'a,b,c'.split(',')", ["a", "b", "c"]),
        ("'a,b,c'.split(',', maxsplit=1)", ["a", "b,c"]),
        ("'a,b,c'.rsplit(',', 1)", ["a,b", "c"]),
        ("'a\\nb'.splitlines()", ["a", "b"]),
        ("s.startswith('He')", True),
        ("s.endswith(('x', 'd'))", True),
        ("s.replace('l', 'L')", "HeLLo WorLd"),
        ("s.replace('l', 'L', 1)", "HeLlo World"),
        ("'-'.join(['a', 'b'])", "a-b"),
        ("', '.join(u.name for u in users)", "ann, bob"),
        ("s.find('o')", 4),
        ("s.rfind('o')", 7),
        ("s.index('W')", 6),
        ("s.count('l')", 3),
        ("'hello world'.title()", "Hello World"),
        ("'hello'.capitalize()", "Hello"),
        ("'123'.isdigit()", True),
        ("'abc'.isalpha()", True),
        ("'a1'.isalnum()", True),
        ("' '.isspace()", True),
        ("'AB'.isupper()", True),
        ("'ab'.islower()", True),
        ("'7'.zfill(3)", "007"),
        ("'a'.center(3, '*')", "*a*"),
        ("'a'.ljust(3)", "a  "),
        ("'a'.rjust(3)", "  a"),
        ("'a=b'.partition('=')", ["a", "=", "b"]),
        ("'a=b=c'.rpartition('=')", ["a=b", "=", "c"]),
        ("'Straße'.casefold()", "strasse"),
        ("'v1.2'.removeprefix('v')", "1.2"),
        ("'a.txt'.removesuffix('.txt')", "a"),
        ("nums.index(1)", 1),
        ("nums.count(3)", 1),
        ("nums.copy()", [3, 1, 2]),
        ("(1, 2, 2).count(2)", 2),
        ("(1, 2).index(2)", 1),
        ("a.get('n')", 2),
        ("a.get('zz', 0)", 0),
        ("a.get('zz')", None),
        ("a.keys()", ["b", "n"]),
        ("a.values()", [{"c": 3}, 2]),
        ("{'k': 1}.items()", [["k", 1]]),
        ("a.copy()", {"b": {"c": 3}, "n": 2}),
    ],
)
def test_methods(source: str, expected: Any) -> None:
    assert ev(source) == expected


def test_method_whitelist() -> None:
    assert check_syntax("nums.append(1)") == "method 'append' is not allowed"
    assert check_syntax("nums.sort()") == "method 'sort' is not allowed"
    assert check_syntax("a.update(x=1)") == "method 'update' is not allowed"
    assert check_syntax("'{}'.format(1)") == "method 'format' is not allowed"
    assert err("s.get('x')") == "method 'get' is not allowed on str"
    assert err("nums.upper()") == "method 'upper' is not allowed on list"
    assert err("x.count(1)") == "method 'count' is not allowed on int"
    assert err("nothing.get('k')") == "method 'get' is not allowed on None"


def test_expressions_never_mutate_the_scope() -> None:
    scope = {"d": {"k": [1]}, "l": [1, 2]}
    ev("[d.copy(), l.copy(), d | {'z': 1}, l + [3], sorted(l, reverse=True)]", scope)
    assert scope == {"d": {"k": [1]}, "l": [1, 2]}


# -- Errors ---------------------------------------------------------------------------


def test_runtime_errors_are_expression_errors() -> None:
    assert err("1 / 0") == "division by zero"
    assert err("1 // 0") == "integer division or modulo by zero"
    assert err("1 + 'a'") == "unsupported operand type(s) for +: 'int' and 'str'"
    assert err("undefined") == "name 'undefined' is not defined"
    assert err("[][0]") == "list index out of range"


def test_error_carries_the_expression_and_is_one_line() -> None:
    with pytest.raises(ExpressionError) as info:
        ev("x +\n  (1 / 0)".replace("\n", " "))
    assert info.value.expression == "x +   (1 / 0)"
    assert "\n" not in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == "division by zero"
    assert copy.expression == info.value.expression


def test_syntax_errors() -> None:
    assert check_syntax("x +") is not None
    assert check_syntax("x +").startswith("syntax error")  # type: ignore[union-attr]
    assert check_syntax("") == "empty expression"
    assert check_syntax("x = 1") == "only an expression is allowed here, not a statement"
    assert check_syntax("import os") == "only an expression is allowed here, not a statement"
    assert check_syntax("lambda: 1") == "lambda is not allowed"
    assert check_syntax("_private") == "names starting with '_' are not allowed"
    assert check_syntax("a._b") == "names starting with '_' are not allowed"
    assert check_syntax("x + 1") is None
    with pytest.raises(ExpressionError):
        compile_expr(123)  # type: ignore[arg-type]


def test_parenthesised_multiline_expression() -> None:
    assert ev("(x +\n y)") == 14
    assert ev("  x  ") == 10


# -- Names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "names"),
    [
        ("a.b.c", {"a"}),
        ("a['b'] + x", {"a", "x"}),
        ("[n for n in nums if n > x]", {"nums", "x"}),
        ("[x for x in x]", {"x"}),  # the iterable is read from the enclosing scope
        ("{k: v for k, v in a.items()}", {"a"}),
        ("len(nums) + now()", {"nums"}),
        ("log(s)", {"s"}),
        ("f'{user.name}'", {"user"}),
        ("1 + 2", set()),
        ("[[y for y in row] for row in rows]", {"rows"}),
        ("[y for row in rows for y in row if y > limit]", {"rows", "limit"}),
    ],
)
def test_names(source: str, names: set[str]) -> None:
    assert compile_expr(source).names == frozenset(names)


# -- Spec examples --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flowmaestro", "python", "scope", "expected"),
    [
        ("a || b", "a or b", {"a": None, "b": 2}, 2),
        ("a && b", "a and b", {"a": 1, "b": 2}, 2),
        ("!x", "not x", {"x": []}, True),
        ("c ? a : b", "a if c else b", {"a": 1, "b": 2, "c": False}, 2),
        ("[...a, ...b]", "a + b", {"a": [1], "b": [2, 3]}, [1, 2, 3]),
    ],
)
def test_flowmaestro_translations(
    flowmaestro: str, python: str, scope: dict[str, Any], expected: Any
) -> None:
    assert check_syntax(flowmaestro) is not None
    assert ev(python, scope) == expected


def test_merge_example_from_the_spec() -> None:
    source = (
        "{'totalUsers': branch_a.count + branch_b.count,"
        " 'allEmails': branch_a.emails + branch_b.emails, 'merged': now()}"
    )
    scope = {
        "branch_a": {"count": 2, "emails": ["a@x", "b@x"]},
        "branch_b": {"count": 1, "emails": ["c@x"]},
    }
    compiled = compile_expr(source)
    assert compiled.names == frozenset({"branch_a", "branch_b"})
    before = int(time.time() * 1000)
    result = compiled.evaluate(scope)
    after = int(time.time() * 1000)
    assert result["totalUsers"] == 3
    assert result["allEmails"] == ["a@x", "b@x", "c@x"]
    assert before - 1 <= result["merged"] <= after + 1  # now(), read during the call


# -- Compilation cache and results ----------------------------------------------------


def test_compile_is_cached() -> None:
    assert compile_expr("x + 12345") is compile_expr("x + 12345")
    assert isinstance(compile_expr("x"), Expr)


def test_results_are_plain_data() -> None:
    assert ev("{'t': (1, {2}), 'r': range(2)}") == {"t": [1, [2]], "r": [0, 1]}
    assert ev("a.items()") == [["b", {"c": 3}], ["n", 2]]
    # Values read straight from the scope are returned as they are.
    assert ev("users") is SCOPE["users"]


def test_time_limit_keyword(monkeypatch: pytest.MonkeyPatch) -> None:
    # With the default limit out of reach, only the keyword's 0.05 s can stop this
    # endless loop with "time limit" (else the step limit would, seconds later). How
    # fast a limit stops an expression is a figure of make bench, not a test.
    monkeypatch.setattr(expr, "TIME_LIMIT", 3600.0)
    with pytest.raises(ExpressionError, match="time limit"):
        ev("[0 for a in range(10**6) for b in range(10**6) if 0]", time_limit=0.05)


def test_compiled_expression_evaluates_again_and_again() -> None:
    # The cost of one evaluation (a few microseconds) is measured by make bench.
    compiled = compile_expr("a.n + 1")
    results = [compiled.evaluate(SCOPE) for _ in range(10_000)]
    assert results == [3] * 10_000


def test_limits_are_module_constants() -> None:
    assert expr.MAX_SOURCE == 10_000
    assert expr.MAX_DEPTH == 100
    assert expr.MAX_STR == 1_000_000
    assert expr.MAX_SEQ == 1_000_000
    assert expr.MAX_INT_BITS == 4096
    assert expr.TIME_LIMIT == 1.0
    assert expr.MAX_STEPS == 5_000_000


# -- Templates ------------------------------------------------------------------------


def test_single_template_yields_the_raw_value() -> None:
    for text in ("{{ users }}", "{{users}}", "  {{ users }}\n"):
        template = compile_template(text)
        assert isinstance(template, Template)
        assert template.render(SCOPE) is SCOPE["users"]
    assert compile_template("{{ x + 1 }}").render(SCOPE) == 11  # type: ignore[union-attr]
    assert compile_template("{{ nothing }}").render(SCOPE) is None  # type: ignore[union-attr]
    assert compile_template("{{ (1, 2) }}").render(SCOPE) == [1, 2]  # type: ignore[union-attr]


def test_mixed_template_rendering_rules() -> None:
    def render(text: str) -> Any:
        template = compile_template(text)
        assert template is not None
        return template.render(SCOPE)

    assert render("x={{ x }}") == "x=10"
    assert render("f={{ f }}") == "f=2.5"
    assert render("[{{ nothing }}]") == "[]"
    assert render("{{ t }}/{{ not t }}") == "true/false"
    assert render("n: {{ nums }}") == "n: [3,1,2]"
    assert render("d: {{ a }}") == 'd: {"b":{"c":3},"n":2}'
    assert render("u: {{ {'k': 'é'} }}") == 'u: {"k":"é"}'
    assert render("t: {{ (1, 2) }}") == "t: [1,2]"
    assert render("{{ s }}!") == "Hello World!"
    assert render("{{x}}{{y}}") == "104"
    assert render("a {{ x }} b {{ s.lower() }} c") == "a 10 b hello world c"


def test_template_with_braces_inside_the_expression() -> None:
    template = compile_template("v={{ {'a': {'b': 1}} }}")
    assert template is not None
    assert template.render({}) == 'v={"a":{"b":1}}'
    assert compile_template("{{ '}}' }}").render({}) == "}}"  # type: ignore[union-attr]
    # A literal "{{" can be written as a template producing it.
    assert compile_template("{{ '{{' }}.Name}}").render({}) == "{{.Name}}"  # type: ignore[union-attr]


def test_template_without_braces_is_none() -> None:
    assert compile_template("plain text") is None
    assert compile_template("single { brace }") is None
    assert compile_template("") is None


def test_template_errors() -> None:
    with pytest.raises(ExpressionError, match="unclosed"):
        compile_template("hello {{ name")
    with pytest.raises(ExpressionError, match="syntax error"):
        compile_template("hello {{ x + }}")
    with pytest.raises(ExpressionError, match="empty expression"):
        compile_template("{{ }}")
    template = compile_template("a {{ 1 / 0 }}")
    assert template is not None
    with pytest.raises(ExpressionError) as info:
        template.render({})
    assert str(info.value) == "division by zero"
    assert info.value.expression == " 1 / 0 "


def test_template_names_and_cache() -> None:
    template = compile_template("{{ a.b }} and {{ [u for u in users] }} {{ len(s) }}")
    assert template is not None
    assert template.names == frozenset({"a", "users", "s"})
    assert compile_template("{{ x }}!") is compile_template("{{ x }}!")


def test_template_log_callback() -> None:
    lines: list[str] = []
    template = compile_template("{{ log('hi', x) }}done")
    assert template is not None
    assert template.render(SCOPE, lines.append) == "done"
    assert lines == ["hi 10"]


def test_value_names() -> None:
    value = {
        "url": "https://x/{{ input.count }}",
        "{{ keys_are_not_templates }}": "plain",
        "list": ["{{ users }}", 3, None, {"deep": "{{ a.b }} {{ x }}"}],
    }
    assert value_names(value) == frozenset({"input", "users", "a", "x"})
    assert value_names("plain") == frozenset()
    assert value_names(42) == frozenset()


def test_render_value() -> None:
    value = {
        "url": "https://x/{{ input.count }}",
        "{{ k }}": "{{ x }}",
        "list": ["{{ users }}", 3, None, {"deep": "{{ a.n }}-{{ y }}"}],
        "plain": {"nested": ["text"]},
    }
    rendered = render_value(value, SCOPE)
    assert rendered == {
        "url": "https://x/5",
        "{{ k }}": 10,
        "list": [SCOPE["users"], 3, None, {"deep": "2-4"}],
        "plain": {"nested": ["text"]},
    }
    assert rendered["plain"] is value["plain"]  # untouched parts are shared, not copied
    assert value["url"] == "https://x/{{ input.count }}"  # the input is not modified


def test_render_value_without_templates_returns_the_same_object() -> None:
    value = {"a": [1, "text", {"b": None}], "c": "no braces"}
    assert render_value(value, SCOPE) is value
    assert render_value("text", SCOPE) == "text"
    assert render_value(5, SCOPE) == 5
    assert render_value("{{ x }}", SCOPE) == 10


def test_render_field_keeps_a_plan_per_value_and_renders_each_scope_anew() -> None:
    """A node's field is rendered for every loop item: the same result as
    render_value, for each scope, with the value itself never modified."""
    field = {"i": "{{ x }}", "keep": {"k": [1, 2]}, "list": ["a", "{{ y }}-{{ x }}"]}
    for scope in (SCOPE, {**SCOPE, "x": 11, "y": "z"}, SCOPE):
        out = expr.render_field(field, scope)
        assert out == render_value(field, scope)
        assert out["keep"] is field["keep"]
    assert expr.render_field(field, {**SCOPE, "x": 11, "y": "z"})["list"] == ["a", "z-11"]
    assert field == {"i": "{{ x }}", "keep": {"k": [1, 2]}, "list": ["a", "{{ y }}-{{ x }}"]}
    plain = {"a": [1, "text"]}
    assert expr.render_field(plain, SCOPE) is plain
    # Another value, even one equal to the first, has its own plan.
    other = {"i": "{{ y }}", "keep": {"k": [1, 2]}, "list": []}
    assert expr.render_field(other, SCOPE)["i"] == SCOPE["y"]
    with pytest.raises(ExpressionError):
        expr.render_field({"bad": "{{ nope( }}"}, SCOPE)


def test_render_value_error() -> None:
    with pytest.raises(ExpressionError) as info:
        render_value({"a": ["{{ missing }}"]}, SCOPE)
    assert str(info.value) == "name 'missing' is not defined"
