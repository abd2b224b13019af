"""The layout holds: rules of where code lives, checked on the source itself."""

from __future__ import annotations

import ast
import re

from conftest import ROOT

SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|REPLACE|WITH)\b")


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
    return found


def test_all_sql_lives_in_the_store_package() -> None:
    """The engine, the CLI, the HTTP API and the TUI read and write the file through
    fm_local/store (transaction control and PRAGMAs aside)."""
    offenders = []
    for top in ("fm_local", "tui"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.is_relative_to(ROOT / "fm_local" / "store"):
                continue
            for line, text in _strings(ast.parse(path.read_text(), str(path))):
                if SQL.match(text):
                    offenders.append(f"{path.relative_to(ROOT)}:{line} {text[:60]!r}")
    assert offenders == []


def test_the_check_sees_sql() -> None:
    """The rule above is not vacuous: it finds the store's own statements."""
    hits = 0
    for path in sorted((ROOT / "fm_local" / "store").rglob("*.py")):
        hits += sum(1 for _, text in _strings(ast.parse(path.read_text())) if SQL.match(text))
    assert hits > 30


def test_no_module_is_over_about_600_lines() -> None:
    """A newcomer reads a concept in one file of a sitting's length (issue 11)."""
    long = []
    for top in ("fm_local", "tui"):
        for path in sorted((ROOT / top).rglob("*.py")):
            n = len(path.read_text().splitlines())
            if n > 620:
                long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert long == []
