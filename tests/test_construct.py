"""fm_local.construct: plainly valid documents are built without pydantic's
validator, into the very objects pydantic builds; anything else is left to pydantic.

conftest.py also checks every document the rest of the suite validates in-process."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, assert_same_model, python_fresh
from pydantic import ValidationError

from fm_local.construct import construct
from fm_local.model import Workflow

# Every example workflow (order.json is an input file).
EXAMPLES = [p for p in sorted((ROOT / "examples").glob("*.json")) if p.name != "order.json"]
# The seeded mutation corpus: the examples it was written with, so that a new
# example (each one is checked by itself above) does not reshuffle its draws.
MUTATED = {
    "approval.json",
    "batch_processing.json",
    "custom_merge.json",
    "fail_fast_validation.json",
    "fan_out_fan_in.json",
    "long_loop.json",
    "loop_collect.json",
    "parallel_api_calls.json",
    "parallel_validation.json",
    "parallel_with_fallback.json",
}

# Values a mutation puts in place of another: each JSON type, the values pydantic
# coerces (true for 1, 5.0 for 5, "5"), and text its string check refuses.
ODD = [True, False, 0, 1, -1, 1.5, 5.0, "x", "", "5", None, [], {}, [1], {"a": 1}]
ODD += [2**70, "a\n", "é", "\ud800", "forEach", "python", "collect", float("inf")]


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*at, i))
    return found


def _mutate(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    path = rng.choice(_paths(doc)[1:])
    parent: Any = doc
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    what = rng.randrange(5)
    if what == 0 and isinstance(parent, dict):
        del parent[key]
    elif what == 1 and isinstance(parent, dict):
        parent["unknownKey"] = 1
    elif what == 2 and isinstance(parent, dict) and isinstance(key, str):
        snake = "".join("_" + c.lower() if c.isupper() else c for c in key)
        parent[snake] = parent[key]  # the other spelling, beside or instead of it
        if rng.random() < 0.5 and snake != key:
            del parent[key]
    else:
        parent[key] = rng.choice(ODD)
    return doc


def _pydantic(raw: Any) -> Workflow | None:
    try:
        return Workflow.model_validate(raw)
    except ValidationError:
        return None


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_built_without_pydantic(path: Path) -> None:
    raw = json.loads(path.read_text())
    fast = construct(raw)
    assert fast is not None, f"{path.name} took the slow path"
    assert_same_model(fast, Workflow.model_validate(raw))


def test_mutated_documents_are_built_as_pydantic_builds_them_or_left_to_it() -> None:
    rng = random.Random(20261202)
    docs = [json.loads(p.read_text()) for p in EXAMPLES if p.name in MUTATED]
    assert len(docs) == len(MUTATED)
    built = deferred = refused = 0
    for n in range(3000):
        raw = _mutate(rng.choice(docs), rng)
        if n % 3 == 0:
            raw = _mutate(raw, rng)
        fast, slow = construct(raw), _pydantic(raw)
        if fast is None:
            deferred += slow is not None
            refused += slow is None
            continue
        assert slow is not None, f"built a document pydantic refuses: {json.dumps(raw)[:300]}"
        assert_same_model(fast, slow)
        built += 1
    # The corpus exercises all three outcomes.
    assert built > 300 and deferred > 10 and refused > 300, (built, deferred, refused)


@pytest.mark.parametrize(
    ("node", "field"),
    [
        ({"timeout": True}, "timeout"),  # pydantic: 1
        ({"timeout": 5.0}, "timeout"),  # pydantic: 5
        ({"retry": {"backoffMultiplier": True}}, "retry"),  # pydantic: 1.0
        ({"name": "bad\ud800"}, "name"),  # a lone surrogate: pydantic takes it in str | None
        ({"call": "m:f\ud800"}, None),  # ... and refuses it in a plain str
        ({"id": "a\n"}, None),  # pydantic refuses (Python's $ would match)
        ({"outputVariable": "v", "output_variable": "v"}, None),  # both spellings: refused
    ],
)
def test_what_pydantic_coerces_or_refuses_is_left_to_it(
    node: dict[str, Any], field: str | None
) -> None:
    raw = {"name": "w", "nodes": [{"id": "a", "type": "python", "call": "m:f", **node}]}
    assert construct(raw) is None
    slow = _pydantic(raw)
    assert (slow is not None) == (field is not None)


def test_numbers_are_held_as_pydantic_holds_them() -> None:
    raw = {
        "name": "w",
        "nodes": [
            {"id": "a", "type": "python", "call": "m:f", "rateLimit": 5, "timeout": 10},
            {"id": "b", "type": "delay", "duration": 5},
            {"id": "c", "type": "loop", "count": 3, "loopType": "count", "body": {}},
        ],
    }
    fast = construct(raw)
    assert fast is not None
    assert_same_model(fast, Workflow.model_validate(raw))
    assert type(fast.nodes[0].rate_limit) is float  # 5 starts per second, as a float


def test_a_valid_document_builds_no_validator_in_a_fresh_process(tmp_path: Path) -> None:
    script = (
        "import json, sys\n"
        "from fm_local.validate import check_document\n"
        "from fm_local.model import Workflow\n"
        "wf, problems = check_document(json.loads(open(sys.argv[1]).read()))\n"
        "assert wf is not None, problems\n"
        "built = not type(Workflow.__pydantic_validator__).__name__.startswith('Mock')\n"
        "print('built' if built else 'not-built', file=sys.stderr)\n"
    )
    words, _, _ = python_fresh(tmp_path / "fm.db", script, str(ROOT / "examples" / "approval.json"))
    assert words == ["not-built"]


@pytest.mark.parametrize(
    "where",
    [
        {"settings": {"retry": {"backoffMultiplier": 10**400}}},
        {"nodes": [{"id": "a", "type": "transform", "expression": "1", "rateLimit": 10**400}]},
    ],
)
def test_a_number_past_a_floats_range_is_left_to_pydantic(where: dict[str, Any]) -> None:
    raw = {"name": "w", "nodes": [{"id": "a", "type": "transform", "expression": "1"}], **where}
    assert construct(raw) is None
    assert _pydantic(raw) is None  # pydantic refuses it (fm validate: one line, exit 2)
