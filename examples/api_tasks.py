"""Python tasks for ``parallel_api_calls.json`` and ``batch_processing.json``.

``start_api``/``stop_api`` manage the local JSON API (``local_api.py`` beside this
file) the parallel API example calls; ``make_dataset``/``process_record`` are the
batch processing example's data and per-record work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _get_json(url: str, timeout: float = 2.0, method: str = "GET") -> Any:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def start_api(
    users: int = 25, delayMs: int = 100, idleTimeout: float = 10, ctx: Any = None
) -> dict[str, Any]:
    """Start ``local_api.py`` detached on a free port; wait (bounded) until it answers.

    The server is not a child of the worker (``--detach``) and stops by itself after
    ``idleTimeout`` seconds without a request, so a failed run leaves nothing behind.
    """
    port_file = Path(tempfile.mkdtemp(prefix="fm-local-api-")) / "port.json"
    starter = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "local_api.py"),
            "--port-file",
            str(port_file),
            "--users",
            str(users),
            "--delay-ms",
            str(delayMs),
            "--idle-timeout",
            str(idleTimeout),
            "--detach",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the worker's process group: outlives its signals
        close_fds=True,
    )
    starter.wait(timeout=10)  # the detaching parent exits at once

    def read_port_file() -> dict[str, Any] | None:
        try:
            return json.loads(port_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    info = _wait(read_port_file, 10, "local_api.py wrote no port file")
    base_url = f"http://127.0.0.1:{info['port']}"

    def answers() -> bool:
        try:
            return _get_json(f"{base_url}/stats", timeout=1)["pid"] == info["pid"]
        except (OSError, ValueError):
            return False

    _wait(answers, 10, f"local_api.py at {base_url} did not answer")
    port_file.unlink(missing_ok=True)
    port_file.parent.rmdir()
    if ctx is not None:
        # The server is meant to outlive this node (it stops itself when idle): say
        # so, or the engine stops it with the node, as every process a node starts.
        ctx.detach(info["pid"])
        ctx.log(f"local API pid {info['pid']} listening on {base_url}")
    return {"baseUrl": base_url, "pid": info["pid"]}


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (an exited process waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def stop_api(baseUrl: str, pid: int, ctx: Any = None) -> dict[str, Any]:
    """POST /shutdown and wait (bounded) for the server process to end."""
    try:
        _get_json(f"{baseUrl}/shutdown", method="POST")
    except (OSError, ValueError) as exc:  # already gone (idle timeout): nothing to stop
        if ctx is not None:
            ctx.log(f"shutdown request failed: {exc}")
    try:
        _wait(lambda: not _alive(pid), 10, f"local API pid {pid} still running")
    except TimeoutError:
        os.kill(pid, 15)
        _wait(lambda: not _alive(pid), 5, f"local API pid {pid} survived SIGTERM")
    return {"stopped": True, "pid": pid}


def make_dataset(count: int = 1000) -> list[dict[str, Any]]:
    """The "large dataset": ``count`` small records."""
    return [{"id": i, "value": (i * 7919) % 1000} for i in range(count)]


def process_record(record: dict[str, Any], batch: int, index: int) -> dict[str, Any]:
    """Tiny per-record work: a checksum of the value."""
    value = record["value"]
    digits = sum(int(d) for d in str(value))
    return {
        "id": record["id"],
        "batch": batch,
        "index": index,
        "square": value * value,
        "digits": digits,
    }
