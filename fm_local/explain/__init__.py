"""``fm explain``: why the node instances of an execution are not running.

:func:`explain` puts together, for every node instance of an execution (or those a
path covers):

- a finished instance: how it ended, from its row (:mod:`.rows`);
- an unfinished one: the supervisor's own answer, asked through the database
  (:mod:`.ask`) and computed from the scheduler's gates, limiters, pools, loop
  windows, batches, timers and queues (:mod:`fm_local.supervisor.explain`);
- when no supervisor serves the file, or none answered in time: what the rows
  alone say, marked ``source: "database"`` — with reason ``no_supervisor`` when
  nothing serves the file, since then nothing will start whatever else holds it.

Reasons (``reason``): ``dependencies``, ``queued``, ``max_concurrency``, ``pool``,
``rate_limit``, ``batch``, ``retry_backoff``, ``paused``, ``timer`` (a delay
node), ``signal`` (a wait node), ``finished``, ``not_reached``, ``no_supervisor``,
``running`` (listed only when a path was asked for), ``unknown``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fm_local.errors import UsageError
from fm_local.explain.ask import ASK_TIMEOUT, ask
from fm_local.explain.paths import covers, parse, relevant
from fm_local.explain.rows import Doc, err_text, finished_detail
from fm_local.status import NODE_TERMINAL, TERMINAL_EXEC
from fm_local.store import Store, loads

__all__ = ["ASK_TIMEOUT", "Explanation", "Reason", "explain", "iso"]

# Statuses of the instances a loop's rows hold for its items and itself.
_CONTAINERS = ("loop", "item")


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass
class Reason:
    """Why one node instance (or a range of loop items) is where it is."""

    path: str
    status: str
    reason: str
    detail: str
    until: float | None = None
    blockers: list[str] | None = None
    source: str = "supervisor"  # or "database": what the rows alone said

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
            "until": iso(self.until),
            "blockers": self.blockers,
            "source": self.source,
        }


@dataclass
class Explanation:
    execution: dict[str, Any]  # its row
    reasons: list[Reason] = field(default_factory=list)
    source: str = "database"  # "supervisor" when one answered
    served_by: int | None = None  # the pid holding the supervisor lock
    note: str | None = None  # why the rows alone speak, or what was left out
    running: int = 0  # instances running on workers (not listed unless asked)


def _reason(e: dict[str, Any], source: str) -> Reason:
    until = e.get("until")
    blockers = e.get("blockers")
    return Reason(
        path=str(e.get("path")),
        status=str(e.get("status")),
        reason=str(e.get("reason")),
        detail=str(e.get("detail")),
        until=float(until) if isinstance(until, (int, float)) else None,
        blockers=[str(b) for b in blockers] if isinstance(blockers, list) else None,
        source=source,
    )


def _rows(store: Store, eid: str, pattern: list[Any] | None) -> dict[str, dict[str, Any]]:
    """The execution's node rows by path: all of them, or for a path the rows of
    its top-level node (and what is under it) and the other top-level rows."""
    if pattern is None:
        rows = store.node_runs(eid)
    else:
        rows = store.top_level_runs(eid) + store.node_runs(eid, pattern[0][0])
    return {r["path"]: r for r in rows}


def explain(
    store: Store,
    db: Path,
    ident: str,
    path: str | None = None,
    *,
    timeout: float = ASK_TIMEOUT,
    now: float | None = None,
) -> Explanation:
    """Explain execution ``ident`` (an id or a unique prefix), or only ``path`` and
    what it covers. :class:`UsageError` (exit 2) for an unknown execution or a
    path that names no node of its workflow."""
    from fm_local.lock import is_served

    row = store.find_execution(ident)
    if row is None:
        raise UsageError(f"no execution '{ident}' in {db} (see: fm ls)")
    eid = row["id"]
    wrow = store.get_workflow(row["workflow_id"])
    doc = Doc(json.loads(wrow["document"]) if wrow is not None else {})
    pattern = parse(path) if path else None
    rows = _rows(store, eid, pattern)
    if pattern is not None:
        items = {p: r.get("items") for p, r in rows.items() if r["node_type"] == "loop"}
        why = doc.check(pattern, items)
        if why is None and pattern[0][0].startswith(("->", "signal:")):
            if not any(covers(pattern, parse(p)) for p in rows):
                why = f"no node instance '{path}'"
        if why is not None:
            raise UsageError(f"execution {eid}: {why} (path '{path}'; see: fm show {eid})")
    now = time.time() if now is None else now
    holder = is_served(db)
    out = Explanation(execution=row, served_by=int(holder["pid"]) if holder else None)
    finished = row["status"] in TERMINAL_EXEC
    mine = {p: r for p, r in rows.items() if pattern is None or covers(pattern, parse(p))}
    for p, r in mine.items():
        if r["status"] in NODE_TERMINAL:
            out.reasons.append(
                Reason(p, r["status"], "finished", finished_detail(r, rows, doc), source="database")
            )
    if finished:
        out.reasons += _never_reached(row, doc, rows, pattern)
    else:
        _unfinished(out, store, db, row, doc, rows, mine, path, pattern, timeout, now)
    out.reasons.sort(key=lambda r: doc.order_key(r.path))
    return out


def _never_reached(
    row: dict[str, Any], doc: Doc, rows: dict[str, dict[str, Any]], pattern: list[Any] | None
) -> list[Reason]:
    """A finished execution's nodes that never ran: top-level ones without a row,
    and the items its loops never opened."""
    err = loads(row["error"]) if row.get("error") else None
    how = f"the execution {row['status'].replace('_', ' ')}" + (
        f" first: {err_text(err)}" if err else ""
    )
    out = []
    for nid in doc.top.nodes:
        if nid not in rows and (pattern is None or covers(pattern, parse(nid))):
            out.append(Reason(nid, "pending", "not_reached", how, source="database"))
    for p, r in rows.items():
        n = r.get("items")
        segs = parse(p)
        if (
            r["node_type"] != "loop"
            or not n
            or (pattern is not None and not relevant(pattern, segs))
        ):
            continue
        seen = {
            int(x["item_index"])
            for q, x in rows.items()
            if x["node_type"] == "item" and q.startswith(p + "[") and "." not in q[len(p) :]
        }
        want = (
            pattern[len(segs) - 1][1] if pattern is not None and len(pattern) >= len(segs) else None
        )
        missing = [i for i in ([want] if want is not None else range(n)) if i < n and i not in seen]
        if not missing:
            continue
        label = f"{p}[{missing[0]}]" if len(missing) == 1 else f"{p}[{missing[0]}..{missing[-1]}]"
        detail = f"{len(missing)} items never opened: {how}" if len(missing) > 1 else how
        out.append(Reason(label, "pending", "not_reached", detail, source="database"))
    return out


def _unfinished(
    out: Explanation,
    store: Store,
    db: Path,
    row: dict[str, Any],
    doc: Doc,
    rows: dict[str, dict[str, Any]],
    mine: dict[str, dict[str, Any]],
    path: str | None,
    pattern: list[Any] | None,
    timeout: float,
    now: float,
) -> None:
    """The unfinished instances: the supervisor's answer, or the rows' word."""
    eid = row["id"]
    unserved_why = "no supervisor serves the database (start `fm daemon`)"
    if pattern is not None and mine and all(r["status"] in NODE_TERMINAL for r in mine.values()):
        return  # everything asked about has finished: its rows said how
    answer = ask(store, eid, path, timeout) if out.served_by is not None else None
    live = answer is not None and answer.get("ok") and answer.get("active")
    if live:
        assert answer is not None
        out.source = "supervisor"
        out.running = int(answer.get("running") or 0)
        explained = set()
        for e in answer.get("entries") or []:
            p = str(e.get("path"))
            r = rows.get(p)
            if r is not None and r["status"] in NODE_TERMINAL:
                continue  # it finished since: its row says how
            explained.add(p)
            out.reasons.append(_reason(e, "supervisor"))
        if answer.get("leftOut"):
            # The answer stopped at its bound: the rest were counted, not missed.
            out.note = f"{answer['leftOut']} more instances not listed (ask for a path)"
            return
        # Rows that changed since the answer was made: what they say.
        stale = {
            p
            for p, r in mine.items()
            if r["status"] not in NODE_TERMINAL
            and p not in explained
            and r["node_type"] not in _CONTAINERS
            and (r["status"] != "running" or pattern is not None)
        }
        if stale:
            found = _from_rows(store, row, doc, rows, pattern, now)
            out.reasons += [x for x in found if x.path in stale]
        return
    if out.served_by is None:
        out.note = f"no supervisor serves {db}: nothing starts until one does (fm daemon)"
    elif answer is not None and answer.get("servesOnly"):
        out.note = (
            f"the supervisor of {db} (pid {out.served_by}) is an `fm run` of execution "
            f"{answer['servesOnly']}: it runs that one only; start `fm daemon` for this one"
        )
        unserved_why = (
            f"the database's supervisor runs only execution {answer['servesOnly']} "
            "(fm run); start `fm daemon` after it"
        )
        out.served_by = None
    elif answer is not None and answer.get("ok") is False:
        out.note = (
            f"the supervisor could not explain it ({answer.get('error')}): from the rows alone"
        )
    elif answer is not None:
        out.note = f"the supervisor does not hold execution {eid} (yet): from the rows alone"
    else:
        out.note = (
            f"the supervisor (pid {out.served_by}) did not answer within {timeout:g} s: "
            "from the rows alone"
        )
    unserved = out.served_by is None
    reasons = _from_rows(store, row, doc, rows, pattern, now, keep_running=unserved)
    if unserved:
        # Nothing runs: a row that says running is what the last supervisor left
        # (the next one runs it again).
        paused = row["status"] == "paused"
        for x in reasons:
            x.detail = (
                unserved_why
                + ("; the execution is also paused" if paused else "")
                + f"; the rows say: {x.reason}: {x.detail}"
            )
            x.reason = "no_supervisor"
    else:
        out.running = sum(
            1
            for r in mine.values()
            if r["status"] == "running" and r["node_type"] not in _CONTAINERS
        )
        if row["status"] == "paused":
            for x in reasons:
                if x.reason != "running":
                    x.detail = f"the execution is paused (fm resume {eid}); then: {x.detail}"
                    x.reason = "paused"
    out.reasons += reasons


def _from_rows(
    store: Store,
    row: dict[str, Any],
    doc: Doc,
    rows: dict[str, dict[str, Any]],
    pattern: list[Any] | None,
    now: float,
    keep_running: bool = False,
) -> list[Reason]:
    """What the rows alone say of the unfinished instances (see rows.database_entries);
    running ones only when a path was asked for, or with ``keep_running``."""
    from fm_local.explain.rows import database_entries
    from fm_local.store.explain import queue_positions

    workflow = _workflow(doc.document)
    queue = queue_positions(store, row["id"])
    found = database_entries(workflow, row, rows, queue, pattern, now)
    return [
        _reason(e, "database")
        for e in found
        if keep_running or not (e["reason"] == "running" and pattern is None)
    ]


def _workflow(document: dict[str, Any]) -> Any:
    """The model of a stored document (it passed validation when saved): the fast
    construction, else pydantic."""
    from fm_local.construct import construct
    from fm_local.model import Workflow

    built = construct(document)
    return built if built is not None else Workflow.model_validate(document)
