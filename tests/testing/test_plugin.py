"""The pytest plugin in a user's project, and the kit's types under ``mypy --strict``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

HERE = Path(__file__).parent
USER_TEST = HERE / "user_project" / "test_user_workflow.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Run against the same itonami as this process (the source tree or the wheel).
    import itonami

    env["PYTHONPATH"] = str(Path(itonami.__file__).parent.parent)
    return env


def _installed() -> bool:
    return any(ep.name == "itonami" for ep in entry_points(group="pytest11"))


def test_the_plugin_runs_a_users_tests_in_strict_asyncio_mode(tmp_path: Path) -> None:
    shutil.copy(USER_TEST, tmp_path / "test_user_workflow.py")
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\naddopts = --strict-markers\n"
    )
    # Installed, the entry point loads the plugin; from a source tree, -p does.
    load = [] if _installed() else ["-p", "itonami.testing.pytest_plugin"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *load],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_a_users_test_file_is_clean_under_mypy_strict(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(USER_TEST),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
