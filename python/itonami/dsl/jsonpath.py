"""JSONPath queries (RFC 9535) over the workflow context, compiled once at load."""

from __future__ import annotations

from typing import Any

import jsonpath_rfc9535

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
            self._query = jsonpath_rfc9535.compile(text)
        except jsonpath_rfc9535.JSONPathError as exc:
            raise ValueError(f"invalid JSONPath {text!r}: {exc}") from None

    @property
    def singular(self) -> bool:
        """Whether the query can select at most one value (RFC 9535 singular query)."""
        return bool(self._query.singular_query())

    def find_all(self, context: Any) -> list[Any]:
        """Every value the query selects, in document order (empty when none)."""
        return self._query.find(context).values()

    def find_one(self, context: Any) -> Any:
        """The first value the query selects, or ``None`` when it selects nothing."""
        node = self._query.find_one(context)
        return None if node is None else node.value

    def resolve(self, context: Any) -> Any:
        """The value an input mapping binds: see :class:`itonami.dsl.InputMapping`.

        A singular query (``$.a.b``, ``$.a[0]``) gives its value or ``None``; any
        other query (wildcards, slices, filters, descendants) gives the list of
        every match, which may be empty or hold a single element.
        """
        if self.singular:
            return self.find_one(context)
        return self.find_all(context)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JsonPath):
            return NotImplemented
        return self.text == other.text

    def __hash__(self) -> int:
        return hash(("JsonPath", self.text))

    def __repr__(self) -> str:
        return f"JsonPath({self.text!r})"
