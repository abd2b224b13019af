"""Names an expression can read (:class:`Scope`), and the bounded set of ended
executions a supervisor remembers (:class:`RecentIds`): small parts of the
supervisor's state (:mod:`fm_local.supervisor.state`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fm_local.supervisor.state import Frame


# Ids of ended executions the supervisor remembers (RecentIds).
FINISHED_KEEP = 10_000


class RecentIds(set[str]):
    """The ids of the last ``keep`` executions that ended, oldest forgotten first.

    What it answers needs no more: whether an execution this supervisor ran has
    ended (``fm run``, a waiter that registered late). New executions are found by
    their committed status, which is final once they are added here, so a daemon
    that has run millions of executions still reads a bounded set."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep
        self.order: deque[str] = deque()

    def add(self, eid: str) -> None:
        if eid in self:
            return
        super().add(eid)
        self.order.append(eid)
        while len(self.order) > self.keep:
            self.discard(self.order.popleft())


class Scope(Mapping[str, Any]):
    """Names an expression can read, looked up lazily (SPEC §7): frame variables,
    ``extra`` (branch, error…), node outputs, the input, execution, signals."""

    __slots__ = ("frame", "extra")

    def __init__(self, frame: Frame, extra: dict[str, Any] | None = None) -> None:
        self.frame = frame
        self.extra = extra

    def __getitem__(self, name: str) -> Any:
        extra = self.extra
        if extra is not None and name in extra:
            return extra[name]
        f: Frame | None = self.frame
        while f is not None:
            if name in f.vars:
                return f.vars[name]
            g = f.graph
            nid = name if name in g.nodes else g.aliases.get(name)
            if nid is not None:
                run = f.runs.get(nid)
                return run.value() if run is not None and run.status == "succeeded" else None
            f = f.parent
        ex = self.frame.ex
        if name == "input":
            return ex.input
        if name == "execution":
            return {"id": ex.id, "traceId": ex.trace_id, "workflow": ex.workflow.name}
        if name == "signals":
            return ex.signal_scope
        if isinstance(ex.input, dict) and name in ex.input:
            return ex.input[name]
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __contains__(self, name: object) -> bool:
        try:
            self[name]  # type: ignore[index]
        except KeyError:
            return False
        return True
