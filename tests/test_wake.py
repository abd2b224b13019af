"""Wake-ups between clients and the supervisor (fm_local.wake): a client's commit
nudges the supervisor; the supervisor nudges whoever waits for an execution's end.

Each nudge is only a hint (the database is the channel), so these tests check that
the nudge arrives, not how fast: ``Waiter.wait`` says whether it was nudged or
timed out, and the time-outs here are long enough never to be what ends a wait.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import wait_until

from fm_local import api, wake
from fm_local.store import Store

LONG = 120.0  # never reached when the nudge comes


def test_a_registered_waiter_is_nudged_when_its_execution_ends(tmp_path: Path) -> None:
    db = tmp_path / "fm.db"
    listener = wake.Listener(db)
    try:
        assert listener.fileno() >= 0
        waiter = wake.Waiter(db, "e1")
        other = wake.Waiter(db, "e2")
        assert waiter.registered and other.registered
        woke, registered = listener.drain()
        assert (woke, sorted(registered)) == (False, ["e1", "e2"])
        listener.ended("e1")
        assert waiter.wait(LONG) is True
        assert other.wait(0.05) is False  # e2 has not ended
        listener.ended("e1")  # once only: nothing more to send
        assert waiter.wait(0.05) is False
        wake.notify(db)  # a client's commit
        assert listener.drain() == (True, [])
        waiter.close()
        other.close()
    finally:
        listener.close()


def test_without_a_supervisor_a_waiter_falls_back_to_polling(tmp_path: Path) -> None:
    waiter = wake.Waiter(tmp_path / "nobody.db", "e1")
    assert not waiter.registered
    assert waiter.wait(0.01) is False
    wake.notify(tmp_path / "nobody.db")  # nobody listens: no error either


def test_the_daemon_nudges_a_waiter_at_the_end_and_a_late_one_at_once(
    tmp_path: Path, db: Path, daemon
) -> None:
    gate = tmp_path / "gate"
    doc = {
        "name": "gated",
        "nodes": [
            {"id": "g", "type": "shell", "command": f"while [ ! -e {gate} ]; do sleep 0.01; done"}
        ],
    }
    path = tmp_path / "gated.json"
    path.write_text(json.dumps(doc))
    daemon()
    eid = api.submit(path, db=db)
    store = Store(db, create=False)
    try:
        wait_until(lambda: store.get_execution(eid)["status"] == "running", 60, "it to start")
        early = wake.Waiter(db, eid)
        assert early.registered
        assert early.wait(0.05) is False  # still running
        gate.touch()
        assert early.wait(LONG) is True
        assert store.get_execution(eid)["status"] == "succeeded"  # committed before the nudge
        # Registered after the end: nudged at once (the supervisor remembers it ended).
        late = wake.Waiter(db, eid)
        assert late.wait(LONG) is True
        early.close()
        late.close()
        # api.wait / fm wait use the same path
        assert api.wait(eid, db=db, timeout=LONG)["status"] == "succeeded"
    finally:
        store.close()
