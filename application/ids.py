"""Id and token generation (application-side: it reads the wall clock and the OS's randomness)."""

from __future__ import annotations

import os
import secrets
import threading
import time


class SortableIds:
    """Time-ordered ids: 48-bit ms, 24-bit per-process counter, 56 random bits; 32 hex chars.

    Ids made in one process sort in creation order even when ``created_at`` ties (a frozen test
    clock, or two enqueues in the same microsecond), which keeps FIFO exact within a priority.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def next(self) -> str:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                self._counter += 1
                ms = self._last_ms
            else:
                self._last_ms = ms
                self._counter = 0
            counter = self._counter
        tail = int.from_bytes(os.urandom(7), "big")
        return f"{ms:012x}{counter:06x}{tail:014x}"


_IDS = SortableIds()


def new_id() -> str:
    """A new time-sortable id."""
    return _IDS.next()


def new_token() -> str:
    """A new unguessable claim token."""
    return secrets.token_hex(16)
