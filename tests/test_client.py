"""fm_local.client: the one copy of "send a signal and follow it" that the CLI, the
HTTP API and the TUI word their own way (their own tests check the wording)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import wait_until

from fm_local import api, client
from fm_local.store import Store

WAITING = {
    "name": "waiting",
    "nodes": [{"id": "w", "type": "wait", "signal": "approve"}],
}


def _submit(tmp_path: Path, db: Path, doc: dict) -> str:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(doc))
    return api.submit(path, db=db)


def test_refusals_write_no_row(tmp_path: Path, db: Path) -> None:
    eid = _submit(tmp_path, db, WAITING)
    store = Store(db)
    try:
        with pytest.raises(client.SignalRefused) as missing:
            client.send_signal(store, "nope", "pause", None, None, wait=0)
        assert missing.value.why == "missing" and str(missing.value) == "no execution 'nope'"
        with pytest.raises(client.SignalRefused) as unhandled:
            client.send_signal(store, eid, "bump", None, None, wait=0)
        assert unhandled.value.why == "unhandled"
        assert "does not handle signal type 'bump'" in str(unhandled.value)
        assert "approve" in str(unhandled.value)  # the types it accepts
        store.conn.execute("UPDATE executions SET status='cancelled' WHERE id=?", (eid,))
        store.conn.commit()
        with pytest.raises(client.SignalRefused) as finished:
            client.send_signal(store, eid, "approve", None, None, wait=0)
        assert finished.value.why == "finished" and finished.value.status == "cancelled"
        assert store.conn.execute("SELECT count(*) FROM signals").fetchone()[0] == 0
    finally:
        store.close()


def test_without_a_supervisor_the_row_waits(tmp_path: Path, db: Path) -> None:
    eid = _submit(tmp_path, db, WAITING)
    store = Store(db)
    try:
        sent = client.send_signal(store, eid, "approve", "ok", {"n": 1}, wait=30)
        assert (sent.status, sent.served, sent.outcome) == ("pending", False, None)
        assert sent.as_json() == {
            "id": sent.id,
            "execution": eid,
            "type": "approve",
            "status": "pending",
            "outcome": None,
        }
    finally:
        store.close()


def test_a_served_signal_is_followed_to_its_outcome(tmp_path: Path, db: Path, daemon) -> None:
    eid = _submit(tmp_path, db, WAITING)
    daemon()
    store = Store(db)
    try:
        wait_until(lambda: store.get_execution(eid)["status"] == "running", 60, "it to run")
        sent = client.send_signal(store, eid, "approve", None, {"ok": True}, wait=60)
        assert sent.served and sent.status == "applied", sent
        assert api.wait(eid, db=db, timeout=60)["status"] == "succeeded"
    finally:
        store.close()
