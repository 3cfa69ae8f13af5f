"""Hostile expressions: deep syntax trees are refused with an error naming the
bound, and the deepest accepted ones run even on a thread with a small stack
(a stack overflow would abort the whole process, not fail one workflow)."""

from __future__ import annotations

import threading

import pytest

from itonami.dsl.expr import Condition
from itonami.dsl.jsonpath import JsonPath


@pytest.mark.parametrize(
    "text",
    [
        "1 + " * 16_000 + "1 > 0",
        "a." * 20_000 + "b",
        "a" + "[0]" * 5_000 + " > 0",
        "(" * 5_000 + "true" + ")" * 5_000,
    ],
)
def test_deep_conditions_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="operators"):
        Condition(text)


@pytest.mark.parametrize("text", ["$" + "[0]" * 5_000, "$" + ".a" * 20_000])
def test_deep_queries_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="operators"):
        JsonPath(text)


def test_the_deepest_accepted_expressions_run_on_a_small_stack() -> None:
    results: list[object] = []

    def run() -> None:
        total = Condition("1 + " * 240 + "1 > 0")
        results.append(total.evaluate({}))
        query = JsonPath("$" + ".a" * 240)
        doc: dict[str, object] = {}
        node = doc
        for _ in range(239):
            node["a"] = {}
            node = node["a"]  # type: ignore[assignment]
        node["a"] = 7
        results.append(query.find_one(doc))

    old = threading.stack_size(256 * 1024)
    try:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    finally:
        threading.stack_size(old)
    assert results == [True, 7]
