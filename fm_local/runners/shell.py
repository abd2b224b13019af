"""The ``shell`` node: run a command; output ``{exitCode, stdout, stderr}``.

A list is executed directly, a string by ``/bin/sh -c``. In a process worker the
command runs in the worker's process group, so stopping the worker stops it and its
children; on a worker's I/O loop (:func:`run_async`) it has a group of its own,
killed when the node is cancelled or ends.
Output is captured through files and cut at a limit, so a flood costs no memory.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
from typing import Any

from fm_local import errors

MAX_CAPTURE = 4 * 1024 * 1024


def _read(f: Any) -> str:
    f.seek(0)
    data = f.read(MAX_CAPTURE + 1)
    text = data[:MAX_CAPTURE].decode("utf-8", errors="replace")
    if len(data) > MAX_CAPTURE:
        text += "\n[output truncated]"
    return text


def _command(task: dict[str, Any]) -> tuple[list[str], str, dict[str, str]]:
    spec = task["spec"]
    command = spec["command"]
    folder = task["folder"]
    cwd = spec.get("cwd")
    cwd = os.path.join(folder, cwd) if cwd else folder
    env = dict(os.environ)
    env.update({k: str(v) for k, v in (spec.get("env") or {}).items()})
    env["FM_EXECUTION_ID"] = task["ctx"]["executionId"]
    env["FM_NODE_PATH"] = task["ctx"]["nodePath"]
    if isinstance(command, str):
        argv: list[str] = ["/bin/sh", "-c", command]
    else:
        argv = [str(c) for c in command]
    return argv, cwd, env


def _result(task: dict[str, Any], cap: Any, code: int, stdout: str, stderr: str) -> Any:
    for line in stdout.splitlines():
        cap.add("stdout", line)
    for line in stderr.splitlines():
        cap.add("stderr", line)
    result = {"exitCode": code, "stdout": stdout, "stderr": stderr}
    if code != 0 and not task["spec"].get("allowFailure"):
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        raise errors.NodeError(
            f"command exited with code {code}" + (f": {last}" if last else ""),
            errors.SHELL_ERROR,
            result,
        )
    return result


def run(task: dict[str, Any], cap: Any) -> Any:
    argv, cwd, env = _command(task)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            cap.started = time.time()
            proc = subprocess.run(
                argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=env
            )
        except (OSError, ValueError) as exc:  # ValueError: a NUL in an argument
            raise errors.NodeError(f"cannot run {argv[0]!r}: {exc}", errors.SHELL_ERROR) from exc
        stdout, stderr = _read(out), _read(err)
    return _result(task, cap, proc.returncode, stdout, stderr)


async def run_async(task: dict[str, Any], cap: Any) -> Any:
    """On a worker's I/O event loop: the command runs in a process group of its own
    (many commands share the worker), and the worker waits for it without blocking;
    cancelling the node kills that group."""
    argv, cwd, env = _command(task)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            cap.started = time.time()
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
                process_group=0,
            )
        except (OSError, ValueError) as exc:  # ValueError: a NUL in an argument
            raise errors.NodeError(f"cannot run {argv[0]!r}: {exc}", errors.SHELL_ERROR) from exc
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            _kill_group(proc.pid)
            await asyncio.shield(proc.wait())
            raise
        finally:
            # What the command left running in its group ends with it.
            _kill_group(proc.pid)
        stdout, stderr = _read(out), _read(err)
    return _result(task, cap, code, stdout, stderr)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
