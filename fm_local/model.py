"""Pydantic types for the workflow document (SPEC §1, §3–§8).

Attributes are snake_case; every key is accepted in camelCase (the documented
spelling, used when dumping) and in snake_case. Unknown keys are errors.
These types only describe shape; cross-node rules live in ``validate``.

Importing this module builds no validator (``defer_build``): a command that never
validates a document (``fm token``, signals) does not pay for it, and the one that
does builds ``Workflow``'s validator once, on its first use. The node classes are
completed only when a document fails validation (:func:`complete_models`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

NODE_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Base(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
        # Build a class's validator on its first use, not at import: building them
        # all, each through the recursive Node union, took ~0.3 s of every command.
        defer_build=True,
    )


class RateSpec(Base):
    """``rate`` starts per ``per`` milliseconds."""

    rate: Annotated[int, Field(gt=0)]
    per: Annotated[int, Field(gt=0)] = 1000


# A rate limit: starts per second, an explicit spec, or a named shared limiter.
RateLimit = Union[Annotated[float, Field(gt=0)], RateSpec, str]  # noqa: UP007


class RetryPolicy(Base):
    max_attempts: Annotated[int, Field(ge=1)] = 1
    initial_delay: Annotated[int, Field(ge=0)] = 1000
    max_delay: Annotated[int, Field(ge=0)] = 30000
    backoff_multiplier: Annotated[float, Field(ge=1)] = 2.0
    backoff: Literal["exponential", "fixed", "linear"] = "exponential"
    jitter: bool = False
    retryable_errors: list[str] | None = None


class SectionPolicy(Base):
    """Partial-failure policy of a loop, a merge, or the whole execution (SPEC §6)."""

    on_partial_failure: Literal["fail", "continue", "collect"] = "fail"
    min_success_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    collect_errors: bool = False
    fail_fast: bool | None = None
    cancel_on_failure: bool = False
    total_timeout: Annotated[int, Field(gt=0)] | None = None
    on_timeout: Literal["fail", "collect_partial"] = "fail"


class QueueSettings(Base):
    max_size: Annotated[int, Field(gt=0)] = 1000
    priority: Literal["fifo", "lifo", "priority"] = "fifo"
    # No default wait limit: a loop of slow items legitimately queues (docs/semantics.md).
    timeout: Annotated[int, Field(gt=0)] | None = None
    dead_letter_queue: bool = True


class SignalHandler(Base):
    action: Literal["pause", "resume", "cancel", "custom", "set_priority"]
    cleanup: bool = False
    rollback: bool = False
    notify: list[str] = []
    handler: str | None = None


class Settings(Base):
    timeout: Annotated[int, Field(gt=0)] | None = 1800000
    max_concurrency: Annotated[int, Field(gt=0)] | None = None
    # Defaults made with model_construct: calling the class would build its
    # validator at import. The values are the same as validated ones.
    retry: RetryPolicy = RetryPolicy.model_construct()
    parallel: SectionPolicy = SectionPolicy.model_construct(fail_fast=True)
    queue: QueueSettings = QueueSettings.model_construct()
    rate_limits: dict[str, RateSpec] = {}
    concurrency_limits: dict[str, Annotated[int, Field(gt=0)]] = {}
    signal_handlers: dict[str, SignalHandler] = {}
    recovery_attempts: Annotated[int, Field(ge=0)] = 3
    notify_command: str | list[str] | None = None


class NodeBase(Base):
    """Fields common to every node type (SPEC §3)."""

    id: Annotated[str, Field(pattern=NODE_ID_PATTERN)]
    name: str | None = None
    output_variable: Annotated[str, Field(pattern=NODE_ID_PATTERN)] | None = None
    retry: RetryPolicy | None = None
    timeout: Annotated[int, Field(gt=0)] | None = None
    on_timeout: Literal["error", "cancel", "continue"] = "error"
    error_strategy: Literal["fail", "continue", "fallback", "goto"] = "fail"
    output_on_error: Any = None
    fallback_node_id: str | None = None
    goto_node_id: str | None = None
    rate_limit: RateLimit | None = None
    pool: str | None = None
    priority: int | None = None
    compensate: Node | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.id


class PythonNode(NodeBase):
    type: Literal["python"]
    call: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    args: dict[str, Any] = {}


class TransformNode(NodeBase):
    type: Literal["transform"]
    expression: str
    operation: Literal["custom"] = "custom"


class HttpNode(NodeBase):
    type: Literal["http"]
    method: str = "GET"
    url: str
    headers: dict[str, Any] = {}
    query: dict[str, Any] = {}
    json_body: Any = Field(default=None, alias="json")
    body: Any = None

    @model_validator(mode="after")
    def _one_body(self) -> HttpNode:
        if self.json_body is not None and self.body is not None:
            raise ValueError("give either 'json' or 'body', not both")
        return self


class ShellNode(NodeBase):
    type: Literal["shell"]
    command: str | Annotated[list[str], Field(min_length=1)]
    env: dict[str, str] = {}
    cwd: str | None = None
    allow_failure: bool = False


class ConditionNode(NodeBase):
    type: Literal["condition"]
    expression: str


class SwitchCase(Base):
    value: Any
    label: str | None = None

    @property
    def value_port(self) -> str:
        """The case's value as text: its port by SPEC §3."""
        return self.value if isinstance(self.value, str) else _json_text(self.value)

    @property
    def port(self) -> str:
        """The port the engine records for this case: its label when it has one (so
        cases of equal text, 1 and "1", stay apart), else its value as text. Edges
        may name a labelled case by either (SwitchNode.canonical_handle)."""
        return self.label if self.label is not None else self.value_port


class SwitchNode(NodeBase):
    type: Literal["switch"]
    expression: str
    cases: list[SwitchCase]

    def handle_map(self) -> dict[str, str]:
        """sourceHandle -> the port the engine records, for every accepted handle
        (build it once per switch: a switch may have thousands of cases)."""
        mapping = {c.port: c.port for c in self.cases}
        for c in self.cases:
            if c.label is not None:
                mapping.setdefault(c.value_port, c.port)
        return mapping

    def canonical_handle(self, handle: str | None) -> str | None:
        """An edge's sourceHandle as the port the engine records: a labelled case's
        value text stands for its label, unless that text is another case's port."""
        if handle is None:
            return None
        return self.handle_map().get(handle, handle)

    def handles(self) -> list[str]:
        """Every sourceHandle accepted for a case: each port, and a labelled case's
        value text (when no other case has it as its port)."""
        return list(self.handle_map())


class MergeNode(NodeBase):
    type: Literal["merge"]
    mode: Literal["all", "first_success"] = "all"
    policy: SectionPolicy | None = None


class Graph(Base):
    nodes: list[Node] = []
    edges: list[Edge] = []


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


class DelayNode(NodeBase):
    type: Literal["delay"]
    duration: Annotated[int, Field(ge=0)] | str


class WaitNode(NodeBase):
    type: Literal["wait"]
    signal: str


class OutputNode(NodeBase):
    type: Literal["output"]
    output_name: str | None = None
    value: Any = None

    @property
    def key(self) -> str:
        return self.output_name or self.id


Node = Annotated[
    PythonNode
    | TransformNode
    | HttpNode
    | ShellNode
    | ConditionNode
    | SwitchNode
    | MergeNode
    | LoopNode
    | DelayNode
    | WaitNode
    | OutputNode,
    Field(discriminator="type"),
]

NODE_TYPES: dict[str, type[NodeBase]] = {
    "python": PythonNode,
    "transform": TransformNode,
    "http": HttpNode,
    "shell": ShellNode,
    "condition": ConditionNode,
    "switch": SwitchNode,
    "merge": MergeNode,
    "loop": LoopNode,
    "delay": DelayNode,
    "wait": WaitNode,
    "output": OutputNode,
}


class Edge(Base):
    source: str
    target: str
    source_handle: str | None = None

    @field_validator("source_handle", mode="before")
    @classmethod
    def _handle_text(cls, v: Any) -> Any:
        # JSON authors write true/false unquoted for condition ports.
        if isinstance(v, bool):
            return "true" if v else "false"
        return v


class Workflow(Base):
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    version: int | str = 1
    settings: Settings = Settings.model_construct()
    inputs: dict[str, Any] | None = None
    nodes: list[Node]
    edges: list[Edge] = []
    handlers: list[Node] = []


def _json_text(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))


def complete_models() -> None:
    """Resolve the forward references (``Node``, ``Graph``) in every model's fields.

    Until then a node class's ``model_fields`` may hold them unresolved: validating a
    ``Workflow`` does not need them resolved, but reading a validation error's
    location through the fields does (``validate``). This builds each class's
    validator (~0.2 s in all), once per process; later calls return at once."""
    models: list[type[Base]] = [NodeBase, *NODE_TYPES.values(), Graph, Workflow]
    for cls in models:
        cls.model_rebuild()


def workflow_json_schema() -> dict[str, Any]:
    """The JSON Schema of the workflow document (camelCase keys), for ``fm schema``."""
    return Workflow.model_json_schema(by_alias=True)
