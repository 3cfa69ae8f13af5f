"""Every example in examples/ runs end to end through the CLI, in a subprocess,
with the command its header comment gives, and ends as its activities say."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from cli_run import EXAMPLES, itonami

ACT = ("--activities", "example_activities.py")

# (example, extra CLI args, inputs, expected status, expected outputs or error type)
CASES: list[tuple[str, tuple[str, ...], str, str, Any]] = [
    (
        "activity",
        ACT,
        '{"email": "ann@example.com"}',
        "completed",
        {"messageId": "<welcome.en.ann@example.com>"},
    ),
    (
        "activity",
        ACT,
        '{"email": "ann@example.com", "locale": "fr"}',
        "completed",
        {"messageId": "<welcome.fr.ann@example.com>"},
    ),
    ("activity", ACT, '{"email": "nobody"}', "failed", "InvalidAddress"),
    ("decision", ACT, '{"orderId": "ORD-1", "amount": 50}', "completed", {"decision": "approved"}),
    (
        "decision",
        ACT,
        '{"orderId": "ORD-2", "amount": 25000}',
        "completed",
        {"decision": "manual_review"},
    ),
    (
        "decision",
        ACT,
        '{"orderId": "ORD-FRAUD-3", "amount": 25000}',
        "completed",
        {"decision": "rejected"},
    ),
    (
        "map",
        ACT,
        '{"lines": [{"sku": "A1", "quantity": 1}, {"sku": "B2", "quantity": 3},'
        ' {"sku": "C3", "quantity": 2}]}',
        "completed",
        {
            "result": [
                {"sku": "A1", "quantity": 1, "tracking": "TRK-0-A1"},
                {"sku": "B2", "quantity": 3, "tracking": "TRK-1-B2"},
                {"sku": "C3", "quantity": 2, "tracking": "TRK-2-C3"},
            ]
        },
    ),
    ("map", ACT, '{"lines": [{"sku": "A1", "quantity": 0}]}', "failed", "NonRetryableError"),
    (
        "parallel",
        ACT,
        '{"symbol": "ACME"}',
        "completed",
        {
            "result": [
                {"provider": "alpha", "symbol": "ACME", "price": 404.0},
                {"provider": "beta", "symbol": "ACME", "price": 398.0},
                None,
            ]
        },
    ),
    ("saga", ACT, '{"tripId": "T-1"}', "completed", {"kind": "car", "booking_id": "CA-T-1"}),
    ("saga", ACT, '{"tripId": "T-NOCAR"}', "compensated", "NoCar"),
    (
        "sequence",
        ACT,
        '{"userId": "ann-lee"}',
        "completed",
        {"account": {"id": "ACC-ann-lee", "owner": "Ann Lee"}},
    ),
    (
        "wait_signal",
        (*ACT, "--signal", 'approved={"approver": "bob"}'),
        '{"expenseId": "EXP-9"}',
        "completed",
        {"paid": "EXP-9", "approved_by": "bob"},
    ),
    (
        "wait_timer",
        (*ACT, "--tla", "delay=PT1S"),
        '{"userId": "ann"}',
        "completed",
        {"reminded": "ann"},
    ),
    (
        "wait_event",
        ("--event", 'parcel.delivered={"parcel_id": "P-7", "signed_by": "Kim"}'),
        '{"parcelId": "P-7"}',
        "completed",
        {"parcel_id": "P-7", "signed_by": "Kim"},
    ),
    (
        "subworkflow",
        (*ACT, "--workflow", "order_processing.kotoba"),
        '{"orders": [{"orderId": "ORD-1", "customerId": "C-1", "amount": 10},'
        ' {"orderId": "ORD-2", "customerId": "C-2", "amount": 20}]}',
        "completed",
        None,  # confirmation ids derive from child execution ids: checked below
    ),
]


def test_every_example_has_a_case() -> None:
    stems = {p.stem for p in EXAMPLES.glob("*.kotoba")} - {"order_processing"}
    assert stems == {c[0] for c in CASES}


@pytest.mark.parametrize(
    "name,extra,inputs,status,expected",
    CASES,
    ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(CASES)],
)
def test_example_runs(
    tmp_path: Path, name: str, extra: tuple[str, ...], inputs: str, status: str, expected: Any
) -> None:
    db = tmp_path / "ex.db"
    r = itonami("run", f"{name}.kotoba", "--input", inputs, *extra, "--json", db=db)
    assert r.code == (0 if status == "completed" else 1), r.err
    result = r.json()
    assert result["status"] == status
    if status == "completed":
        if expected is not None:
            assert result["outputs"] == expected
        assert result["error"] is None
    else:
        assert result["error"]["type"] == expected
    # The execution is durable: a second process reads the same state back.
    back = itonami("status", result["execution_id"], "--json", db=db)
    assert back.code == 0, back.err
    state = back.json()
    assert (state["status"], state["outputs"]) == (status, result["outputs"])
    assert itonami("verify", result["execution_id"], db=db).code == 0


def _history(db: Path, eid: str) -> list[dict[str, Any]]:
    r = itonami("history", eid, "--json", db=db)
    assert r.code == 0, r.err
    events: list[dict[str, Any]] = r.lines()
    assert [e["version"] for e in events] == list(range(1, len(events) + 1))
    return events


def test_non_retryable_error_is_not_retried(tmp_path: Path) -> None:
    db = tmp_path / "ex.db"
    r = itonami("run", "activity.kotoba", *ACT, "--input", '{"email": "x"}', "--json", db=db)
    kinds = [e["kind"] for e in _history(db, r.json()["execution_id"])]
    assert kinds.count("activity_scheduled") == 1
    assert "activity_retry_scheduled" not in kinds
    assert kinds[-1] == "workflow_failed"


def test_trip_saga_cancels_what_it_booked_in_reverse(tmp_path: Path) -> None:
    db = tmp_path / "ex.db"
    r = itonami("run", "saga.kotoba", *ACT, "--input", '{"tripId": "T-NOCAR"}', "--json", db=db)
    assert r.code == 1
    events = _history(db, r.json()["execution_id"])
    undone = [e["data"]["result"] for e in events if e["kind"] == "compensation_step_completed"]
    assert undone[:2] == [{"cancelled": "HO-T-NOCAR"}, {"cancelled": "FL-T-NOCAR"}]
    assert events[-1]["kind"] == "workflow_compensated"


def test_timer_fires_after_its_delay(tmp_path: Path) -> None:
    db = tmp_path / "ex.db"
    r = itonami(
        "run", "wait_timer.kotoba", *ACT, "--tla", "delay=PT1S", "--input", '{"userId": "u"}',
        "--json", db=db,
    )  # fmt: skip
    assert r.code == 0, r.err
    events = _history(db, r.json()["execution_id"])
    scheduled = next(e for e in events if e["kind"] == "timer_scheduled")
    fired = next(e for e in events if e["kind"] == "timer_fired")
    assert abs(scheduled["data"]["fire_at"] - scheduled["timestamp"] - 1_000_000) < 50_000
    assert fired["timestamp"] >= scheduled["data"]["fire_at"]


def test_event_for_another_parcel_is_not_delivered(tmp_path: Path) -> None:
    db = tmp_path / "ex.db"
    r = itonami(
        "run", "wait_event.kotoba", "--input", '{"parcelId": "P-1"}',
        "--event", 'parcel.delivered={"parcel_id": "P-2"}', "--timeout", "1", "--json", db=db,
    )  # fmt: skip
    assert r.code == 3, r.err
    assert r.json()["status"] == "running"
    assert "itonami resume" in r.err
    state = itonami("status", r.json()["execution_id"], "--json", db=db).json()
    assert state["steps"]["0"]["status"] == "waiting"
    # The right parcel's event, sent to the stored execution later, completes it.
    done = itonami(
        "event", state["execution_id"], "parcel.delivered", '{"parcel_id": "P-1"}', "--json",
        db=db,
    )  # fmt: skip
    assert done.code == 0, done.err
    assert done.json()["outputs"] == {"parcel_id": "P-1"}


def test_subworkflow_runs_one_child_per_order(tmp_path: Path) -> None:
    db = tmp_path / "ex.db"
    orders = (
        '{"orders": [{"orderId": "ORD-1", "customerId": "C-1", "amount": 10},'
        ' {"orderId": "ORD-2", "customerId": "C-2", "amount": 20}]}'
    )
    r = itonami(
        "run", "subworkflow.kotoba", *ACT, "--workflow", "order_processing.kotoba",
        "--input", orders, "--json", db=db,
    )  # fmt: skip
    assert r.code == 0, r.err
    parent = r.json()["execution_id"]
    outputs = r.json()["outputs"]["result"]
    children = [
        c for c in itonami("list", "--json", db=db).json()["executions"] if c["parent_id"] == parent
    ]
    assert len(children) == 2 and {c["status"] for c in children} == {"completed"}
    assert {c["workflow_id"] for c in children} == {"order_processing"}
    assert [o["processed"] for o in outputs] == [True, True]
    assert all(re.fullmatch(r"CONF-[0-9a-f]{8}", o["confirmationId"]) for o in outputs)
    assert outputs[0]["confirmationId"] != outputs[1]["confirmationId"]


def test_subworkflow_without_its_child_definition_is_a_usage_error(tmp_path: Path) -> None:
    r = itonami("run", "subworkflow.kotoba", *ACT, "--input", '{"orders": []}', db=tmp_path / "x")
    assert r.code == 2
    assert "unknown workflow 'order_processing'" in r.err


def test_header_comments_say_how_to_run_each_example() -> None:
    for path in sorted(EXAMPLES.glob("*.kotoba")):
        if path.name == "order_processing.kotoba":
            continue  # the seed's example; `make example` runs it (see test_make_example)
        lines = path.read_text().splitlines()
        header = " ".join(line for line in lines if line.startswith("//"))
        assert f"itonami run {path.name}" in header, path.name
