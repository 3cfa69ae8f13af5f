"""Retry policies: exponential backoff with jitter, capped by interval and attempts.

A policy is plain data (it is parsed from workflow definitions and recorded
in events); the arithmetic lives here so the engine and activities agree.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_RETRY_POLICY", "MAX_INTERVAL", "RetryPolicy"]

#: The longest backoff (seconds, before jitter): 365 days. An uncapped policy
#: stops growing here, and no interval may be set above it, so a retry time
#: always fits the microsecond timestamps that events record.
MAX_INTERVAL = 365 * 24 * 3600.0
_MAX_TEXT = f"{MAX_INTERVAL:g} s (365 days)"


@dataclass(frozen=True)
class RetryPolicy:
    """How an activity is retried.

    Intervals are in seconds. Attempt ``n`` (1-based) that fails waits
    ``min(initial_interval * backoff_coefficient ** (n - 1), maximum_interval)``
    before attempt ``n + 1`` (:data:`MAX_INTERVAL` stands in for an unset
    ``maximum_interval``), scaled by a random factor in
    ``[1 - jitter, 1 + jitter]``: so a delay is at most
    ``maximum_interval * (1 + jitter)``. ``maximum_attempts`` counts the first
    try; 0 means unlimited. Errors whose type name is in
    ``non_retryable_errors`` fail at once.
    """

    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: float | None = None
    maximum_attempts: int = 3
    non_retryable_errors: tuple[str, ...] = field(default_factory=tuple)
    jitter: float = 0.0

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid retry policy: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every inconsistency in this policy, as messages naming the field."""
        out = []
        if not self.initial_interval >= 0:
            out.append(f"initial_interval must be >= 0, got {self.initial_interval}")
        elif not self.initial_interval <= MAX_INTERVAL:
            out.append(f"initial_interval must be at most {_MAX_TEXT}, got {self.initial_interval}")
        if not self.backoff_coefficient >= 1:
            out.append(f"backoff_coefficient must be >= 1, got {self.backoff_coefficient}")
        elif not math.isfinite(self.backoff_coefficient):
            out.append(f"backoff_coefficient must be finite, got {self.backoff_coefficient}")
        if self.maximum_interval is not None:
            # `not x <= limit` also catches NaN, which every comparison rejects
            if not self.maximum_interval <= MAX_INTERVAL:
                out.append(
                    f"maximum_interval must be at most {_MAX_TEXT}, got {self.maximum_interval}"
                )
            elif self.maximum_interval < self.initial_interval:
                out.append(
                    f"maximum_interval ({self.maximum_interval}) is below "
                    f"initial_interval ({self.initial_interval})"
                )
        if self.maximum_attempts < 0:
            out.append(f"maximum_attempts must be >= 0, got {self.maximum_attempts}")
        if not 0 <= self.jitter <= 1:
            out.append(f"jitter must be within [0, 1], got {self.jitter}")
        return out

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based).

        Finite for every attempt number, however large: the exponential part
        saturates at the cap instead of overflowing.
        """
        cap = MAX_INTERVAL if self.maximum_interval is None else float(self.maximum_interval)
        initial = float(self.initial_interval)
        base = 0.0 if initial == 0 else cap
        if 0 < initial < cap:
            try:
                # float power: an int coefficient would make a huge exact integer
                growth = float(self.backoff_coefficient) ** max(attempt - 1, 0)
            except OverflowError:
                growth = math.inf
            base = min(initial * growth, cap)
        if self.jitter:
            r = (rng or random).random()
            base *= 1 - self.jitter + 2 * self.jitter * r
        return base

    def should_retry(self, attempt: int, error_type: str, retryable: bool = True) -> bool:
        """Whether a failure of attempt ``attempt`` with ``error_type`` gets another try."""
        if not retryable or error_type in self.non_retryable_errors:
            return False
        return self.maximum_attempts == 0 or attempt < self.maximum_attempts

    def to_dict(self) -> dict[str, Any]:
        """The policy as JSON-ready data."""
        return {
            "initial_interval": self.initial_interval,
            "backoff_coefficient": self.backoff_coefficient,
            "maximum_interval": self.maximum_interval,
            "maximum_attempts": self.maximum_attempts,
            "non_retryable_errors": list(self.non_retryable_errors),
            "jitter": self.jitter,
        }

    @classmethod
    def from_seconds(cls, data: Mapping[str, Any]) -> RetryPolicy:
        """Build from a mapping whose intervals are already in seconds."""
        return cls(
            initial_interval=float(data.get("initial_interval", 1.0)),
            backoff_coefficient=float(data.get("backoff_coefficient", 2.0)),
            maximum_interval=(
                None if data.get("maximum_interval") is None else float(data["maximum_interval"])
            ),
            maximum_attempts=int(data.get("maximum_attempts", 3)),
            non_retryable_errors=tuple(data.get("non_retryable_errors", ())),
            jitter=float(data.get("jitter", 0.0)),
        )


#: The seed's defaults: 3 attempts, 1 s initial interval, coefficient 2.0.
DEFAULT_RETRY_POLICY = RetryPolicy()
