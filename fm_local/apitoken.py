"""The HTTP API's bearer token file: ``<db>.token``, mode 0600.

Its own small module so that ``fm token`` starts without the HTTP server's imports.
"""

from __future__ import annotations

import os
import secrets
import shlex
import stat
from pathlib import Path

from fm_local.errors import FmError


def token_path(db: Path) -> Path:
    return db.with_name(db.name + ".token")


def ensure_token(db: Path) -> str:
    """The API token, created (mode 0600) on first use; raises :class:`FmError` when
    the file is open to group or others (the fix is in the message)."""
    path = token_path(db)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        pass
    else:
        if mode & 0o077:
            raise FmError(
                f"the API token file {path} is open to group or others (mode {mode:03o}); "
                f"run: chmod 600 {shlex.quote(str(path))}"
            )
        text = path.read_text().strip()
        if text:
            return text
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    os.chmod(path, 0o600)
    return token


__all__ = ["ensure_token", "token_path"]
