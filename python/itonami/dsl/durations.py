"""Durations in workflow definitions: ISO 8601 strings or numbers of seconds.

``"PT30M"``, ``"P1D"``, ``"PT0.5S"`` and ``"P1DT2H"`` are ISO 8601 durations
(parsed by :mod:`isodate`); a plain number is already seconds. Years and
months are rejected: their length depends on the calendar, and a durable
timer must mean the same thing on replay as when it was scheduled.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

import isodate  # type: ignore[import-untyped]

__all__ = ["format_duration", "parse_duration"]


def parse_duration(value: Any) -> float:
    """Seconds in ``value``, an ISO 8601 duration string or a number of seconds.

    Raises :class:`ValueError` with a message that names the bad value when it
    is negative, not finite, of the wrong type, uses years or months, or is not
    a valid ISO 8601 duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got the boolean {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(f"duration must be finite, got {value!r}")
        if seconds < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return seconds
    if not isinstance(value, str):
        raise ValueError(
            f"expected a duration (ISO 8601 string like 'PT30S' or seconds), "
            f"got {type(value).__name__}"
        )
    text = value.strip()
    # isodate accepts a bare "PT" as zero; ISO 8601 wants at least one component.
    if text.upper() in ("P", "PT") or text.upper().endswith("T"):
        raise ValueError(f"invalid ISO 8601 duration {value!r}: no components")
    try:
        parsed = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError) as exc:
        raise ValueError(
            f"invalid ISO 8601 duration {value!r} (expected e.g. 'PT30S', 'PT5M', 'P1D')"
        ) from exc
    if isinstance(parsed, isodate.Duration):
        if parsed.years or parsed.months:
            raise ValueError(
                f"duration {value!r} uses years or months, whose length varies; "
                "use days (P30D) instead"
            )
        parsed = parsed.tdelta
    assert isinstance(parsed, datetime.timedelta)
    seconds = parsed.total_seconds()
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """An ISO 8601 duration string for ``seconds`` (the inverse of :func:`parse_duration`)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    return str(isodate.duration_isoformat(datetime.timedelta(seconds=seconds)))
