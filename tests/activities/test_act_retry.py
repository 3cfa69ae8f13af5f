"""RetryPolicy arithmetic: backoff delays stay finite and capped for any attempt."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from itonami.retry import MAX_INTERVAL, RetryPolicy

LAST_ATTEMPT = 2**63


class FixedRandom(random.Random):
    """A random source whose every draw is ``r``: jitter with a known factor."""

    def __init__(self, r: float) -> None:
        super().__init__(0)
        self.r = r

    def random(self) -> float:
        return self.r


intervals = st.one_of(
    st.floats(min_value=0, max_value=MAX_INTERVAL),
    st.integers(min_value=0, max_value=3600),
    st.sampled_from([0.0, 1e-9, 1.0, MAX_INTERVAL]),
)
coefficients = st.one_of(
    st.floats(min_value=1, max_value=1e9),
    st.integers(min_value=1, max_value=10),
    st.sampled_from([1.0, 1.0 + 2**-52, 2.0, 1e300]),
)


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    initial = draw(intervals)
    maximum = draw(
        st.one_of(
            st.none(),
            st.floats(min_value=initial, max_value=MAX_INTERVAL),
            st.just(initial),
        )
    )
    return RetryPolicy(
        initial_interval=initial,
        backoff_coefficient=draw(coefficients),
        maximum_interval=maximum,
        maximum_attempts=draw(st.integers(min_value=0, max_value=10)),
        jitter=draw(st.one_of(st.just(0.0), st.floats(min_value=0, max_value=1))),
    )


attempts = st.one_of(
    st.integers(min_value=1, max_value=2000),
    st.integers(min_value=1, max_value=LAST_ATTEMPT),
    st.sampled_from([1, 2, 1024, 1025, 1076, LAST_ATTEMPT - 1, LAST_ATTEMPT]),
)


def cap(policy: RetryPolicy) -> float:
    return MAX_INTERVAL if policy.maximum_interval is None else policy.maximum_interval


@given(policies(), attempts, st.floats(min_value=0, max_value=1, exclude_max=True))
def test_delay_is_finite_and_within_the_jittered_bounds(
    policy: RetryPolicy, attempt: int, r: float
) -> None:
    delay = policy.delay(attempt, FixedRandom(r))
    assert math.isfinite(delay) and delay >= 0
    assert delay <= cap(policy) * (1 + policy.jitter)
    # before jitter the wait is at least the first interval, since the coefficient is >= 1
    assert delay >= policy.initial_interval * (1 - policy.jitter) * (1 - 1e-12)


@given(policies(), attempts)
def test_delay_without_jitter_is_within_initial_and_cap(policy: RetryPolicy, attempt: int) -> None:
    delay = dataclasses.replace(policy, jitter=0.0).delay(attempt)
    assert policy.initial_interval <= delay <= cap(policy)


@given(policies(), attempts, attempts, st.floats(min_value=0, max_value=1, exclude_max=True))
def test_delay_is_monotone_in_attempt_for_a_given_jitter_draw(
    policy: RetryPolicy, a: int, b: int, r: float
) -> None:
    first, second = sorted((a, b))
    assert policy.delay(first, FixedRandom(r)) <= policy.delay(second, FixedRandom(r))


@given(policies(), attempts)
def test_jitter_scales_the_unjittered_delay(policy: RetryPolicy, attempt: int) -> None:
    plain = dataclasses.replace(policy, jitter=0.0).delay(attempt)
    low = policy.delay(attempt, FixedRandom(0.0))
    mid = policy.delay(attempt, FixedRandom(0.5))
    assert low == pytest.approx(plain * (1 - policy.jitter), rel=1e-12, abs=1e-300)
    assert mid == pytest.approx(plain, rel=1e-12, abs=1e-300)


def test_long_retrying_execution_waits_the_cap() -> None:
    # The reported crash: the power was computed before the cap.
    policy = RetryPolicy(initial_interval=1, maximum_interval=60, maximum_attempts=0)
    assert [policy.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.delay(1025) == 60
    assert policy.delay(LAST_ATTEMPT) == 60


def test_uncapped_backoff_saturates_at_max_interval() -> None:
    policy = RetryPolicy(initial_interval=1, backoff_coefficient=2, maximum_attempts=0)
    assert policy.delay(11) == 1024
    assert policy.delay(30) == MAX_INTERVAL
    assert policy.delay(LAST_ATTEMPT) == MAX_INTERVAL


def test_zero_interval_and_unit_coefficient() -> None:
    assert RetryPolicy(initial_interval=0, maximum_attempts=0).delay(LAST_ATTEMPT) == 0
    flat = RetryPolicy(initial_interval=0.25, backoff_coefficient=1, maximum_attempts=0)
    assert flat.delay(1) == flat.delay(LAST_ATTEMPT) == 0.25


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"initial_interval": math.inf}, "initial_interval must be at most 3.1536e+07 s"),
        ({"initial_interval": math.nan}, "initial_interval must be >= 0"),
        ({"initial_interval": MAX_INTERVAL * 2}, "initial_interval must be at most"),
        ({"maximum_interval": math.nan}, "maximum_interval must be at most"),
        ({"maximum_interval": math.inf}, "maximum_interval must be at most"),
        ({"backoff_coefficient": math.inf}, "backoff_coefficient must be finite"),
        ({"backoff_coefficient": math.nan}, "backoff_coefficient must be >= 1"),
    ],
)
def test_non_finite_or_oversized_fields_are_rejected(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        RetryPolicy(**fields)
