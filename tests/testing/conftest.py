"""The test kit's own tests: the plugin is loaded even where the package is
not installed (runs from the source tree)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Installed, the entry point has registered it as "itonami" already.
    if not config.pluginmanager.has_plugin("itonami"):
        config.pluginmanager.import_plugin("itonami.testing.pytest_plugin")
