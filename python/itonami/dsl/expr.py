"""Conditions: CEL expressions over the workflow context, compiled once at load.

The context's top-level keys are the CEL variables: ``inputs``, ``steps``,
``signals``, ``item``, ``index`` (and ``event`` in a wait filter), so a
condition reads ``inputs.amount > 1000 && steps.validate.output.ok``.
Parsing and evaluation are the Rust core's (``itonami._core.Condition``, on
the ``cel`` interpreter); an evaluation converts only the variables the
expression names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from itonami import _core
from itonami.errors import ItonamiError

__all__ = ["Condition", "ExpressionError"]


class ExpressionError(ItonamiError, ValueError):
    """A condition that failed to evaluate, or gave a non-boolean result.

    ``expression`` is the CEL source text; the message says what went wrong.
    """

    def __init__(self, message: str, *, expression: str) -> None:
        super().__init__(message)
        self.expression = expression


class Condition:
    """A compiled CEL expression that must evaluate to a boolean.

    Construction compiles the expression and raises :class:`ValueError` with
    CEL's message when it does not parse. Conditions compare and hash by text.
    """

    __slots__ = ("_program", "text")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise ValueError(f"a condition must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError("a condition must not be empty")
        self.text = text
        try:
            self._program = _core.Condition(text)
        except ValueError as exc:
            raise ValueError(f"invalid CEL expression {text!r}: {exc}") from None

    @property
    def variables(self) -> list[str]:
        """Identifiers the expression references (including macro-bound names), sorted."""
        return self._program.variables

    def evaluate(self, context: Mapping[str, Any]) -> bool:
        """Evaluate over ``context``; its top-level keys are the CEL variables.

        Raises :class:`ExpressionError` naming the expression when evaluation
        fails (missing key, undefined variable, type mismatch, division by zero)
        or when the result is not a boolean.
        """
        try:
            result = self._program.evaluate(context if isinstance(context, dict) else dict(context))
        except ValueError as exc:
            raise ExpressionError(
                f"condition {self.text!r} failed to evaluate: {exc}", expression=self.text
            ) from exc
        if not isinstance(result, bool):
            raise ExpressionError(
                f"condition {self.text!r} must give a boolean, got "
                f"{type(result).__name__} {result!r}",
                expression=self.text,
            )
        return result

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Condition):
            return NotImplemented
        return self.text == other.text

    def __hash__(self) -> int:
        return hash(("Condition", self.text))

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"
