"""The README's command (`make example`) and the order-processing saga, through the CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import orjson
from cli_run import EXAMPLES, itonami

ROOT = EXAMPLES.parent
ORDER = '{"orderId": "ORD-1001", "customerId": "CUST-7", "amount": 249.5}'


def _make_example_args() -> list[str]:
    """The arguments `make example` passes to `itonami`, read from the Makefile."""
    make = (ROOT / "Makefile").read_text()
    recipe = make.split("\nexample:", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    command = recipe.split("/itonami ", 1)[1]
    inputs = re.search(r"^EXAMPLE_INPUT := (.*)$", make, re.M)
    assert inputs is not None
    return shlex.split(command.replace("$(EXAMPLE_INPUT)", inputs.group(1)))


def test_make_example_command_completes_with_pleasant_output(tmp_path: Path) -> None:
    args = _make_example_args()
    assert args[:2] == ["--db", "../.itonami/example.db"]
    assert args[2:] == [
        "run",
        "order_processing.kotoba",
        "--activities",
        "order_activities.py",
        "--input",
        ORDER,
    ]
    # Same command, from examples/, with the store in tmp (a nested, new folder).
    db = tmp_path / "fresh" / "example.db"
    r = itonami("--db", str(db), *args[2:])
    assert r.code == 0, r.err
    assert r.err == ""
    head, _, body = r.out.partition("outputs:\n")
    fields = dict(line.split(":", 1) for line in head.splitlines())
    assert {k: v.strip() for k, v in fields.items() if k != "execution"} == {
        "workflow": "order_processing 1.0.0",
        "status": "completed",
    }
    eid = fields["execution"].strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", eid)
    assert body.startswith("{\n  ")  # indented JSON
    outputs = orjson.loads(body)
    assert outputs["processed"] is True
    assert re.fullmatch(r"CONF-[0-9a-f]{8}", outputs["confirmationId"])
    assert db.is_file()

    # Durable: other processes read the execution back from the same file.
    state = itonami("--db", str(db), "status", eid, "--json").json()
    assert state["status"] == "completed" and state["outputs"] == outputs
    assert {p: s["status"] for p, s in state["steps"].items() if s.get("activity")} == {
        "0/m/0": "completed",
        "0/m/1/0": "completed",
        "0/m/1/1": "completed",
        "0/m/2": "completed",
    }
    verified = itonami("--db", str(db), "verify", eid)
    assert verified.code == 0
    history = itonami("--db", str(db), "history", eid, "--json").lines()
    assert re.search(rf"ok: {eid}: {len(history)} versions, head [0-9a-f]{{64}}", verified.out)
    assert history[0]["kind"] == "workflow_started"
    assert history[0]["data"]["inputs"] == orjson.loads(ORDER)
    assert history[-1]["kind"] == "workflow_completed"
    assert history[-1]["data"]["outputs"] == outputs
    listed = itonami("--db", str(db), "list").out
    assert f"{eid}  completed    order_processing 1.0.0" in listed


def test_the_plain_db_path_and_its_sqlite_url_are_the_same_store(tmp_path: Path) -> None:
    db = tmp_path / "example.db"
    r = itonami("--db", str(db), "run", "order_processing.kotoba", "--activities",
                "order_activities.py", "--input", ORDER, "--json")  # fmt: skip
    eid = r.json()["execution_id"]
    again = itonami("--db", f"sqlite:///{db}", "status", eid, "--json")
    assert again.code == 0 and again.json()["outputs"] == r.json()["outputs"]


def test_order_over_the_limit_is_compensated(tmp_path: Path) -> None:
    db = tmp_path / "example.db"
    big = '{"orderId": "ORD-1002", "customerId": "CUST-7", "amount": 25000}'
    r = itonami("--db", str(db), "run", "order_processing.kotoba",
                "--activities", "order_activities.py", "--input", big)  # fmt: skip
    assert r.code == 1, r.err
    assert "status:    compensated" in r.out
    error = orjson.loads(r.out.split("error:\n", 1)[1])
    assert error["type"] == "NonRetryableError"
    assert error["message"] == "payment of 25000 declined: over the limit"
    eid = r.out.splitlines()[0].split(": ", 1)[1]
    history = itonami("--db", str(db), "history", eid, "--json").lines()
    compensation = [
        (e["step"], e["data"]["result"])
        for e in history
        if e["kind"] == "activity_completed" and e["step"].startswith("0/c/")
    ]
    assert compensation == [
        ("0/c/0", {"refunded": True}),
        ("0/c/1", {"released": True}),
        ("0/c/2", {"notified": True}),
    ]
    kinds = [e["kind"] for e in history]
    assert "compensation_started" in kinds and kinds[-1] == "workflow_compensated"
    assert "send_confirmation" not in str([e["data"] for e in history])
    assert itonami("--db", str(db), "verify", eid).code == 0


def test_malformed_order_id_fails_validation(tmp_path: Path) -> None:
    bad = '{"orderId": "X-1", "customerId": "CUST-7", "amount": 5}'
    r = itonami("--db", str(tmp_path / "e.db"), "run", "order_processing.kotoba",
                "--activities", "order_activities.py", "--input", bad, "--json")  # fmt: skip
    assert r.code == 1
    assert r.json()["status"] == "compensated"
    assert r.json()["error"]["message"] == "malformed order id 'X-1'"
