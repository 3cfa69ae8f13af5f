"""The installed distribution: what `import itonami` loads, and the package metadata."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

# Loaded where they are used (HTTP calls, PostgreSQL, the CLI, the web UI),
# never by `import itonami` itself. `cel` and `jsonpath_rfc9535` were the
# expression packages before the core took expressions over: nothing may
# load them now.
LAZY = (
    "httpx",
    "cel",
    "psycopg",
    "jsonpath_rfc9535",
    "prompt_toolkit",
    "typer",
    "rich",
    "starlette",
    "uvicorn",
    "jinja2",
    "playwright",
)
# What the pytest plugin may load when every pytest run imports it.
PLUGIN_LIGHT = ("itonami.engine", "itonami.dsl", "itonami.activities", "itonami.storage", "orjson")


def loaded_after(code: str) -> set[str]:
    """The LAZY top-level packages in ``sys.modules`` after running ``code`` afresh."""
    probe = f"""
import json, sys
{code}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({list(LAZY)!r}))))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout))


def test_import_itonami_loads_no_optional_or_heavy_dependency() -> None:
    assert loaded_after("import itonami") == set()


def test_the_pytest_plugin_imports_nothing_heavy() -> None:
    probe = (
        "import json, sys; import itonami.testing.pytest_plugin; "
        f"print(json.dumps([m for m in {list(PLUGIN_LIGHT)!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_lazy_names_still_import_as_before() -> None:
    import itonami

    assert itonami.WorkflowEngine.__module__ == "itonami.engine.engine"
    assert set(itonami.__all__) <= set(dir(itonami))
    from itonami.testing import WorkflowEnvironment, replay

    assert callable(replay) and WorkflowEnvironment.__name__ == "WorkflowEnvironment"
    with pytest.raises(AttributeError):
        _ = itonami.no_such_name  # type: ignore[attr-defined]


MYPY_USER_CODE = """
from itonami import WorkflowEngine, WorkflowIR

def run(ir: WorkflowIR) -> str:
    with WorkflowEngine.builder().with_storage("memory").build_sync() as engine:
        eid = engine.start_workflow(ir, {"x": 1})
        outputs: dict[str, object] = engine.wait_for_completion(eid)
        assert engine.delete_execution(eid)
        return eid + str(outputs)

def wrong(ir: WorkflowIR) -> int:
    with WorkflowEngine.builder().build_sync() as engine:
        return engine.start_workflow(ir)
"""


def test_build_sync_is_typed_for_mypy_strict_user_code(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    user = tmp_path / "user_code.py"
    user.write_text(MYPY_USER_CODE)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(user)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    # Exactly the one wrong return: a str is not an int. Were build_sync()
    # typed Any, mypy would report nothing.
    assert proc.stdout.count("error:") == 1, proc.stdout
    assert 'Incompatible return value type (got "str", expected "int")' in proc.stdout


def test_engine_storage_and_http_activity_setup_stay_light() -> None:
    code = """
import itonami
from itonami import HttpActivity, WorkflowEngine, open_storage
HttpActivity("h", "https://api.example.com/x")
open_storage("memory")
WorkflowEngine.builder()
"""
    assert loaded_after(code) == set()


@pytest.mark.parametrize(
    ("code", "needed"),
    [
        ("import itonami.storage.postgres", {"psycopg"}),
        ("import itonami.ui", {"starlette", "jinja2"}),
    ],
)
def test_each_dependency_loads_when_first_used(code: str, needed: set[str]) -> None:
    assert needed <= loaded_after(code)


def test_expressions_run_in_the_core_and_load_no_package() -> None:
    code = """
from itonami.dsl import Condition, JsonPath
assert Condition("a.b > 1").evaluate({"a": {"b": 2}})
assert JsonPath("$.a[*]").find_all({"a": [1, 2]}) == [1, 2]
"""
    assert loaded_after(code) == set()


def test_the_cli_loads_the_web_ui_only_to_serve() -> None:
    loaded = loaded_after("import itonami.cli; itonami.cli.build_app()")
    assert not loaded & {"starlette", "uvicorn", "jinja2", "playwright"}


def test_the_wheel_ships_the_web_ui_templates_and_static_files() -> None:
    names = {str(f) for f in metadata.files("itonami") or []}
    for name in (
        "itonami/ui/templates/base.html",
        "itonami/ui/templates/execution.html",
        "itonami/ui/static/style.css",
        "itonami/ui/static/itonami.js",
    ):
        assert name in names


def test_license_files_and_expression() -> None:
    meta = metadata.metadata("itonami")
    assert meta["License-Expression"] == "MIT OR Apache-2.0"
    assert sorted(meta.get_all("License-File") or []) == ["LICENSE-APACHE", "LICENSE-MIT"]
    files = {f.name: f for f in metadata.files("itonami") or [] if f.name.startswith("LICENSE")}
    assert "Permission is hereby granted" in files["LICENSE-MIT"].read_text()
    assert "Apache License" in files["LICENSE-APACHE"].read_text()


def test_classifiers_name_every_supported_python() -> None:
    meta = metadata.metadata("itonami")
    classifiers = set(meta.get_all("Classifier") or [])
    minors = {
        c.rsplit(" ", 1)[1]
        for c in classifiers
        if c.startswith("Programming Language :: Python :: 3.")
    }
    assert minors == {"3.11", "3.12", "3.13"}
    assert meta["Requires-Python"] == ">=3.11"


def test_project_urls() -> None:
    urls = dict(u.split(", ", 1) for u in metadata.metadata("itonami").get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Changelog"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())


def test_every_dependency_has_an_upper_bound() -> None:
    requirements = metadata.requires("itonami") or []
    assert requirements
    unbounded = [r for r in requirements if "<" not in r.split(";")[0]]
    assert unbounded == []
