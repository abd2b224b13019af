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
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_snake

from fm_local import expr, jsonio
from fm_local.construct import construct
from fm_local.errors import WorkflowInvalid
from fm_local.graph import LOOP_SCOPE_NAMES, Dep, compile_graph, find_cycle
from fm_local.model import (
    NODE_TYPES,
    Edge,
    LoopNode,
    NodeBase,
    OutputNode,
    SwitchNode,
    Workflow,
    complete_models,
)
from fm_local.nodes.kinds import DEFAULT_HANDLE, ERROR_HANDLE, body_nodes, kind_of
from fm_local.prepare import check_input, message_path, read_text

__all__ = [
    "LoadedWorkflow",
    "Problem",
    "check_document",
    "load_workflow",
    "parse_workflow",
    "validate_input",
]

# Names every expression may read besides node outputs (SPEC §6–§8).
SCOPE_NAMES = frozenset(
    {"input", "execution", "signals", "error", "branch", "signal", "compensated"}
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

PathPart = str | int


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) in a workflow document."""

    path: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"warning: {text}" if self.severity == "warning" else text


@dataclass
class LoadedWorkflow:
    """A validated workflow and where it came from."""

    workflow: Workflow
    raw: dict[str, Any]
    path: Path | None
    folder: Path
    warnings: list[Problem] = field(default_factory=list)


# --- public API ----------------------------------------------------------------------


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


# --- helpers ------------------------------------------------------------------------


def _json_problem(e: jsonio.JsonProblem, what: str) -> str:
    """``<what>: <path>: <reason>``, the path in this module's style (``nodes[2]``)."""
    if e.parts is None:
        return str(e)  # malformed text: strict_loads already named the file
    where = _json_path(e.parts)
    return f"{what}: {where}: {e.reason}" if where else f"{what}: {e.reason}"


def _json_path(parts: Sequence[PathPart]) -> str:
    """:func:`_format_path`, shortened to its start and end when it is deep (as
    ``jsonio.format_path`` does), so that the line stays readable."""
    if len(parts) > 12:
        head = _format_path(parts[:6])
        tail = _format_path(parts[-3:])
        return f"{head}…{tail} ({len(parts)} levels)"
    return _format_path(parts)


_format_path = message_path


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _got(v: Any) -> str:
    """``a string 'x'``, ``an array``: what the user wrote, briefly."""
    kind = _json_type(v)
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        text = json.dumps(v) if not isinstance(v, str) else repr(v)
        if len(text) <= 40:
            return f"{kind} {text}"
    if isinstance(v, bool):
        return "true" if v else "false"
    return kind


def _value(v: Any) -> str:
    """What the user wrote, briefly: ``'x'``, ``-1``, ``an array``."""
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        text = repr(v) if isinstance(v, str) else json.dumps(v)
        if len(text) <= 40:
            return text
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    return _json_type(v)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _short(text: str, limit: int = 60) -> str:
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _suggest(name: str, candidates: Iterable[str]) -> str:
    return _hint(name, _Budget(), _Names(candidates))


# Name comparisons "did you mean" hints may cost in one document. Hints are exact
# until then and left out after, so that thousands of misspelled names among
# thousands of ids (each hint compares one name with every id) stay linear.
HINT_BUDGET = 500_000


class _Budget:
    __slots__ = ("left",)

    def __init__(self, left: int = HINT_BUDGET) -> None:
        self.left = left

    def take(self, n: int) -> bool:
        if n > self.left:
            return False
        self.left -= n
        return True


def _best_match(word: str, names: Iterable[str], cutoff: float = 0.6) -> tuple[float, str] | None:
    """``difflib.get_close_matches(word, names, n=1, cutoff)`` with its score: the
    largest (ratio, name). A maximum, so the best of a union of sets is the best of
    each set's best."""
    s = difflib.SequenceMatcher()
    s.set_seq2(word)
    best: tuple[float, str] | None = None
    for x in names:
        s.set_seq1(x)
        if s.real_quick_ratio() >= cutoff and s.quick_ratio() >= cutoff:
            r = s.ratio()
            if r >= cutoff and (best is None or (r, x) > best):
                best = (r, x)
    return best


class _Names:
    """A set of names to suggest from. It remembers the best match of each word
    asked, so a graph that misspells the same name in many nodes compares it with
    all of its names once, not once per node."""

    __slots__ = ("names", "_best")

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        self._best: dict[str, tuple[float, str] | None] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def knows(self, word: str) -> bool:
        return word in self._best

    def best(self, word: str) -> tuple[float, str] | None:
        if word not in self._best:
            self._best[word] = _best_match(word, self.names)
        return self._best[word]


def _hint(word: str, budget: _Budget, *sets: _Names) -> str:
    """`` (did you mean 'x'?)`` for the closest name in any of ``sets``; "" when
    there is none, or when the document's hint budget cannot pay for the search."""
    cost = sum(len(s.names) for s in sets if not s.knows(word))
    if cost and not budget.take(cost):
        return ""
    found = [b for b in (s.best(word) for s in sets) if b is not None]
    return f" (did you mean '{max(found)[1]}'?)" if found else ""


class _Scope:
    """The names an expression of one graph may read: the graph's own layer, then
    the enclosing graphs' layers. Linked, not copied, so that a loop body costs
    what its own nodes cost however big the graph around it is."""

    __slots__ = ("layer", "outer")

    def __init__(self, layer: _Names, outer: _Scope | None = None) -> None:
        self.layer = layer
        self.outer = outer

    def __contains__(self, name: object) -> bool:
        s: _Scope | None = self
        while s is not None:
            if name in s.layer:
                return True
            s = s.outer
        return False

    def layers(self) -> list[_Names]:
        out = []
        s: _Scope | None = self
        while s is not None:
            out.append(s.layer)
            s = s.outer
        return out


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    out = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


@functools.cache
def _snake(camel: str) -> str:
    return to_snake(camel)  # a few regex substitutions: worth remembering per key


def _raw_key(raw: Any, camel: str) -> str:
    """The spelling the user wrote for a key (camelCase or snake_case)."""
    if isinstance(raw, dict):
        if camel in raw:
            return camel
        snake = _snake(camel)
        if snake in raw:
            return snake
        if camel == "json" and "json_body" in raw:
            return "json_body"
    return camel


def _child(raw: Any, key: PathPart) -> Any:
    if isinstance(raw, dict) and isinstance(key, str):
        return raw.get(key)
    if isinstance(raw, list) and isinstance(key, int) and 0 <= key < len(raw):
        return raw[key]
    return None


def _list(raw: Any, key: str) -> list[Any]:
    v = raw.get(key) if isinstance(raw, dict) else None
    return v if isinstance(v, list) else []


def _node_prefix(node_id: str | None) -> str:
    return f"node '{node_id}': " if node_id else ""


# --- shape: pydantic errors -> problems ---------------------------------------------

_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}

_NAME_FIELDS = {
    "outputVariable",
    "output_variable",
    "itemVariable",
    "item_variable",
    "indexVariable",
    "index_variable",
}


def _is_type_error(err_type: str) -> bool:
    return err_type in _TYPE_WORDS or err_type.endswith("_type") or err_type.endswith("_parsing")


def _strip(t: Any) -> Any:
    """Remove ``Annotated`` and ``Optional`` wrappers; a real union stays a union."""
    while True:
        if typing.get_origin(t) is typing.Annotated:
            t = typing.get_args(t)[0]
            continue
        members = _union_args(t)
        if members is not None:
            rest = [m for m in members if m is not type(None)]
            if len(rest) == 1:
                t = rest[0]
                continue
        return t


def _union_args(t: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(t)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(t)
    return None


def _union_members(t: Any) -> list[Any] | None:
    members = _union_args(t)
    if members is None:
        return None
    rest = [m for m in members if m is not type(None)]
    return rest if len(rest) > 1 else None


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _is_node_union(members: list[Any]) -> bool:
    return all(isinstance(m, type) and issubclass(m, NodeBase) for m in members)


def _member_for_tag(members: list[Any], tag: str) -> Any:
    for m in members:
        base = m
        if typing.get_origin(base) is typing.Annotated:
            base = typing.get_args(base)[0]
        origin = typing.get_origin(base)
        name = getattr(origin or base, "__name__", str(base))
        if tag == name or tag.endswith("-" + name) or tag.startswith(name + "["):
            return m
    return Any


def _field_of(model: type[BaseModel], key: str) -> Any:
    for name, f in model.model_fields.items():
        if key == name or key == f.alias:
            return f
    return None


def _model_keys(model: type[BaseModel]) -> dict[str, str]:
    """Every accepted spelling of a model's keys -> the documented (camelCase) one."""
    keys: dict[str, str] = {}
    for name, f in model.model_fields.items():
        alias = f.alias or name
        keys[alias] = alias
        keys[name] = alias
    return keys


@dataclass
class _Loc:
    parts: list[PathPart]
    node_id: str | None
    owner: type[BaseModel] | None  # the model whose key the last part is
    union_at: tuple[PathPart, ...] | None  # where the first non-node union was met
    tags: list[str]


def _resolve(raw: Any, loc: tuple[int | str, ...]) -> _Loc:
    """Map a pydantic error location onto the document: drop union member tags,
    keep keys as the user wrote them, and find the innermost node."""
    cur_t: Any = Workflow
    cur_raw: Any = raw
    parts: list[PathPart] = []
    node_id: str | None = None
    owner: type[BaseModel] | None = None
    union_at: tuple[PathPart, ...] | None = None
    tags: list[str] = []
    for el in loc:
        t = _strip(cur_t)
        members = _union_members(t)
        if members is not None and isinstance(el, str):
            if _is_node_union(members):
                cur_t = NODE_TYPES.get(el, Any)
            else:
                if union_at is None:
                    union_at = tuple(parts)
                tags.append(el)
                cur_t = _member_for_tag(members, el)
            continue
        if _is_model(t) and isinstance(el, str):
            owner = t
            f = _field_of(t, el)
            cur_t = f.annotation if f is not None else Any
        else:
            origin = typing.get_origin(t)
            args = typing.get_args(t)
            if origin is list and args:
                cur_t = args[0]
            elif origin is dict and len(args) == 2:
                cur_t = args[1]
            else:
                cur_t = Any
        parts.append(el)
        cur_raw = _child(cur_raw, el)
        members = _union_members(_strip(cur_t))
        if members is not None and _is_node_union(members) and isinstance(cur_raw, dict):
            nid = cur_raw.get("id")
            node_id = nid if isinstance(nid, str) else None
    return _Loc(parts, node_id, owner, union_at, tags)


def _subject(parts: list[PathPart]) -> str:
    if not parts:
        return "the workflow"
    last = parts[-1]
    if isinstance(last, int):
        prev = next((p for p in reversed(parts) if isinstance(p, str)), "")
        return f"'{prev}[{last}]'"
    return f"'{last}'"


def _expected_list(ctx_expected: str) -> str:
    found = re.findall(r"'([^']*)'", ctx_expected)
    return ", ".join(found) if found else ctx_expected


def _message(err: Mapping[str, Any], loc: _Loc) -> tuple[list[PathPart], str]:
    """The path and message of one pydantic error (no node prefix)."""
    kind = err["type"]
    parts = list(loc.parts)
    value = err.get("input")
    ctx = err.get("ctx") or {}
    subject = _subject(parts)
    if kind == "missing":
        return parts, f"missing required key '{parts[-1]}'" if parts else "missing value"
    if kind == "extra_forbidden":
        key = str(parts[-1])
        keys = _model_keys(loc.owner) if loc.owner is not None else {}
        match = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.6)
        hint = f" (did you mean '{keys[match[0]]}'?)" if match else ""
        return parts, f"unknown key '{key}'{hint}"
    if kind == "union_tag_invalid":
        tag = str(ctx.get("tag", value))
        names = ", ".join(NODE_TYPES)
        match = difflib.get_close_matches(tag, list(NODE_TYPES), n=1, cutoff=0.6)
        hint = f"did you mean '{match[0]}'? " if match else ""
        return parts + ["type"], f"unknown node type '{tag}' ({hint}expected one of: {names})"
    if kind == "union_tag_not_found":
        if isinstance(value, dict):
            return parts + ["type"], "missing required key 'type'"
        return parts, f"a node must be an object, got {_got(value)}"
    if kind == "literal_error":
        expected = _expected_list(str(ctx.get("expected", "")))
        return parts, f"bad value {_value(value)} for {subject} (expected one of: {expected})"
    if kind in _TYPE_WORDS or _is_type_error(kind):
        words = _TYPE_WORDS.get(kind)
        if words is None:
            return parts, f"{subject}: {_pydantic_text(err)}"
        return parts, f"{subject} must be {words}, got {_got(value)}"
    if kind == "string_pattern_mismatch":
        last = parts[-1] if parts else ""
        if last == "id":
            return parts, (
                f"invalid node id {value!r}: an id is a name (a letter or '_', then "
                "letters, digits or '_') so that expressions can read it"
            )
        if last in _NAME_FIELDS:
            return parts, (
                f"{subject} must be a name (a letter or '_', then letters, digits or '_'), "
                f"got {value!r}"
            )
        if last == "call":
            return (
                parts,
                f"invalid call {value!r}: expected 'module:function' (e.g. 'tasks:enrich')",
            )
        return parts, f"{subject} {value!r} must match the pattern {ctx.get('pattern')}"
    if kind in ("value_error", "assertion_error"):
        return parts, _pydantic_text(err)
    if kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return parts, f"{subject} must not be empty"
    text = _pydantic_text(err)
    if text.startswith("should "):
        return parts, f"{subject} {text}, got {_value(value)}"
    return parts, f"{subject}: {text}"


def _pydantic_text(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    msg = msg.replace(" after validation", "")
    if msg.startswith("Input should"):
        msg = "should" + msg[len("Input should") :]
    elif msg[:1].isupper() and not msg[1:2].isupper():
        msg = msg[0].lower() + msg[1:]
    return _one_line(msg)


def _describe_tag(tag: str) -> str:
    base = tag.removeprefix("constrained-")
    words = {
        "float": "a number",
        "int": "an integer",
        "str": "a string",
        "bool": "true or false",
        "RateSpec": "an object {rate, per}",
    }
    if base in words:
        return words[base]
    if base.startswith("list"):
        return "an array" + (" of strings" if base == "list[str]" else "")
    if base.startswith("dict"):
        return "an object"
    return "an object"


def _join_or(items: list[str]) -> str:
    items = list(dict.fromkeys(items))
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


def _shape_problems(raw: dict[str, Any], exc: ValidationError) -> list[Problem]:
    complete_models()  # reporting the errors reads the fields of the models they are in
    errs = [(e, _resolve(raw, tuple(e["loc"]))) for e in exc.errors(include_url=False)]
    groups: dict[tuple[PathPart, ...], list[tuple[Mapping[str, Any], _Loc]]] = {}
    for e, loc in errs:
        if loc.union_at is not None:
            groups.setdefault(loc.union_at, []).append((e, loc))
    problems: list[Problem] = []
    for e, loc in errs:
        if loc.union_at is None:
            problems.append(_problem(e, loc))
            continue
        group = groups.pop(loc.union_at, None)
        if group is None:
            continue  # already reported with the first error of its union
        specific = [(ge, gl) for ge, gl in group if not _is_type_error(ge["type"])]
        if specific:
            # One member of the union matched the value's type: its errors say
            # what is wrong; the other members' type mismatches are noise.
            problems.extend(_problem(ge, gl) for ge, gl in specific)
            continue
        expected = _join_or([_describe_tag(gl.tags[0]) for _, gl in group if gl.tags])
        msg = f"{_subject(list(loc.union_at))} must be {expected}, got {_got(e.get('input'))}"
        problems.append(Problem(_format_path(loc.union_at), _node_prefix(loc.node_id) + msg))
    return problems


def _problem(err: Mapping[str, Any], loc: _Loc) -> Problem:
    parts, msg = _message(err, loc)
    return Problem(_format_path(parts), _node_prefix(loc.node_id) + msg)


# --- structure checks on the raw document (work even when the shape is wrong) -------


def _raw_structure_problems(raw: dict[str, Any], budget: _Budget | None = None) -> list[Problem]:
    problems: list[Problem] = []
    _raw_graph(raw, [], problems, budget or _Budget(), handlers=_list(raw, "handlers"))
    return problems


def _raw_graph(
    graph: Any,
    at: list[PathPart],
    problems: list[Problem],
    budget: _Budget,
    handlers: list[Any] | None = None,
) -> None:
    nodes = _list(graph, "nodes")
    edges = _list(graph, "edges")
    seen: dict[str, list[PathPart]] = {}  # id -> where first used (formatted if needed)
    node_ids: set[str] = set()
    handler_ids: set[str] = set()
    members: list[tuple[str, list[Any]]] = [("nodes", nodes)]
    if handlers is not None:
        members.append(("handlers", handlers))
    for key, items in members:
        for i, n in enumerate(items):
            if not isinstance(n, dict):
                continue
            path = at + [key, i]
            nid = n.get("id")
            if isinstance(nid, str):
                if nid in seen:
                    problems.append(
                        Problem(
                            _format_path(path + ["id"]),
                            f"node '{nid}': duplicate id (also used at {_format_path(seen[nid])})",
                        )
                    )
                else:
                    seen[nid] = path
                (node_ids if key == "nodes" else handler_ids).add(nid)
            _raw_nested(n, path, problems, budget)
    where = "this loop body" if at else "the workflow"
    names: _Names | None = None
    for k, e in enumerate(edges):
        if not isinstance(e, dict):
            continue
        for end in ("source", "target"):
            v = e.get(end)
            if not isinstance(v, str) or v in node_ids:
                continue
            if v in handler_ids:
                hint = (
                    f" ('{v}' is a handler: handlers run through fallbackNodeId, "
                    "gotoNodeId or signalHandlers, not through edges)"
                )
            else:
                names = names or _Names(node_ids)
                hint = _hint(v, budget, names)
            problems.append(
                Problem(
                    _format_path(at + ["edges", k, end]),
                    f"edge {end} '{v}' is not a node of {where}{hint}",
                )
            )


def _raw_nested(
    node: dict[str, Any], path: list[PathPart], problems: list[Problem], budget: _Budget
) -> None:
    body = node.get("body")
    if isinstance(body, dict):
        _raw_graph(body, path + ["body"], problems, budget)
    comp = node.get("compensate")
    if isinstance(comp, dict):
        _raw_nested(comp, path + ["compensate"], problems, budget)


# --- meaning: checks on the parsed model --------------------------------------------


class _Checker:
    def __init__(self, wf: Workflow, raw: dict[str, Any], budget: _Budget | None = None) -> None:
        self.wf = wf
        self.raw = raw
        self.budget = budget or _Budget()
        # settings.concurrencyLimits / rateLimits: names and the "defined" list, once.
        self.pools = _Names(wf.settings.concurrency_limits)
        self.pools_text = ", ".join(sorted(wf.settings.concurrency_limits)) or "none"
        self.limiters = _Names(wf.settings.rate_limits)
        self.limiters_text = ", ".join(sorted(wf.settings.rate_limits)) or "none"
        self.problems: list[Problem] = []
        self.handler_ids = {h.id for h in wf.handlers}
        self.used_handlers: set[str] = set()
        self.graphs: list[tuple[list[PathPart], list[Any], list[Edge]]] = []
        self.input_keys = self._declared_inputs()
        self.input_names = _Names(self.input_keys or ())
        # id of a node inside some loop body -> the loop's id (for hints).
        self.body_ids: dict[str, str] = {}

    # -- reporting

    def error(self, parts: list[PathPart], msg: str, node: str | None = None) -> None:
        self.problems.append(Problem(_format_path(parts), _node_prefix(node) + msg))

    def warn(self, parts: list[PathPart], msg: str, node: str | None = None) -> None:
        self.problems.append(Problem(_format_path(parts), _node_prefix(node) + msg, "warning"))

    # -- entry

    def run(self) -> list[Problem]:
        wf, raw = self.wf, self.raw
        self._collect_body_ids(wf.nodes)
        self._collect_body_ids(wf.handlers)
        self._check_inputs()
        self._check_settings()
        top = self._graph(wf.nodes, _list(raw, "nodes"), wf.edges, _list(raw, "edges"), [], None)
        handler_scope = _Scope(_Names(top["provides"] | self.handler_ids))
        raw_handlers = _list(raw, "handlers")
        handler_targets = _Names(frozenset(h.id for h in wf.handlers) | top["ids"])
        for i, h in enumerate(wf.handlers):
            self._node(
                h,
                _child(raw_handlers, i),
                ["handlers", i],
                handler_scope,
                in_body=False,
                targets=handler_targets,
            )
        self._check_outputs()
        for i, h in enumerate(wf.handlers):
            if h.id not in self.used_handlers:
                self.warn(
                    ["handlers", i],
                    f"handler '{h.id}' is never used (no fallbackNodeId, gotoNodeId or "
                    "signal handler names it)",
                )
        if not any(p.severity == "error" for p in self.problems):
            self._compile_all()
        return self.problems

    def _collect_body_ids(self, nodes: Iterable[NodeBase]) -> None:
        for n in nodes:
            body = body_nodes(n)
            for b in body:
                self.body_ids.setdefault(b.id, n.id)
                if b.output_variable:
                    self.body_ids.setdefault(b.output_variable, n.id)
            self._collect_body_ids(body)

    def _compile_all(self) -> None:
        # The invariant's safety net: what the engine will do must not fail.
        # Compiling a graph compiles its loops' bodies, nested ones too (for their
        # free names); a body compiled that way without an error is not compiled
        # again, so deep nesting costs one compile per graph, not one per level.
        compiled: set[int] = set()
        for at, nodes, edges in self.graphs:
            if id(nodes) in compiled:
                continue
            try:
                compile_graph(nodes, edges)
            except (ValueError, expr.ExpressionError) as e:
                self.error(at, _one_line(str(e)))
                continue
            stack = [nodes]
            while stack:
                for n in stack.pop():
                    body = body_nodes(n)
                    if body:
                        compiled.add(id(body))
                        stack.append(body)

    # -- document-level checks

    def _declared_inputs(self) -> frozenset[str] | None:
        inputs = self.wf.inputs
        if isinstance(inputs, dict) and isinstance(inputs.get("properties"), dict):
            return frozenset(inputs["properties"])
        return None

    def _check_inputs(self) -> None:
        schema = self.wf.inputs
        if schema is None:
            return
        import jsonschema  # ~0.1 s to import: only for workflows that declare inputs

        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.exceptions.SchemaError as e:
            where = _format_path(list(e.path))
            at = f" (at {where})" if where else ""
            self.error(["inputs"], f"not a valid JSON Schema: {_one_line(e.message)}{at}")

    def _check_settings(self) -> None:
        raw_settings = _child(self.raw, "settings")
        s_key = _raw_key(raw_settings, "signalHandlers")
        for sig, sh in self.wf.settings.signal_handlers.items():
            at: list[PathPart] = ["settings", s_key, sig]
            if sh.handler is not None:
                self.used_handlers.add(sh.handler)
            if sh.action == "custom" and not sh.handler:
                self.error(
                    at,
                    f"signal handler '{sig}': action 'custom' needs 'handler' "
                    "(the id of a node in handlers)",
                )
            elif sh.handler and sh.handler not in self.handler_ids:
                self.error(
                    at + ["handler"],
                    f"signal handler '{sig}': no handler '{sh.handler}' in handlers"
                    + _suggest(sh.handler, self.handler_ids),
                )
            elif sh.handler and sh.action != "custom":
                self.warn(
                    at + ["handler"],
                    f"signal handler '{sig}': 'handler' is only run with action 'custom' "
                    f"(this one is '{sh.action}')",
                )

    def _check_outputs(self) -> None:
        seen: dict[str, str] = {}
        for i, n in enumerate(self.wf.nodes):
            if isinstance(n, OutputNode):
                if n.key in seen:
                    self.warn(
                        ["nodes", i],
                        f"output name '{n.key}' is also used by node '{seen[n.key]}'; "
                        "only one of the values will be in the execution output",
                        n.id,
                    )
                else:
                    seen[n.key] = n.id

    # -- graphs

    def _graph(
        self,
        nodes: list[Any],
        raw_nodes: list[Any],
        edges: list[Edge],
        raw_edges: list[Any],
        at: list[PathPart],
        loop: LoopNode | None,
        outer: _Scope | None = None,
    ) -> dict[str, Any]:
        """Check one graph; return its ``ids``, the names it ``provides`` to its
        nodes, and the ``free`` names it reads from outside."""
        self.graphs.append((at, nodes, edges))
        by_id: dict[str, NodeBase] = {}
        index: dict[str, int] = {}
        for i, n in enumerate(nodes):
            by_id.setdefault(n.id, n)
            index.setdefault(n.id, i)
        aliases = {n.output_variable: n.id for n in nodes if n.output_variable}
        ids = frozenset(by_id)
        provides = ids | frozenset(aliases)
        own = provides
        if loop is not None:
            own |= {loop.item_variable, loop.index_variable} | LOOP_SCOPE_NAMES
        scope = _Scope(_Names(own), outer)
        names: dict[str, set[str]] = {}
        own_names: dict[str, set[str]] = {}
        # Built once: rebuilding it per node made a graph quadratic in its size.
        targets = _Names(ids | self.handler_ids)
        for i, n in enumerate(nodes):
            path = at + ["nodes", i]
            direct, total = self._node(
                n,
                _child(raw_nodes, i),
                path,
                scope,
                in_body=loop is not None,
                targets=targets,
            )
            own_names.setdefault(n.id, set()).update(direct)
            names.setdefault(n.id, set()).update(total)
            if n.id in SCOPE_NAMES or n.id in LOOP_SCOPE_NAMES:
                self.warn(
                    path + ["id"],
                    f"the id '{n.id}' is also a name the engine puts in scope; "
                    "expressions may not see this node under it",
                    n.id,
                )

        # Edges: ports and dependencies.
        deps: dict[str, list[Dep]] = {nid: [] for nid in by_id}
        out_handles: dict[str, set[str | None]] = {nid: set() for nid in by_id}
        # Ports per source, listed once: a switch with many cases has many edges.
        ports: dict[str, tuple[list[str], frozenset[str]]] = {}
        switch_maps: dict[str, dict[str, str]] = {}  # per switch: handle -> its port
        for k, e in enumerate(edges):
            src = by_id.get(e.source)
            if src is None or e.target not in by_id:
                continue
            deps[e.target].append(Dep(e.source, e.source_handle))
            handle = e.source_handle
            handle_map = kind_of(src).handle_map
            if handle_map is not None and handle is not None:
                hmap = switch_maps.get(e.source)
                if hmap is None:
                    hmap = switch_maps[e.source] = handle_map(src)
                handle = hmap.get(handle, handle)
            out_handles[e.source].add(handle)
            if e.source_handle is not None:
                if e.source not in ports:
                    listed = _ports(src, accepted=True) + [ERROR_HANDLE]
                    ports[e.source] = (listed, frozenset(listed))
                allowed, allowed_set = ports[e.source]
                if e.source_handle not in allowed_set:
                    rk = _raw_key(_child(raw_edges, k), "sourceHandle")
                    if len(allowed) == 1:
                        expected = "only 'error', or no sourceHandle for the normal output"
                    else:
                        expected = "one of: " + ", ".join(allowed)
                    self.error(
                        at + ["edges", k, rk],
                        f"node '{e.source}' ({_type_of(src)}) has no port '{e.source_handle}' "
                        f"(expected {expected})",
                    )
        for nid, n in by_id.items():
            for port in _ports(n):
                if port not in out_handles[nid]:
                    self.warn(
                        at + ["nodes", index[nid]],
                        f"port '{port}' has no outgoing edge",
                        nid,
                    )

        # References are implicit edges (SPEC §2).
        for nid in by_id:
            sources = {d.source for d in deps[nid]}
            for name in sorted(names[nid]):
                src_id = name if name in by_id else aliases.get(name)
                if src_id is None:
                    continue
                if src_id == nid:
                    if name in own_names[nid]:
                        msg = f"it references its own output '{name}' (a node cannot read itself)"
                    else:
                        msg = f"its loop body references the loop's own output '{name}'"
                    self.error(at + ["nodes", index[nid]], msg, nid)
                elif src_id not in sources:
                    deps[nid].append(Dep(src_id, None, is_ref=True))
                    sources.add(src_id)
        cycle = find_cycle(list(by_id), deps)
        if cycle:
            self.error(at + ["nodes", index[cycle[0]]], "cycle: " + " -> ".join(cycle))
        else:
            self._unreachable(by_id, index, deps, at)

        free: set[str] = set()
        for nid in by_id:
            free |= names[nid]
        return {"ids": ids, "provides": provides, "free": free - provides}

    def _unreachable(
        self,
        by_id: Mapping[str, NodeBase],
        index: Mapping[str, int],
        deps: Mapping[str, list[Dep]],
        at: list[PathPart],
    ) -> None:
        never: dict[str, str] = {}
        for nid in _topo(list(by_id), deps):
            ds = deps[nid]
            if not ds:
                continue
            dead = [
                d
                for d in ds
                if d.source in never
                or (d.handle == ERROR_HANDLE and by_id[d.source].error_strategy == "continue")
            ]
            if len(dead) < len(ds):
                continue
            if all(d.source not in never for d in ds):
                never[nid] = (
                    "its only incoming edges are 'error' edges from nodes with "
                    "errorStrategy 'continue', which never fail"
                )
            else:
                never[nid] = "every node it depends on is unreachable"
        for nid, why in sorted(never.items(), key=lambda kv: index[kv[0]]):
            self.warn(at + ["nodes", index[nid]], f"node '{nid}' is unreachable: {why}")

    # -- nodes

    def _node(
        self,
        node: NodeBase,
        raw: Any,
        at: list[PathPart],
        scope: _Scope,
        *,
        in_body: bool,
        targets: _Names,
    ) -> tuple[set[str], set[str]]:
        """Check one node; return the names its own fields read, and all names it
        reads including its loop body's names from outside."""
        nid = node.id
        direct = self._expressions(node, raw, at, scope)
        total = set(direct)
        self._targets(node, raw, at, targets)
        self._limits(node, raw, at)
        if isinstance(node, SwitchNode):
            seen: dict[str, int] = {}
            rk = _raw_key(raw, "cases")
            for j, case in enumerate(node.cases):
                port = case.port
                if port in (DEFAULT_HANDLE, ERROR_HANDLE):
                    self.error(
                        at + [rk, j],
                        f"case port '{port}' is a built-in port; give the case a different 'label'",
                        nid,
                    )
                elif port in seen:
                    self.error(
                        at + [rk, j],
                        f"case port '{port}' is also the port of cases[{seen[port]}]; "
                        "give one of them a 'label'",
                        nid,
                    )
                else:
                    seen[port] = j
        if node.compensate is not None:
            ck = _raw_key(raw, "compensate")
            self._node(
                node.compensate,
                _child(raw, ck),
                at + [ck],
                scope,
                in_body=in_body,
                targets=targets,
            )
        if isinstance(node, LoopNode):
            body_raw = _child(raw, "body")
            if not node.body.nodes:
                self.error(at + ["body"], "the loop body has no nodes", nid)
            else:
                body = self._graph(
                    node.body.nodes,
                    _list(body_raw, "nodes"),
                    node.body.edges,
                    _list(body_raw, "edges"),
                    at + ["body"],
                    node,
                    outer=scope,
                )
                total |= body["free"] - {node.item_variable, node.index_variable} - LOOP_SCOPE_NAMES
        return direct, total

    def _targets(self, node: NodeBase, raw: Any, at: list[PathPart], targets: _Names) -> None:
        nid = node.id
        strategy_key = _raw_key(raw, "errorStrategy")
        for strategy, camel, value in (
            ("fallback", "fallbackNodeId", node.fallback_node_id),
            ("goto", "gotoNodeId", node.goto_node_id),
        ):
            key = _raw_key(raw, camel)
            if node.error_strategy == strategy and not value:
                self.error(
                    at + [strategy_key],
                    f"errorStrategy '{strategy}' needs '{camel}' (the node to run on failure)",
                    nid,
                )
            if not value:
                continue
            self.used_handlers.add(value)
            if value == nid:
                self.error(at + [key], f"{camel} cannot be the node itself", nid)
            elif value not in targets:
                self.error(
                    at + [key],
                    f"{camel} '{value}' is neither a handler nor a node of the same graph"
                    + _hint(value, self.budget, targets),
                    nid,
                )
            elif node.error_strategy != strategy:
                self.warn(
                    at + [key],
                    f"{camel} is ignored unless errorStrategy is '{strategy}' "
                    f"(it is '{node.error_strategy}')",
                    nid,
                )

    def _limits(self, node: NodeBase, raw: Any, at: list[PathPart]) -> None:
        if node.pool is not None and node.pool not in self.pools:
            self.error(
                at + ["pool"],
                f"pool '{node.pool}' is not defined in settings.concurrencyLimits "
                f"(defined: {self.pools_text})" + _hint(node.pool, self.budget, self.pools),
                node.id,
            )
        rl = node.rate_limit
        if isinstance(rl, str) and rl not in self.limiters:
            self.error(
                at + [_raw_key(raw, "rateLimit")],
                f"rate limiter '{rl}' is not defined in settings.rateLimits "
                f"(defined: {self.limiters_text})" + _hint(rl, self.budget, self.limiters),
                node.id,
            )

    # -- expressions

    def _expressions(self, node: NodeBase, raw: Any, at: list[PathPart], scope: _Scope) -> set[str]:
        names: set[str] = set()
        for parts, kind, text in _expression_fields(node, raw, at):
            try:
                if kind == "expr":
                    found: frozenset[str] = expr.compile_expr(text).names
                else:
                    tpl = expr.compile_template(text)
                    found = tpl.names if tpl is not None else frozenset()
            except expr.ExpressionError as e:
                what = "expression" if kind == "expr" else "template"
                self.error(
                    parts,
                    f"{what} {_short(text)!r} does not parse: {_one_line(str(e))}",
                    node.id,
                )
                continue
            names |= found
            for name in sorted(found):
                self._check_name(name, parts, scope, node.id)
        return names

    def _check_name(self, name: str, parts: list[PathPart], scope: _Scope, nid: str) -> None:
        if name in scope or name in SCOPE_NAMES or name in self.handler_ids:
            return
        if self.input_keys is not None and name in self.input_keys:
            return
        if name in self.body_ids:
            self.error(
                parts,
                f"name '{name}' is a node inside loop '{self.body_ids[name]}' and is not "
                f"in scope here; read the loop's output '{self.body_ids[name]}' instead",
                nid,
            )
            return
        hint = _hint(name, self.budget, *scope.layers(), self.input_names)
        if self.input_keys is not None:
            self.error(
                parts,
                f"name '{name}' is not in scope: not a node id, an outputVariable, "
                f"a declared input or a scope name{hint}",
                nid,
            )
        else:
            self.warn(
                parts,
                f"name '{name}' is not a node id or a declared input; it must come from "
                f"the execution input{hint}",
                nid,
            )


def _ports(node: NodeBase, accepted: bool = False) -> list[str]:
    """The named output ports of a node, besides 'error' (``accepted``: also the
    other spellings an edge may use, a labelled switch case's value)."""
    ports = kind_of(node).ports
    return ports(node, accepted) if ports is not None else []


def _expression_fields(
    node: NodeBase, raw: Any, at: list[PathPart]
) -> Iterator[tuple[list[PathPart], str, str]]:
    """Every expression (``"expr"``) and templated string (``"tpl"``) of a node's own
    fields, with its path."""
    kind = kind_of(node)
    if kind.expression:
        yield at + ["expression"], "expr", node.expression  # type: ignore[attr-defined]
    for camel, value in kind.template_values(node):
        yield from _template_strings(value, at + [_raw_key(raw, camel)])


def _template_strings(value: Any, at: list[PathPart]) -> Iterator[tuple[list[PathPart], str, str]]:
    if isinstance(value, str):
        yield at, "tpl", value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _template_strings(v, at + [str(k)])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _template_strings(v, at + [i])


def _topo(ids: list[str], deps: Mapping[str, list[Dep]]) -> list[str]:
    pending = {nid: len({d.source for d in deps[nid]}) for nid in ids}
    children: dict[str, list[str]] = {nid: [] for nid in ids}
    for nid in ids:
        for src in {d.source for d in deps[nid]}:
            children[src].append(nid)
    ready = [nid for nid in ids if pending[nid] == 0]
    order: list[str] = []
    while ready:
        nid = ready.pop()
        order.append(nid)
        for c in children[nid]:
            pending[c] -= 1
            if pending[c] == 0:
                ready.append(c)
    return order


def _type_of(node: NodeBase) -> str:
    return str(getattr(node, "type", type(node).__name__))
