"""The storage ports, re-exported for the application layer (they are defined in ``domain.ports``)."""

from __future__ import annotations

from domain.ports import (
    Capability,
    QueueRepository,
    RunFilter,
    RunOrder,
    RunRepository,
    ScheduleRepository,
    Storage,
)

__all__ = [
    "Capability",
    "QueueRepository",
    "RunFilter",
    "RunOrder",
    "RunRepository",
    "ScheduleRepository",
    "Storage",
]
