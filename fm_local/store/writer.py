"""The group commit in a process of its own.

The supervisor hands each :class:`Batch` to a :class:`Writer` and goes on
scheduling; a child process (``python -m fm_local.store.writer``) applies it on its
own connection while the supervisor builds the next one. A process, not a thread:
binding a batch's values to SQLite's statements holds the GIL, and on a thread that
was a fifth of the supervisor's time on a long loop. What must be committed before
the supervisor goes on — an execution's end, applied signals, the rows a loop's
output is read back from — waits for it (:meth:`Writer.wait`). Batches waiting
behind a commit are merged into one transaction, and at most ``max_pending`` wait,
so a writer that falls behind slows the supervisor down instead of growing
without bound.

The child dies with the supervisor (PR_SET_PDEATHSIG) and holds the supervisor's
lock file open, so no new supervisor can take the file while a commit of the old
one might still land. If it dies on its own, the supervisor stops, as on any
storage failure: what was committed stays, the rest runs again after a restart.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from dataclasses import fields
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from fm_local.pipes import Readable
from fm_local.store.batch import Batch, Rejected
from fm_local.store.files import StorageProblem

# How long close() waits for the child to commit what is queued and exit.
CLOSE_TIMEOUT = 60.0


def merge(batches: list[Batch]) -> Batch:
    """Batches in the order they were made, as one: a row's later value wins (the
    dicts, keyed by row), lists follow one another, a later ``queue_counts`` wins."""
    if len(batches) == 1:
        return batches[0]
    out = Batch()
    for b in batches:
        for f in fields(Batch):
            theirs = getattr(b, f.name)
            if f.default is None:  # a whole value, when set (queue_counts)
                if theirs is not None:
                    setattr(out, f.name, theirs)
            elif isinstance(theirs, dict):
                getattr(out, f.name).update(theirs)
            else:
                getattr(out, f.name).extend(theirs)
    return out


class Writer:
    """Commits batches, in the order given, in a process and connection of its own."""

    def __init__(
        self,
        path: str | Path,
        durability: str = "full",
        max_pending: int = 8,
        keep_fds: tuple[int, ...] = (),
    ):
        """``keep_fds``: descriptors the child holds open as long as it lives (the
        supervisor's lock)."""
        self.path = Path(path)
        self.max_pending = max_pending
        self.submitted = 0  # batches handed over
        self.committed = 0  # of which committed (or rejected row by row)
        self.rejected: list[Rejected] = []
        self.error: BaseException | None = None  # a storage failure: nothing more is written
        # The child's counters as of its last commit: rows changed (SQLite's
        # total_changes) and statements run (only with FM_WRITER_TRACE=1 in the
        # environment; benchmarks/writes.py).
        self.changes = 0
        self.statements = 0
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        # The child must import this very fm_local, wherever it is installed.
        pkg_root = str(Path(__file__).resolve().parent.parent.parent)
        env["PYTHONPATH"] = pkg_root + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
        )
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fm_local.store.writer",
                    str(to_child_r),
                    str(from_child_w),
                    str(os.getpid()),
                    str(path),
                    durability,
                ],
                pass_fds=(to_child_r, from_child_w, *keep_fds),
                stdin=subprocess.DEVNULL,
                process_group=0,  # a terminal's Ctrl-C is the supervisor's to handle
                env=env,
            )
        except BaseException:
            for fd in (to_child_w, from_child_r):
                os.close(fd)
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.to_child = Connection(to_child_w, readable=False)
        self.from_child = Connection(from_child_r, writable=False)
        self.has_reply = Readable(self.from_child)  # from_child.poll(0), kept

    @property
    def pid(self) -> int:
        return self.proc.pid

    def submit(self, b: Batch) -> None:
        """Queue ``b`` for commit (waits while ``max_pending`` batches wait)."""
        self._raise()
        while self.submitted - self.committed >= self.max_pending and self.error is None:
            self._take(block=True)
        self._raise()
        try:
            self.to_child.send_bytes(pickle.dumps(("batch", b), protocol=5))
        except OSError:
            self._take(block=True)  # its reason (an error it sent, or its death)
            self._raise()
            raise
        self.submitted += 1

    def wait(self) -> None:
        """Return once every batch submitted so far is committed."""
        while self.committed < self.submitted and self.error is None:
            self._take(block=True)
        self._raise()

    def poll(self) -> None:
        """Take the acknowledgements that arrived, without waiting."""
        while self.error is None and self.has_reply():
            self._take(block=True)

    def take_rejected(self) -> list[Rejected]:
        """Rows the database refused in the commits since the last call."""
        out, self.rejected = self.rejected, []
        return out

    def close(self) -> None:
        """Commit what is queued (unless storage failed), then stop the child."""
        try:
            if self.error is None:
                try:
                    self.to_child.send_bytes(pickle.dumps(("close",)))
                except OSError:
                    pass
                while self.error is None and self.from_child.poll(CLOSE_TIMEOUT):
                    if self._take(block=True) in ("closed", None):
                        break
            try:
                self.proc.wait(CLOSE_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.to_child.close()
            self.from_child.close()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _take(self, block: bool) -> str | None:
        """Read one message from the child (it waits for one); its kind."""
        try:
            msg = pickle.loads(self.from_child.recv_bytes())
        except (EOFError, OSError, pickle.UnpicklingError):
            code = self.proc.poll()
            if code is None:
                try:
                    code = self.proc.wait(1.0)
                except subprocess.TimeoutExpired:
                    code = None
            self.error = StorageProblem(
                f"cannot write {self.path}: the supervisor's commit process (pid "
                f"{self.proc.pid}) ended unexpectedly (exit status {code}) — start the "
                "supervisor again; what was committed is kept and the rest runs again",
                "other",
                self.path,
            )
            return None
        kind: str = msg[0]
        if kind == "ok":
            self.committed += msg[1]
            self.rejected.extend(msg[2])
            self.changes, self.statements = msg[3], msg[4]
        elif kind == "error":
            self.error = msg[1]
        return kind


# --- the child ---------------------------------------------------------------------


def _portable(exc: BaseException) -> BaseException:
    """``exc`` as it can cross the pipe (pickled), or a RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any exception may refuse pickling
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _prctl_pdeathsig(sig: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: EOF on the pipe still ends us
        pass


def main(argv: list[str]) -> int:
    rfd, wfd, ppid = int(argv[1]), int(argv[2]), int(argv[3])
    path, durability = argv[4], argv[5]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _prctl_pdeathsig(signal.SIGKILL)
    if os.getppid() != ppid:
        return 0  # the supervisor is gone already
    inbox = Connection(rfd, writable=False)
    outbox = Connection(wfd, readable=False)
    has_batch = Readable(inbox)

    def send(msg: tuple[Any, ...]) -> None:
        outbox.send_bytes(pickle.dumps(msg, protocol=5))

    from fm_local.store.core import Store

    try:
        store = Store(path, durability=durability)
    except BaseException as exc:  # noqa: BLE001 - handed to the supervisor
        send(("error", _portable(exc)))
        return 1
    statements = [0]
    if os.environ.get("FM_WRITER_TRACE") == "1":

        def count(_sql: str) -> None:
            statements[0] += 1

        store.conn.set_trace_callback(count)
    while True:
        try:
            msgs = [pickle.loads(inbox.recv_bytes())]
            while has_batch():  # what waited behind the last commit: one transaction
                msgs.append(pickle.loads(inbox.recv_bytes()))
        except (EOFError, OSError):
            return 0  # the supervisor is gone: what it did not hand over is not ours
        batches = [m[1] for m in msgs if m[0] == "batch"]
        if batches:
            try:
                rejected = store.commit_batch(merge(batches))
            except BaseException as exc:  # noqa: BLE001 - handed to the supervisor
                send(("error", _portable(exc)))
                return 1
            for r in rejected:
                r.error = _portable(r.error)
            send(("ok", len(batches), rejected, store.conn.total_changes, statements[0]))
        if any(m[0] == "close" for m in msgs):
            store.close()
            send(("closed",))
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
