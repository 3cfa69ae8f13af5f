"""Type stubs of ``itonami._core``, the Rust core (see docs/core-contract.md).

Errors are the classes of :mod:`itonami.errors`: ``DecodeError`` (bad bytes,
unknown kind, rejected event), ``ConflictError``, ``IntegrityError``,
``PayloadTooLargeError``, ``ExecutionNotFoundError``, ``TxOutOfRangeError``;
``InvalidArgumentError`` for an int argument outside its range (a negative
version, tx or attempt). Versions and txs never exceed ``2**63 - 1``.
"""

from typing import Any, final

__all__ = [
    "VersionStore",
    "Appended",
    "ExecutionState",
    "Event",
    "VersionInfo",
    "VerifyReport",
    "InclusionProof",
    "JsonPath",
    "Condition",
    "encode_event",
    "frame_history",
    "decode_history",
    "replay",
    "replay_verified",
    "verify_proof",
    "event_kinds",
    "pg_array_int8",
    "pg_array_text",
    "pg_array_bytea",
    "pg_array_bool",
    "FORMAT_VERSION",
]

FORMAT_VERSION: int

@final
class Appended:
    """What an append created: what a durable store persists."""

    @property
    def version(self) -> int: ...
    @property
    def tx(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def hash(self) -> bytes:
        """The 32-byte node hash of this version."""
    @property
    def encoded(self) -> bytes:
        """The canonical encoding of the event (without the length prefix)."""
    @property
    def status(self) -> str:
        """The workflow status after this event."""

@final
class ExecutionState:
    """An immutable view of one version of an execution's state."""

    @property
    def execution_id(self) -> str: ...
    @property
    def workflow_id(self) -> str | None: ...
    @property
    def workflow_version(self) -> Any: ...
    @property
    def definition_hash(self) -> str | None: ...
    @property
    def status(self) -> str:
        """pending | running | completed | failed | cancelled | timed_out | compensated."""
    @property
    def version(self) -> int: ...
    @property
    def tx(self) -> int: ...
    @property
    def created_at(self) -> int | None: ...
    @property
    def updated_at(self) -> int | None: ...
    @property
    def inputs(self) -> Any: ...
    @property
    def parent(self) -> Any: ...
    @property
    def outputs(self) -> Any: ...
    @property
    def error(self) -> Any: ...
    @property
    def root_hash(self) -> bytes:
        """Merkle root of the state (computed on first access for past versions)."""
    @property
    def step_paths(self) -> list[str]:
        """Step paths in first-insertion order."""
    def step_status(self, path: str) -> str | None:
        """Status of the step at ``path`` or None (cheaper than ``step``)."""
    def step(self, path: str) -> dict[str, Any] | None:
        """The step at ``path`` as a dict, or None."""
    def pending_timers(self) -> list[tuple[str, int]]:
        """The pending timers as ``(step path, fire_at µs)`` pairs (``to_dict()["timers"]``)."""
    def open_event_types(self) -> list[str]:
        """The event types the open event waits expect, sorted, without repeats."""
    def latest_signals(self) -> dict[str, Any]:
        """The newest payload of every signal name received."""
    def to_dict(self) -> dict[str, Any]:
        """The whole state as a dict."""
    def to_json(self) -> bytes:
        """The whole state as deterministic JSON."""

@final
class Event:
    """One decoded event."""

    @property
    def kind(self) -> str: ...
    @property
    def code(self) -> int: ...
    @property
    def step(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def data(self) -> Any:
        """The payload as a Python value (a dict)."""
    @property
    def data_json(self) -> bytes:
        """The canonical JSON payload."""
    @property
    def encoded(self) -> bytes:
        """The canonical encoding (without the length prefix)."""

@final
class VersionInfo:
    """Metadata of one stored version."""

    @property
    def version(self) -> int: ...
    @property
    def tx(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def hash(self) -> bytes: ...
    @property
    def state_root(self) -> bytes | None:
        """The state root of a sealed version; ``None`` when not sealed (hash revision 3)."""

@final
class VerifyReport:
    """Result of a successful ``VersionStore.verify``."""

    @property
    def execution_id(self) -> str: ...
    @property
    def versions(self) -> int: ...
    @property
    def head_hash(self) -> bytes: ...

@final
class InclusionProof:
    """Proof that one event belongs to the chain ending at a head hash."""

    @property
    def version(self) -> int: ...
    @property
    def head_version(self) -> int: ...
    @property
    def event(self) -> Event: ...
    def head_hash(self) -> bytes:
        """The head hash this proof leads to."""
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> InclusionProof: ...

@final
class VersionStore:
    """The in-memory MVCC store of executions (thread-safe)."""

    def __new__(
        cls,
        *,
        snapshot_every: int = 0,
        snapshot_retention: int = 2,
        max_payload_bytes: int = 4194304,
    ) -> VersionStore:
        """``snapshot_every`` = 0 keeps no snapshots; ``snapshot_retention`` = 0 keeps all."""
    def append(
        self,
        execution_id: str,
        expected_version: int,
        kind: str,
        step: str,
        attempt: int,
        data: bytes,
        timestamp: int,
    ) -> Appended: ...
    def append_step(
        self,
        execution_id: str,
        expected_version: int,
        events: list[tuple[str, str, int, bytes]],
        timestamp: int,
    ) -> tuple[list[tuple[int, int, int, str, bytes, bytes]], str]:
        """The coarse step call: atomic like ``append_batch``, one timestamp for
        all; returns each version's ``(version, tx, timestamp, kind, hash,
        encoded)`` and the status after the last."""
    def append_batch(
        self,
        execution_id: str,
        expected_version: int,
        events: list[tuple[str, str, int, bytes, int]],
    ) -> list[Appended]:
        """Atomic: all events or none. Tuples are (kind, step, attempt, data, timestamp)."""
    def load(
        self,
        execution_id: str,
        history: bytes,
        hashes: bytes | None = None,
        txs: list[int] | None = None,
        snapshot: bytes | None = None,
    ) -> None:
        """Replace (or create) an execution from stored bytes, verifying ``hashes``."""
    def state(self, execution_id: str) -> ExecutionState: ...
    def state_at_tx(self, execution_id: str, tx: int) -> ExecutionState: ...
    def state_at_version(self, execution_id: str, version: int) -> ExecutionState: ...
    def version(self, execution_id: str) -> int:
        """Current version, 0 when unknown."""
    def head(self, execution_id: str) -> tuple[int, bytes]:
        """(version, node hash); (0, 32 zero bytes) when unknown."""
    def history(self, execution_id: str) -> list[VersionInfo]: ...
    def events(self, execution_id: str, from_version: int = 0) -> list[Event]: ...
    def encoded_history(self, execution_id: str, from_version: int = 0) -> bytes: ...
    def snapshot(self, execution_id: str) -> bytes: ...
    def verify(self, execution_id: str) -> VerifyReport: ...
    def inclusion_proof(self, execution_id: str, version: int) -> InclusionProof: ...
    def evict(self, execution_id: str) -> None: ...
    def contains(self, execution_id: str) -> bool: ...
    def __contains__(self, execution_id: str, /) -> bool: ...
    def execution_ids(self) -> list[str]: ...
    @property
    def last_tx(self) -> int: ...
    def advance_tx(self, tx: int) -> None:
        """Raise the tx floor; ``TxOutOfRangeError`` above ``2**63 - 1``."""
    def assign_txs(self, execution_id: str, first_version: int, txs: list[int]) -> None:
        """Record the txs the store allocated for versions ``first_version`` onwards."""
    @property
    def snapshot_every(self) -> int: ...
    @property
    def snapshot_retention(self) -> int: ...
    @property
    def max_payload_bytes(self) -> int: ...

@final
class JsonPath:
    """A compiled RFC 9535 JSONPath query; ``ValueError`` when it does not parse."""

    def __new__(cls, text: str) -> JsonPath: ...
    @property
    def singular(self) -> bool:
        """Whether the query selects at most one value (RFC 9535 singular query)."""
    def find_all(self, context: Any) -> list[Any]:
        """Every value selected, in the RFC's order; the context's own objects."""
    def find_one(self, context: Any) -> Any:
        """The first value selected, or ``None``."""
    def resolve(self, context: Any) -> Any:
        """``find_one`` for a singular query, else ``find_all``."""

@final
class Condition:
    """A compiled CEL expression; ``ValueError`` when it does not parse."""

    def __new__(cls, text: str) -> Condition: ...
    @property
    def variables(self) -> list[str]:
        """The identifiers the expression references, sorted."""
    def evaluate(self, context: dict[str, Any]) -> Any:
        """The result over ``context``'s top-level keys; ``ValueError`` when it fails."""

def encode_event(kind: str, step: str, attempt: int, data: bytes, timestamp: int) -> bytes:
    """The canonical encoding of one event (payload canonicalised)."""

def frame_history(events: list[bytes]) -> bytes:
    """Frames encoded events into a history (u32 length prefix each)."""

def decode_history(history: bytes) -> list[Event]: ...
def replay(execution_id: str, history: bytes) -> ExecutionState:
    """Fold a history into a state without hashing."""

def replay_verified(execution_id: str, history: bytes, hashes: bytes) -> ExecutionState: ...
def verify_proof(proof: InclusionProof, head_hash: bytes) -> bool: ...
def event_kinds() -> list[tuple[int, str]]:
    """(code, name) of every event kind."""

# PostgreSQL binary arrays (array_send's one-dimensional layout), for the
# PostgreSQL storage's %b parameters. A wrong element type raises TypeError
# naming its index; an element or array past 2**31 - 1 bytes, ValueError.

def pg_array_int8(values: list[int] | list[int | None]) -> bytes:
    """An ``int8[]`` (oid 1016); an int outside int8 raises ``InvalidArgumentError``."""

def pg_array_text(values: list[str] | list[str | None]) -> bytes:
    """A ``text[]`` (oid 1009), UTF-8."""

def pg_array_bytea(values: list[bytes] | list[bytes | bytearray | None]) -> bytes:
    """A ``bytea[]`` (oid 1001)."""

def pg_array_bool(values: list[bool] | list[bool | None]) -> bytes:
    """A ``bool[]`` (oid 1000)."""
