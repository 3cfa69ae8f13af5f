"""Time-ordered execution ids (RFC 9562 UUID version 7).

An execution id is the key of every row a commit writes. Random (version 4)
ids scatter consecutive executions over the whole B-tree of each table, so
every commit dirties pages of its own; ids that grow with time put the
executions started together on the same pages, at the right edge of the
index. The layout is RFC 9562's: 48 bits of Unix milliseconds, the version
nibble, a 12-bit counter (method 1 of its section 6.2: ids made in one
millisecond by one process still sort in the order they were made), the
variant bits and 62 random bits, which keep ids of different processes
distinct.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["new_execution_id"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_execution_id() -> str:
    """A new UUIDv7 string, greater than every id this process made before."""
    global _last_ms, _counter
    rand = int.from_bytes(os.urandom(10), "big")
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            # Start low in the counter's range, with room to count up.
            _counter = rand >> 70 & 0x1FF
        else:
            _counter += 1
            if _counter > 0xFFF:
                # Over 4,096 ids in one millisecond (or the clock stepped
                # back): borrow the next millisecond so the order holds.
                _last_ms += 1
                _counter = 0
        ms, seq = _last_ms, _counter
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | seq << 64
        | 0b10 << 62
        | rand & 0x3FFF_FFFF_FFFF_FFFF
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
