"""Queue items and their small lifecycle.

QUEUED -> PROCESSING (a worker claimed it) -> COMPLETED | FAILED, and PROCESSING -> QUEUED when
its lease expires (recovery). The lifecycle is four edges, kept as a table; the hot path (claim,
complete) is a conditional update on ``(queue_id, status[, claim_token])`` in the adapters, so the
domain's part is to say which edge a request takes and to refuse the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from pipestate.domain.errors import InvalidState, InvalidTransition
from pipestate.domain.limits import base_claim_order


class QueueStatus(StrEnum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @classmethod
    def parse(cls, value: QueueStatus | str) -> QueueStatus:
        """Accept a member or its name.

        Raises:
            InvalidState: not a queue status.
        """
        if isinstance(value, QueueStatus):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().upper())
            except ValueError:
                pass
        raise InvalidState(value, "QueueStatus")


QUEUE_TRANSITIONS: Final[Mapping[str, tuple[QueueStatus, QueueStatus]]] = {
    "claim": (QueueStatus.QUEUED, QueueStatus.PROCESSING),
    "complete": (QueueStatus.PROCESSING, QueueStatus.COMPLETED),
    "fail": (QueueStatus.PROCESSING, QueueStatus.FAILED),
    "release": (QueueStatus.PROCESSING, QueueStatus.QUEUED),
}
"""trigger -> (from, to): the queue item lifecycle as data."""


def queue_edge(queue_id: str, current: QueueStatus, trigger: str) -> QueueStatus:
    """The destination of ``trigger`` from ``current``.

    Raises:
        InvalidTransition: unknown trigger, or not allowed from ``current``.
    """
    edge = QUEUE_TRANSITIONS.get(trigger)
    if edge is None or edge[0] is not current:
        raise InvalidTransition(queue_id, current, trigger)
    return edge[1]


@dataclass(eq=True)
class QueueItem:
    """Work waiting for (or held by) a worker. ``run_id`` links it to its run, if any."""

    queue_id: str
    tenant_id: str
    config: dict[str, Any]
    priority: int
    created_at: datetime
    status: QueueStatus = QueueStatus.QUEUED
    run_id: str | None = None
    version: int = 1
    attempts: int = 0
    worker_id: str | None = None
    claim_token: str | None = None
    claimed_at: datetime | None = None
    lease_expires_at: datetime | None = None
    completed_at: datetime | None = None
    error_message: str | None = None
    updated_at: datetime | None = None
    claim_order: float | None = None
    """Where the item stands in the claim order (see :mod:`pipestate.domain.limits`): set from
    ``created_at`` and ``priority`` when not given; the store moves it behind its flow's backlog."""

    def __post_init__(self) -> None:
        if self.claim_order is None:
            self.claim_order = base_claim_order(self.created_at, self.priority)

    @property
    def wait_seconds(self) -> float | None:
        """Seconds between enqueue and claim, once claimed."""
        if self.claimed_at is None:
            return None
        return (self.claimed_at - self.created_at).total_seconds()


@dataclass(frozen=True)
class QueueStats:
    """What ``QueueManager.get_queue_status()`` reports, computed by the store in one pass."""

    by_status: Mapping[QueueStatus, int]
    waiting_by_priority: Mapping[int, int]
    avg_wait_seconds: float | None
    p95_wait_seconds: float | None
    oldest_waiting_age_seconds: float | None
    total: int = field(default=0)

    @property
    def waiting(self) -> int:
        return self.by_status.get(QueueStatus.QUEUED, 0)
