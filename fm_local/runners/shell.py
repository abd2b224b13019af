"""The ``shell`` node: run a command; output ``{exitCode, stdout, stderr}``.

A list is executed directly, a string by ``/bin/sh -c``. The command runs in the
worker's process group, so stopping the worker stops it and its children.
Output is captured through files and cut at a limit, so a flood costs no memory.
"""

from __future__ import annotations

import os
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


def run(task: dict[str, Any], cap: Any) -> Any:
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
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            cap.started = time.time()
            proc = subprocess.run(
                argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=env
            )
        except (OSError, ValueError) as exc:  # ValueError: a NUL in an argument
            raise errors.NodeError(f"cannot run {argv[0]!r}: {exc}", errors.SHELL_ERROR) from exc
        stdout, stderr = _read(out), _read(err)
    for line in stdout.splitlines():
        cap.add("stdout", line)
    for line in stderr.splitlines():
        cap.add("stderr", line)
    result = {"exitCode": proc.returncode, "stdout": stdout, "stderr": stderr}
    if proc.returncode != 0 and not spec.get("allowFailure"):
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        raise errors.NodeError(
            f"command exited with code {proc.returncode}" + (f": {last}" if last else ""),
            errors.SHELL_ERROR,
            result,
        )
    return result
