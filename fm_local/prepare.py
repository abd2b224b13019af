"""A workflow file made ready to submit: validated once, then known by its content.

Validating a document imports the pydantic model (~0.12 s; pydantic's validator
is built only for a document that is not plainly valid, fm_local.construct) and,
for an input, jsonschema; submitting the same file again — the common case at a
terminal or in a script — should not pay that each time. So the database remembers, with each saved
workflow document, that it passed validation and what validation said (its
warnings, the queue's ``maxSize``), stamped with the validation rules that passed
it (:func:`rules_stamp`: this package's version and its validating modules' files).
``fm submit``/``fm run`` of a document already known under the same rules reads it
back and checks only the input; anything else — a new or edited document, another
folder, new rules, a database that does not exist yet — is validated in full: by
the supervisor serving the database if one answers (:mod:`fm_local.checkd`, which
has the validator warm), else here.

The daemon parses and compiles every document again when it loads it, whatever
this says: a document it cannot run fails that execution only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fm_local import __version__, jsonio
from fm_local.errors import WorkflowInvalid

if TYPE_CHECKING:
    from fm_local.store import Store

# The modules whose code decides whether a document is valid.
_RULES = (
    "validate",  # a folder: each of its modules
    "model.py",
    "construct.py",
    "expr",
    "graph.py",
    # Each node type's module declares its model class and Kind, and kinds.py lists
    # them. (The worker runners, fm_local/runners/, decide no validity.)
    "nodes",
    "jsonio.py",
    "calls.py",
)


@dataclass
class Prepared:
    """A validated workflow document, saved in the database."""

    workflow_id: int
    name: str
    raw: dict[str, Any]
    path: Path
    folder: Path
    warnings: list[str] = field(default_factory=list)
    max_queued: int | None = None
    nodes: int = 0


def rules_stamp() -> str:
    """Which validation rules are in force: the package version and the size and
    modification time of each validating module (a few ``stat`` calls)."""
    here = Path(__file__).parent
    parts = [__version__]
    names: list[str] = []
    for rule in _RULES:
        if rule.endswith(".py"):
            names.append(rule)
        else:  # a package: every module in it, so a new one counts too
            names += sorted(f"{rule}/{p.name}" for p in (here / rule).glob("*.py"))
    for name in names:
        try:
            st = os.stat(here / name)
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{name}:-")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def document_hash(document: dict[str, Any], folder: str) -> tuple[str, str]:
    """(the canonical text the database stores, its hash with the folder)."""
    doc = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return doc, hashlib.sha256((doc + "\0" + folder).encode()).hexdigest()


def read_text(path: Path) -> str:
    """A workflow file's text, or ``WorkflowInvalid`` with one line naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowInvalid([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise WorkflowInvalid([f"{path}: is a directory, not a workflow file"]) from None
    except UnicodeDecodeError as e:
        raise WorkflowInvalid([f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    except OSError as e:
        raise WorkflowInvalid([f"{path}: cannot read the file: {e.strerror or e}"]) from None


def prepare(
    file: str,
    open_store: Callable[[], Store],
    *,
    known_only_if: bool = True,
    db: str | os.PathLike[str] | None = None,
) -> Prepared:
    """Validate ``file`` (or find it validated before) and save the document.

    ``open_store`` is called only when needed: to look the document up (when
    ``known_only_if``, e.g. the database exists) and, once the document is valid, to
    save it — so a bad file creates no database. A new document is checked by the
    supervisor serving ``db`` if one answers (``fm_local.checkd``), else here.
    Raises ``WorkflowInvalid`` with one line per problem, each starting with the
    file's name."""
    path = Path(file)
    known = _known(open_store(), path) if known_only_if else None
    if known is not None:
        return known
    if db is not None:
        served = _checked_by_supervisor(db, path, open_store)
        if served is not None:
            return served
    from fm_local.validate import load_workflow

    loaded = load_workflow(path)
    assert loaded.path is not None
    return _save(
        open_store(),
        name=loaded.workflow.name,
        raw=loaded.raw,
        path=loaded.path,
        folder=loaded.folder,
        warnings=[str(w) for w in loaded.warnings],
        max_queued=loaded.workflow.settings.queue.max_size,
        nodes=len(loaded.workflow.nodes),
    )


def _checked_by_supervisor(
    db: str | os.PathLike[str], path: Path, open_store: Callable[[], Store]
) -> Prepared | None:
    """The document validated by the supervisor serving ``db`` and saved, or None
    (nobody answered, or anything is in doubt: validate here)."""
    from fm_local import checkd

    text = read_text(path)
    if len(text) > checkd.MAX_DOCUMENT:
        return None
    try:
        raw = jsonio.strict_loads(text, what=str(path))
    except jsonio.JsonProblem:
        return None  # the local validation names the problem
    if not isinstance(raw, dict):
        return None
    answer = checkd.ask(db, {"kind": "workflow", "what": str(path), "text": text})
    if answer is None:
        return None
    warnings, errors = answer.get("warnings"), answer.get("errors")
    if not isinstance(warnings, list):
        return None
    if answer.get("ok") is False and isinstance(errors, list) and errors:
        raise WorkflowInvalid([str(e) for e in errors], [str(w) for w in warnings])
    name, nodes, max_queued = answer.get("name"), answer.get("nodes"), answer.get("maxQueued")
    if answer.get("ok") is not True or not isinstance(name, str) or not isinstance(nodes, int):
        return None
    if max_queued is not None and not isinstance(max_queued, int):
        return None
    path = path.absolute()
    return _save(
        open_store(),
        name=name,
        raw=raw,
        path=path,
        folder=path.parent,
        warnings=[str(w) for w in warnings],
        max_queued=max_queued,
        nodes=nodes,
    )


def _known(store: Store, path: Path) -> Prepared | None:
    try:
        text = path.read_text(encoding="utf-8")
        raw = jsonio.strict_loads(text, what=str(path))
    except (OSError, UnicodeDecodeError, jsonio.JsonProblem):
        return None  # the full validation names the problem
    if not isinstance(raw, dict):
        return None
    folder = path.absolute().parent
    _, digest = document_hash(raw, str(folder))
    row = store.known_workflow(digest)
    if row is None or not row["checked"]:
        return None
    try:
        checked = json.loads(row["checked"])
    except ValueError:
        return None
    if not isinstance(checked, dict) or checked.get("rules") != rules_stamp():
        return None
    return Prepared(
        workflow_id=int(row["id"]),
        name=str(row["name"]),
        raw=raw,
        path=path.absolute(),
        folder=folder,
        warnings=[str(w) for w in checked.get("warnings", [])],
        max_queued=checked.get("maxQueued"),
        nodes=int(checked.get("nodes", 0)),
    )


def _save(
    store: Store,
    *,
    name: str,
    raw: dict[str, Any],
    path: Path,
    folder: Path,
    warnings: list[str],
    max_queued: int | None,
    nodes: int,
) -> Prepared:
    checked = {
        "rules": rules_stamp(),
        "warnings": warnings,
        "maxQueued": max_queued,
        "nodes": nodes,
    }
    wid = store.save_workflow(name, raw, str(path), str(folder), checked=checked)
    return Prepared(
        workflow_id=wid,
        name=name,
        raw=raw,
        path=path,
        folder=folder,
        warnings=warnings,
        max_queued=max_queued,
        nodes=nodes,
    )


def check_input_served(db: str | os.PathLike[str] | None, schema: Any, value: Any) -> list[str]:
    """:func:`check_input`, asked of the supervisor serving ``db`` when this process
    has not imported jsonschema yet (~0.14 s), else (or when nobody answers) here."""
    if schema is None:
        return []
    if db is not None and "jsonschema" not in sys.modules:
        from fm_local import checkd

        answer = checkd.ask(db, {"kind": "input", "schema": schema, "input": value})
        problems = None if answer is None else answer.get("problems")
        if isinstance(problems, list):
            return [str(p) for p in problems]
    return check_input(schema, value)


def check_input(schema: Any, value: Any) -> list[str]:
    """Problems of an execution input against a workflow's ``inputs`` (JSON Schema
    2020-12), one line each naming the path (``input.users[2].email: ...``); none
    when the workflow declares no ``inputs``."""
    if schema is None:
        return []
    import jsonschema  # ~0.14 s to import: only for workflows that declare inputs

    try:
        validator = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        errors = sorted(
            validator.iter_errors(value), key=lambda e: (list(map(str, e.absolute_path)), e.message)
        )
    except jsonschema.exceptions.SchemaError as e:
        return [f"inputs: not a valid JSON Schema: {e.message}"]
    except Exception as e:  # an unresolvable $ref and the like: still one line
        return [f"inputs: cannot check the input against the schema: {_one_line(str(e))}"]
    return [
        f"{message_path(['input', *err.absolute_path])}: {_one_line(err.message)}" for err in errors
    ]


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def message_path(parts: Iterable[str | int]) -> str:
    """``input.users[2]["odd key"]``: a JSON path as fm's messages write it."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif _IDENT.match(p):
            out += f".{p}" if out else p
        else:
            out += f"[{json.dumps(p)}]"
    return out


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
