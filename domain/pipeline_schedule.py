"""A pipeline schedule: a tenant's cron, in its time zone, with retry and catch-up policies."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from domain.errors import InvalidArgument
from domain.retry import RetryPolicy
from domain.schedule import DstFoldPolicy, DstGapPolicy


class CatchupPolicy(StrEnum):
    """What a tick does with the slots it missed while the scheduler was down.

    ALL runs every missed slot (at most ``max_catchup_runs``, the newest; older ones are SKIPPED);
    LATEST runs only the newest missed slot; NONE runs only a slot that is not older than the
    misfire grace period. Slots that are not run are recorded as SKIPPED runs.
    """

    ALL = "all"
    LATEST = "latest"
    NONE = "none"

    @classmethod
    def parse(cls, value: CatchupPolicy | str) -> CatchupPolicy:
        if isinstance(value, CatchupPolicy):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise InvalidArgument("catchup", value, "must be one of all, latest, none") from None


SCHEDULE_NAMESPACE: Final = uuid.UUID("0b7f3a52-3c1e-4c55-8f7e-2d5b9a6c1e44")


def derive_schedule_id(tenant_id: str, config_id: str) -> str:
    """One schedule per (tenant, config): its id is derived from them."""
    return str(uuid.uuid5(SCHEDULE_NAMESPACE, f"{tenant_id}\x1f{config_id}"))


@dataclass(eq=True)
class PipelineSchedule:
    schedule_id: str
    tenant_id: str
    config_id: str
    cron: str
    timezone: str
    next_fire_time: datetime
    priority: int = 5
    enabled: bool = True
    retry_policy: RetryPolicy | None = None
    catchup: CatchupPolicy = CatchupPolicy.LATEST
    max_catchup_runs: int = 10
    misfire_grace_seconds: int = 300
    dst_gap: DstGapPolicy = DstGapPolicy.SHIFT
    dst_fold: DstFoldPolicy = DstFoldPolicy.FIRST
    last_scheduled_time: datetime | None = None
    version: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> PipelineSchedule:
        return replace(self, config=dict(self.config))
