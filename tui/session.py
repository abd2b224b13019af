"""What the screens share: the database, how often to refresh, the clock, and the
execution being looked at. The app owns one; each screen gets it at creation."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Session:
    db: Path
    interval: float = 1.0  # seconds between refreshes (longer when a read is slow)
    clock: Callable[[], float] = field(default=time.time)  # epoch seconds; tests freeze it
    execution_id: str | None = None  # the detail screen's execution
