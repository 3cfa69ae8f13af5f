"""Loading workflow sources: ``.kotoba`` (Jsonnet) files and strings, and JSON.

Jsonnet imports (``import``, ``importstr``, ``importbin``) are confined: a
file may import only files inside the importing workflow's own folder or one
of the configured ``library_paths``. Candidates are resolved to real paths
first, so absolute paths, ``../`` escapes and symlinks that point outside
those folders all fail with an error naming the import. Relative imports are
looked up next to the importing file, then in each library path in order.

Sources are limited to :data:`MAX_SOURCE_BYTES` (the main file and each
import), Jsonnet output to :data:`MAX_OUTPUT_BYTES`, and evaluation to a
stack depth of :data:`MAX_STACK`.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import os
import re
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import Any

import _jsonnet  # type: ignore[import-untyped]
import orjson

from itonami.errors import Problem, WorkflowDefinitionError

__all__ = [
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


def _fail(source: str, message: str, line: int | None = None) -> WorkflowDefinitionError:
    return WorkflowDefinitionError([Problem(source, message, line)], source=source)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class _ImportGuard:
    """The Jsonnet import callback: resolves imports inside the allowed roots only."""

    def __init__(self, roots: Sequence[str], libraries: Sequence[str]) -> None:
        self.roots = [os.path.realpath(r) for r in roots]
        self.libraries = [os.path.realpath(lib) for lib in libraries]
        self.allowed = self.roots + self.libraries

    def __call__(self, base: str, rel: str) -> tuple[str, bytes]:
        if os.path.isabs(rel):
            candidates = [rel]
        else:
            candidates = [os.path.join(base, rel)] if base else []
            candidates += [os.path.join(lib, rel) for lib in self.libraries]
        if not candidates:
            raise RuntimeError(
                f"import {rel!r} is not allowed: no base folder or library path is configured"
            )
        escaped = None
        for candidate in candidates:
            real = os.path.realpath(candidate)
            if not any(_inside(real, root) for root in self.allowed):
                escaped = escaped or real
                continue
            if os.path.isfile(real):
                return real, _read_limited(real, what=f"import {rel!r}")
        if escaped is not None:
            raise RuntimeError(
                f"import {rel!r} resolves to {escaped}, outside the workflow's folder and "
                "library paths"
            )
        raise RuntimeError(f"import {rel!r} not found in the workflow's folder or library paths")


def _read_limited(path: str, *, what: str) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise RuntimeError(f"{what} is larger than the limit of {MAX_SOURCE_BYTES} bytes")
    return data


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


def _parse_output(text: str, source: str) -> Any:
    if len(text) > MAX_OUTPUT_BYTES:
        raise _fail(
            source, f"Jsonnet output is {len(text)} bytes, over the limit of {MAX_OUTPUT_BYTES}"
        )
    return orjson.loads(text)


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
    guard = _ImportGuard([os.path.dirname(filename)], [os.fspath(p) for p in library_paths])
    args = _jsonnet_args(ext_vars, tla, filename)
    try:
        output = _jsonnet.evaluate_snippet(filename, text, import_callback=guard, **args)
    except RuntimeError as exc:
        raise _jsonnet_error(exc, filename) from None
    return _parse_output(output, filename)


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
    guard = _ImportGuard(roots, [os.fspath(p) for p in library_paths])
    # Jsonnet passes the folder of the snippet's filename to the import callback;
    # with a base_dir, anchor the snippet there so relative imports resolve in it.
    snippet_name = filename
    if base_dir is not None:
        snippet_name = os.path.join(
            os.path.realpath(os.fspath(base_dir)), os.path.basename(filename)
        )
    args = _jsonnet_args(ext_vars, tla, filename)
    try:
        output = _jsonnet.evaluate_snippet(snippet_name, text, import_callback=guard, **args)
    except RuntimeError as exc:
        raise _jsonnet_error(exc, snippet_name) from None
    return _parse_output(output, filename)


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
