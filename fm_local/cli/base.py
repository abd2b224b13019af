"""The root of ``fm``: the ``cli`` group and the context every command gets
(``Ctx``, ``pass_ctx``), the commands other packages add (``FmGroup``), the options
and look-ups several command modules share, and ``main()``: the one place that turns
an error into its line and exit code."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from fm_local import __version__, errors
from fm_local.errors import FmError, UsageError, WorkflowInvalid
from fm_local.status import ACTIVE_EXEC, TERMINAL_EXEC

# Every command starts fast (<= 0.3 s, benchmarks/run.py): heavy modules (logging,
# socket, pydantic, jsonschema, the supervisor) are imported where they are used.

TERMINAL = TERMINAL_EXEC
ACTIVE = ACTIVE_EXEC


class Ctx:
    current: Ctx | None = None  # the invocation's context, for main()'s error lines

    def __init__(self, db: str | None, as_json: bool, debug: bool) -> None:
        from fm_local.store import default_db_path

        self.db = Path(db) if db else default_db_path()
        self.json = as_json
        self.debug = debug
        self.readonly = False  # set by @read_only: the command opens the file read-only
        self._store: Any = None
        Ctx.current = self

    def store(self, *, create: bool = False, check: bool = False) -> Any:
        from fm_local.store import Store

        if self._store is None:
            self._store = Store(self.db, create=create, readonly=self.readonly, check=check)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


pass_ctx = click.make_pass_decorator(Ctx)


def read_only(f: Any) -> Any:
    """A command that only reads: it opens the database read-only (no journal-mode
    change, no migration), so it works on a read-only copy. Put it under @pass_ctx."""

    @functools.wraps(f)
    def wrapper(ctx: Ctx, *args: Any, **kwargs: Any) -> Any:
        ctx.readonly = True
        return f(ctx, *args, **kwargs)

    return wrapper


def load_json_option(text: str | None, file: str | None, what: str) -> Any:
    if text is not None and file is not None:
        raise UsageError(f"give --{what} or --{what}-file, not both")
    if file is not None:
        try:
            text = Path(file).read_text()
        except OSError as exc:
            raise UsageError(f"--{what}-file {file}: {exc.strerror}") from None
    if text is None:
        return None
    from fm_local.jsonio import JsonProblem, strict_loads

    try:
        return strict_loads(text, root=what, what=f"--{what}")
    except JsonProblem as exc:
        raise UsageError(str(exc)) from None


def find_execution(ctx: Ctx, ident: str) -> dict[str, Any]:
    row = ctx.store().find_execution(ident)
    if row is None:
        raise UsageError(f"no execution '{ident}' in {ctx.db} (see: fm ls)")
    return row


PLUGIN_GROUP = "fm_local.commands"  # entry points that add commands to fm (fm tui)


class FmGroup(click.Group):
    """The ``fm`` group: its own commands, and those other installed packages add
    through the ``fm_local.commands`` entry-point group (the ``tui`` package adds
    ``fm tui``: the engine never imports the UI). The entry points are read only
    when a name is not one of fm's own or the help lists every command."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(plugin_commands()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        own = super().get_command(ctx, cmd_name)
        if own is not None:
            return own
        target = plugin_commands().get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        try:
            import importlib

            command = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise FmError(
                f"fm {cmd_name} is not available: {exc} (it comes from {target}; "
                "reinstall it, e.g. pip install -e '.[dev]')"
            ) from None
        return command if isinstance(command, click.Command) else None


def plugin_commands() -> dict[str, str]:
    """name -> "module:attribute" of every ``fm_local.commands`` entry point of the
    distributions on ``sys.path``. Read from their ``entry_points.txt`` directly:
    ``importlib.metadata`` alone takes longer to import than fm takes to start."""
    import configparser

    found: dict[str, str] = {}
    for folder in sys.path:
        try:
            entries = [e for e in os.scandir(folder or ".") if e.name.endswith(".dist-info")]
        except OSError:
            continue
        for entry in entries:
            parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
            parser.optionxform = str  # type: ignore[assignment,method-assign]
            try:
                parser.read(os.path.join(entry.path, "entry_points.txt"), encoding="utf-8")
            except (configparser.Error, UnicodeDecodeError):
                continue
            if parser.has_section(PLUGIN_GROUP):
                for name, target in parser.items(PLUGIN_GROUP):
                    found.setdefault(name, target.strip())
    return found


@click.group(cls=FmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db", envvar="FM_DB", help="Database file (env FM_DB; default ~/.local/share/fm_local/fm.db)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(__version__, prog_name="fm")
@click.pass_context
def cli(cctx: click.Context, db: str | None, as_json: bool, debug: bool) -> None:
    """fm_local: durable, parallel workflows on one machine."""
    cctx.obj = Ctx(db, as_json, debug)
    cctx.call_on_close(cctx.obj.close)


def json_option(f: Any) -> Any:
    """Accept --json after the subcommand too (``fm show ID --json``)."""

    def set_json(cctx: click.Context, param: Any, value: bool) -> None:
        obj = cctx.find_object(Ctx)
        if value and obj is not None:
            obj.json = True

    return click.option(
        "--json",
        "as_json_local",
        is_flag=True,
        expose_value=False,
        callback=set_json,
        help="Machine-readable JSON output.",
    )(f)


def _storage_problem(exc: BaseException) -> FmError | None:
    """A sqlite3 error, or an OS error about the database file (or the files beside
    it), as the storage problem's one line; None for anything else (a bug)."""
    import sqlite3

    from fm_local.store import default_db_path, storage_error

    ctx = Ctx.current
    db = ctx.db if ctx is not None else default_db_path()
    action = "read" if ctx is not None and ctx.readonly else "write"
    if type(exc) in (sqlite3.OperationalError, sqlite3.DatabaseError):
        return storage_error(exc, db, action)
    if isinstance(exc, OSError) and exc.filename:
        name = os.path.abspath(os.fsdecode(exc.filename))
        here = os.path.abspath(db)
        if name.startswith(here) or here.startswith(name + os.sep):
            return storage_error(exc, db, action)
    return None


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _print_traceback() -> None:
    import traceback

    traceback.print_exc()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    Ctx.current = None
    try:
        cli.main(args=args, prog_name="fm", standalone_mode=False)
    except WorkflowInvalid as exc:
        for w in exc.warnings:
            click.echo(w, err=True)
        for p in exc.problems:
            click.echo(p, err=True)
        if debug:
            _print_traceback()
        sys.exit(exc.exit_code)
    except FmError as exc:
        if debug:
            _print_traceback()
        _fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(errors.EXIT_USAGE)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into one line
        if debug:
            _print_traceback()
        problem = _storage_problem(exc)
        if problem is not None:
            _fail(str(problem), errors.EXIT_ENGINE)
        _fail(
            f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
            errors.EXIT_ENGINE,
        )
