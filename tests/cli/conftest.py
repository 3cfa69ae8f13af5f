"""Fixtures of the command-line tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import EXAMPLES


@pytest.fixture
def in_examples(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Run ``main()`` in-process from examples/, leaving sys.path and modules as found."""
    monkeypatch.chdir(EXAMPLES)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("ITONAMI_DB", str(tmp_path / "inproc.db"))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name in ("example_activities", "order_activities"):
            del sys.modules[name]
