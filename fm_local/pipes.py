"""Whether a pipe has something to read, without waiting, for the loops that ask
it once per message (the supervisor reading its workers and its commit process,
a worker reading its tasks, the commit process reading its batches).

``multiprocessing.connection.Connection.poll(0)`` builds a selector on each call:
10–20 µs here, more than a no-op task costs a worker. :class:`Readable` keeps one
poll object for the connection's descriptor (about 2 µs).
"""

from __future__ import annotations

import select
from multiprocessing.connection import Connection


class Readable:
    """``conn.poll(0)`` on a kept poll object: true when a message (or the end of
    the pipe, or an error) waits; reading then returns it or raises, as after
    ``poll``. Made for one connection, used while it is open."""

    __slots__ = ("_poll",)

    def __init__(self, conn: Connection) -> None:
        self._poll = select.poll()
        self._poll.register(conn.fileno(), select.POLLIN)

    def __call__(self) -> bool:
        return bool(self._poll.poll(0))
