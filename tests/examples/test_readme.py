"""The README's Python example runs as written and prints what it says."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_readme_python_example_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S)
    assert code is not None
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "order_processing.kotoba", tmp_path / "examples")
    script = tmp_path / "readme_example.py"
    script.write_text(code.group(1))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines == [
        "{'confirmationId': 'CONF-1', 'processed': True}",
        "14 completed running",
    ]
    assert (tmp_path / "orders.db").exists()
