"""Time as an injected port.

The domain never reads the clock: services take a :class:`Clock` and pass ``now`` into domain
methods. :class:`FrozenClock` is the test clock; the system clock lives in ``pipestate.application.clock``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

from pipestate.domain.errors import NaiveDatetime


class Clock(Protocol):
    """Source of the current instant."""

    def now(self) -> datetime:
        """Return the current instant as an aware UTC datetime."""
        ...


def ensure_aware(value: datetime, field: str) -> datetime:
    """Return ``value`` converted to UTC.

    Raises:
        NaiveDatetime: ``value`` has no time zone.
    """
    if not isinstance(value, datetime):
        raise NaiveDatetime(field, value)
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise NaiveDatetime(field, value)
    return value.astimezone(UTC)


class FrozenClock:
    """A clock that only moves when told to: ``advance()`` or ``set()``."""

    def __init__(self, start: datetime) -> None:
        self._now = ensure_aware(start, "start")

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move forward by ``delta`` or by ``timedelta(**kwargs)``; return the new instant."""
        step = delta if delta is not None else timedelta(**kwargs)
        self._now = self._now + step
        return self._now

    def set(self, instant: datetime) -> None:
        self._now = ensure_aware(instant, "instant")
