"""JSONPath queries (RFC 9535) over the workflow context, compiled once at load.

Parsing and evaluation are the Rust core's (``itonami._core.JsonPath``): a
singular query walks the context's dicts and lists without converting
anything, any other query converts only the value its leading name and
index steps reach. Values come back as the very objects of the context.
"""

from __future__ import annotations

from typing import Any

from itonami import _core

__all__ = ["JsonPath"]


class JsonPath:
    """A compiled RFC 9535 JSONPath query such as ``$.inputs.orderId``.

    Construction compiles the query and raises :class:`ValueError` naming the
    query when it does not parse. Queries are compared and hashed by text.
    """

    __slots__ = ("_query", "text")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise ValueError(f"a JSONPath query must be a string, got {type(text).__name__}")
        self.text = text
        try:
            self._query = _core.JsonPath(text)
        except ValueError as exc:
            raise ValueError(f"invalid JSONPath {text!r}: {exc}") from None

    @property
    def singular(self) -> bool:
        """Whether the query can select at most one value (RFC 9535 singular query)."""
        return self._query.singular

    def find_all(self, context: Any) -> list[Any]:
        """Every value the query selects, in document order (empty when none)."""
        return self._query.find_all(context)

    def find_one(self, context: Any) -> Any:
        """The first value the query selects, or ``None`` when it selects nothing."""
        return self._query.find_one(context)

    def resolve(self, context: Any) -> Any:
        """The value an input mapping binds: see :class:`itonami.dsl.InputMapping`.

        A singular query (``$.a.b``, ``$.a[0]``) gives its value or ``None``; any
        other query (wildcards, slices, filters, descendants) gives the list of
        every match, which may be empty or hold a single element.
        """
        return self._query.resolve(context)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JsonPath):
            return NotImplemented
        return self.text == other.text

    def __hash__(self) -> int:
        return hash(("JsonPath", self.text))

    def __repr__(self) -> str:
        return f"JsonPath({self.text!r})"
