"""Secret: resolved at call time, never shown, scrubbed from recorded errors."""

from __future__ import annotations

import pickle

import pytest

from itonami.activities import (
    FunctionActivity,
    Secret,
    describe_error,
    redact,
    run_activity,
)
from itonami.errors import ActivityError

VALUE = "hunter2-very-secret"


def test_repr_str_and_format_never_show_the_value(monkeypatch) -> None:
    monkeypatch.setenv("ITONAMI_TEST_SECRET", VALUE)
    secret = Secret.env("ITONAMI_TEST_SECRET", prefix="Bearer ")
    assert secret.reveal() == f"Bearer {VALUE}"
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r:>40}", repr([secret])):
        assert VALUE not in shown
        assert "ITONAMI_TEST_SECRET" in shown


def test_value_is_read_at_call_time(monkeypatch) -> None:
    secret = Secret.env("ITONAMI_TEST_ROTATING")
    monkeypatch.setenv("ITONAMI_TEST_ROTATING", "first-value")
    assert secret.reveal() == "first-value"
    monkeypatch.setenv("ITONAMI_TEST_ROTATING", "second-value")
    assert secret.reveal() == "second-value"


def test_from_callable_and_bad_results() -> None:
    calls: list[int] = []

    def vault() -> str:
        calls.append(1)
        return "from-the-vault"

    secret = Secret.from_callable(vault, label="vault:db")
    assert repr(secret) == "Secret(vault:db)"
    assert calls == []  # nothing is read until it is needed
    assert secret.reveal() == "from-the-vault"
    with pytest.raises(ActivityError, match="did not resolve to a string"):
        Secret.from_callable(lambda: 42).reveal()  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError):
        Secret("not callable", label="x")  # type: ignore[arg-type]


def test_cannot_be_pickled_into_history() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Secret.env("X"))


async def test_revealed_value_is_redacted_from_errors(monkeypatch, make_ctx) -> None:
    monkeypatch.setenv("ITONAMI_TEST_LEAKY", VALUE)
    secret = Secret.env("ITONAMI_TEST_LEAKY")

    def leaky() -> None:
        token = secret.reveal()
        raise ConnectionError(f"login failed for token {token}")

    with pytest.raises(ActivityError) as info:
        await run_activity(FunctionActivity("leaky", leaky), {}, make_ctx())
    described = describe_error(info.value)
    assert VALUE not in str(info.value) and VALUE not in str(described)
    assert described["message"] == "login failed for token [REDACTED]"
    err = ActivityError("x", details={"echo": f"header was {VALUE}"})
    assert describe_error(err)["details"] == {"echo": "header was [REDACTED]"}


def test_redact_leaves_other_text_alone() -> None:
    assert redact("nothing secret here") == "nothing secret here"
