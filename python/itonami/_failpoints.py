"""Named crash points, for the crash tests.

``ITONAMI_FAILPOINTS="activity.after_effect=3,storage.mid_commit=1"`` makes the
process kill itself with SIGKILL the 3rd time it passes
``activity.after_effect`` (or the 1st time it passes ``storage.mid_commit``).
Without the variable, :func:`hit` is a no-op. It is read once at import.

Points: ``activity.after_effect`` (an activity's side effect happened, its
result is not yet recorded), ``storage.mid_commit`` (rows written, COMMIT not
yet issued), ``storage.after_commit`` (committed, nobody told yet),
``snapshot.during`` (snapshot taken, not yet saved), ``compensation.during``
(a compensation ran, its completion is not yet recorded), ``timer.fire`` (a
timer is due, its firing is not yet recorded).
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["hit"]


def _parse(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in spec.split(","):
        name, _, count = item.strip().partition("=")
        if name:
            points[name] = int(count or "1")
    return points


_points = _parse(os.environ.get("ITONAMI_FAILPOINTS", ""))
_lock = threading.Lock()


def _noop(name: str) -> None:
    return None


def _hit(name: str) -> None:
    with _lock:
        left = _points.get(name)
        if left is None:
            return
        left -= 1
        _points[name] = left
    if left == 0:
        os.kill(os.getpid(), signal.SIGKILL)


hit = _hit if _points else _noop
