"""The Python API: submit and run workflows from code, as ``fm submit``/``fm run`` do.

``run`` uses the daemon serving the database when there is one, else an embedded
supervisor; the result is read from committed state.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from fm_local.errors import FmError, WorkflowInvalid
from fm_local.lock import is_served
from fm_local.store import Store, default_db_path, loads

TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")


def submit(
    workflow: str | Path,
    input: Any = None,
    *,
    db: str | Path | None = None,
    priority: int = 0,
    store: Store | None = None,
) -> str:
    """Validate ``workflow`` (a file) and its input, queue an execution, return its id."""
    from fm_local.validate import load_workflow, validate_input

    loaded = load_workflow(workflow)
    if input is None:
        input = {}  # no input given: an empty object (docs/semantics.md)
    problems = validate_input(loaded.workflow, input)
    if problems:
        raise WorkflowInvalid([f"{workflow}: {p}" for p in problems])
    own = store is None
    st = store or Store(db or default_db_path())
    try:
        wid = st.save_workflow(
            loaded.workflow.name,
            loaded.raw,
            str(loaded.path) if loaded.path else None,
            str(loaded.folder),
        )
        return st.create_execution(wid, loaded.workflow.name, input, priority=priority)
    finally:
        if own:
            st.close()


def wait(
    execution_id: str, *, db: str | Path | None = None, timeout: float | None = None
) -> dict[str, Any]:
    """Block until the execution ends; return ``{id, status, output, error}``."""
    st = Store(db or default_db_path(), create=False)
    try:
        return result_of(wait_row(st, execution_id, timeout))
    finally:
        st.close()


def execution_record(row: dict[str, Any]) -> dict[str, Any]:
    """An execution as JSON (``fm show --json``, ``GET /api/executions/{id}``)."""
    return {
        "id": row["id"],
        "workflow": row["workflow"],
        "status": row["status"],
        "traceId": row["trace_id"],
        "priority": row["priority"],
        "input": loads(row["input"]),
        "output": loads(row["output"]),
        "error": loads(row["error"]),
        "createdAt": row["created_at"],
        "startedAt": row["started_at"],
        "finishedAt": row["finished_at"],
    }


def wait_row(store: Store, execution_id: str, timeout: float | None = None) -> dict[str, Any]:
    """Poll committed state until the execution ends; return its row."""
    delay = 0.01
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        row = store.get_execution(execution_id)
        if row is None:
            raise FmError(f"no execution '{execution_id}'")
        if row["status"] in TERMINAL:
            return row
        if deadline is not None and time.monotonic() > deadline:
            raise FmError(f"execution {execution_id} still {row['status']} after {timeout} s", 1)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def result_of(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "status": row["status"],
        "output": loads(row["output"]),
        "error": loads(row["error"]),
    }


def run(
    workflow: str | Path,
    input: Any = None,
    *,
    db: str | Path | None = None,
    workers: int | None = None,
    durability: str = "full",
) -> dict[str, Any]:
    """Run a workflow to the end and return ``{id, status, output, error}``."""
    from fm_local.supervisor import Supervisor

    path = Path(db or default_db_path())
    eid = submit(workflow, input, db=path)
    if is_served(path):
        return wait(eid, db=path)
    sup = Supervisor(
        path, workers=workers or os.cpu_count() or 2, durability=durability, only_execution=eid
    )
    sup.open()
    try:
        sup.run_execution(eid)
    finally:
        sup.close()
    st = Store(path)
    try:
        row = st.get_execution(eid)
        assert row is not None
        return result_of(row)
    finally:
        st.close()
