"""Worker-side dispatch: run one task, capture its logs, return a result tuple.

This package is what a worker process imports: the runner of each worker node type
(``python``, ``http``, ``shell``; their declarations are in ``fm_local.nodes``) and
this dispatch. It never imports pydantic or ``fm_local.model``.

A result is ``(task_id, ok, output_json, error, logs, started, finished, code)``; the
output is JSON text (validated here, so garbage never reaches the supervisor)
and ``error`` is ``{code, message, details}``. Nothing raised by node code escapes.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import json
import logging
import os
import pkgutil
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from fm_local import errors
from fm_local.jsonio import (
    MAX_DEPTH,
    MAX_OUTPUT_BYTES,
    ValueTooDeep,
    ValueTooLarge,
    bounded_dumps,
    clean_text,
    json_size,
)

# Per attempt: at most this many captured log lines, and this many bytes of output.
MAX_LOG_LINES = 5000
MAX_LINE = 4000
# Processes node code asked to outlive their node (ctx.detach): the worker does not
# stop them, and tells the supervisor, which does not either.
detached: set[int] = set()
newly_detached: list[int] = []


def detach(pid: int) -> None:
    if pid > 0 and pid not in detached:
        detached.add(pid)
        newly_detached.append(pid)


MAX_MESSAGE = 10_000  # characters of an error message
MAX_DETAILS = 64 * 1024  # bytes of JSON of an error's details


# A worker process's one lock between its log streaming thread and its main thread:
# held to send on the pipe (executors/worker.py) and to read or clear ``current``.
# Re-entrant: the SIG_DROP handler may send while the main thread holds it.
STREAM_LOCK = threading.RLock()


class LogCapture:
    """Collects log lines of one attempt, bounded; stands in for stdout/stderr."""

    def __init__(self) -> None:
        # When the node's own code began (after imports and argument set-up): the
        # start that rate limits count. Set by the node runtime, else the task's start.
        self.started: float | None = None
        self.code: str | None = None  # "<module file>@<sha256 prefix>" of a python node
        self.lines: list[tuple[float, str, str]] = []
        self.dropped = 0
        self._partial: dict[str, str] = {}
        self.sent = 0  # lines already handed over while the attempt ran (take_new)

    def add(self, stream: str, line: str) -> None:
        if len(self.lines) >= MAX_LOG_LINES:
            self.dropped += 1
            return
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE] + "…"
        self.lines.append((time.time(), stream, clean_text(line)))

    def write(self, stream: str, text: str) -> None:
        buf = self._partial.get(stream, "") + text
        *complete, rest = buf.split("\n")
        for line in complete:
            self.add(stream, line)
        self._partial[stream] = rest[: MAX_LINE * 2]

    def take_new(self) -> list[tuple[float, str, str]]:
        """The complete lines captured since the last call, while the attempt runs
        (the worker streams them under STREAM_LOCK, only while this capture is
        ``current``: docs/observability.md); :meth:`finish` then gives the rest."""
        new = self.lines[self.sent :]
        self.sent += len(new)
        return new

    def finish(self) -> list[tuple[float, str, str]]:
        for stream, rest in self._partial.items():
            if rest:
                self.add(stream, rest)
        self._partial.clear()
        if self.dropped:
            self.lines.append((time.time(), "log", f"[{self.dropped} more log lines dropped]"))
        if not self.sent:
            return self.lines
        unsent = self.lines[self.sent :]
        self.sent = len(self.lines)
        return unsent


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


# The handler run_task puts on the root logger for each task (one, made once: a
# handler's creation and the logger cache it clears cost a no-op task a fifth of
# its time); between tasks it points at a capture nobody reads.
_NO_CAPTURE = LogCapture()
_task_handler = _Handler(_NO_CAPTURE)


def error_dict(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details}


MAX_TRACEBACK = 4000  # characters of a recorded traceback (the newest frames are kept)
_ENGINE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_STDLIB_DIRS = tuple({os.path.join(sysconfig.get_paths()[k], "") for k in ("stdlib", "platstdlib")})


def _machinery(filename: str) -> bool:
    """Standard-library or import-system code, which runs between the engine and the
    user's function (asyncio.run, importlib)."""
    return filename.startswith("<frozen ") or (
        filename.startswith(_STDLIB_DIRS) and "site-packages" not in filename
    )


def user_traceback(exc: BaseException, limit: int = MAX_TRACEBACK) -> str:
    """The formatted traceback of ``exc`` with the user's frames only: frames in the
    fm_local package are dropped, and so is the standard-library machinery that leads
    from them to the user's code; the exception lines (and chained exceptions) stay.
    At most ``limit`` characters, the newest frames kept."""
    te = traceback.TracebackException.from_exception(exc)
    todo, seen = [te], set()
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        frames = [f for f in t.stack if not f.filename.startswith(_ENGINE_DIR)]
        first = 0
        while first < len(frames) - 1 and _machinery(frames[first].filename):
            first += 1
        t.stack = traceback.StackSummary.from_list(frames[first:])
        todo.extend(
            x for x in (t.__cause__, t.__context__, *(getattr(t, "exceptions", None) or [])) if x
        )
    text = "".join(te.format())
    if len(text) <= limit:
        return text
    lines = [ln if len(ln) <= 500 else ln[:500] + "…\n" for ln in text.splitlines(True)]
    note = "  … (earlier frames cut)\n"
    kept: list[str] = []
    size = len(note)
    for ln in reversed(lines):
        if size + len(ln) > limit:
            break
        kept.append(ln)
        size += len(ln)
    return note + "".join(reversed(kept))


def _user_code_in(exc: BaseException) -> bool:
    """Whether a frame of ``exc`` (or of an exception it chains) is the user's: not
    in fm_local, not an installed package, not the standard library's machinery."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        for frame, _ in traceback.walk_tb(e.__traceback__):
            name = frame.f_code.co_filename
            if not (name.startswith(_ENGINE_DIR) or "site-packages" in name or _machinery(name)):
                return True
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return False


def exception_error(exc: BaseException) -> dict[str, Any]:
    """Map an exception from node code to an error record. A node type's own error
    (an http status, a network failure, a shell exit code, raised by fm_local's
    runners and the libraries they use) has no traceback: its message says it all;
    one raised through the user's code keeps the user's frames."""
    names = [c.__name__ for c in type(exc).__mro__ if c not in (object, BaseException)]
    details: dict[str, Any] = {"exception": type(exc).__name__, "exceptionTypes": names}
    if not isinstance(exc, errors.NodeError) or _user_code_in(exc):
        details["traceback"] = clean_text(user_traceback(exc))
    if isinstance(exc, errors.NodeError):
        if exc.details is not None:
            details["data"] = jsonable(exc.details)
        return error_dict(exc.code, _text(str(exc)), details)
    if isinstance(exc, TimeoutError):
        code = errors.TIMEOUT
    elif isinstance(exc, ConnectionError):
        code = errors.NETWORK
    else:
        code = errors.NODE_ERROR
    text = _text(str(exc))
    msg = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return error_dict(code, msg, details)


def _text(text: str) -> str:
    text = clean_text(text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"


def jsonable(value: Any) -> Any:
    """``value`` if it is (small, shallow) JSON, else a JSON-safe rendering of it."""
    try:
        json_size(value, MAX_DETAILS, 50)
        json.dumps(value, allow_nan=False)
        return value
    except (ValueTooLarge, ValueTooDeep):
        return _text(repr(value)[:2000])
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return json.loads(json.dumps(value, default=repr, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return repr(value)[:2000]


def encode_output(value: Any, what: str) -> tuple[str | None, dict[str, Any] | None]:
    """The output's JSON text, or the error saying why it has none (checked for size
    and depth before its text is built)."""
    try:
        return bounded_dumps(value, MAX_OUTPUT_BYTES), None
    except ValueTooLarge as exc:
        return None, error_dict(
            errors.OUTPUT_TOO_LARGE,
            f"{what} returned {exc} (FM_MAX_OUTPUT_BYTES); return less, "
            "e.g. a file path instead of the data",
        )
    except ValueTooDeep:
        return None, error_dict(
            errors.OUTPUT_NOT_SERIALIZABLE,
            f"{what} returned a value nested deeper than {MAX_DEPTH} levels",
        )
    except (TypeError, ValueError) as exc:
        return None, error_dict(
            errors.OUTPUT_NOT_SERIALIZABLE,
            f"{what} returned a value that is not JSON-serialisable "
            f"({type(value).__name__}): {_text(str(exc))}",
        )


# A worker node type's runner is fm_local.runners.<type>, with run(task, cap) (and
# ``async def run_async(task, cap)`` if it runs on the I/O lane).
RUNNERS: dict[str, Callable[[dict[str, Any], LogCapture], Any]] = {}
ASYNC_RUNNERS: dict[str, Callable[[dict[str, Any], LogCapture], Any]] = {}


def runner(kind: str) -> Callable[[dict[str, Any], LogCapture], Any]:
    """The run function of a worker node type (its module imported on first use)."""
    if not kind.isidentifier() or kind.startswith("_"):
        raise errors.FatalError(f"unknown worker task type {kind!r}")
    try:
        module = importlib.import_module(f"fm_local.runners.{kind}")
    except ModuleNotFoundError as exc:
        raise errors.FatalError(f"unknown worker task type {kind!r}") from exc
    RUNNERS[kind] = module.run
    return module.run


def load_runners() -> None:
    """Import every runner now (a worker does, so a task starts within a millisecond
    of its dispatch: rate limits count starts at dispatch)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            runner(info.name)


def _result(
    task: dict[str, Any],
    cap: LogCapture,
    started: float,
    out: str | None,
    err: dict[str, Any] | None,
) -> tuple[Any, ...]:
    return (
        task["id"],
        err is None,
        out,
        err,
        cap.finish(),
        cap.started or started,
        time.time(),
        cap.code,
    )


# The task a worker process runs now and its capture: (task id, capture), for the
# worker's log streaming thread (executors/worker.py); None between tasks.
current: tuple[int, LogCapture] | None = None


def run_task(task: dict[str, Any]) -> tuple[Any, ...]:
    """Run one task; never raises."""
    global current
    cap = LogCapture()
    current = (task["id"], cap)
    started = time.time()
    old_out, old_err = sys.stdout, sys.stderr
    handler = _task_handler
    handler.cap = cap
    root = logging.getLogger()
    old_level = root.level
    sys.stdout, sys.stderr = _Stream(cap, "stdout"), _Stream(cap, "stderr")  # type: ignore[assignment]
    root.addHandler(handler)
    if old_level != logging.INFO:
        root.setLevel(logging.INFO)
    kind = task["type"]
    try:
        run = RUNNERS.get(kind) or runner(kind)
        value = run(task, cap)
        out, err = encode_output(value, f"node '{task['ctx']['nodePath']}'")
    except BaseException as exc:  # noqa: BLE001 - node code may raise anything
        # KeyboardInterrupt and SystemExit too: raised by node code (workers ignore
        # SIGINT), they fail the node with their own message, not the worker.
        out, err = None, exception_error(exc)
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        root.removeHandler(handler)
        if root.level != old_level:
            root.setLevel(old_level)
        handler.cap = _NO_CAPTURE
        # No streaming after this: the capture is this thread's alone again.
        with STREAM_LOCK:
            current = None
    return _result(task, cap, started, out, err)


# --- the I/O lane: many tasks at once on one event loop ------------------------------

# The log capture of the task this code runs for (each asyncio task, and each thread
# it starts through the runners, has its own context).
_current: contextvars.ContextVar[LogCapture | None] = contextvars.ContextVar(
    "fm_capture", default=None
)


class _TaskStream(_Stream):
    """stdout/stderr of a worker running many tasks: each write goes to the capture
    of the task that wrote it (nothing written outside a task is kept)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def write(self, text: str) -> int:
        cap = _current.get()
        if cap is not None:
            cap.write(self.name, text)
        return len(text)


class _TaskHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        cap = _current.get()
        if cap is None:
            return
        try:
            cap.add("logging", f"{record.levelname} {record.name}: {record.getMessage()}")
        except Exception:
            pass


def capture_by_task() -> None:
    """Route this process's stdout, stderr and logging to the running task's capture
    (an I/O worker does this once)."""
    sys.stdout = _TaskStream("stdout")  # type: ignore[assignment]
    sys.stderr = _TaskStream("stderr")  # type: ignore[assignment]
    root = logging.getLogger()
    root.addHandler(_TaskHandler(logging.DEBUG))
    root.setLevel(logging.INFO)


async def run_task_async(task: dict[str, Any]) -> tuple[Any, ...]:
    """Run one task on the running event loop (its runner's ``run_async``); never
    raises, but is cancelled like any asyncio task (the node is being stopped)."""
    cap = LogCapture()
    _current.set(cap)  # this asyncio task's own context
    started = time.time()
    kind = task["type"]
    try:
        run = ASYNC_RUNNERS.get(kind)
        if run is None:
            runner(kind)  # its module imported, or FatalError
            run = getattr(sys.modules[f"fm_local.runners.{kind}"], "run_async", None)
            if run is None:
                raise errors.FatalError(f"a {kind} node does not run on the I/O lane")
            ASYNC_RUNNERS[kind] = run
        value = await run(task, cap)
        out, err = encode_output(value, f"node '{task['ctx']['nodePath']}'")
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - node code may raise anything
        out, err = None, exception_error(exc)
    return _result(task, cap, started, out, err)
