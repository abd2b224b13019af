"""Loading and validating workflow documents (SPEC §1).

Invariant: a workflow that passes :func:`check_document` without an error can be
compiled (``graph.compile_graph`` on every graph) and scheduled; every problem
found is reported with the JSON path where it is, and all of them are reported,
not just the first.

Checks run in three layers: JSON syntax (strict: ``jsonio.strict_loads``), then
shape (pydantic, its errors translated into one-line messages), then meaning
(ids, edges, cycles, ports, expressions and the names they read, targets,
limits) on the parsed model. When the shape is wrong only cheap structural checks
on the raw document are added, because the meaning checks need a well-formed
model. Every layer is linear in the document (sorting aside) and iterative where
a graph is walked; "did you mean" hints, which compare a name with every
candidate, stop after :data:`HINT_BUDGET` comparisons per document.

The package holds one concept per module:

- here: the public API (:func:`load_workflow`, :func:`parse_workflow`,
  :func:`parse_json`, :func:`check_parsed`, :func:`check_document`,
  :func:`validate_input`, :class:`LoadedWorkflow`);
- ``text``: :class:`Problem` and the helpers that write its one line (paths,
  values, "did you mean" hints and their budget, scopes of names);
- ``shape``: pydantic's errors translated into problems;
- ``structure``: checks on the raw document that work even when the shape is wrong;
- ``meaning``: checks on the parsed model (``_Checker``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fm_local import jsonio
from fm_local.construct import construct
from fm_local.errors import WorkflowInvalid
from fm_local.model import Workflow
from fm_local.prepare import check_input, read_text

# The modules below; ``x as x``: read from fm_local.validate by other modules and tests.
from fm_local.validate.meaning import SCOPE_NAMES as SCOPE_NAMES
from fm_local.validate.meaning import _Checker
from fm_local.validate.meaning import _expression_fields as _expression_fields
from fm_local.validate.meaning import _ports as _ports
from fm_local.validate.shape import _shape_problems
from fm_local.validate.structure import _raw_structure_problems
from fm_local.validate.text import HINT_BUDGET as HINT_BUDGET
from fm_local.validate.text import PathPart as PathPart
from fm_local.validate.text import Problem, _Budget, _dedupe, _json_problem, _json_type
from fm_local.validate.text import _format_path as _format_path

__all__ = [
    "LoadedWorkflow",
    "Problem",
    "check_document",
    "load_workflow",
    "parse_workflow",
    "validate_input",
]


@dataclass
class LoadedWorkflow:
    """A validated workflow and where it came from."""

    workflow: Workflow
    raw: dict[str, Any]
    path: Path | None
    folder: Path
    warnings: list[Problem] = field(default_factory=list)


# --- public API ----------------------------------------------------------------------

# check_document calls ``construct`` through this module's namespace, which
# tests/conftest.py patches (fm_local.validate.construct): keep both here.


def load_workflow(path: str | Path) -> LoadedWorkflow:
    """Read and validate a workflow file; raise ``WorkflowInvalid`` on any error."""
    p = Path(path)
    text = read_text(p)
    return parse_workflow(text, path=p)


def parse_workflow(text: str, *, path: Path | None = None) -> LoadedWorkflow:
    """Parse and validate a workflow document; raise ``WorkflowInvalid`` on any error.

    The JSON is parsed strictly (``jsonio.strict_loads``): malformed text, NaN,
    Infinity, numbers out of range, duplicate keys and too deep nesting are one
    line naming the file (``path``, else "workflow") and where."""
    return check_parsed(parse_json(text, path=path), path=path)


def parse_json(text: str, *, path: Path | None = None) -> Any:
    """The first half of :func:`parse_workflow`: the JSON value of ``text``."""
    what = str(path) if path is not None else "workflow"
    try:
        return jsonio.strict_loads(text, what=what)
    except jsonio.JsonProblem as e:
        raise WorkflowInvalid([_json_problem(e, what)]) from None


def check_parsed(raw: Any, *, path: Path | None = None) -> LoadedWorkflow:
    """The second half of :func:`parse_workflow`: validate a parsed document."""
    wf, problems = check_document(raw)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    if errors or wf is None:
        raise WorkflowInvalid([str(p) for p in errors], [str(w) for w in warnings])
    if path is not None:
        path = Path(path).absolute()
        folder = path.parent
    else:
        folder = Path.cwd()
    return LoadedWorkflow(workflow=wf, raw=raw, path=path, folder=folder, warnings=warnings)


def check_document(raw: Any) -> tuple[Workflow | None, list[Problem]]:
    """Every problem (errors and warnings) of a parsed JSON value.

    The workflow is returned only when there is no error."""
    if not isinstance(raw, dict):
        return None, [Problem("", f"the workflow must be a JSON object, got {_json_type(raw)}")]
    problems: list[Problem] = []
    try:
        try:
            # Plainly valid documents are built without pydantic's validator
            # (~0.07 s to build); anything else is pydantic's to accept or report.
            wf: Workflow | None = construct(raw) or Workflow.model_validate(raw)
        except ValidationError as e:
            wf = None
            problems.extend(_shape_problems(raw, e))
        budget = _Budget()
        problems.extend(_raw_structure_problems(raw, budget))
        if wf is not None:
            problems.extend(_Checker(wf, raw, budget).run())
    except RecursionError:
        return None, [Problem("", "the document is nested too deeply")]
    problems = _dedupe(problems)
    if any(p.severity == "error" for p in problems):
        return None, problems
    return wf, problems


def validate_input(workflow: Workflow, value: Any) -> list[str]:
    """Problems of an execution input against ``workflow.inputs`` (JSON Schema 2020-12).

    Each line names the offending path, e.g. ``input.users[2].email: ...``; any
    JSON value is accepted when the workflow declares no ``inputs``."""
    return check_input(workflow.inputs, value)
