"""Shared helpers for the workflow-language tests (imported by the test modules)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from itonami.errors import WorkflowDefinitionError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def workflow(strategy: Any, **extra: Any) -> dict[str, Any]:
    """A minimal valid workflow document around ``strategy``."""
    inner = {"id": "wf", "name": "Test workflow", "version": "1", "strategy": strategy}
    inner.update(extra)
    return {"workflow": inner}


def act(ref: str = "a", **extra: Any) -> dict[str, Any]:
    """An activity node."""
    return {"op": "activity", "activity_ref": ref, **extra}


def problems_of(fn: Callable[[], Any]) -> dict[str, str]:
    """Run ``fn``, expect a WorkflowDefinitionError, and return {path: message}."""
    with pytest.raises(WorkflowDefinitionError) as info:
        fn()
    return {p.path: p.message for p in info.value.problems}
