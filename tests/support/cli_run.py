"""Run the ``itonami`` CLI in a subprocess, as a user would (tests/cli, tests/examples)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def cli_env(db: Path | None = None) -> dict[str, str]:
    """The parent's environment with ``PYTHONPATH`` made absolute (the CLI may run
    in another folder) and ``ITONAMI_DB`` pointing at ``db``."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in paths)
    if db is not None:
        env["ITONAMI_DB"] = str(db)
    return env


@dataclass
class Result:
    """A finished CLI invocation."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return orjson.loads(self.out)

    def lines(self) -> list[Any]:
        return [orjson.loads(line) for line in self.out.splitlines() if line.strip()]


def itonami(*args: str, db: Path | None = None, cwd: Path = EXAMPLES) -> Result:
    """``python -m itonami.cli ARGS`` in ``cwd`` with ``ITONAMI_DB=db``."""
    proc = subprocess.run(
        [sys.executable, "-m", "itonami.cli", *args],
        cwd=cwd,
        env=cli_env(db),
        capture_output=True,
        text=True,
        timeout=90,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
