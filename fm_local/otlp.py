"""An execution as OpenTelemetry spans: an OTLP/JSON ``ExportTraceServiceRequest``
(``resourceSpans`` → ``scopeSpans`` → ``spans``), as ``fm trace --format otlp-json``
prints it and the daemon's exporter posts it (:mod:`fm_local.otlp_export`).

A pure function of the rows the store gives (the execution, its node runs and
attempts) and ``now``. Ids are derived, not stored: the trace id is the first 32
hex characters of the SHA-256 of the execution's SPEC §9 trace id (``trace-…``),
and each span id 16 hex characters of the SHA-256 of that trace id and the span's
place (the execution, a node path, a node path and a try), so the same execution
always gives the same ids, and a span of an execution exported twice replaces
itself instead of doubling. The shape follows the OTLP JSON encoding: ids in hex,
times as unixNano strings, 64-bit integers as strings, enums as integers."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from fm_local import __version__
from fm_local.status import NODE_TERMINAL

SCOPE = "fm_local"
SERVICE = "fm_local"

# OTLP enums (opentelemetry/proto/trace/v1/trace.proto).
KIND_INTERNAL = 1
KIND_CLIENT = 3
STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2

_ERROR_STATUSES = ("failed", "timed_out")
_INDEX = re.compile(r"\[\d+\]")


def trace_id_of(fm_trace_id: str) -> str:
    """The OTLP trace id (32 hex) of an execution's ``trace-…`` id."""
    return _hex(fm_trace_id, 32)


def span_id_of(fm_trace_id: str, path: str | None = None, seq: int | None = None) -> str:
    """The span id (16 hex) of the execution (``path`` None), of a node instance,
    or of one try (``seq``) of it."""
    key = fm_trace_id + "\0" + ("" if path is None else "node\0" + path)
    if seq is not None:
        key += f"\0try\0{seq}"
    return _hex(key, 16)


def _hex(key: str, n: int) -> str:
    h = hashlib.sha256(key.encode()).hexdigest()[:n]
    return h if h.strip("0") else "1".rjust(n, "0")  # an all-zero id is invalid


def _nano(ts: float) -> str:
    return str(int(round(ts * 1e9)))


def _value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": str(v)}


def _attrs(pairs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in pairs.items() if v is not None]


def span_name(path: str) -> str:
    """A node instance's span name: its path with loop indices left out
    (``enrich_all[].enrich``), so a 10,000-item loop is one operation in a tracing
    UI, not 10,000; the full path is the ``fm.node.path`` attribute."""
    return _INDEX.sub("[]", path)


def parent_path(path: str, paths: set[str]) -> str | None:
    """The node instance a span of ``path`` hangs under, among ``paths``: an item
    under its loop (``loop[3]`` → ``loop``), a node under its item (``loop[3].step``
    → ``loop[3]``), a handler under the node it handles (``a->fb``, ``a->compensate``,
    ``a->replay#2`` → ``a``); None: the execution itself."""
    p: str | None = path
    while p:
        if "->" in p:
            p = p.rpartition("->")[0]
        elif p.endswith("]") and "[" in p:
            p = p[: p.rindex("[")]
        elif "." in p:
            p = p.rpartition(".")[0]
        else:
            return None
        if p in paths:
            return p
    return None


def _error_of(error: Any) -> tuple[str, list[dict[str, Any]]]:
    """The status message of an error object, and its ``exception`` event
    attributes (OpenTelemetry's semantic conventions)."""
    if not isinstance(error, dict):
        return "", []
    code, message = error.get("code"), error.get("message")
    text = f"{code}: {message}" if code and message else str(code or message or "")
    d = error.get("details")
    details: dict[str, Any] = d if isinstance(d, dict) else {}
    # An execution's error wraps its failed node's: the traceback is in there.
    i = details.get("details")
    inner: dict[str, Any] = i if isinstance(i, dict) else {}
    attrs = {
        "exception.type": details.get("exception") or inner.get("exception") or code,
        "exception.message": text,
        "exception.stacktrace": details.get("traceback") or inner.get("traceback"),
    }
    return text, _attrs(attrs)


def _status(status: str, error: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if status in _ERROR_STATUSES:
        text, attrs = _error_of(error)
        st: dict[str, Any] = {"code": STATUS_ERROR}
        if text:
            st["message"] = text
        return st, attrs
    if status == "succeeded":
        return {"code": STATUS_OK}, []
    return {"code": STATUS_UNSET}, []


def _span(
    trace: str,
    span_id: str,
    parent: str | None,
    name: str,
    kind: int,
    start: float,
    end: float,
    attrs: dict[str, Any],
    status: dict[str, Any],
    events: list[dict[str, Any]],
) -> dict[str, Any]:
    span: dict[str, Any] = {
        "traceId": trace,
        "spanId": span_id,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": _nano(start),
        "endTimeUnixNano": _nano(max(start, end)),
        "attributes": _attrs(attrs),
        "status": status,
    }
    if parent is not None:
        span["parentSpanId"] = parent
    if events:
        span["events"] = events
    return span


def execution_spans(
    execution: dict[str, Any],
    nodes: list[dict[str, Any]],
    attempts: list[dict[str, Any]],
    now: float,
) -> list[dict[str, Any]]:
    """The spans of one execution: one for the execution, one per node instance
    that started, and one per try under a node instance that had more than one
    (retries, recoveries). Node instances that never started (skipped, or still
    queued) have no span. What has not ended ends at ``now``, flagged
    ``fm.unfinished``."""
    from fm_local.store import loads

    fm_trace = execution["trace_id"]
    trace = trace_id_of(fm_trace)
    root = span_id_of(fm_trace)
    eid, workflow = execution["id"], execution["workflow"]
    e_start = execution["started_at"] or execution["created_at"]
    e_end = execution["finished_at"] or (now if execution["started_at"] else e_start)
    e_status, e_exc = _status(execution["status"], loads(execution["error"]))
    e_err = loads(execution["error"])
    spans = [
        _span(
            trace,
            root,
            None,
            workflow,
            KIND_INTERNAL,
            e_start,
            e_end,
            {
                "fm.execution.id": eid,
                "fm.workflow": workflow,
                "fm.trace_id": fm_trace,
                "fm.status": execution["status"],
                "fm.priority": execution["priority"],
                "fm.queue_wait_ms": None
                if not execution["started_at"]
                else round((execution["started_at"] - execution["created_at"]) * 1000, 1),
                "fm.error.code": e_err.get("code") if isinstance(e_err, dict) else None,
                "fm.unfinished": True if execution["finished_at"] is None else None,
            },
            e_status,
            [_event("exception", execution["finished_at"] or e_end, e_exc)] if e_exc else [],
        )
    ]
    tries: dict[str, list[dict[str, Any]]] = {}
    for a in attempts:
        tries.setdefault(a["path"], []).append(a)
    started = [n for n in nodes if n["started_at"] is not None]
    paths = {n["path"] for n in started}
    for n in started:
        path = n["path"]
        mine = sorted(tries.get(path, ()), key=lambda a: a["seq"])
        first = min([a["started_at"] for a in mine if a["started_at"]] or [n["started_at"]])
        start = min(first, n["started_at"])
        unfinished = n["status"] not in NODE_TERMINAL
        end = now if unfinished else (n["finished_at"] or n["started_at"])
        err = loads(n["error"])
        status, exc = _status(n["status"], err)
        kind = KIND_CLIENT if n["node_type"] == "http" else KIND_INTERNAL
        pp = parent_path(path, paths)
        span_id = span_id_of(fm_trace, path)
        attrs = {
            "fm.execution.id": eid,
            "fm.workflow": workflow,
            "fm.node.path": path,
            "fm.node.id": n["node_id"],
            "fm.node.type": n["node_type"],
            "fm.status": n["status"],
            "fm.trace_id": n["trace_id"],
            "fm.branch": n["branch_id"],
            "fm.item.index": n["item_index"],
            "fm.attempts": n["attempts"],
            "fm.recoveries": n["recoveries"] or None,
            "fm.worker.pid": n["worker_pid"],
            "fm.lane": n.get("lane"),
            "fm.code": n.get("code"),
            "fm.port": n["port"],
            "fm.handled": True if n["handled"] else None,
            "fm.error.code": err.get("code") if isinstance(err, dict) else None,
            "fm.unfinished": True if unfinished else None,
        }
        several = len(mine) > 1
        events = []
        if exc and not several:
            events.append(_event("exception", end, exc))
        spans.append(
            _span(
                trace,
                span_id,
                root if pp is None else span_id_of(fm_trace, pp),
                span_name(path),
                kind,
                start,
                end,
                attrs,
                status,
                events,
            )
        )
        if several:
            spans.extend(_try_spans(trace, fm_trace, span_id, n, mine, kind, now))
    return spans


def _try_spans(
    trace: str,
    fm_trace: str,
    parent: str,
    node: dict[str, Any],
    tries: list[dict[str, Any]],
    kind: int,
    now: float,
) -> list[dict[str, Any]]:
    from fm_local.store import loads

    out = []
    for a in tries:
        if a["started_at"] is None:
            continue
        end = a["finished_at"]
        err = loads(a["error"])
        st = a["status"]
        status, exc = _status(st, err)
        out.append(
            _span(
                trace,
                span_id_of(fm_trace, node["path"], a["seq"]),
                parent,
                f"{span_name(node['path'])} try {a['seq']}",
                kind,
                a["started_at"],
                now if end is None else end,
                {
                    "fm.execution.id": node["execution_id"],
                    "fm.node.path": node["path"],
                    "fm.attempt": a["attempt"],
                    "fm.attempt.seq": a["seq"],
                    "fm.attempt.kind": a["kind"],
                    "fm.status": st,
                    "fm.worker.pid": a["worker_pid"],
                    "fm.error.code": err.get("code") if isinstance(err, dict) else None,
                    "fm.unfinished": True if end is None else None,
                },
                status,
                [_event("exception", end or now, exc)] if exc else [],
            )
        )
    return out


def _event(name: str, ts: float, attrs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"timeUnixNano": _nano(ts), "name": name, "attributes": attrs}


def export_request(
    execution: dict[str, Any], spans: list[dict[str, Any]], host: str | None = None
) -> dict[str, Any]:
    """The ``ExportTraceServiceRequest`` that carries ``spans`` (all of one
    execution, or a slice of them: the exporter posts a big one in parts)."""
    resource = {
        "service.name": SERVICE,
        "service.version": __version__,
        "host.name": host,
    }
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _attrs(resource)},
                "scopeSpans": [{"scope": {"name": SCOPE, "version": __version__}, "spans": spans}],
            }
        ]
    }


def otlp_trace(
    execution: dict[str, Any],
    nodes: list[dict[str, Any]],
    attempts: list[dict[str, Any]],
    now: float,
    host: str | None = None,
) -> dict[str, Any]:
    """One execution as one ``ExportTraceServiceRequest``."""
    return export_request(execution, execution_spans(execution, nodes, attempts, now), host)
