"""Print the derived figures of every benchmark (workflows/s, latencies, …)."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    session = terminalreporter._session
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        return
    terminalreporter.write_sep("-", "itonami figures")
    for bench in bs.benchmarks:
        if bench.extra_info:
            info = ", ".join(f"{k}={v}" for k, v in bench.extra_info.items())
            terminalreporter.write_line(f"{bench.name:<44} {info}")
