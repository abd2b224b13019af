"""Worker-side dispatch: run one task, capture its logs, return a result tuple.

A result is ``(task_id, ok, output_json, error, logs, started, finished)``; the
output is JSON text (validated here, so garbage never reaches the supervisor)
and ``error`` is ``{code, message, details}``. Nothing raised by node code escapes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any

from fm_local import errors

# Per attempt: at most this many captured log lines, and this many bytes of output.
MAX_LOG_LINES = 5000
MAX_LINE = 4000
MAX_OUTPUT_BYTES = 16 * 1024 * 1024


class LogCapture:
    """Collects log lines of one attempt, bounded; stands in for stdout/stderr."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str, str]] = []
        self.dropped = 0
        self._partial: dict[str, str] = {}

    def add(self, stream: str, line: str) -> None:
        if len(self.lines) >= MAX_LOG_LINES:
            self.dropped += 1
            return
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE] + "…"
        self.lines.append((time.time(), stream, line))

    def write(self, stream: str, text: str) -> None:
        buf = self._partial.get(stream, "") + text
        *complete, rest = buf.split("\n")
        for line in complete:
            self.add(stream, line)
        self._partial[stream] = rest[: MAX_LINE * 2]

    def finish(self) -> list[tuple[float, str, str]]:
        for stream, rest in self._partial.items():
            if rest:
                self.add(stream, rest)
        self._partial.clear()
        if self.dropped:
            self.lines.append((time.time(), "log", f"[{self.dropped} more log lines dropped]"))
        return self.lines


class _Stream:
    def __init__(self, cap: LogCapture, name: str) -> None:
        self.cap, self.name = cap, name

    def write(self, text: str) -> int:
        self.cap.write(self.name, text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class _Handler(logging.Handler):
    def __init__(self, cap: LogCapture) -> None:
        super().__init__(logging.DEBUG)
        self.cap = cap

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.cap.add("logging", f"{record.levelname} {record.name}: {record.getMessage()}")
        except Exception:
            pass


def error_dict(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details}


def exception_error(exc: BaseException) -> dict[str, Any]:
    """Map an exception from node code to an error record."""
    names = [c.__name__ for c in type(exc).__mro__ if c not in (object, BaseException)]
    details: dict[str, Any] = {
        "exception": type(exc).__name__,
        "exceptionTypes": names,
        "traceback": "".join(traceback.format_exception(exc)[-6:])[-4000:],
    }
    if isinstance(exc, errors.NodeError):
        if exc.details is not None:
            details["data"] = jsonable(exc.details)
        return error_dict(exc.code, str(exc), details)
    if isinstance(exc, TimeoutError):
        code = errors.TIMEOUT
    elif isinstance(exc, ConnectionError):
        code = errors.NETWORK
    else:
        code = errors.NODE_ERROR
    msg = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return error_dict(code, msg, details)


def jsonable(value: Any) -> Any:
    """``value`` if it is JSON (no NaN), else a JSON-safe rendering of it."""
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return json.loads(json.dumps(value, default=repr, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return repr(value)[:2000]


def encode_output(value: Any, what: str) -> tuple[str | None, dict[str, Any] | None]:
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        return None, error_dict(
            errors.OUTPUT_NOT_SERIALIZABLE,
            f"{what} returned a value that is not JSON-serialisable "
            f"({type(value).__name__}): {exc}",
        )
    except RecursionError:
        return None, error_dict(
            errors.OUTPUT_NOT_SERIALIZABLE, f"{what} returned a value nested too deeply"
        )
    if len(text) > MAX_OUTPUT_BYTES:
        return None, error_dict(
            errors.OUTPUT_NOT_SERIALIZABLE,
            f"{what} returned {len(text)} bytes of JSON; the limit is {MAX_OUTPUT_BYTES}",
        )
    return text, None


def run_task(task: dict[str, Any]) -> tuple[Any, ...]:
    """Run one task; never raises."""
    from fm_local.nodes import http, python, shell

    cap = LogCapture()
    started = time.time()
    old_out, old_err = sys.stdout, sys.stderr
    handler = _Handler(cap)
    root = logging.getLogger()
    old_level = root.level
    sys.stdout, sys.stderr = _Stream(cap, "stdout"), _Stream(cap, "stderr")  # type: ignore[assignment]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    kind = task["type"]
    try:
        if kind == "python":
            value = python.run(task, cap)
        elif kind == "http":
            value = http.run(task, cap)
        elif kind == "shell":
            value = shell.run(task, cap)
        else:
            raise errors.FatalError(f"unknown worker task type {kind!r}")
        out, err = encode_output(value, f"node '{task['ctx']['nodePath']}'")
    except BaseException as exc:  # noqa: BLE001 - node code may raise anything
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) and not isinstance(exc, SystemExit):
            raise
        out, err = None, exception_error(exc)
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        root.removeHandler(handler)
        root.setLevel(old_level)
    return (task["id"], err is None, out, err, cap.finish(), started, time.time())
