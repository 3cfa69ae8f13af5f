"""The ``itonami`` command: exit codes, error messages, durable two-step flows,
and that a command resumes only the executions it names."""

from __future__ import annotations

import asyncio
import gc
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from cli_run import EXAMPLES, cli_env, itonami
from hypothesis import given
from hypothesis import strategies as st

from itonami.activities import ActivityRegistry
from itonami.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_RUNNING,
    EXIT_USAGE,
    main,
    plan_resume,
    storage_url,
)
from itonami.cli import _descends as descends
from itonami.storage import open_storage

ACT = ("--activities", "example_activities.py")


# ------------------------------------------------------------------ in-process


def test_main_runs_an_example_and_reads_it_back(
    in_examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "sequence.kotoba", *ACT, "--input", '{"userId": "bo-ng"}', "--json"])
    result = orjson.loads(capsys.readouterr().out)
    assert code == EXIT_OK
    assert result["outputs"] == {"account": {"id": "ACC-bo-ng", "owner": "Bo Ng"}}
    assert main(["status", result["execution_id"]]) == EXIT_OK
    out = capsys.readouterr().out
    assert "status:    completed" in out
    assert re.search(r"^  notify +completed +send_notification \(1 attempt\)$", out, re.M)
    assert "0/2" not in out  # steps by name, not by internal path
    assert main(["list", "--status", "completed", "--workflow", "user_onboarding"]) == EXIT_OK
    assert result["execution_id"] in capsys.readouterr().out
    assert main(["list", "--status", "failed"]) == EXIT_OK
    assert capsys.readouterr().out == ""


def test_an_input_file_and_the_same_execution_id_twice(
    in_examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = in_examples / "in.json"
    inputs.write_text('{"userId": "al"}')
    args = ["run", "sequence.kotoba", *ACT, "--input", f"@{inputs}", "--execution-id", "job-1"]
    assert main([*args, "--json"]) == EXIT_OK
    first = orjson.loads(capsys.readouterr().out)
    assert first["execution_id"] == "job-1"
    # The id is an idempotency key: running again returns the stored result.
    assert main([*args, "--json"]) == EXIT_OK
    assert orjson.loads(capsys.readouterr().out) == first
    assert main(["history", "job-1", "--json"]) == EXIT_OK
    kinds = [orjson.loads(line)["kind"] for line in capsys.readouterr().out.splitlines()]
    assert kinds.count("workflow_started") == 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "missing.kotoba"], "workflow file not found: missing.kotoba"),
        (["run", "sequence.kotoba", *ACT, "--input", "{nope"], "--input is not valid JSON"),
        (["run", "sequence.kotoba", *ACT, "--input", "[1, 2]"], "--input must be a JSON object"),
        (["run", "sequence.kotoba", *ACT, "--input", "{}"], "inputs.userId: is required"),
        (["run", "sequence.kotoba", "--input", '{"userId": "a"}'], "pass --activities MODULE"),
        (
            ["run", "sequence.kotoba", "--activities", "no_such_module", "--input", "{}"],
            "cannot import activities module 'no_such_module'",
        ),
        (
            ["run", "sequence.kotoba", "--activities", "nope/acts.py", "--input", "{}"],
            "activities file not found: nope/acts.py",
        ),
        (
            ["run", "sequence.kotoba", "--activities", "example_activities.py:nothing"],
            "has no ActivityRegistry named nothing",
        ),
        (
            ["run", "sequence.kotoba", "--activities", "order_activities.py", "--input", "{}"],
            "unknown activity 'load_user'",
        ),
        (
            ["run", "wait_signal.kotoba", *ACT, "--input", '{"expenseId": "e"}', "--signal", "ok"],
            "never waits for signal 'ok' (it waits for: approved)",
        ),
        (["run", "wait_timer.kotoba", *ACT, "--ext-var", "=x"], "expected NAME=VALUE"),
        (["--db", "ftp://x", "list"], "unsupported storage URL 'ftp://x'"),
        (["list", "--status", "done"], "unknown status 'done'; the statuses are running, "),
        (["list", "--since", "last week"], "--since 'last week': expected an ISO 8601"),
        (["list", "--page", "0"], "--page >= 1"),
        (["state", "x", "--at-tx", "1", "--version", "1"], "not both"),
        (["verify"], "an execution id or --file FILE"),
        (["validate", "subworkflow.kotoba"], "unknown workflow"),
    ],
)
def test_usage_errors_are_one_clear_line_and_exit_2(
    in_examples: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    if argv[0] == "validate":
        argv = [*argv, "--workflow", "saga.kotoba"]  # a child, but not the one it calls
    assert main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    first = captured.err.splitlines()[0]
    assert first.startswith("itonami: ")
    assert message in captured.err
    assert "Traceback" not in captured.err


def test_a_definition_that_fails_to_register_leaves_no_database_open(
    in_examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The engine's start() fails after opening the store; the command must
    # still close it (Python 3.13 reports a leaked connection as a ResourceWarning).
    db = in_examples / "inproc.db"

    def open_on_db() -> list[str]:
        fds = Path("/proc/self/fd")
        return [str(fd) for fd in fds.iterdir() if _target(fd) == str(db)]

    gc.disable()  # a leaked connection would otherwise close whenever the collector runs
    try:
        argv = ["run", "sequence.kotoba", "--activities", "order_activities.py", "--input", "{}"]
        assert main(argv) == EXIT_USAGE
        assert "unknown activity 'load_user'" in capsys.readouterr().err
        assert open_on_db() == []
    finally:
        gc.enable()
        gc.collect()


def _target(fd: Path) -> str:
    try:
        return str(fd.readlink())
    except OSError:  # closed since it was listed
        return ""


def test_invalid_definition_lists_every_problem(
    in_examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = in_examples / "bad.kotoba"
    bad.write_text(
        '{workflow: {id: "b", name: "b", version: "1", strategy: {op: "seq", strategies: ['
        '{op: "activity", activity_ref: "nope_a"}, {op: "activity", activity_ref: "nope_b"},'
        '{op: "wait", condition: {type: "timer", duration: "soon"}}]}}}'
    )
    assert main(["validate", str(bad), *ACT]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("itonami: ")
    assert "duration" in err and "soon" in err
    assert main(["run", str(bad), *ACT]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "soon" in err and "Traceback" not in err


def test_validate_accepts_a_good_definition(
    in_examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["validate", "subworkflow.kotoba", *ACT, "--workflow", "order_processing.kotoba"]
    assert main(argv) == EXIT_OK
    assert capsys.readouterr().out.startswith("ok: process_batch 1.0.0 (")


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "no-such-id"],
        ["history", "no-such-id"],
        ["verify", "no-such-id"],
        ["state", "no-such-id"],
        ["resume", "no-such-id"],
        ["cancel", "no-such-id"],
        ["export", "no-such-id", "-o", "x.json"],
        ["signal", "no-such-id", "approved", "{}"],
    ],
)
def test_an_unknown_execution_exits_1(
    in_examples: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    asyncio.run(_empty_store(in_examples / "inproc.db"))
    assert main(argv) == EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.err.startswith("itonami: ") and "no execution 'no-such-id'" in captured.err
    assert "Traceback" not in captured.err


async def _empty_store(path: Path) -> None:
    async with open_storage(f"sqlite:///{path}"):
        pass


def test_argument_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == EXIT_USAGE
    assert "Missing argument 'FILE'" in capsys.readouterr().err
    assert main(["list", "--nope"]) == EXIT_USAGE
    assert "No such option: --nope" in capsys.readouterr().err


def test_storage_url_takes_urls_and_plain_paths(tmp_path: Path) -> None:
    assert storage_url("memory") == "memory"
    assert storage_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert storage_url(str(tmp_path / "a.db")) == f"sqlite:///{tmp_path}/a.db"
    assert storage_url("rel.db").startswith("sqlite:////") and storage_url("rel.db").endswith(
        "/rel.db"
    )


# ------------------------------------------------------------------ scoping


@given(st.dictionaries(st.integers(0, 12), st.integers(0, 12)), st.sets(st.integers(0, 12)))
def test_descends_is_reaching_a_root_through_parents(
    parent_of: dict[int, int], roots: set[int]
) -> None:
    parents: dict[str, str | None] = {str(k): str(v) for k, v in parent_of.items()}
    names = {str(r) for r in roots}
    for node in map(str, range(13)):
        chain, current = [], node
        while current is not None and current not in chain:
            chain.append(current)
            current = parents.get(current)
        assert descends(node, names, parents) == any(c in names for c in chain)


def test_a_command_resumes_only_what_it_names(tmp_path: Path) -> None:
    """Two waiting executions; signalling one leaves the other exactly as it was."""
    db = tmp_path / "two.db"
    ids = []
    for expense in ("E-1", "E-2"):
        r = itonami(
            "run", "wait_signal.kotoba", *ACT, "--input", f'{{"expenseId": "{expense}"}}',
            "--timeout", "0.5", "--json", db=db,
        )  # fmt: skip
        assert r.code == EXIT_RUNNING, r.err
        ids.append(r.json()["execution_id"])
    before = itonami("status", ids[1], "--json", db=db).json()

    plan = asyncio.run(plan_resume(storage_url(str(db)), {ids[0]}, _registry_of_examples()))
    assert plan[0] == {ids[0]}
    assert {ir.id for ir in plan[1]} == {"expense_approval"}

    done = itonami("signal", ids[0], "approved", '{"approver": "zoe"}', *ACT, "--json", db=db)
    assert done.code == EXIT_OK, done.err
    assert done.json()["outputs"] == {"paid": "E-1", "approved_by": "zoe"}
    assert itonami("status", ids[1], "--json", db=db).json() == before


def _registry_of_examples() -> ActivityRegistry:
    from itonami.cli import load_registry

    saved = list(sys.path)
    try:
        return load_registry(str(EXAMPLES / "example_activities.py"))
    finally:
        sys.path[:] = saved


# ------------------------------------------------------------------ two-step flows


def test_signal_in_a_later_process_finishes_a_waiting_execution(tmp_path: Path) -> None:
    db = tmp_path / "flow.db"
    r = itonami("run", "wait_signal.kotoba", *ACT, "--input", '{"expenseId": "EXP-1"}',
                "--timeout", "0.5", db=db)  # fmt: skip
    assert r.code == EXIT_RUNNING
    eid = r.out.splitlines()[0].split(": ", 1)[1]
    assert "status:    running" in r.out
    assert f"itonami resume {eid}" in r.err

    status = itonami("status", eid, db=db)
    assert status.code == EXIT_OK and status.err == ""
    assert re.search(r"^  approval +waiting$", status.out, re.M)

    # Without the activities, the signal is delivered through the store and
    # nothing runs: whoever runs the execution (here: a later resume) acts on it.
    queued = itonami("signal", eid, "approved", '{"approver": "amy"}', db=db)
    assert queued.code == EXIT_OK, queued.err
    assert queued.out.startswith(f"delivered to {eid}")
    state = itonami("status", eid, "--json", db=db).json()
    assert state["status"] == "running"
    assert state["signals"] == {"approved": [{"approver": "amy"}]}

    resumed = itonami("resume", eid, *ACT, "--json", db=db)
    assert resumed.code == EXIT_OK, resumed.err
    assert resumed.json()["outputs"] == {"paid": "EXP-1", "approved_by": "amy"}

    late = itonami("signal", eid, "approved", "{}", *ACT, db=db)
    assert late.code == EXIT_USAGE
    assert "is completed; it takes no more signals" in late.err
    again = itonami("resume", eid, db=db)  # a finished execution: just its result
    assert again.code == EXIT_OK and '"approved_by": "amy"' in again.out


def test_a_failed_execution_exits_1_and_resume_says_so(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    r = itonami("run", "activity.kotoba", *ACT, "--input", '{"email": "x"}', db=db)
    assert r.code == EXIT_FAILED
    assert "status:    failed" in r.out and '"type": "InvalidAddress"' in r.out
    eid = r.out.splitlines()[0].split(": ", 1)[1]
    assert itonami("resume", eid, db=db).code == EXIT_FAILED


def test_itonami_db_is_the_default_store(tmp_path: Path) -> None:
    db = tmp_path / "env.db"
    r = itonami("run", "sequence.kotoba", *ACT, "--input", '{"userId": "q"}', "--json", db=db)
    assert r.code == EXIT_OK and db.is_file()
    listed = itonami("list", "--json", db=db).json()
    assert [x["execution_id"] for x in listed["executions"]] == [r.json()["execution_id"]]
    # a read command does not create the database it is pointed at
    other = tmp_path / "other.db"
    elsewhere = itonami("list", "--db", str(other), db=db)
    assert elsewhere.code == EXIT_FAILED and elsewhere.out == ""
    assert elsewhere.err == f"itonami: no database at {other} (--db, $ITONAMI_DB)\n"
    assert not other.exists()


def test_verify_reports_a_damaged_chain(tmp_path: Path) -> None:
    db = tmp_path / "v.db"
    r = itonami("run", "sequence.kotoba", *ACT, "--input", '{"userId": "q"}', "--json", db=db)
    eid = r.json()["execution_id"]

    import sqlite3

    con = sqlite3.connect(db)
    con.execute(
        "UPDATE events SET hash = zeroblob(32) WHERE execution_id = ? AND version = 3", (eid,)
    )
    con.commit()
    con.close()
    bad = itonami("verify", eid, db=db)
    assert bad.code == EXIT_FAILED
    assert bad.err.startswith(f"itonami: {eid} does NOT verify: ")
    assert "Traceback" not in bad.err


def test_installed_console_script_runs_a_workflow(tmp_path: Path) -> None:
    """The `itonami` command a `pip install` puts beside the interpreter."""
    script = Path(sys.executable).parent / "itonami"
    if not script.exists():
        found = shutil.which("itonami")
        if found is None:
            pytest.skip("itonami is imported from the source tree, not installed")
        script = Path(found)
    proc = subprocess.run(
        [
            str(script),
            "--db",
            str(tmp_path / "s.db"),
            "run",
            "order_processing.kotoba",
            "--activities",
            "order_activities.py",
            "--input",
            '{"orderId": "ORD-9", "customerId": "C", "amount": 5}',
        ],
        cwd=EXAMPLES,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert "status:    completed" in proc.stdout
