"""Regenerate the ``--help`` blocks of docs/cli.md from the click commands.

docs/cli.md marks each help block like this::

    <!-- BEGIN HELP: fm run -->
    ```text
    Usage: fm run [OPTIONS] FILE
    ...
    ```
    <!-- END HELP: fm run -->

This script replaces what lies between the markers with the help text click
produces now, rendered as on an 80-column terminal (or into a pipe), so the
result does not depend on the terminal it runs in. A command that has no block yet gets a new section
before the ``<!-- NEW COMMANDS -->`` marker (or at the end of the file), to be
completed by hand. Running it twice changes nothing the second time.

Usage (from the repository root)::

    .venv/bin/python docs/gen_cli_docs.py          # rewrite docs/cli.md if needed
    .venv/bin/python docs/gen_cli_docs.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli.md"
# click wraps at (terminal columns - 2) when it measures the terminal itself; fix
# the result to what it prints on an 80-column terminal or into a pipe.
WIDTH = 78
NEW_MARKER = "<!-- NEW COMMANDS -->"
BLOCK = re.compile(
    r"<!-- BEGIN HELP: (?P<name>[^>]+?) -->\n.*?<!-- END HELP: (?P=name) -->",
    re.DOTALL,
)


def _context(cmd: click.Command, name: str, parent: click.Context | None) -> click.Context:
    settings = dict(cmd.context_settings)
    settings.update(terminal_width=WIDTH, max_content_width=WIDTH)
    return click.Context(cmd, info_name=name, parent=parent, **settings)


def collect_help() -> dict[str, str]:
    """``{"fm": ..., "fm run": ..., "fm dlq ls": ...}``: help text of every command."""
    sys.path.insert(0, str(ROOT))  # document this checkout, not an installed copy
    from fm_local.cli import cli

    out: dict[str, str] = {}

    def walk(cmd: click.Command, path: list[str], parent: click.Context | None) -> None:
        ctx = _context(cmd, path[-1], parent)
        out[" ".join(path)] = cmd.get_help(ctx).rstrip() + "\n"
        if isinstance(cmd, click.Group):
            for sub in cmd.list_commands(ctx):
                child = cmd.get_command(ctx, sub)
                if child is not None and not child.hidden:
                    walk(child, [*path, sub], ctx)

    walk(cli, ["fm"], None)
    return out


def block(name: str, text: str) -> str:
    return f"<!-- BEGIN HELP: {name} -->\n```text\n{text}```\n<!-- END HELP: {name} -->"


def new_section(name: str, text: str) -> str:
    return f"## `{name}`\n\n{block(name, text)}\n\nExit codes: TODO.\n\nExample: TODO.\n\n"


def render(doc: str, helps: dict[str, str]) -> tuple[str, list[str], list[str]]:
    """The updated document, the commands added, and blocks naming no command."""
    seen: set[str] = set()
    stale: list[str] = []

    def replace(m: re.Match[str]) -> str:
        name = m.group("name")
        seen.add(name)
        if name not in helps:
            stale.append(name)
            return m.group(0)
        return block(name, helps[name])

    doc = BLOCK.sub(replace, doc)
    missing = [n for n in helps if n not in seen]
    if missing:
        sections = "".join(new_section(n, helps[n]) for n in missing)
        if NEW_MARKER in doc:
            doc = doc.replace(NEW_MARKER, sections + NEW_MARKER, 1)
        else:
            doc = doc.rstrip("\n") + "\n\n" + sections.rstrip("\n") + "\n"
    return doc, missing, stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if cli.md is out of date")
    parser.add_argument("--doc", type=Path, default=DOC, help="the file to update")
    args = parser.parse_args(argv)

    old = args.doc.read_text(encoding="utf-8")
    new, missing, stale = render(old, collect_help())
    for name in stale:
        print(f"{args.doc}: help block for '{name}', which is no longer a command", file=sys.stderr)
    if args.check:
        if new != old or stale:
            print(f"{args.doc} is out of date: run python docs/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    if new != old:
        args.doc.write_text(new, encoding="utf-8")
        print(f"updated {args.doc}", file=sys.stderr)
    for name in missing:
        print(f"{args.doc}: added a section for '{name}': write its text", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
