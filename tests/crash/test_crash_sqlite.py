"""SIGKILL the workload process over and over on a SQLite file; nothing is lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from crash_helpers import ALL_FAILPOINTS, run_torture, sqlite_store, torture_kills

pytestmark = pytest.mark.crash


def test_sqlite_survives_kills_at_random_moments_and_failpoints(tmp_path: Path) -> None:
    kills = torture_kills()
    report = run_torture(sqlite_store, kills=kills, seed=20240917, workdir=tmp_path)
    print(report.text())
    assert report.kills >= kills
    # Every failpoint fired at least once, and kills caught activities in flight.
    assert set(ALL_FAILPOINTS) <= set(report.kills_by_cause), report.kills_by_cause
    assert report.in_flight_by_cause.total() > 0
    # A hung process is killed and restarted like any other; the only hang
    # tolerated is the known busy loop in Run.flush (test_crash_regressions.py).
    unknown = list(report.hangs)
    assert unknown == [], unknown[0] if unknown else ""
