"""The ``python`` node: call ``module:function`` with the resolved ``args``.

Modules are keyed by (workflow folder, module name): two workflows in different
folders may each have a ``tasks.py`` and never see each other's.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import os
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from fm_local import errors


class NodeContext:
    """What a python node receives as ``ctx`` (SPEC §3)."""

    def __init__(self, fields: dict[str, Any], log: Callable[[str], None]) -> None:
        self._fields = fields
        self._log = log

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("_fields", {})
        if name in fields:
            return fields[name]
        camel = "".join(p if i == 0 else p.capitalize() for i, p in enumerate(name.split("_")))
        if camel in fields:
            return fields[camel]
        raise AttributeError(name)

    def __getitem__(self, name: str) -> Any:
        return self._fields[name]

    def log(self, *args: Any) -> None:
        self._log(" ".join(str(a) for a in args))

    def detach(self, pid: int) -> None:
        """Let process ``pid`` (started by this node, in its own session) outlive the
        node. Every other process a node starts is stopped when the node ends."""
        from fm_local import runners

        runners.detach(int(pid))

    def as_dict(self) -> dict[str, Any]:
        return dict(self._fields)

    def __repr__(self) -> str:
        return f"NodeContext({self._fields!r})"


_folder_modules: dict[str, dict[str, ModuleType]] = {}
_active_folder: str | None = None
_functions: dict[tuple[str, str], Callable[..., Any]] = {}


def _activate(folder: str) -> None:
    """Make ``folder`` the one workflow folder visible to imports."""
    global _active_folder
    if folder == _active_folder:
        return
    if _active_folder is not None:
        for name in _folder_modules.get(_active_folder, {}):
            sys.modules.pop(name, None)
        if _active_folder in sys.path:
            sys.path.remove(_active_folder)
    sys.modules.update(_folder_modules.get(folder, {}))
    sys.path.insert(0, folder)
    _active_folder = folder


def _inside(path: str | None, folder: str) -> bool:
    if not path:
        return False
    try:
        return os.path.commonpath([os.path.abspath(path), folder]) == folder
    except ValueError:
        return False


# Per workflow folder: the (mtime, size) of each module file loaded from it. A file
# that changed since makes the folder's modules load again: the daemon runs the
# code that is on disk.
_stamps: dict[str, dict[str, tuple[int, int]]] = {}
# Per (folder, call): "<file>@<sha256 prefix>" of the module the function is in.
_code: dict[tuple[str, str], str] = {}


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _changed(folder: str) -> bool:
    return any(_stamp(path) != stamp for path, stamp in _stamps.get(folder, {}).items())


def _forget(folder: str) -> None:
    """Drop every module loaded from ``folder`` (they load again on next use)."""
    for name in _folder_modules.pop(folder, {}):
        sys.modules.pop(name, None)
    _stamps.pop(folder, None)
    for key in [k for k in _functions if k[0] == folder]:
        del _functions[key]
        _code.pop(key, None)
    importlib.invalidate_caches()


def _code_id(folder: str, path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
    except OSError:
        return None
    rel = os.path.relpath(path, folder) if _inside(path, folder) else path
    return f"{rel}@{digest}"


def code_of(folder: str, call: str) -> str | None:
    """Which code a call ran: its module file and the hash of its content."""
    return _code.get((folder, call))


def load_function(folder: str, call: str) -> Callable[..., Any]:
    key = (folder, call)
    if folder in _stamps and _changed(folder):
        _forget(folder)
    fn = _functions.get(key)
    _activate(folder)
    if fn is not None:
        return fn
    modname, _, attr = call.partition(":")
    before = set(sys.modules)
    try:
        importlib.invalidate_caches()
        module = importlib.import_module(modname)
    except Exception as exc:
        raise errors.NodeError(
            f"cannot import module '{modname}' for call '{call}' (workflow folder {folder}): "
            f"{type(exc).__name__}: {exc}",
            errors.IMPORT_ERROR,
        ) from exc
    own = _folder_modules.setdefault(folder, {})
    stamps = _stamps.setdefault(folder, {})
    for name in set(sys.modules) - before:
        mod = sys.modules.get(name)
        path = getattr(mod, "__file__", None)
        if mod is not None and _inside(path, folder):
            own[name] = mod
            stamp = _stamp(path) if path else None
            if path and stamp is not None:
                stamps[path] = stamp
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise errors.NodeError(
            f"module '{modname}' ({getattr(module, '__file__', '?')}) has no function '{attr}'",
            errors.IMPORT_ERROR,
        )
    _functions[key] = fn
    code = _code_id(folder, getattr(module, "__file__", None))
    if code is not None:
        _code[key] = code
    return fn


_wants_ctx: dict[Callable[..., Any], bool] = {}


def _prepare(task: dict[str, Any], cap: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
    spec = task["spec"]
    fn = load_function(task["folder"], spec["call"])
    kwargs = dict(spec.get("args") or {})
    wants = _wants_ctx.get(fn)
    if wants is None:
        try:
            wants = "ctx" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            wants = False
        _wants_ctx[fn] = wants
    if wants:
        kwargs["ctx"] = NodeContext(task["ctx"], lambda line: cap.add("log", line))
    cap.code = code_of(task["folder"], spec["call"])
    return fn, kwargs


def run(task: dict[str, Any], cap: Any) -> Any:
    """In a process worker: the function alone in this process (a coroutine function
    runs to its end on an event loop of its own)."""
    fn, kwargs = _prepare(task, cap)
    cap.started = time.time()
    result = fn(**kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return result


async def _await(aw: Any) -> Any:
    return await aw


# Threads for sync functions on the I/O lane (a node's ``lane: "io"``).
_threads: Any = None
# Thread-lane calls that were cancelled but whose thread still runs: Python cannot
# stop a thread, so the worker reports them (see fm_local.executors.ioworker).
lingering: dict[int, Any] = {}  # task id -> its thread's future


async def run_async(task: dict[str, Any], cap: Any) -> Any:
    """On a worker's I/O event loop: a coroutine function is awaited there, among the
    other calls in flight; a sync function runs in a thread of the worker."""
    global _threads
    fn, kwargs = _prepare(task, cap)
    cap.started = time.time()
    if inspect.iscoroutinefunction(fn):
        return await fn(**kwargs)
    if _threads is None:
        from concurrent.futures import ThreadPoolExecutor

        # As many threads as calls may be in flight on the lane: a call never waits
        # for a thread, so it starts when the limits let it (rate limits count it
        # from then). Threads are made only as they are needed.
        n = int(os.environ.get("FM_IO_CONCURRENCY") or 1000)
        _threads = ThreadPoolExecutor(max_workers=max(1, n), thread_name_prefix="fm-io")
    import contextvars
    import functools

    call = functools.partial(contextvars.copy_context().run, fn, **kwargs)
    future = _threads.submit(call)
    try:
        result = await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        if not future.done():
            lingering[task["id"]] = future
        raise
    if inspect.isawaitable(result):
        result = await result
    return result
