"""Jsonnet evaluation in a child process under memory and CPU limits.

The Jsonnet library evaluates in-process and has no limit on memory or
time: a definition such as ``std.repeat("a", 1e9)`` makes the C++ allocator
abort the whole process, and a tail-recursive loop never ends. The loader
therefore runs this file as a script in a child interpreter (by path, so
the ``itonami`` package, and with it an engine, is never imported here) and
the child sets its own address-space and CPU rlimits before it evaluates.

Protocol: one request on stdin, one reply on stdout, both ``marshal``-ed
dicts (``marshal`` is built in, where importing ``json`` would cost the child
more time than the evaluation of a typical definition); the reply is
``{"output": text}``, ``{"error": message}`` or ``{"too_large": size}``. A child that dies (out of
memory: ``SIGABRT``/``SIGSEGV``/``MemoryError``; out of CPU: ``SIGXCPU``/
``SIGKILL``) sends no reply; the parent names the limit from that.

Only built-in modules are imported at module level: the import guard
below is also what the parent-side loader imports.
"""

from __future__ import annotations

import marshal
import os
import sys

#: Exit status of a child whose evaluation ran out of memory as a Python
#: ``MemoryError`` (the C++ side aborts instead).
EXIT_NO_MEMORY = 3


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def read_limited(path: str, *, what: str, limit: int) -> bytes:
    """The bytes of ``path``; ``RuntimeError`` naming ``what`` when over ``limit``."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise RuntimeError(f"{what} is larger than the limit of {limit} bytes")
    return data


class ImportGuard:
    """The Jsonnet import callback: resolves imports inside the allowed roots only."""

    def __init__(self, roots: list[str], libraries: list[str], max_source: int) -> None:
        self.roots = [os.path.realpath(r) for r in roots]
        self.libraries = [os.path.realpath(lib) for lib in libraries]
        self.allowed = self.roots + self.libraries
        self.max_source = max_source

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
                return real, read_limited(real, what=f"import {rel!r}", limit=self.max_source)
        if escaped is not None:
            raise RuntimeError(
                f"import {rel!r} resolves to {escaped}, outside the workflow's folder and "
                "library paths"
            )
        raise RuntimeError(f"import {rel!r} not found in the workflow's folder or library paths")


def _limit_self(memory: int, cpu_seconds: int) -> None:
    try:
        import resource
    except ImportError:  # not a Unix: the parent's wall-clock timeout still applies
        return
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # SIGXCPU at the soft limit, SIGKILL one second later
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))


def main() -> int:
    """Evaluate the request on stdin and write the reply to stdout."""
    request = marshal.loads(sys.stdin.buffer.read())
    _limit_self(request["max_memory"], request["max_cpu_seconds"])
    # The child runs isolated (-I: no PYTHONPATH, no script folder on the
    # path); the folder the parent imports the binding from is added back.
    if request["binding_dir"] and request["binding_dir"] not in sys.path:
        sys.path.append(request["binding_dir"])
    import _jsonnet  # type: ignore[import-untyped]

    guard = ImportGuard(request["roots"], request["libraries"], request["max_source"])
    reply: dict[str, str | int]
    try:
        output = _jsonnet.evaluate_snippet(
            request["filename"], request["text"], import_callback=guard, **request["args"]
        )
    except RuntimeError as exc:
        reply = {"error": str(exc)}
    except MemoryError:
        return EXIT_NO_MEMORY
    else:
        size = len(output.encode("utf-8"))
        reply = {"too_large": size} if size > request["max_output"] else {"output": output}
    sys.stdout.buffer.write(marshal.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
