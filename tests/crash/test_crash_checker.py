"""The crash checker itself: it passes an honest run and catches each kind of lie."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from crash_helpers import Life, Reference, check_round, read_ledger, run_reference, sqlite_store

pytestmark = pytest.mark.crash


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Reference, list[dict[str, Any]]]:
    directory = tmp_path_factory.mktemp("reference")
    ref = run_reference(sqlite_store(directory), directory, extra_args=["--copies", "1"])
    return ref, read_ledger(directory / "ledger.jsonl")


def _life(ledger: list[dict[str, Any]], returncode: int = 0) -> list[Life]:
    return [Life(1, "none", "", pid=ledger[0]["pid"], returncode=returncode)]


def test_an_honest_run_passes(honest: tuple[Reference, list[dict[str, Any]]]) -> None:
    ref, ledger = honest
    stats = check_round(ref, ref.facts, ref.summary, ledger, _life(ledger))
    assert stats.reruns == 0 and stats.orphaned.total() == 0


def test_an_attempt_run_twice_is_caught(honest: tuple[Reference, list[dict[str, Any]]]) -> None:
    ref, ledger = honest
    start = next(r for r in ledger if r["phase"] == "start")
    with pytest.raises(AssertionError, match="ran twice"):
        check_round(ref, ref.facts, ref.summary, [*ledger, start], _life(ledger))


def test_a_completed_step_run_again_is_caught(
    honest: tuple[Reference, list[dict[str, Any]]],
) -> None:
    ref, ledger = honest
    again = dict(next(r for r in ledger if r["phase"] == "start" and r["activity"] == "work"))
    again["attempt"] += 1
    with pytest.raises(AssertionError, match="before its start was durable"):
        check_round(ref, ref.facts, ref.summary, [*ledger, again], _life(ledger))


def test_a_lost_execution_is_caught(honest: tuple[Reference, list[dict[str, Any]]]) -> None:
    ref, ledger = honest
    facts = copy.deepcopy(ref.facts)
    lost = sorted(facts.executions)[0]
    del facts.executions[lost]
    summary = {k: v for k, v in ref.summary.items() if k != lost}
    with pytest.raises(AssertionError):
        check_round(ref, facts, summary, [r for r in ledger if r["eid"] != lost], _life(ledger))


def test_a_different_result_is_caught(honest: tuple[Reference, list[dict[str, Any]]]) -> None:
    ref, ledger = honest
    facts = copy.deepcopy(ref.facts)
    eid = next(e for e, f in facts.executions.items() if f.status == "completed")
    facts.executions[eid].outputs = json.loads('{"forged": true}')
    with pytest.raises(AssertionError, match=eid):
        check_round(ref, facts, ref.summary, ledger, _life(ledger))


def test_an_outcome_lost_without_a_crash_is_caught(
    honest: tuple[Reference, list[dict[str, Any]]],
) -> None:
    ref, ledger = honest
    facts = copy.deepcopy(ref.facts)
    eid, path = next(
        (r["eid"], r["step"]) for r in ledger if r["phase"] == "start" and r["activity"] == "work"
    )
    facts.executions[eid].activities[path].outcomes.clear()
    with pytest.raises(AssertionError, match="without a crash"):
        check_round(ref, facts, ref.summary, ledger, _life(ledger))
