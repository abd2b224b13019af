"""The serving supervisor validates new documents and inputs for fm submit / fm run
(fm_local.checkd): the same answers as local validation, none of its imports in the
client, and a local check whenever the supervisor cannot be trusted to answer."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import fm_cli, python_fresh, query, wait_until

from fm_local import checkd
from fm_local.checkd import CheckService

DOC = {
    "name": "checked",
    "inputs": {"type": "object", "properties": {"n": {"type": "integer"}}},
    "nodes": [{"id": "t", "type": "transform", "expression": "input.get('n', 0) + 1"}],
}

# A fresh interpreter submits through the real CLI entry point, then says which of
# the validator's modules it had to import.
_SUBMIT_AND_TELL = """
import sys
from fm_local.cli import main
code = 0
try:
    main(["submit", *sys.argv[1:]])
except SystemExit as e:
    code = e.code
heavy = [m for m in ("fm_local.validate", "pydantic", "jsonschema") if m in sys.modules]
print("imported:" + ",".join(heavy), code, file=sys.stderr)
"""


def _submit_fresh(db: Path, *args: str) -> tuple[str, int, str, str]:
    (imported, code), err, out = python_fresh(db, _SUBMIT_AND_TELL, *args)
    return imported, int(code), err, out


def _answers(db: Path) -> bool:
    return checkd.ask(db, {"kind": "input", "schema": None, "input": 1}) is not None


@pytest.fixture
def service(db: Path) -> Iterator[CheckService]:
    svc = CheckService(db)
    assert svc.sock is not None
    yield svc
    svc.close()


def test_a_serving_daemon_checks_a_new_workflow_and_its_input(daemon, db, wf):
    daemon()
    wait_until(lambda: _answers(db), 30, "the daemon's check service")
    path = wf(DOC)
    imported, code, err, eid = _submit_fresh(db, str(path), "--input", '{"n": 41}')
    assert (imported, code, err) == ("imported:", 0, "")
    row = wait_until(
        lambda: (
            query(db, "SELECT status, output FROM executions WHERE id=?", (eid,))[0]
            if query(db, "SELECT status FROM executions WHERE id=? AND status='succeeded'", (eid,))
            else None
        ),
        60,
        "the execution to succeed",
    )
    assert json.loads(row["output"]) == {"t": 42}
    # what the daemon said is kept: the next submit knows the document
    checked = json.loads(query(db, "SELECT checked FROM workflows")[0]["checked"])
    assert checked["nodes"] == 1 and checked["warnings"] == []

    # a bad input: the daemon's jsonschema says so, in the local words
    imported, code, err, _ = _submit_fresh(db, str(path), "--input", '{"n": "x"}')
    assert (imported, code) == ("imported:", 2)
    assert err == f"{path}: input.n: 'x' is not of type 'integer'"


def test_the_service_answers_as_local_validation_does(service, db, wf, tmp_path):
    bad = wf({"name": "bad", "nodes": [{"id": "a", "type": "pythn", "call": "m:f"}]})
    warned = wf(
        {
            "name": "warned",
            "nodes": [
                {"id": "c", "type": "condition", "expression": "True"},
                {"id": "t", "type": "transform", "expression": "1"},
            ],
            "edges": [{"source": "c", "target": "t", "sourceHandle": "true"}],
        }
    )
    served = {p: fm_cli(db, "submit", str(p)) for p in (bad, warned)}
    assert service.answered == 2
    service.close()
    local_db = tmp_path / "local.db"
    for p, res in served.items():
        local = fm_cli(local_db, "submit", str(p))
        assert (res.exit_code, res.stderr) == (local.exit_code, local.stderr)
    assert served[bad].exit_code == 2
    assert "unknown node type 'pythn' (did you mean 'python'?" in served[bad].stderr
    assert served[warned].exit_code == 0 and served[warned].stderr.strip()
    assert [r["name"] for r in query(db, "SELECT name FROM workflows")] == ["warned"]


def test_other_rules_or_no_listener_mean_a_local_check(service, db, wf):
    path = wf(DOC)
    service.rules = "another fm_local"  # the daemon runs code older than the files
    assert checkd.ask(db, {"kind": "workflow", "what": "x", "text": "{}"}) is None
    res = fm_cli(db, "submit", str(path), "--input", '{"n": "x"}')
    assert res.exit_code == 2
    assert res.stderr.strip() == f"{path}: input.n: 'x' is not of type 'integer'"
    assert service.answered == 2  # this test's ask and the submit's: both answers refused
    service.close()
    assert checkd.ask(db, {"kind": "input", "schema": None, "input": 1}) is None
    assert fm_cli(db, "submit", str(path)).exit_code == 0


def test_a_large_document_is_validated_by_the_client(service, db, wf):
    doc = {"name": "large", "description": "x" * (checkd.MAX_DOCUMENT + 1), "nodes": DOC["nodes"]}
    res = fm_cli(db, "submit", str(wf(doc)))
    assert res.exit_code == 0, res.stderr
    assert service.answered == 0
    assert fm_cli(db, "submit", str(wf({**doc, "description": "small"}))).exit_code == 0
    assert service.answered == 1


def test_the_service_survives_what_a_client_sends(service, db):
    def raw(data: bytes, shut: bool = True) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(checkd.address(db))
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
            return s.recv(65536)

    assert raw(b"not json") == b""
    assert raw(b"[1, 2]") == b""
    assert raw(b"x" * (checkd.MAX_REQUEST + 10)) == b""
    unknown = json.loads(raw(b'{"kind": "mystery"}'))
    assert unknown["error"] == "unknown kind 'mystery'"
    deep = json.loads(
        raw(json.dumps({"kind": "workflow", "what": "deep.json", "text": "[" * 5000}).encode())
    )
    assert deep["ok"] is False and deep["errors"][0].startswith("deep.json: ")
    assert _answers(db)
