"""Jsonnet loading: import confinement, ext_vars / tla, errors with lines, limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dsl_helpers import EXAMPLES, FIXTURES

from itonami.dsl import MAX_SOURCE_BYTES, WaitNode, WorkflowIR
from itonami.errors import WorkflowDefinitionError

WF = """
local lib = import "%s";
{ workflow: { id: "w", name: "n", version: "1", strategy: lib } }
"""
STEP = '{ op: "activity", activity_ref: "imported" }'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(fn) -> str:
    with pytest.raises(WorkflowDefinitionError) as info:
        fn()
    return str(info.value)


def test_imports_from_own_folder_and_library_path() -> None:
    ir = WorkflowIR.from_jsonnet(
        FIXTURES / "wf" / "uses_lib.kotoba", library_paths=[FIXTURES / "lib"]
    )
    assert ir.name == "Imported name"
    assert ir.strategy.id == "only" and ir.activity_refs() == {"do_it"}


def test_library_import_fails_without_library_path() -> None:
    message = error_of(lambda: WorkflowIR.from_jsonnet(FIXTURES / "wf" / "uses_lib.kotoba"))
    assert "steps.libsonnet" in message and "not found" in message


def test_subfolder_import_is_allowed(tmp_path: Path) -> None:
    write(tmp_path / "parts" / "step.libsonnet", STEP)
    main = write(tmp_path / "main.kotoba", WF % "parts/step.libsonnet")
    assert WorkflowIR.from_jsonnet(main).activity_refs() == {"imported"}


def test_absolute_import_outside_is_refused(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside" / "step.libsonnet", STEP)
    main = write(tmp_path / "wf" / "main.kotoba", WF % outside)
    message = error_of(lambda: WorkflowIR.from_jsonnet(main))
    assert "outside the workflow's folder" in message


def test_absolute_import_inside_is_allowed(tmp_path: Path) -> None:
    inside = write(tmp_path / "wf" / "step.libsonnet", STEP)
    main = write(tmp_path / "wf" / "main.kotoba", WF % inside)
    assert WorkflowIR.from_jsonnet(main).activity_refs() == {"imported"}


def test_dotdot_escape_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "secret.libsonnet", STEP)
    main = write(tmp_path / "wf" / "main.kotoba", WF % "../secret.libsonnet")
    message = error_of(lambda: WorkflowIR.from_jsonnet(main))
    assert "../secret.libsonnet" in message and "outside" in message


def test_dotdot_escape_from_library_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "secret.libsonnet", STEP)
    write(tmp_path / "lib" / "helper.libsonnet", 'import "../secret.libsonnet"')
    main = write(tmp_path / "wf" / "main.kotoba", WF % "helper.libsonnet")
    message = error_of(lambda: WorkflowIR.from_jsonnet(main, library_paths=[tmp_path / "lib"]))
    assert "outside" in message


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    target = write(tmp_path / "outside" / "step.libsonnet", STEP)
    (tmp_path / "wf").mkdir()
    os.symlink(target, tmp_path / "wf" / "link.libsonnet")
    main = write(tmp_path / "wf" / "main.kotoba", WF % "link.libsonnet")
    message = error_of(lambda: WorkflowIR.from_jsonnet(main))
    assert "link.libsonnet" in message and "outside" in message


def test_symlink_inside_is_allowed(tmp_path: Path) -> None:
    target = write(tmp_path / "wf" / "real" / "step.libsonnet", STEP)
    os.symlink(target, tmp_path / "wf" / "link.libsonnet")
    main = write(tmp_path / "wf" / "main.kotoba", WF % "link.libsonnet")
    assert WorkflowIR.from_jsonnet(main).activity_refs() == {"imported"}


def test_importstr_is_confined_too(tmp_path: Path) -> None:
    write(tmp_path / "secret.txt", "s3cret")
    main = write(
        tmp_path / "wf" / "main.kotoba",
        '{ workflow: { id: importstr "../secret.txt", name: "n", version: "1",'
        ' strategy: { op: "activity", activity_ref: "a" } } }',
    )
    assert "outside" in error_of(lambda: WorkflowIR.from_jsonnet(main))


def test_string_source_imports_only_from_base_dir(tmp_path: Path) -> None:
    write(tmp_path / "step.libsonnet", STEP)
    text = WF % "step.libsonnet"
    assert "not allowed" in error_of(lambda: WorkflowIR.from_jsonnet_string(text))
    ir = WorkflowIR.from_jsonnet_string(text, base_dir=tmp_path)
    assert ir.activity_refs() == {"imported"}
    ir = WorkflowIR.from_jsonnet_string(text, library_paths=[tmp_path])
    assert ir.activity_refs() == {"imported"}


def test_ext_vars_and_tla() -> None:
    text = """
    function(attempts, delay="PT1S", tags=[]) {
      workflow: {
        id: std.extVar("env") + "_wf", name: std.join(",", tags), version: "1",
        strategy: { op: "activity", activity_ref: "a",
                    retry_policy: { maximum_attempts: attempts, initial_interval: delay } },
      },
    }
    """
    ir = WorkflowIR.from_jsonnet_string(
        text, ext_vars={"env": "prod"}, tla={"attempts": 5, "delay": "PT0.25S", "tags": ["x", "y"]}
    )
    assert ir.id == "prod_wf" and ir.name == "x,y"
    assert ir.strategy.retry_policy.maximum_attempts == 5  # type: ignore[attr-defined]
    assert ir.strategy.retry_policy.initial_interval == 0.25  # type: ignore[attr-defined]
    message = error_of(lambda: WorkflowIR.from_jsonnet_string(text, tla={"attempts": 1}))
    assert "undefined external variable: env" in message and "line 4" in message


def test_tla_on_a_file() -> None:
    ir = WorkflowIR.from_jsonnet(EXAMPLES / "wait_timer.kotoba", tla={"delay": "PT2H"})
    node = ir.node_at("0/0")
    assert isinstance(node, WaitNode) and node.duration == 7200.0


def test_bad_ext_var_type() -> None:
    assert "must be a string" in error_of(
        lambda: WorkflowIR.from_jsonnet_string("{}", ext_vars={"x": 1})  # type: ignore[dict-item]
    )


def test_jsonnet_errors_report_lines(tmp_path: Path) -> None:
    runtime = write(
        tmp_path / "runtime.kotoba", '{\n  workflow: {\n    id: error "no id",\n  },\n}\n'
    )
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowIR.from_jsonnet(runtime)
    (problem,) = info.value.problems
    assert problem.line == 3 and "no id" in problem.message
    static = write(tmp_path / "static.kotoba", "{\n  a: 1\n  b: 2,\n}\n")
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowIR.from_jsonnet(static)
    assert info.value.problems[0].line == 3 and "STATIC ERROR" in info.value.problems[0].message


def test_string_errors_report_lines() -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowIR.from_jsonnet_string("{\n\n  a: 1 +,\n}", filename="inline.kotoba")
    assert info.value.problems[0].line == 3


def test_missing_file() -> None:
    assert "cannot read workflow file" in error_of(
        lambda: WorkflowIR.from_jsonnet("/nonexistent/wf.kotoba")
    )


def test_source_size_limit(tmp_path: Path) -> None:
    big = write(tmp_path / "big.kotoba", "{ a: '" + "x" * MAX_SOURCE_BYTES + "' }")
    assert "larger than the limit" in error_of(lambda: WorkflowIR.from_jsonnet(big))
    write(tmp_path / "big.libsonnet", "'" + "x" * MAX_SOURCE_BYTES + "'")
    main = write(tmp_path / "main.kotoba", 'import "big.libsonnet"')
    assert "larger than the limit" in error_of(lambda: WorkflowIR.from_jsonnet(main))


def test_output_size_limit() -> None:
    text = "{ a: std.repeat(['" + "x" * 1000 + "'], 5000) }"
    assert "over the limit" in error_of(lambda: WorkflowIR.from_jsonnet_string(text))


def test_stack_limit() -> None:
    text = "local f(n) = if n == 0 then 0 else 1 + f(n - 1); { a: f(100000) }"
    assert "max stack frames exceeded" in error_of(lambda: WorkflowIR.from_jsonnet_string(text))


def test_from_json_accepts_text_bytes_and_paths(tmp_path: Path) -> None:
    ir = WorkflowIR.from_jsonnet(EXAMPLES / "saga.kotoba")
    data = ir.to_json()
    path = tmp_path / "saga.json"
    path.write_bytes(data)
    assert WorkflowIR.from_json(data) == ir
    assert WorkflowIR.from_json(data.decode()) == ir
    assert WorkflowIR.from_json(path) == ir
    assert WorkflowIR.from_json(str(path)) == ir
