"""Loading a definition is bounded in memory and time, and the host survives.

Each case evaluates in the child process the loader starts; the test
process itself would die (SIGABRT) or hang if evaluation ran in it.
"""

from __future__ import annotations

import time

import pytest

from itonami.dsl import loader
from itonami.dsl.loader import evaluate_jsonnet_file, evaluate_jsonnet_string
from itonami.errors import WorkflowDefinitionError


def test_a_definition_that_exhausts_memory_names_the_memory_limit(monkeypatch) -> None:
    monkeypatch.setattr(loader, "MAX_EVAL_MEMORY_BYTES", 512 * 1024 * 1024)
    with pytest.raises(WorkflowDefinitionError, match=r"out of memory.*512 MiB") as info:
        evaluate_jsonnet_string('{workflow: std.repeat("a", 1e9)}')
    assert info.value.problems[0].path == "<string>"


def test_a_definition_that_never_ends_names_the_time_limit(monkeypatch) -> None:
    monkeypatch.setattr(loader, "MAX_EVAL_SECONDS", 1.5)
    started = time.monotonic()
    with pytest.raises(WorkflowDefinitionError, match=r"limit of 1\.5 "):
        evaluate_jsonnet_string(
            "local f(n) = if n < 0 then 0 else f(n + 1) tailstrict; {workflow: f(0)}"
        )
    assert time.monotonic() - started < 5


def test_output_over_the_limit_is_refused_before_it_reaches_the_host(monkeypatch) -> None:
    monkeypatch.setattr(loader, "MAX_OUTPUT_BYTES", 1000)
    with pytest.raises(WorkflowDefinitionError, match="over the limit of 1000"):
        evaluate_jsonnet_string('{workflow: std.repeat("a", 2000)}')


def test_jsonnet_errors_keep_their_line_and_imports_stay_confined(tmp_path) -> None:
    path = tmp_path / "bad.kotoba"
    path.write_text('{\n  workflow: error "boom",\n}\n')
    with pytest.raises(WorkflowDefinitionError, match="boom") as info:
        evaluate_jsonnet_file(path)
    assert info.value.problems[0].line == 2
    escape = tmp_path / "escape.kotoba"
    escape.write_text('import "../../../../etc/passwd"')
    with pytest.raises(WorkflowDefinitionError, match="outside the workflow's folder"):
        evaluate_jsonnet_file(escape)


def test_a_normal_load_is_unchanged_and_quick(tmp_path) -> None:
    (tmp_path / "lib.libsonnet").write_text("{ n: 3 }")
    path = tmp_path / "wf.kotoba"
    path.write_text(
        'local lib = import "lib.libsonnet";\n{workflow: {n: lib.n, s: std.range(1, 3)}}'
    )
    started = time.monotonic()
    assert evaluate_jsonnet_file(path) == {"workflow": {"n": 3, "s": [1, 2, 3]}}
    # a child process costs tens of milliseconds, far below any limit
    assert time.monotonic() - started < 2
