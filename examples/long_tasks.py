"""Python tasks for examples/long_loop.json: a long parallel loop to watch, pause,
resume and cancel (the README tour).

Each item takes a moment (0.3 s by default) and logs one line, so ``fm logs ID``
shows the items as they run and ``fm timeline ID`` shows four bars at a time.
"""

from __future__ import annotations

import os
import time


def make_items(count: int = 200) -> list[dict]:
    """The work list: ``count`` small records."""
    return [{"n": i, "name": f"item-{i:03d}"} for i in range(count)]


def process_item(item: dict, seconds: float = 0.3, ctx=None) -> dict:
    """Pretend to work on one record for ``seconds``; log one line."""
    started = time.time()
    line = f"processing {item['name']} in pid {os.getpid()}"
    if ctx is not None:
        ctx.log(f"{line} ({ctx.nodePath})")
    else:
        print(line)
    time.sleep(seconds)
    return {
        "n": item["n"],
        "square": item["n"] * item["n"],
        "took": round(time.time() - started, 3),
    }


def summarize(results: list[dict], note: str | None = None) -> dict:
    """Fold the per-item results into one summary."""
    return {
        "items": len(results),
        "sumOfSquares": sum(r["square"] for r in results),
        "note": note,
    }
