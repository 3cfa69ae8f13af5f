"""The commands of issue 11 end to end: list filters and totals, status by step
name, state at a tx, history --follow, cancel, export / verify --file, prune,
read commands that never create a database, --version and global options."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from cli_run import EXAMPLES, Result, cli_env, itonami

from itonami.cli import EXIT_FAILED, EXIT_OK, EXIT_RUNNING, EXIT_USAGE, main, parse_moment

ACT = ("--activities", "example_activities.py")
PG_URL = os.environ.get("ITONAMI_TEST_POSTGRES_URL", "")


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    code = main(list(argv))
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def _sequence(capsys: pytest.CaptureFixture[str], eid: str, *extra: str) -> None:
    r = _main(capsys, "run", "sequence.kotoba", *ACT, "--input", f'{{"userId": "{eid}"}}',
              "--execution-id", eid, "--json", *extra)  # fmt: skip
    assert r.code == EXIT_OK, r.err


def test_version_and_global_options_on_either_side(
    in_examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = _main(capsys, "--version")
    assert version.code == EXIT_OK and version.out.startswith("itonami ")
    _sequence(capsys, "u-1")
    db = str(in_examples / "inproc.db")
    before = _main(capsys, "--db", db, "list", "--json").json()
    after = _main(capsys, "list", "--json", "--storage", db).json()
    assert before == after and before["total"] == 1
    assert _main(capsys, "list", "--db=" + db, "--json").json() == before
    assert "Exit codes: 0 ok" in _main(capsys, "--help").out


def test_list_filters_pages_and_counts_newest_first(
    in_examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for eid in ("job-a1", "job-b2", "job_a3"):
        _sequence(capsys, eid)
    failed = _main(capsys, "run", "activity.kotoba", *ACT, "--input", '{"email": "x"}',
                   "--execution-id", "mail-1", "--json")  # fmt: skip
    assert failed.code == EXIT_FAILED

    def page(*args: str) -> dict:
        r = _main(capsys, "list", "--json", *args)
        assert r.code == EXIT_OK, r.err
        return r.json()

    everything = page()
    assert [x["execution_id"] for x in everything["executions"]] == [
        "mail-1", "job_a3", "job-b2", "job-a1",
    ]  # fmt: skip
    assert everything["total"] == 4 and everything["counts"] == {"completed": 3, "failed": 1}
    assert [x["execution_id"] for x in page("--oldest-first", "--limit", "1")["executions"]] == [
        "job-a1"
    ]
    second = page("--limit", "2", "--page", "2")
    assert [x["execution_id"] for x in second["executions"]] == ["job-b2", "job-a1"]
    assert second["offset"] == 2 and second["total"] == 4
    assert page("--status", "failed")["counts"] == {"failed": 1}
    both = page("--status", "failed,completed", "--workflow", "user_onboarding")
    assert both["total"] == 3 and both["counts"] == {"completed": 3}
    assert page("--workflow-version", "nope")["total"] == 0
    # _ is not a wildcard; the match is case-sensitive
    assert [x["execution_id"] for x in page("--id", "_a")["executions"]] == ["job_a3"]
    assert page("--id", "JOB")["total"] == 0
    assert page("--since", "1h")["total"] == 4 and page("--until", "1h")["total"] == 0
    assert page("--since", "2000-01-01T00:00:00Z", "--until", "P1D")["total"] == 0

    text = _main(capsys, "list", "--limit", "1", "--offset", "1")
    assert text.out.startswith("job_a3  completed    user_onboarding 1.0.0  ")
    assert text.err == "-- 4 executions (3 completed, 1 failed); showing 2-2\n"
    bad = _main(capsys, "list", "--status", "done")
    assert bad.code == EXIT_USAGE
    assert bad.err == (
        "itonami: unknown status 'done'; the statuses are running, cancelled, compensated, "
        "completed, failed, timed_out\n"
    )


def test_parse_moment_takes_timestamps_and_durations() -> None:
    now = 1_700_000_000.0
    assert parse_moment("90s", "x", now=now) == (now - 90) * 1e6
    assert parse_moment("2d", "x", now=now) == (now - 172_800) * 1e6
    assert parse_moment("PT1H", "x", now=now) == (now - 3600) * 1e6
    assert parse_moment("2023-11-14T22:13:20Z", "x") == 1_700_000_000_000_000
    assert parse_moment("2023-11-14T22:13:20", "x") == 1_700_000_000_000_000  # naive = UTC


def test_status_names_steps_and_a_decision_ends_with_its_branch(
    in_examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = _main(capsys, "run", "decision.kotoba", *ACT, "--input",
              '{"orderId": "o-1", "amount": 50}', "--json")  # fmt: skip
    eid = r.json()["execution_id"]
    status = _main(capsys, "status", eid)
    lines = status.out.split("steps:\n", 1)[1].splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["score", "completed"],
        ["route", "completed"],
        ["route.auto_approve", "completed"],
    ]
    views = _main(capsys, "status", eid, "--json").json()["step_views"]
    assert {v["path"]: v["status"] for v in views} == {
        "0/0": "completed",
        "0/1": "completed",
        "0/1/d": "completed",
    }
    assert "running" not in status.out


def test_state_as_of_a_version_or_a_tx(
    in_examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _sequence(capsys, "s-1")
    now = _main(capsys, "state", "s-1", "--json").json()
    assert now["status"] == "completed" and now["version"] > 3
    first = _main(capsys, "state", "s-1", "--version", "1", "--json").json()
    assert first["status"] == "running" and first["version"] == 1 and first["outputs"] is None
    assert _main(capsys, "state", "s-1", "--at-tx", str(first["tx"]), "--json").json() == first
    text = _main(capsys, "state", "s-1", "--version", "1")
    assert "status:    running" in text.out and "version:   1  (tx " in text.out
    beyond = _main(capsys, "state", "s-1", "--version", "999")
    assert beyond.code == EXIT_USAGE and "has versions 1.." in beyond.err


def test_read_commands_never_create_the_database(tmp_path: Path) -> None:
    db = tmp_path / "absent.db"
    for argv in (["list"], ["status", "x"], ["history", "x"], ["verify", "x"], ["state", "x"],
                 ["export", "x", "-o", str(tmp_path / "x.json")], ["cancel", "x"],
                 ["prune", "--finished-before", "1d"]):  # fmt: skip
        r = itonami(*argv, db=db)
        assert r.code == EXIT_FAILED, (argv, r.err)
        assert r.err == f"itonami: no database at {db} (--db, $ITONAMI_DB)\n"
    assert not db.exists()


def test_run_shows_steps_as_they_complete(
    in_examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = _main(capsys, "run", "sequence.kotoba", *ACT, "--input", '{"userId": "p"}', "--progress")
    assert r.code == EXIT_OK
    assert r.err.splitlines() == [
        "✓ load_user completed  (load_user)",
        "✓ create_account completed  (create_account)",
        "✓ notify completed  (send_notification)",
    ]


def _waiting(db: Path) -> str:
    r = itonami("run", "wait_signal.kotoba", *ACT, "--input", '{"expenseId": "E-1"}',
                "--timeout", "0.3", "--json", db=db)  # fmt: skip
    assert r.code == EXIT_RUNNING, r.err
    eid: str = r.json()["execution_id"]
    return eid


def test_history_follow_prints_events_until_the_end(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    eid = _waiting(db)
    follow = subprocess.Popen(
        [sys.executable, "-m", "itonami.cli", "history", eid, "--follow", "--json",
         "--interval", "0.05"],
        cwd=EXAMPLES, env=cli_env(db), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert follow.stdout is not None
        seen = []
        while not seen or seen[-1]["kind"] != "wait_started":  # what is stored so far
            seen.append(orjson.loads(follow.stdout.readline()))
        done = itonami("signal", eid, "approved", '{"approver": "kim"}', *ACT, db=db)
        assert done.code == EXIT_OK, done.err
        out, err = follow.communicate(timeout=60)  # it stops by itself at the end
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == EXIT_OK, err
    later = [orjson.loads(line) for line in out.splitlines()]
    versions = [e["version"] for e in seen + later]
    assert versions == list(range(1, len(versions) + 1))
    assert later[0]["kind"] == "signal_received" and later[-1]["kind"] == "workflow_completed"


def test_cancel_without_activities(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    eid = _waiting(db)
    r = itonami("cancel", eid, "--reason", "not needed", "--json", db=db)
    assert r.code == EXIT_OK, r.err
    assert r.json()["status"] == "cancelled"
    events = itonami("history", eid, "--json", db=db).lines()
    assert events[-1]["kind"] == "workflow_cancelled"
    assert events[-1]["data"]["reason"] == "not needed"
    again = itonami("cancel", eid, db=db)
    assert again.code == EXIT_USAGE and "has already ended cancelled" in again.err


def test_cancel_reaches_an_execution_another_process_runs(tmp_path: Path) -> None:
    db = tmp_path / "c2.db"
    eid = _waiting(db)
    owner = subprocess.Popen(
        [sys.executable, "-m", "itonami.cli", "resume", eid, *ACT, "--json"],
        cwd=EXAMPLES, env=cli_env(db), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Until the other process holds the lease (what makes this a remote cancel).
        def owned() -> bool:
            con = sqlite3.connect(db)
            try:
                row = con.execute("SELECT owner FROM executions WHERE execution_id = ?", (eid,))
                return row.fetchone()[0] is not None
            finally:
                con.close()

        for _ in range(600):
            if owned() or owner.poll() is not None:
                break
            time.sleep(0.05)  # polling a condition the other process makes true
        assert owned(), "the resuming process never took the execution"
        r = itonami("cancel", eid, db=db)
        assert r.code == EXIT_OK, r.err
        assert "status:    cancelled" in r.out
        out, err = owner.communicate(timeout=60)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    assert owner.returncode == EXIT_FAILED, err  # its execution ended cancelled
    assert orjson.loads(out)["status"] == "cancelled"


def test_export_then_verify_offline_even_after_prune(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    r = itonami("run", "sequence.kotoba", *ACT, "--input", '{"userId": "q"}', "--json", db=db)
    eid = r.json()["execution_id"]
    stored = itonami("verify", eid, "--json", db=db).json()
    assert stored["ok"] is True and stored["execution_id"] == eid
    out = tmp_path / "export.json"
    assert itonami("export", eid, "-o", str(out), db=db).code == EXIT_OK
    doc = orjson.loads(out.read_bytes())
    assert doc["format"] == "itonami-export" and doc["head"]["hash"] == stored["head"]
    assert doc["definition"]["workflow"]["id"] == "user_onboarding"

    pruned = itonami("prune", "--finished-before", "0s", db=db)
    assert pruned.code == EXIT_OK and pruned.out.split() == [eid]
    assert itonami("status", eid, db=db).code == EXIT_FAILED  # gone from the store
    ok = itonami("verify", "--file", str(out), "--head", stored["head"], cwd=tmp_path)
    assert ok.code == EXIT_OK, ok.err
    assert (
        ok.out.startswith(f"ok: {eid}: {stored['versions']} versions, head ")
        and "replays" in ok.out
    )

    wrong_head = itonami("verify", "--file", str(out), "--head", "00" * 32, "--json")
    assert wrong_head.code == EXIT_FAILED and wrong_head.json()["ok"] is False
    tampered = dict(doc)
    inner = bytearray(base64.b64decode(doc["history_file"]))
    inner[inner.index(b"load_user") + 2] ^= 1  # one byte of one event
    tampered["history_file"] = base64.b64encode(bytes(inner)).decode()
    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps(tampered))
    damaged = itonami("verify", "--file", str(bad))
    assert damaged.code == EXIT_FAILED and "does NOT verify" in damaged.err
    missing = itonami("verify", "--file", str(tmp_path / "nope.json"))
    assert missing.code == EXIT_FAILED and "no such file" in missing.err


def test_prune_dry_run_then_delete_leaves_unfinished_ones(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    waiting = _waiting(db)
    r = itonami("run", "sequence.kotoba", *ACT, "--input", '{"userId": "q"}', "--json", db=db)
    done = r.json()["execution_id"]
    assert itonami("prune", "--finished-before", "1h", db=db).out == ""
    dry = itonami("prune", "--finished-before", "0s", "--dry-run", "--json", db=db).json()
    assert dry == {"dry_run": True, "deleted": [], "would_delete": [done]}
    assert itonami("list", "--json", db=db).json()["total"] == 2
    real = itonami("prune", "--finished-before", "0s", "--workflow", "user_onboarding", db=db)
    assert real.out.split() == [done] and real.err == "-- deleted 1 execution(s)\n"
    left = itonami("list", "--json", db=db).json()
    assert [x["execution_id"] for x in left["executions"]] == [waiting]


@pytest.mark.skipif(not PG_URL, reason="PostgreSQL tests need ITONAMI_TEST_POSTGRES_URL")
def test_list_status_and_export_on_postgresql(tmp_path: Path) -> None:
    marker = os.urandom(4).hex()
    eid = f"pg-{marker}"
    r = itonami("run", "sequence.kotoba", *ACT, "--input", '{"userId": "q"}',
                "--execution-id", eid, "--json", "--db", PG_URL)  # fmt: skip
    assert r.code == EXIT_OK, r.err
    listed = itonami("list", "--id", marker, "--json", "--db", PG_URL).json()
    assert listed["counts"] == {"completed": 1}
    assert listed["executions"][0]["execution_id"] == eid
    assert "notify" in itonami("status", eid, "--db", PG_URL).out
    out = tmp_path / "pg.json"
    assert itonami("export", eid, "-o", str(out), "--db", PG_URL).code == EXIT_OK
    assert itonami("verify", "--file", str(out)).code == EXIT_OK
