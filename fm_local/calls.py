"""`fm validate`'s check of python ``call`` targets: the module is found beside the
workflow and the function exists.

The modules are imported in a separate process with a time limit, so a module with
side effects at import can neither touch this process nor hang validation; what
cannot be checked in time is a warning, never a guess.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Seconds for importing every module a workflow calls (env FM_VALIDATE_IMPORT_TIMEOUT).
DEFAULT_TIMEOUT = 10.0

# Run in the child: {"folder": ..., "calls": [[where, "module:function"], ...]} on
# stdin; one JSON object per call on stdout.
_CHILD = r"""
import importlib, json, os, sys, io, contextlib
req = json.load(sys.stdin)
folder = req["folder"]
sys.path.insert(0, folder)
os.chdir(folder)
out = []
for where, call in req["calls"]:
    mod, _, attr = call.partition(":")
    res = {"where": where, "call": call}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            m = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name == mod or (e.name and mod.startswith(e.name + ".")):
            res["missing_module"] = True
            res["modules"] = sorted(
                {n[:-3] for n in os.listdir(folder) if n.endswith(".py")}
                | {n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n, "__init__.py"))}
            )
        else:
            res["error"] = f"{type(e).__name__}: {e}"
    except BaseException as e:
        res["error"] = f"{type(e).__name__}: {e}"
    else:
        fn = getattr(m, attr, None)
        if fn is None or not callable(fn):
            res["missing_function"] = True
            res["file"] = getattr(m, "__file__", None)
            res["functions"] = sorted(n for n in dir(m) if not n.startswith("_") and callable(getattr(m, n, None)))
    out.append(res)
sys.stdout.write(json.dumps(out))
"""


def python_calls(
    raw: Any, at: list[str | int] | None = None
) -> Iterator[tuple[list[str | int], str]]:
    """(JSON path of the ``call`` key, call) of every python node in a document:
    the graph, loop bodies, handlers, compensations."""
    at = at or []
    if isinstance(raw, dict):
        if raw.get("type") == "python" and isinstance(raw.get("call"), str):
            yield [*at, "call"], raw["call"]
        for k, v in raw.items():
            if isinstance(v, (dict, list)):
                yield from python_calls(v, [*at, k])
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            yield from python_calls(v, [*at, i])


def check_calls(
    raw: dict[str, Any], folder: Path, timeout: float | None = None
) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the call targets of ``raw``, whose modules live in
    ``folder``; each line starts with the call's JSON path (warnings carry no
    "warning:" prefix)."""
    return CallCheck(raw, folder, timeout).result()


class CallCheck:
    """:func:`check_calls` started at once and read later: the child imports the
    modules while this process validates the document."""

    def __init__(self, raw: dict[str, Any], folder: Path, timeout: float | None = None) -> None:
        from fm_local.validate import _format_path

        self.folder = folder
        self.calls = [(_format_path(path), call) for path, call in python_calls(raw)]
        if timeout is None:
            try:
                timeout = float(os.environ.get("FM_VALIDATE_IMPORT_TIMEOUT") or DEFAULT_TIMEOUT)
            except ValueError:
                timeout = DEFAULT_TIMEOUT
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.proc: subprocess.Popen[str] | None = None
        self.failed: str | None = None
        if not self.calls:
            return
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=str(folder),
            )
            assert self.proc.stdin is not None
            # The child reads the whole request before it imports anything.
            self.proc.stdin.write(json.dumps({"folder": str(folder), "calls": self.calls}))
            self.proc.stdin.close()
            self.proc.stdin = None  # communicate() then only reads
        except OSError as exc:
            self.cancel()
            self.failed = str(exc)

    def cancel(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def result(self) -> tuple[list[str], list[str]]:
        if self.failed is not None:
            return [], [f"call targets not checked: {self.failed}"]
        if self.proc is None:
            return [], []
        try:
            out, _ = self.proc.communicate(timeout=max(0.0, self.deadline - time.monotonic()))
            results = json.loads(out)
        except subprocess.TimeoutExpired:
            self.cancel()
            return [], [
                f"call targets not checked: importing the workflow's modules took over "
                f"{self.timeout:g} s (a module that does work at import?)"
            ]
        except (ValueError, OSError) as exc:
            return [], [f"call targets not checked: {exc}"]
        return self._lines(results)

    def _lines(self, results: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        errors: list[str] = []
        warnings: list[str] = []
        folder = self.folder
        for r in results:
            where, call = r["where"], r["call"]
            mod, _, attr = call.partition(":")
            if r.get("missing_module"):
                errors.append(
                    f"{where}: module '{mod}' not found beside the workflow ({folder})"
                    + _did_you_mean(mod, r.get("modules", []))
                )
            elif r.get("missing_function"):
                errors.append(
                    f"{where}: module '{mod}' ({r.get('file') or '?'}) has no function '{attr}'"
                    + _did_you_mean(attr, r.get("functions", []))
                )
            elif r.get("error"):
                warnings.append(f"{where}: importing module '{mod}' failed: {r['error']}")
        return errors, warnings


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
