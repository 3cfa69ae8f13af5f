"""Loading and verifying stored executions when the stored rows may be damaged.

Damage is reported as :class:`~itonami.errors.IntegrityError` naming the
execution, the version and what is wrong, whatever layer noticed it (a row
whose tx is not a tx, an event that does not decode, a hash that does not
match). A snapshot is only a shortcut: when it is damaged, or disagrees with
the events it claims to summarise, the execution is loaded from its events
and the snapshot is reported (logged on load, raised by verify).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Sequence
from typing import Any

from itonami import _core
from itonami.errors import (
    DecodeError,
    ExecutionNotFoundError,
    IntegrityError,
    InvalidArgumentError,
    TxOutOfRangeError,
)
from itonami.storage.base import Storage, StoredEvent

__all__ = ["load_execution", "load_history", "snapshot_problem", "verify_execution"]

log = logging.getLogger("itonami.integrity")

# Versions and txs live in signed 64-bit columns; the core refuses larger.
_MAX_SEQUENCE = 2**63 - 1
# Histories longer than this load off the event loop (the core releases the GIL).
_THREAD_BYTES = 256 * 1024


def _check_rows(execution_id: str, events: Sequence[StoredEvent], first: int) -> None:
    """Refuse rows that cannot be what the core stored, before the core sees them."""
    for offset, e in enumerate(events):
        version = first + offset

        def bad(what: str, version: int = version) -> IntegrityError:
            return IntegrityError(
                f"execution {execution_id!r}, version {version}: stored event row {what}",
                execution_id=execution_id,
                version=version,
            )

        if e.version != version:
            raise bad(f"has version {e.version!r} where version {version} belongs")
        if not isinstance(e.tx, int) or isinstance(e.tx, bool) or not 1 <= e.tx <= _MAX_SEQUENCE:
            raise bad(f"has tx {e.tx!r}, which is not a tx (1..{_MAX_SEQUENCE})")
        if not isinstance(e.hash, bytes) or len(e.hash) != 32:
            raise bad("has a hash that is not 32 bytes")
        if not isinstance(e.encoded, bytes) or len(e.encoded) > 0xFFFFFFFF:
            raise bad("has no encoded event")


def _frame(events: Sequence[StoredEvent]) -> tuple[bytes, bytes, list[int]]:
    history = b"".join(struct.pack("<I", len(e.encoded)) + e.encoded for e in events)
    return history, b"".join(e.hash for e in events), [e.tx for e in events]


def _as_damage(exc: Exception, execution_id: str, first: int) -> IntegrityError:
    """A core error about stored bytes, as damage of the version it names."""
    if isinstance(exc, IntegrityError):
        if exc.execution_id is None:
            exc.execution_id = execution_id
        return exc
    index = getattr(exc, "index", None)
    version = first + index if isinstance(index, int) else None
    where = f", version {version}" if version is not None else ""
    damage = IntegrityError(
        f"execution {execution_id!r}{where}: stored event is damaged: {exc}",
        execution_id=execution_id,
        version=version,
    )
    damage.__cause__ = exc
    return damage


async def _load_events(
    store: _core.VersionStore,
    execution_id: str,
    events: Sequence[StoredEvent],
    first: int,
    *,
    snapshot: bytes | None,
    in_thread: bool,
) -> None:
    _check_rows(execution_id, events, first)
    history, hashes, txs = _frame(events)
    try:
        if in_thread and len(history) > _THREAD_BYTES:
            await asyncio.to_thread(store.load, execution_id, history, hashes, txs, snapshot)
        else:
            store.load(execution_id, history, hashes, txs, snapshot)
    except (DecodeError, IntegrityError, InvalidArgumentError, TxOutOfRangeError) as exc:
        raise _as_damage(exc, execution_id, first) from exc


def _sealed_nodes(
    execution_id: str, version: int, event: bytes, prev: bytes | None, root: bytes
) -> list[bytes]:
    """The node hashes ``event`` at ``version`` has when its state has root ``root``.

    One per hash revision, each through an inclusion proof with no later
    versions in that revision's documented format (see ``proof.rs``):
    format 1 (revision 2) and format 2, sealed (revision 3). ``prev`` is the
    stored node of the version before (``None`` for version 1: each
    revision's own ``node(0)``). The core's own hashing thus binds a
    snapshot to the stored chain without replaying it.
    """
    if prev is None:
        empty = _core.VersionStore()
        empty.load(execution_id, b"", None, None, None)
        prev2, prev3 = bytes(32), empty.head(execution_id)[1]
    else:
        prev2 = prev3 = prev
    head = struct.pack("<QI", version, len(event)) + event
    rev2 = b"ITNPROOF\x01" + head + prev2 + root + struct.pack("<I", 0)
    rev3 = b"ITNPROOF\x02" + head + prev3 + b"\x01" + root + struct.pack("<I", 0)
    return [_core.InclusionProof.from_bytes(p).head_hash() for p in (rev2, rev3)]


def snapshot_problem(
    execution_id: str,
    version: int,
    data: bytes,
    at: StoredEvent | None,
    before: StoredEvent | None,
) -> str | None:
    """What is wrong with the snapshot row ``(version, data)``, or ``None``.

    ``at`` is the stored event at ``version``, ``before`` the one before it
    (``None`` for version 1). The snapshot must decode and check itself,
    hold exactly ``version``, and its state and head must be those the
    stored chain has at ``version``.
    """
    scratch = _core.VersionStore()
    try:
        scratch.load(execution_id, b"", b"", [], data)
    except (DecodeError, IntegrityError, InvalidArgumentError, TxOutOfRangeError) as exc:
        return str(exc)
    held, head = scratch.head(execution_id)
    if held != version:
        return f"the row says version {version} but the snapshot holds version {held}"
    if at is None or at.version != version:
        return f"there is no stored event at version {version}"
    if version > 1 and (before is None or before.version != version - 1):
        return f"there is no stored event at version {version - 1}"
    prev = before.hash if before is not None and version > 1 else None
    root = scratch.state(execution_id).root_hash
    try:
        nodes = _sealed_nodes(execution_id, version, at.encoded, prev, root)
    except DecodeError as exc:
        return f"the stored event at version {version} is damaged: {exc}"
    if at.hash not in nodes or head != at.hash:
        return f"its state or head differs from the stored chain at version {version}"
    return None


async def load_execution(
    store: _core.VersionStore,
    storage: Storage,
    execution_id: str,
    *,
    in_thread: bool = True,
    short: bool = False,
    events: Sequence[StoredEvent] | None = None,
) -> bool:
    """Load ``execution_id`` from ``storage`` into the core ``store``.

    From the newest snapshot plus the events after it when the snapshot is
    sound; otherwise (logged as a warning naming the snapshot) from all of
    its events. Returns whether the snapshot was used (the store then holds
    only the versions after it). Damaged events raise ``IntegrityError``;
    an execution with neither events nor snapshot ``ExecutionNotFoundError``.
    ``short``: the caller knows the history is short, so reading all of its
    events is cheaper than looking for a snapshot first (the result is the
    same). ``events``: the whole history, already read (a claim reads its
    executions' short histories at once); checked and loaded like any other.
    """
    if events:
        await _load_events(store, execution_id, events, 1, snapshot=None, in_thread=in_thread)
        return False
    snap = None if short else await storage.load_snapshot(execution_id)
    if snap is not None:
        version, data = snap
        rows = await storage.read_events(execution_id, from_version=max(version - 2, 0))
        by_version = {e.version: e for e in rows}
        problem = snapshot_problem(
            execution_id, version, data, by_version.get(version), by_version.get(version - 1)
        )
        if problem is None:
            later = [e for e in rows if e.version > version]
            await _load_events(
                store, execution_id, later, version + 1, snapshot=data, in_thread=in_thread
            )
            return True
        log.warning(
            "execution %s: the snapshot at version %d is not usable (%s); "
            "loading from its events instead",
            execution_id,
            version,
            problem,
        )
    await load_history(store, storage, execution_id, in_thread=in_thread)
    return False


async def load_history(
    store: _core.VersionStore, storage: Storage, execution_id: str, *, in_thread: bool = True
) -> None:
    """Load every stored event of ``execution_id`` into ``store``, ignoring snapshots.

    Damage raises ``IntegrityError`` naming the execution and version; no
    events at all ``ExecutionNotFoundError``.
    """
    events = await storage.read_events(execution_id)
    if not events:
        raise ExecutionNotFoundError(f"no execution {execution_id!r}", execution_id=execution_id)
    await _load_events(store, execution_id, events, 1, snapshot=None, in_thread=in_thread)


async def verify_execution(storage: Storage, execution_id: str) -> Any:
    """Verify every stored event of ``execution_id``, then its newest snapshot.

    Returns the core's ``VerifyReport``. Raises ``IntegrityError`` naming the
    execution and version for damaged events, and for a snapshot that is
    damaged or disagrees with the events (the message says the events are
    intact); ``ExecutionNotFoundError`` when nothing is stored.
    """
    events = await storage.read_events(execution_id)
    snap = await storage.load_snapshot(execution_id)
    if not events and snap is None:
        raise ExecutionNotFoundError(f"no execution {execution_id!r}", execution_id=execution_id)
    scratch = _core.VersionStore()
    await _load_events(scratch, execution_id, events, 1, snapshot=None, in_thread=True)
    report = await asyncio.to_thread(scratch.verify, execution_id)
    if snap is not None:
        version, data = snap
        by_version = {e.version: e for e in events}
        problem = snapshot_problem(
            execution_id, version, data, by_version.get(version), by_version.get(version - 1)
        )
        if problem is not None:
            raise IntegrityError(
                f"execution {execution_id!r}: the snapshot at version {version} is damaged "
                f"({problem}); the {len(events)} stored events verify, and the execution "
                "loads from them",
                execution_id=execution_id,
                version=version,
            )
    return report
