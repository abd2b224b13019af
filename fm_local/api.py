"""The Python API: submit and run workflows from code, as ``fm submit``/``fm run`` do.

``run`` uses the daemon serving the database when there is one, else an embedded
supervisor; the result is read from committed state.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from fm_local.errors import AlreadyServed, FmError, WorkflowInvalid
from fm_local.lock import is_served
from fm_local.status import TERMINAL_EXEC as TERMINAL
from fm_local.store import Store, default_db_path, loads

Workflow = Any  # a file path, a workflow document (dict) or a fm_local.model.Workflow


def load(workflow: Workflow, folder: str | Path | None = None) -> Any:
    """A validated workflow (``LoadedWorkflow``) from a file, a dict or a model. A
    document's python ``call`` modules are looked up in ``folder`` (default: the
    current directory), as a file's are beside the file."""
    from fm_local.validate import load_workflow, parse_workflow

    if isinstance(workflow, (str, Path)):
        return load_workflow(workflow)
    if hasattr(workflow, "model_dump"):
        workflow = workflow.model_dump(by_alias=True, exclude_unset=True)
    if not isinstance(workflow, dict):
        raise TypeError(
            f"workflow must be a file path, a dict or a Workflow, not {type(workflow).__name__}"
        )
    import json

    try:
        text = json.dumps(workflow)
    except (TypeError, ValueError) as exc:
        raise WorkflowInvalid([f"workflow: not a JSON document: {exc}"]) from None
    loaded = parse_workflow(text)
    if folder is not None:
        loaded.folder = Path(folder).absolute()
    return loaded


def submit(
    workflow: Workflow,
    input: Any = None,
    *,
    db: str | Path | None = None,
    priority: int = 0,
    store: Store | None = None,
    folder: str | Path | None = None,
) -> str:
    """Validate ``workflow`` (a file, a dict or a model) and its input, queue an
    execution, return its id."""
    from fm_local.validate import validate_input

    loaded = load(workflow, folder)
    if input is None:
        input = {}  # no input given: an empty object (docs/semantics.md)
    problems = validate_input(loaded.workflow, input)
    if problems:
        where = workflow if isinstance(workflow, (str, Path)) else loaded.workflow.name
        raise WorkflowInvalid([f"{where}: {p}" for p in problems])
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
        "retryOf": row.get("retry_of"),  # fm retry: the execution this one retries
    }


def wait_row(store: Store, execution_id: str, timeout: float | None = None) -> dict[str, Any]:
    """Wait until the execution ends; return its row.

    The waiter registers with the supervisor serving the database (``wake.Waiter``),
    which nudges it once the end is committed: the end is seen within a few ms, and
    the file is read only then (reading it every few ms would cost the supervisor
    it waits for). A fallback poll covers a lost nudge, a restarted daemon, and no
    daemon at all (``PRAGMA data_version``: the row is read only when the file
    changed)."""
    from fm_local import wake

    deadline = None if timeout is None else time.monotonic() + timeout
    waiter: wake.Waiter | None = None  # registered once the first read says it runs
    seen = -1
    status = "?"
    delay = 0.01
    try:
        while True:
            version = store.data_version()
            if version != seen:
                seen = version
                row = store.get_execution(execution_id)
                if row is None:
                    raise FmError(f"no execution '{execution_id}'")
                if row["status"] in TERMINAL:
                    return row
                status = row["status"]
            now = time.monotonic()
            if deadline is not None and now > deadline:
                raise FmError(f"execution {execution_id} still {status} after {timeout} s", 1)
            if waiter is None:
                waiter = wake.Waiter(store.path, execution_id)
                continue  # it may have ended before the supervisor heard of us
            pause = delay if deadline is None else min(delay, max(0.0, deadline - now))
            waiter.wait(pause)
            # Registered: the nudge is what counts, the poll only a safety net.
            delay = min(delay * 1.5, 0.5 if waiter.registered else 0.2)
    finally:
        if waiter is not None:
            waiter.close()


def result_of(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "status": row["status"],
        "output": loads(row["output"]),
        "error": loads(row["error"]),
    }


def run(
    workflow: Workflow,
    input: Any = None,
    *,
    db: str | Path | None = None,
    workers: int | None = None,
    durability: str = "full",
    folder: str | Path | None = None,
) -> dict[str, Any]:
    """Run a workflow (a file, a dict or a model) to the end and return
    ``{id, status, output, error}``."""
    from fm_local.supervisor import Supervisor

    path = Path(db or default_db_path())
    eid = submit(workflow, input, db=path, folder=folder)
    if is_served(path):
        return wait(eid, db=path)
    sup = Supervisor(
        path, workers=workers or os.cpu_count() or 2, durability=durability, only_execution=eid
    )
    try:
        sup.open()
    except AlreadyServed:
        return wait(eid, db=path)  # a daemon started meanwhile: it runs the execution
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
