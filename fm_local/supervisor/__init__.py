"""The supervisor: the one writer of engine state, and the scheduling loop (see
:mod:`.core`)."""

from fm_local.supervisor.core import Supervisor

__all__ = ["Supervisor"]
