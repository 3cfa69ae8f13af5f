"""JSONPath queries (RFC 9535) over the workflow context, compiled once at load.

The queries run on ``jsonpath-rfc9535``; both of its supported majors (1.x,
the newest on Python 3.11, and 2.x, which needs Python 3.12) are used only
through the API they share: ``compile``, ``find(...).values()``,
``find_one(...).value`` and ``JSONPathError``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

__all__ = ["JsonPath"]


def _library() -> ModuleType:
    # Imported when the first query is compiled, not by `import itonami`.
    import jsonpath_rfc9535

    return jsonpath_rfc9535


def _is_singular(text: str) -> bool:
    """Whether ``text`` (a valid query) is an RFC 9535 singular query.

    RFC 9535 (section 2.3.5.1) admits only singular queries as comparison
    operands, so a comparison that compiles proves the query singular. 1.x
    exposed ``singular_query()`` and 2.x dropped it; asking the parser keeps
    this one rule for both.
    """
    library = _library()
    try:
        library.compile(f"$[?{text} == null]")
    except library.JSONPathError:
        return False
    return True


class JsonPath:
    """A compiled RFC 9535 JSONPath query such as ``$.inputs.orderId``.

    Construction compiles the query and raises :class:`ValueError` naming the
    query when it does not parse. Queries are compared and hashed by text.
    """

    __slots__ = ("_query", "_singular", "text")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise ValueError(f"a JSONPath query must be a string, got {type(text).__name__}")
        self.text = text
        library = _library()
        try:
            self._query = library.compile(text)
        except library.JSONPathError as exc:
            raise ValueError(f"invalid JSONPath {text!r}: {exc}") from None
        self._singular = _is_singular(text)

    @property
    def singular(self) -> bool:
        """Whether the query can select at most one value (RFC 9535 singular query)."""
        return self._singular

    def find_all(self, context: Any) -> list[Any]:
        """Every value the query selects, in document order (empty when none)."""
        return list(self._query.find(context).values())

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
