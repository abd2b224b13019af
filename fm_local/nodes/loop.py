"""The ``loop`` node (SPEC §4, §6): its declaration, its items, and its output
assembled from the item records in SQLite, in item order, in the shape its policy
asks for.

The output is built as JSON text from the stored item results without parsing
them, so a loop of 100,000 items never holds 100,000 Python records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from fm_local import expr, jsonio
from fm_local.errors import (
    CANCELLED,
    EXPRESSION_ERROR,
    OUTPUT_TOO_LARGE,
    TOTAL_TIMEOUT,
    NodeError,
)
from fm_local.model import NODE_ID_PATTERN, Graph, NodeBase, SectionPolicy
from fm_local.nodes.kind import Kind, Runs

MAX_ITEMS = 1_000_000
PARTIAL_FAILURE = "PARTIAL_FAILURE"


class LoopNode(NodeBase):
    type: Literal["loop"]
    loop_type: Literal["forEach", "count"] = "forEach"
    array_path: Any = None
    count: int | str | None = None
    parallel: bool | SectionPolicy = False
    max_concurrency: Annotated[int, Field(gt=0)] | None = None
    batch_size: Annotated[int, Field(gt=0)] | None = None
    delay_between_batches: Annotated[int, Field(ge=0)] = 0
    item_variable: Annotated[str, Field(pattern=NODE_ID_PATTERN)] = "item"
    index_variable: Annotated[str, Field(pattern=NODE_ID_PATTERN)] = "index"
    body: Graph
    policy: SectionPolicy | None = None

    @field_validator("loop_type", mode="before")
    @classmethod
    def _loop_type_alias(cls, v: Any) -> Any:
        return "forEach" if v in ("for_each", "foreach") else v

    @model_validator(mode="after")
    def _loop_source(self) -> LoopNode:
        if self.loop_type == "forEach" and self.array_path is None:
            raise ValueError("a forEach loop needs 'arrayPath'")
        if self.loop_type == "count" and self.count is None:
            raise ValueError("a count loop needs 'count'")
        return self

    @property
    def is_parallel(self) -> bool:
        return self.parallel is not False

    @property
    def section_policy(self) -> SectionPolicy | None:
        """``policy``, or the seed's ``parallel: {...}`` spelling of it."""
        if self.policy is not None:
            return self.policy
        if isinstance(self.parallel, SectionPolicy):
            return self.parallel
        return None


KIND = Kind(
    "loop",
    LoopNode,
    Runs.LOOP,
    templates=(("arrayPath", "array_path"), ("count", "count")),
    order=80,
)


def items_of(node: LoopNode, scope: Mapping[str, Any]) -> tuple[list[Any] | None, int]:
    """(items, count): the list for forEach, (None, N) for count loops."""
    if node.loop_type == "count":
        value = expr.render_value(node.count, scope)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise NodeError(f"loop count must be an integer, got {value!r}", EXPRESSION_ERROR)
        n = max(0, int(value))
        if n > MAX_ITEMS:
            raise NodeError(f"loop count {n} is over the limit of {MAX_ITEMS}", EXPRESSION_ERROR)
        return None, n
    value = expr.render_value(node.array_path, scope)
    if isinstance(value, dict):
        raise NodeError(
            "arrayPath gave an object, not a list (use {{ d.items() }} or {{ d.values() }})",
            EXPRESSION_ERROR,
        )
    if not isinstance(value, list):
        raise NodeError(
            f"arrayPath gave {type(value).__name__} {str(value)[:80]!r}, not a list",
            EXPRESSION_ERROR,
        )
    if len(value) > MAX_ITEMS:
        raise NodeError(f"{len(value)} items is over the limit of {MAX_ITEMS}", EXPRESSION_ERROR)
    return value, len(value)


def _error_text(status: str, error: str | None, timed_out: bool) -> str:
    if error:
        return error
    code = TOTAL_TIMEOUT if timed_out else CANCELLED
    msg = "the loop's totalTimeout passed first" if timed_out else "not started"
    return json.dumps({"code": code, "message": msg})


def assemble(
    rows: Iterable[tuple[Any, ...]],
    n: int,
    policy: SectionPolicy,
    *,
    succeeded: int,
    failed: int,
    timed_out: bool,
    errors_list: list[dict[str, Any]],
    first_error: dict[str, Any] | None,
    loop_path: str,
    not_started: int = 0,
) -> tuple[str | None, bool, dict[str, Any] | None]:
    """(output JSON text, ok, error). ``rows`` are (index, status, output, error)
    of the recorded items in item order; missing indices never started."""
    mode = policy.on_partial_failure
    unstarted = ""
    if not_started and policy.fail_fast:
        unstarted = f"; {not_started} not started because failFast"
    if timed_out and policy.on_timeout == "fail":
        return (
            None,
            False,
            {
                "code": TOTAL_TIMEOUT,
                "message": f"loop '{loop_path}' passed its totalTimeout ({policy.total_timeout} ms) "
                f"with {succeeded} of {n} items done",
            },
        )
    if mode == "fail" and failed and not timed_out:
        first = first_error or {}
        details: dict[str, Any] = {"failedCount": failed, "total": n}
        if policy.collect_errors:
            details["errors"] = errors_list
        where = first.get("nodePath") or loop_path
        return (
            None,
            False,
            {
                "code": first.get("code") or PARTIAL_FAILURE,
                "message": f"{failed} of {n} items of loop '{loop_path}' failed{unstarted}; "
                f"first: {where}: {_strip(first.get('message'))}",
                "details": details,
            },
        )
    collect = mode == "collect" or timed_out
    parts: list[str] = []
    failures = 0
    next_i = 0
    size = 0
    limit = jsonio.MAX_OUTPUT_BYTES

    def add(status: str, out: str | None, err: str | None) -> None:
        nonlocal failures, size
        if size > limit:
            return  # over the limit already: stop building (reported below)
        if parts:
            size += len(parts[-1]) + 1
        ok = status == "succeeded"
        if collect:
            if ok:
                parts.append('{"success":true,"data":' + (out or "null") + "}")
            else:
                failures += 1
                parts.append(
                    '{"success":false,"error":' + _error_text(status, err, timed_out) + "}"
                )
        elif ok:
            parts.append(out or "null")
        elif mode == "fail":
            parts.append("null")  # cancelled items keep their place in the list

    for idx, status, out, err in rows:
        for _ in range(next_i, idx):
            add("not_started", None, None)
        add(status, out, err)
        next_i = idx + 1
    for _ in range(next_i, n):
        add("not_started", None, None)
    if parts:
        size += len(parts[-1])
    if size > limit:
        return (
            None,
            False,
            {
                "code": OUTPUT_TOO_LARGE,
                "message": f"the output of loop '{loop_path}' is over {limit} bytes of JSON "
                "(FM_MAX_OUTPUT_BYTES); return less per item, e.g. a file path instead of the data",
            },
        )
    rate = policy.min_success_rate
    if rate is not None and mode != "fail" and n and succeeded / n < rate:
        return (
            None,
            False,
            {
                "code": PARTIAL_FAILURE,
                "message": f"only {succeeded} of {n} items of loop '{loop_path}' succeeded "
                f"({succeeded / n:.0%}){unstarted}; minSuccessRate is {rate:.0%}",
                "details": {"successCount": succeeded, "failureCount": n - succeeded},
            },
        )
    body = "[" + ",".join(parts) + "]"
    errs = json.dumps(errors_list, separators=(",", ":"))
    if collect:
        text = '{"results":' + body + f',"successCount":{succeeded},"failureCount":{failures}'
        if timed_out:
            text += ',"timedOut":true'
        if policy.collect_errors:
            text += ',"errors":' + errs
        return text + "}", True, None
    if mode == "continue" and policy.collect_errors:
        return '{"results":' + body + ',"errors":' + errs + "}", True, None
    return body, True, None


def _strip(message: Any) -> str:
    text = str(message or "")
    prefix = "node '"
    if text.startswith(prefix) and "' failed: " in text:
        return text.split("' failed: ", 1)[1]
    return text
