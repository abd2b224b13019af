"""The statuses of executions and node runs, and the legal moves between them.

One table for each (:data:`EXEC_MOVES`, :data:`NODE_MOVES`). The supervisor changes
a status only through the ``status`` property of a run or an execution, which
checks the move here (:func:`check_node`, :func:`check_exec`) and raises
:class:`IllegalMove` for any other: the error boundary then fails that execution
with ``INTERNAL_ERROR`` instead of writing a wrong state. The database enforces the
rule that matters most on its own (triggers, schema version 3): **terminal is
final** — a finished node run or execution never changes status again (one
correction aside: a succeeded execution some of whose rows the database refused
is recorded failed, ``Store.unmake_success``). (``fm dlq
replay`` runs a node again under its own path, ``<path>->replay#<n>``; a new run
of a workflow is a new execution.)

The members are ``str`` (``StrEnum``): ``NodeStatus.RUNNING == "running"``, and
the values are the text the database stores (docs/schema.md).
"""

from __future__ import annotations

from enum import StrEnum


class ExecStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


class NodeStatus(StrEnum):
    PENDING = "pending"  # not ready yet (in memory; the schema reserves it, nothing writes it)
    QUEUED = "queued"  # ready, waiting for a worker, a gate or its start
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"  # an attempt failed; the next one waits for its delay
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # on a branch not taken
    TIMED_OUT = "timed_out"


EXEC_TERMINAL: frozenset[str] = frozenset(
    {ExecStatus.SUCCEEDED, ExecStatus.FAILED, ExecStatus.CANCELLED, ExecStatus.TIMED_OUT}
)
NODE_TERMINAL: frozenset[str] = frozenset(
    {
        NodeStatus.SUCCEEDED,
        NodeStatus.FAILED,
        NodeStatus.CANCELLED,
        NodeStatus.SKIPPED,
        NodeStatus.TIMED_OUT,
    }
)

# The same, in the order of the enums (for choices, tables and SQL lists).
TERMINAL_EXEC: tuple[str, ...] = tuple(s.value for s in ExecStatus if s in EXEC_TERMINAL)
ACTIVE_EXEC: tuple[str, ...] = tuple(s.value for s in ExecStatus if s not in EXEC_TERMINAL)
TERMINAL_NODE: tuple[str, ...] = tuple(s.value for s in NodeStatus if s in NODE_TERMINAL)
ACTIVE_NODE: tuple[str, ...] = tuple(s.value for s in NodeStatus if s not in NODE_TERMINAL)

_E, _N = ExecStatus, NodeStatus
_EXEC_ENDS = {_E.SUCCEEDED, _E.FAILED, _E.CANCELLED, _E.TIMED_OUT}
_NODE_ENDS = {_N.SUCCEEDED, _N.FAILED, _N.CANCELLED, _N.TIMED_OUT}

# status -> the statuses it may move to (staying is always allowed: no move)
EXEC_MOVES: dict[str, frozenset[str]] = {
    _E.QUEUED: frozenset({_E.RUNNING, _E.PAUSED, *_EXEC_ENDS}),
    _E.RUNNING: frozenset({_E.PAUSED, *_EXEC_ENDS}),
    _E.PAUSED: frozenset({_E.RUNNING, *_EXEC_ENDS}),
    **{s: frozenset() for s in _EXEC_ENDS},
}
NODE_MOVES: dict[str, frozenset[str]] = {
    # a node's first status: ready, running at once (evaluated in the supervisor),
    # skipped (a branch not taken), ended before it started (cancelled, a timeout),
    # or read back from the database after a restart
    _N.PENDING: frozenset({_N.QUEUED, _N.RUNNING, _N.RETRY_WAIT, _N.SKIPPED, *_NODE_ENDS}),
    _N.QUEUED: frozenset({_N.RUNNING, _N.RETRY_WAIT, _N.SKIPPED, *_NODE_ENDS}),
    # back to queued: a worker died, a prefetched task was taken back, a stop
    _N.RUNNING: frozenset({_N.QUEUED, _N.RETRY_WAIT, *_NODE_ENDS}),
    _N.RETRY_WAIT: frozenset({_N.QUEUED, _N.RUNNING, *_NODE_ENDS}),
    **{s: frozenset() for s in NODE_TERMINAL},
}


class IllegalMove(Exception):
    """A status change the tables do not allow: a bug in the engine."""


def check_node(old: str, new: str, where: str) -> None:
    """Raise :class:`IllegalMove` unless a node run may go from ``old`` to ``new``."""
    if new != old and new not in NODE_MOVES[old]:
        raise IllegalMove(f"{where}: {old} -> {new} is not a legal move of a node run{_why(old)}")


def check_exec(old: str, new: str, where: str) -> None:
    """Raise :class:`IllegalMove` unless an execution may go from ``old`` to ``new``."""
    if new != old and new not in EXEC_MOVES[old]:
        raise IllegalMove(f"{where}: {old} -> {new} is not a legal move of an execution{_why(old)}")


def _why(old: str) -> str:
    return " (terminal is final)" if old in NODE_TERMINAL else ""


def sql_list(statuses: frozenset[str]) -> str:
    """``'a','b'``: for the CHECK constraints and triggers of the schema."""
    return ",".join(f"'{s}'" for s in sorted(statuses))
