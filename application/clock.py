"""The system clock (the only place pipestate reads the wall clock)."""

from __future__ import annotations

from datetime import UTC, datetime


class SystemClock:
    """The real time, as aware UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


SYSTEM_CLOCK = SystemClock()
