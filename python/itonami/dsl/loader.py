"""Loading workflow sources: ``.kotoba`` (Jsonnet) files and strings, and JSON.

Jsonnet imports (``import``, ``importstr``, ``importbin``) are confined: a
file may import only files inside the importing workflow's own folder or one
of the configured ``library_paths``. Candidates are resolved to real paths
first, so absolute paths, ``../`` escapes and symlinks that point outside
those folders all fail with an error naming the import. Relative imports are
looked up next to the importing file, then in each library path in order.

Sources are limited to :data:`MAX_SOURCE_BYTES` (the main file and each
import), Jsonnet output to :data:`MAX_OUTPUT_BYTES`, and evaluation to a
stack depth of :data:`MAX_STACK`, an address space of
:data:`MAX_EVAL_MEMORY_BYTES` and :data:`MAX_EVAL_SECONDS` of time: Jsonnet
runs in a child process (see ``_jsonnet_worker``), so a definition that
exhausts memory or never ends fails with a :class:`WorkflowDefinitionError`
naming the limit while the host process carries on.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import json.decoder
import json.scanner
import marshal
import math
import os
import re
import signal
import subprocess
import sys
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from itonami.errors import Problem, WorkflowDefinitionError

from . import _jsonnet_worker
from ._jsonnet_worker import ImportGuard

__all__ = [
    "MAX_EVAL_MEMORY_BYTES",
    "MAX_EVAL_SECONDS",
    "MAX_OUTPUT_BYTES",
    "MAX_SOURCE_BYTES",
    "MAX_STACK",
    "evaluate_jsonnet_file",
    "evaluate_jsonnet_string",
    "load_json",
]

# The standard library's pure-Python JSON scanner pieces (not in its stubs).
_py_make_scanner: Any = getattr(json.scanner, "py_make_scanner")  # noqa: B009
_json_object: Any = getattr(json.decoder, "JSONObject")  # noqa: B009
_json_array: Any = getattr(json.decoder, "JSONArray")  # noqa: B009

#: Largest source file (main file or import) the loader reads.
MAX_SOURCE_BYTES = 1024 * 1024
#: Largest JSON document Jsonnet evaluation may produce.
MAX_OUTPUT_BYTES = 4 * 1024 * 1024
#: Jsonnet's maximum stack depth (function calls and nested objects).
MAX_STACK = 256
#: Address space the Jsonnet evaluation (a child process) may use.
MAX_EVAL_MEMORY_BYTES = 1024 * 1024 * 1024
#: Wall-clock (and CPU) seconds the Jsonnet evaluation may take.
MAX_EVAL_SECONDS = 10.0


def _fail(source: str, message: str, line: int | None = None) -> WorkflowDefinitionError:
    return WorkflowDefinitionError([Problem(source, message, line)], source=source)


def _read_limited(path: str, *, what: str) -> bytes:
    return _jsonnet_worker.read_limited(path, what=what, limit=MAX_SOURCE_BYTES)


def _jsonnet_args(
    ext_vars: Mapping[str, str] | None, tla: Mapping[str, Any] | None, source: str
) -> dict[str, Any]:
    ext = {}
    for key, value in (ext_vars or {}).items():
        if not isinstance(value, str):
            raise _fail(source, f"ext_var {key!r} must be a string, got {type(value).__name__}")
        ext[key] = value
    tla_vars: dict[str, str] = {}
    tla_codes: dict[str, str] = {}
    for key, value in (tla or {}).items():
        if isinstance(value, str):
            tla_vars[key] = value
        else:
            try:
                # JSON is valid Jsonnet, so non-strings cross as code.
                tla_codes[key] = orjson.dumps(value).decode()
            except TypeError as exc:
                raise _fail(source, f"tla {key!r} is not JSON-serialisable: {exc}") from None
    return {
        "ext_vars": ext,
        "tla_vars": tla_vars,
        "tla_codes": tla_codes,
        "max_stack": MAX_STACK,
        "max_trace": 20,
    }


def _jsonnet_error(exc: RuntimeError, filename: str) -> WorkflowDefinitionError:
    message = str(exc).strip()
    line = None
    match = re.search(rf"(?:^|\s){re.escape(filename)}:(\d+):", message)
    if match:
        line = int(match.group(1))
    return _fail(filename, message, line)


def _evaluate(snippet_name: str, text: str, guard: ImportGuard, args: dict[str, Any]) -> str:
    """Jsonnet output of ``text``, evaluated in a child process under the limits.

    ``RuntimeError`` carries a Jsonnet error (as the in-process binding
    raises it); a breached limit is a :class:`WorkflowDefinitionError`.
    """
    if _binding_dir() is None:
        raise _fail(snippet_name, "the jsonnet package is not installed")
    request = {
        "filename": snippet_name,
        "text": text,
        "roots": guard.roots,
        "libraries": guard.libraries,
        "max_source": MAX_SOURCE_BYTES,
        "max_output": MAX_OUTPUT_BYTES,
        "max_memory": MAX_EVAL_MEMORY_BYTES,
        "max_cpu_seconds": max(1, math.ceil(MAX_EVAL_SECONDS)),
        "args": args,
        "binding_dir": _binding_dir(),
    }
    try:
        child = subprocess.run(
            [sys.executable, "-I", _jsonnet_worker.__file__],
            input=marshal.dumps(request),
            stdout=subprocess.PIPE,
            # inherited, as in-process evaluation had it: std.trace output goes
            # to the host's stderr instead of piling up in its memory
            stderr=None,
            timeout=MAX_EVAL_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _fail(
            snippet_name,
            f"Jsonnet evaluation took longer than the limit of {MAX_EVAL_SECONDS:g} seconds",
        ) from None
    except OSError as exc:
        raise _fail(snippet_name, f"cannot start the Jsonnet evaluation: {exc}") from None
    if child.returncode != 0 or not child.stdout:
        raise _fail(snippet_name, _death(child.returncode))
    # marshal, not JSON: see _jsonnet_worker; the reply is what our own child wrote
    reply = marshal.loads(child.stdout)
    if "error" in reply:
        raise RuntimeError(reply["error"])
    if "too_large" in reply:
        raise _fail(
            snippet_name,
            f"Jsonnet output is {reply['too_large']} bytes, over the limit of {MAX_OUTPUT_BYTES}",
        )
    output: str = reply["output"]
    return output


@functools.cache
def _binding_dir() -> str | None:
    """The folder this process imports the Jsonnet binding from."""
    spec = importlib.util.find_spec("_jsonnet")
    origin = spec.origin if spec is not None else None
    return os.path.dirname(origin) if origin else None


def _death(returncode: int) -> str:
    """What a child that sent no reply ran into."""
    memory = (
        "Jsonnet evaluation ran out of memory (the limit is "
        f"{MAX_EVAL_MEMORY_BYTES // (1024 * 1024)} MiB of address space)"
    )
    if returncode == _jsonnet_worker.EXIT_NO_MEMORY or returncode in (
        -signal.SIGABRT,
        -signal.SIGSEGV,
        -signal.SIGBUS,
    ):
        return memory
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return f"Jsonnet evaluation used more than the limit of {MAX_EVAL_SECONDS:g} CPU seconds"
    return f"Jsonnet evaluation failed (the evaluating process exited with {returncode})"


def evaluate_jsonnet_file(
    path: str | os.PathLike[str],
    *,
    ext_vars: Mapping[str, str] | None = None,
    tla: Mapping[str, Any] | None = None,
    library_paths: Sequence[str | os.PathLike[str]] = (),
) -> Any:
    """Evaluate a ``.kotoba`` file to a Python value.

    Raises :class:`WorkflowDefinitionError` for unreadable or oversized files,
    Jsonnet errors (with the line Jsonnet reports) and refused imports.
    """
    filename = os.path.abspath(os.fspath(path))
    try:
        source = _read_limited(filename, what=f"workflow file {filename}")
    except OSError as exc:
        raise _fail(filename, f"cannot read workflow file: {exc.strerror or exc}") from None
    except RuntimeError as exc:
        raise _fail(filename, str(exc)) from None
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(filename, f"workflow file is not UTF-8: {exc}") from None
    guard = ImportGuard(
        [os.path.dirname(filename)], [os.fspath(p) for p in library_paths], MAX_SOURCE_BYTES
    )
    args = _jsonnet_args(ext_vars, tla, filename)
    try:
        output = _evaluate(filename, text, guard, args)
    except RuntimeError as exc:
        raise _jsonnet_error(exc, filename) from None
    return orjson.loads(output)


def evaluate_jsonnet_string(
    text: str,
    *,
    filename: str = "<string>",
    base_dir: str | os.PathLike[str] | None = None,
    ext_vars: Mapping[str, str] | None = None,
    tla: Mapping[str, Any] | None = None,
    library_paths: Sequence[str | os.PathLike[str]] = (),
) -> Any:
    """Evaluate Jsonnet source text. Imports resolve in ``base_dir`` (when given) and
    ``library_paths``; errors as for :func:`evaluate_jsonnet_file`."""
    if len(text.encode("utf-8")) > MAX_SOURCE_BYTES:
        raise _fail(filename, f"source is larger than the limit of {MAX_SOURCE_BYTES} bytes")
    roots = [os.fspath(base_dir)] if base_dir is not None else []
    guard = ImportGuard(roots, [os.fspath(p) for p in library_paths], MAX_SOURCE_BYTES)
    # Jsonnet passes the folder of the snippet's filename to the import callback;
    # with a base_dir, anchor the snippet there so relative imports resolve in it.
    snippet_name = filename
    if base_dir is not None:
        snippet_name = os.path.join(
            os.path.realpath(os.fspath(base_dir)), os.path.basename(filename)
        )
    args = _jsonnet_args(ext_vars, tla, filename)
    try:
        output = _evaluate(snippet_name, text, guard, args)
    except RuntimeError as exc:
        raise _jsonnet_error(exc, snippet_name) from None
    return orjson.loads(output)


# ---------------------------------------------------------------------------
# JSON with line numbers


class _LineDecoder(json.JSONDecoder):
    """A JSONDecoder that records the line where each object member and array element starts.

    It drives the standard library's pure-Python scanner with wrapped
    ``parse_object`` / ``parse_array`` hooks, so the grammar is still the
    standard library's; only positions are noted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.positions: dict[int, Any] = {}
        self.line_starts: list[int] = [0]
        self.parse_object = self._object
        self.parse_array = self._array
        self.scan_once = _py_make_scanner(self)

    def _line(self, index: int) -> int:
        return bisect_right(self.line_starts, index)

    def _recording(self, scan_once: Any, starts: list[int]) -> Any:
        def scan(string: str, idx: int) -> Any:
            starts.append(idx)
            return scan_once(string, idx)

        return scan

    def _object(self, s_and_end: tuple[str, int], strict: bool, scan_once: Any, *rest: Any) -> Any:
        starts: list[int] = []
        pairs, end = _json_object(
            s_and_end, strict, self._recording(scan_once, starts), None, list, {}
        )
        result = {}
        lines = {}
        for (key, value), start in zip(pairs, starts, strict=True):
            result[key] = value
            lines[key] = self._line(start)
        self.positions[id(result)] = (result, self._line(s_and_end[1] - 1), lines)
        return result, end

    def _array(self, s_and_end: tuple[str, int], scan_once: Any) -> Any:
        starts: list[int] = []
        values, end = _json_array(s_and_end, self._recording(scan_once, starts))
        self.positions[id(values)] = (
            values,
            self._line(s_and_end[1] - 1),
            [self._line(i) for i in starts],
        )
        return values, end

    def decode(self, s: str, _w: Any = None) -> Any:
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", s)]
        return super().decode(s)


def _path_lines(decoder: _LineDecoder, value: Any, path: str, out: dict[str, int]) -> None:
    entry = decoder.positions.get(id(value))
    if entry is None or entry[0] is not value:
        return
    _, own, lines = entry
    out.setdefault(path, own)
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}"
            out[sub] = lines[key]
            _path_lines(decoder, item, sub, out)
    else:
        for i, item in enumerate(value):
            sub = f"{path}[{i}]"
            out[sub] = lines[i]
            _path_lines(decoder, item, sub, out)


def load_json(source: str | bytes | os.PathLike[str]) -> tuple[Any, dict[str, int], str]:
    """Parse JSON text, bytes or a file; returns ``(data, lines, source name)``.

    ``lines`` maps document paths (``workflow.strategy.strategies[1]``) to the
    source line where that value starts. A ``str`` that does not start with
    ``{`` (after whitespace) is taken as a file path.
    """
    name = "<json>"
    if isinstance(source, os.PathLike) or (
        isinstance(source, str) and not source.lstrip().startswith("{")
    ):
        name = os.fspath(source)
        try:
            raw = _read_limited(name, what=f"workflow file {name}")
        except OSError as exc:
            raise _fail(name, f"cannot read workflow file: {exc.strerror or exc}") from None
        except RuntimeError as exc:
            raise _fail(name, str(exc)) from None
    elif isinstance(source, bytes):
        raw = source
    else:
        raw = source.encode("utf-8")
    if len(raw) > MAX_SOURCE_BYTES * 4:
        raise _fail(name, f"JSON source is larger than the limit of {MAX_SOURCE_BYTES * 4} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _fail(name, f"JSON source is not UTF-8: {exc}") from None
    decoder = _LineDecoder()
    try:
        data = decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise _fail(name, f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
    except RecursionError:
        raise _fail(name, "JSON nesting is too deep") from None
    lines: dict[str, int] = {}
    if isinstance(data, dict):
        if "workflow" in data and "strategy" not in data:
            _path_lines(decoder, data, "", lines)
            lines = {k.lstrip("."): v for k, v in lines.items() if k}
        else:
            _path_lines(decoder, data, "workflow", lines)
    return data, lines, name
