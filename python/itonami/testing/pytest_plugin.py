"""pytest fixtures for testing workflows (registered as the ``itonami`` plugin).

- ``itonami_env``: a started :class:`~itonami.testing.WorkflowEnvironment`
  (memory storage, test clock, automatic time skipping), closed after the
  test. ``@pytest.mark.itonami(storage="sqlite", ...)`` passes options to
  :meth:`~itonami.testing.WorkflowEnvironment.start_local`.
- ``itonami_activities``: the registry the environment runs (empty; override
  the fixture in a ``conftest.py`` to give your own).
- ``itonami_workflows``: definitions registered at start (none; override it
  likewise).

``itonami_env`` is an async fixture and needs pytest-asyncio. This module
imports nothing of itonami until a fixture is used, so installing the
package costs a test run that does not use it nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from itonami import ActivityRegistry, WorkflowIR
    from itonami.testing import WorkflowEnvironment

try:
    import pytest_asyncio
except ImportError:  # the async fixture explains itself when used
    pytest_asyncio = None  # type: ignore[assignment]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "itonami(**options): options for the itonami_env fixture "
        "(WorkflowEnvironment.start_local keywords, e.g. storage='sqlite')",
    )


@pytest.fixture
def itonami_activities() -> ActivityRegistry:
    """The activities ``itonami_env`` runs (an empty registry to fill)."""
    from itonami import ActivityRegistry

    return ActivityRegistry()


@pytest.fixture
def itonami_workflows() -> list[WorkflowIR]:
    """Definitions ``itonami_env`` registers at start (none by default)."""
    return []


async def _env(
    request: pytest.FixtureRequest,
    itonami_activities: ActivityRegistry,
    itonami_workflows: list[WorkflowIR],
) -> AsyncIterator[WorkflowEnvironment]:
    """A started workflow environment for one test (see the module docstring)."""
    from itonami.testing import WorkflowEnvironment

    options: dict[str, Any] = {}
    marker = request.node.get_closest_marker("itonami")
    if marker is not None:
        if marker.args:
            raise pytest.UsageError("@pytest.mark.itonami takes keyword options only")
        options.update(marker.kwargs)
    env = WorkflowEnvironment.start_local(
        activities=itonami_activities, workflows=itonami_workflows, **options
    )
    async with env:
        yield env


if pytest_asyncio is not None:
    itonami_env = pytest_asyncio.fixture(_env, name="itonami_env")
else:

    @pytest.fixture(name="itonami_env")
    def _no_asyncio() -> None:
        pytest.fail("the itonami_env fixture needs pytest-asyncio (pip install pytest-asyncio)")
