"""Pydantic types for the workflow document (SPEC §1, §3–§8).

Attributes are snake_case; every key is accepted in camelCase (the documented
spelling, used when dumping) and in snake_case. Unknown keys are errors.
These types only describe shape; cross-node rules live in ``validate``. Each node
type's class is declared with its behaviour in ``fm_local.nodes.<type>``; this module
builds the ``Node`` union from them and re-exports them.

Importing this module builds no validator (``defer_build``): a command that never
validates a document (``fm token``, signals) does not pay for it, and the one that
does builds ``Workflow``'s validator once, on its first use. The node classes are
completed only when a document fails validation (:func:`complete_models`).
"""

from __future__ import annotations

import functools
import operator
import sys
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
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


class Graph(Base):
    nodes: list[Node] = []
    edges: list[Edge] = []


# -- the node types --------------------------------------------------------------
# Each is declared in its own module, fm_local/nodes/<type>.py: its model class, its
# Kind and its evaluation or worker task; fm_local.nodes.kinds finds them (KINDS).
# They build on NodeBase, Graph and the settings above, so they are imported here.
from fm_local.nodes.kinds import KINDS  # noqa: E402

if TYPE_CHECKING:
    # mypy cannot read a union built at run time: to it a Node is a NodeBase, and code
    # that reads one type's fields narrows with isinstance against that type's class
    # (imported from its module, fm_local.nodes.<type>).
    Node = Annotated[NodeBase, Field(discriminator="type")]
else:
    # The members in KINDS' order (that of pydantic's messages and the JSON schema),
    # joined with | as a written union would be.
    Node = Annotated[
        functools.reduce(operator.or_, [k.model for k in KINDS]), Field(discriminator="type")
    ]
    # The classes are re-exported: ``from fm_local.model import LoopNode`` still works.
    globals().update({k.model.__name__: k.model for k in KINDS})
    from fm_local.nodes.switch import SwitchCase as SwitchCase  # noqa: E402

NODE_TYPES: dict[str, type[NodeBase]] = {k.name: k.model for k in KINDS}

# pydantic completes an inherited field whose annotation it could not resolve when the
# class was made (NodeBase.compensate: "Node | None") in the namespace of the
# subclass's own module: each declaration module must know the name ``Node`` too.
for _kind in KINDS:
    setattr(sys.modules[_kind.model.__module__], "Node", Node)  # noqa: B010


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
