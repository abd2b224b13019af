"""Pictures of an execution in time: ASCII bars (``fm timeline``) and Chrome
trace-event JSON (``fm trace``). Pure functions of the recorded node runs."""

from __future__ import annotations

from typing import Any

BAR = {"succeeded": "█", "failed": "X", "cancelled": "/", "timed_out": "T", "running": "▒"}


def render_timeline(
    execution: dict[str, Any],
    nodes: list[dict[str, Any]],
    *,
    width: int = 60,
    limit: int | None = 200,
) -> str:
    timed = [n for n in nodes if n["started_at"]]
    if not timed:
        return f"execution {execution['id']}: no node has started yet"
    t0 = min(n["started_at"] for n in timed)
    ends = [n["finished_at"] or n["started_at"] for n in timed]
    t1 = max(ends + [execution.get("finished_at") or 0.0])
    span = max(t1 - t0, 1e-6)
    label_w = min(max(len(n["path"]) for n in timed), 40)
    lines = [
        f"execution {execution['id']} ({execution['status']}), {span * 1000:.0f} ms, "
        f"{len(timed)} node instances; one column = {span * 1000 / width:.1f} ms"
    ]
    shown = timed if limit is None else timed[:limit]
    for n in shown:
        start = n["started_at"] - t0
        end = (n["finished_at"] or t1) - t0
        a = min(width - 1, int(start / span * width))
        b = max(a + 1, min(width, int(round(end / span * width))))
        ch = BAR.get(n["status"], "░")
        bar = " " * a + ch * (b - a) + " " * (width - b)
        ms = (end - start) * 1000
        lane = " (I/O lane)" if n.get("lane") == "io" else ""
        lines.append(f"{n['path'][:label_w]:<{label_w}} |{bar}| {ms:7.1f} ms {n['status']}{lane}")
    if limit is not None and len(timed) > limit:
        lines.append(f"... {len(timed) - limit} more node instances (--all to show them)")
    lines.append(f"{'':<{label_w}}  0{'':>{width - 8}}{span * 1000:6.0f}ms")
    return "\n".join(lines)


DENSITY = " ░▒▓█"


def loop_key(item_path: str) -> str:
    """``outer[1].inner[7]`` -> ``outer[1].inner[*]``: one row per loop."""
    return item_path[: item_path.rfind("[")] + "[*]"


def render_summary(
    execution: dict[str, Any],
    top: list[dict[str, Any]],
    items: list[tuple[str, str, float | None, float | None]],
    *,
    width: int = 60,
) -> str:
    """The timeline of a big execution: one bar per top-level node, and one
    density bar per loop (how many of its items ran in each column)."""
    spans = [(n["started_at"], n["finished_at"]) for n in top if n["started_at"]]
    spans += [(s, e) for _, _, s, e in items if s]
    if not spans:
        return f"execution {execution['id']}: no node has started yet"
    t0 = min(s for s, _ in spans)
    t1 = max([e or s for s, e in spans] + [execution.get("finished_at") or 0.0])
    span = max(t1 - t0, 1e-6)

    def col(t: float) -> int:
        return min(width - 1, max(0, int((t - t0) / span * width)))

    groups: dict[str, list[tuple[float, float, str]]] = {}
    for path, status, s, e in items:
        if s:
            groups.setdefault(loop_key(path), []).append((s, e or t1, status))
    labels = [n["path"] for n in top if n["started_at"]] + list(groups)
    label_w = min(max(len(x) for x in labels), 40)
    lines = [
        f"execution {execution['id']} ({execution['status']}), {span * 1000:.0f} ms; "
        f"{len(items)} loop items summarised per loop; one column = {span * 1000 / width:.1f} ms"
    ]
    for n in top:
        if not n["started_at"]:
            continue
        a, b = col(n["started_at"]), col(n["finished_at"] or t1)
        ch = BAR.get(n["status"], "░")
        bar = " " * a + ch * (b - a + 1) + " " * (width - b - 1)
        ms = ((n["finished_at"] or t1) - n["started_at"]) * 1000
        lane = " (I/O lane)" if n.get("lane") == "io" else ""
        lines.append(f"{n['path'][:label_w]:<{label_w}} |{bar}| {ms:7.1f} ms {n['status']}{lane}")
    for key, spans_ in groups.items():
        diff = [0] * (width + 1)
        for s, e, _ in spans_:
            diff[col(s)] += 1
            diff[col(e) + 1] -= 1
        level, counts = 0, []
        for c in range(width):
            level += diff[c]
            counts.append(level)
        top_count = max(counts) or 1
        bar = "".join(
            DENSITY[0] if c == 0 else DENSITY[max(1, round(c / top_count * (len(DENSITY) - 1)))]
            for c in counts
        )
        events = sorted([(s, 1) for s, _, _ in spans_] + [(e, -1) for _, e, _ in spans_])
        run = peak = 0
        for _, d in events:
            run += d
            peak = max(peak, run)
        failed = sum(1 for *_, st in spans_ if st != "succeeded")
        extra = f", {failed} not succeeded" if failed else ""
        lines.append(
            f"{key[:label_w]:<{label_w}} |{bar}| {len(spans_)} items, peak {peak} at once{extra}"
        )
    lines.append(f"{'':<{label_w}}  0{'':>{width - 8}}{span * 1000:6.0f}ms")
    lines.append(
        "(density: ░▒▓█ = share of the loop's peak running in that column; --all for every bar)"
    )
    return "\n".join(lines)


def chrome_trace(execution: dict[str, Any], nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Trace-event JSON: one complete event per node instance. Slices never share a
    track while they overlap: each worker's nodes get a track (more if its records
    overlap), supervisor-side nodes (loops, items, transforms…) as many tracks as
    run at once, so Perfetto draws a parallel loop as overlapping bars."""
    events: list[dict[str, Any]] = [
        {
            "name": "process_name",
            "ph": "M",
            "pid": 1,
            "args": {"name": f"execution {execution['id']}"},
        }
    ]
    # Per group (a worker pid, or the supervisor): lanes, each the end time of its
    # last slice; a slice takes the first lane free at its start.
    lanes: dict[Any, list[float]] = {}
    tids: dict[tuple[Any, int], int] = {}
    started = sorted((n for n in nodes if n["started_at"]), key=lambda n: n["started_at"])
    for n in started:
        group = n["worker_pid"] or "supervisor"
        start = n["started_at"]
        end = n["finished_at"] or start
        group_lanes = lanes.setdefault(group, [])
        for lane, free_at in enumerate(group_lanes):
            if free_at <= start:
                group_lanes[lane] = end
                break
        else:
            lane = len(group_lanes)
            group_lanes.append(end)
        key = (group, lane)
        if key not in tids:
            tids[key] = len(tids) + 1
            name = "supervisor" if group == "supervisor" else f"worker {group}"
            if n.get("lane") == "io":
                name = f"I/O worker {group}"
            events.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": 1,
                    "tid": tids[key],
                    "args": {"name": name if lane == 0 else f"{name} ({lane + 1})"},
                }
            )
        events.append(
            {
                "name": n["path"],
                "cat": n["node_type"],
                "ph": "X",
                "ts": int(start * 1e6),
                "dur": max(1, int((end - start) * 1e6)),
                "pid": 1,
                "tid": tids[key],
                "args": {
                    "status": n["status"],
                    "traceId": n["trace_id"],
                    "attempts": n["attempts"],
                    "lane": n.get("lane"),
                },
            }
        )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"traceId": execution["trace_id"]},
    }
