"""`itonami worker --loop`: the worker node runs on asyncio's loop or on uvloop."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import cli_env, itonami

from itonami import LeastLoadedBalancer, WorkflowEngine, WorkflowIR

ACTIVITIES = """
from itonami import ActivityRegistry

registry = ActivityRegistry()


@registry.activity("double")
def double(n: int) -> dict:
    return {"n": n * 2}
"""

IR = WorkflowIR.from_dict(
    {
        "workflow": {
            "id": "twice",
            "name": "twice",
            "version": "1",
            "strategy": {
                "op": "seq",
                "id": "s",
                "strategies": [
                    {
                        "op": "activity",
                        "id": "one",
                        "activity_ref": "double",
                        "input_mapping": {"n": "$.inputs.n"},
                    },
                    {
                        "op": "activity",
                        "id": "two",
                        "activity_ref": "double",
                        "input_mapping": {"n": "$.steps.one.output.n"},
                    },
                ],
            },
        }
    }
)

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


@pytest.mark.parametrize(
    "loop",
    [
        "asyncio",
        pytest.param(
            "uvloop", marks=pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed")
        ),
    ],
)
async def test_a_worker_runs_workflows_on_the_loop_it_was_given(tmp_path: Path, loop: str) -> None:
    app = tmp_path / "twice.py"
    app.write_text(ACTIVITIES)
    db = f"sqlite:///{tmp_path}/cluster.db"
    with subprocess.Popen(
        [sys.executable, "-m", "itonami", "--db", db, "worker", "--activities", str(app),
         "--node-id", "w1", "--loop", loop],
        env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stderr is not None
            announced = proc.stderr.readline()
            assert announced.startswith("itonami worker w1 on "), announced + proc.stderr.read()
            assert announced.rstrip().endswith(f"event loop: {loop}")
            client = (
                WorkflowEngine.builder()
                .with_storage(db)
                .with_recovery(False)
                .with_distributed_execution(LeastLoadedBalancer())
                .build()
            )
            async with client:
                ids = [await client.start_workflow(IR, {"n": n}) for n in range(5)]
                for n, eid in enumerate(ids):
                    assert await client.wait_for_completion(eid, timeout=30) == {"n": n * 4}
                history = await client.get_event_history(ids[0])
                assert sum(1 for e in history if e.kind == "activity_completed") == 2
        finally:
            proc.terminate()
            proc.wait(30)
    assert proc.returncode == 0


def test_an_unknown_loop_is_a_usage_error(tmp_path: Path) -> None:
    got = itonami("--db", f"sqlite:///{tmp_path}/x.db", "worker", "--loop", "tokio")
    assert got.code == 2
    assert "--loop 'tokio': choose one of auto, asyncio, uvloop" in got.err


def test_uvloop_asked_for_but_missing_names_the_extra(tmp_path: Path) -> None:
    # A sitecustomize that hides uvloop, as on a machine without it.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['uvloop'] = None\n")
    env = cli_env()
    env["PYTHONPATH"] = str(hide) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "itonami", "--db", f"sqlite:///{tmp_path}/x.db", "worker",
         "--loop", "uvloop"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--loop uvloop needs the uvloop package: pip install 'itonami[uvloop]'" in proc.stderr
    assert "Traceback" not in proc.stderr and "never awaited" not in proc.stderr
