"""ScheduleManager: add, change, pause, resume and list pipeline schedules."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.domain.clock import Clock
from pipestate.domain.cron import DstFoldPolicy, DstGapPolicy
from pipestate.domain.errors import ConcurrencyConflict, InvalidArgument, ScheduleNotFound
from pipestate.domain.pipeline_schedule import CatchupPolicy, PipelineSchedule, derive_schedule_id
from pipestate.domain.ports import Storage
from pipestate.domain.retry import RetryPolicy
from pipestate.domain.run import require_id

_CAS_ATTEMPTS: Final = 5


class ScheduleManager:
    """Use cases on schedules. One schedule per (tenant_id, config_id); its id is derived from them.

    Args:
        storage: any :class:`~pipestate.domain.ports.Storage`.
        clock: where "now" comes from.
    """

    def __init__(self, storage: Storage, *, clock: Clock | None = None) -> None:
        self._storage = storage
        self._clock = clock or SYSTEM_CLOCK

    async def add(
        self,
        tenant_id: str,
        config_id: str,
        cron: str,
        timezone: str = "UTC",
        *,
        priority: int = 5,
        enabled: bool = True,
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
        catchup: CatchupPolicy | str = CatchupPolicy.LATEST,
        max_catchup_runs: int = 10,
        misfire_grace_seconds: int = 300,
        dst_gap: DstGapPolicy | str = DstGapPolicy.SHIFT,
        dst_fold: DstFoldPolicy | str = DstFoldPolicy.FIRST,
        config: Mapping[str, Any] | None = None,
        start: datetime | None = None,
    ) -> PipelineSchedule:
        """Store a new schedule; its first slot is the first fire time at or after ``start``
        (default now). A ``start`` in the past makes the next tick catch up from there.

        Raises:
            InvalidCronExpression: invalid cron (nothing is stored).
            InvalidTimezone: unknown zone (nothing is stored).
            InvalidArgument: other invalid settings, or a schedule for (tenant_id, config_id)
                already exists.
        """
        schedule = PipelineSchedule.new(
            tenant_id=tenant_id,
            config_id=config_id,
            cron=cron,
            timezone=timezone,
            now=self._clock.now(),
            start=start,
            priority=priority,
            enabled=enabled,
            retry_policy=retry_policy,
            catchup=catchup,
            max_catchup_runs=max_catchup_runs,
            misfire_grace_seconds=misfire_grace_seconds,
            dst_gap=dst_gap,
            dst_fold=dst_fold,
            config=config,
        )
        if not await self._storage.insert_schedule(schedule):
            raise InvalidArgument(
                "config_id",
                config_id,
                f"tenant {tenant_id!r} already has a schedule for it (update, pause or resume it instead)",
            )
        return schedule

    async def update(self, tenant_id: str, config_id: str, **changes: Any) -> PipelineSchedule:
        """Change settings (cron, timezone, priority, enabled, retry_policy, catchup,
        max_catchup_runs, misfire_grace_seconds, dst_gap, dst_fold, config). A new cron, zone or
        DST policy applies from now on.

        Raises:
            ScheduleNotFound: no such schedule.
            InvalidInput: an invalid change (nothing is stored).
            ConcurrencyConflict: it kept changing under us.
        """
        return await self._modify(tenant_id, config_id, lambda s, now: s.change(now, **changes))

    async def pause(self, tenant_id: str, config_id: str) -> PipelineSchedule:
        """Stop creating runs for this schedule (idempotent).

        Raises:
            ScheduleNotFound: no such schedule.
        """
        return await self._modify(tenant_id, config_id, lambda s, now: s.pause(now))

    async def resume(self, tenant_id: str, config_id: str) -> PipelineSchedule:
        """Fire again from the next slot after now; the paused period is not caught up (idempotent).

        Raises:
            ScheduleNotFound: no such schedule.
        """
        return await self._modify(tenant_id, config_id, lambda s, now: s.resume(now))

    async def get(self, tenant_id: str, config_id: str) -> PipelineSchedule:
        """The stored schedule.

        Raises:
            ScheduleNotFound: no such schedule.
        """
        schedule_id = _schedule_id(tenant_id, config_id)
        schedule = await self._storage.get_schedule(schedule_id)
        if schedule is None:
            raise ScheduleNotFound(f"{tenant_id}/{config_id}")
        return schedule

    async def list(
        self, *, tenant_id: str | None = None, enabled: bool | None = None
    ) -> list[PipelineSchedule]:
        """Schedules by (tenant_id, config_id)."""
        if tenant_id is not None:
            require_id("tenant_id", tenant_id)
        return await self._storage.list_schedules(tenant_id=tenant_id, enabled=enabled)

    async def _modify(self, tenant_id: str, config_id: str, change: Any) -> PipelineSchedule:
        for _ in range(_CAS_ATTEMPTS):
            schedule = await self.get(tenant_id, config_id)
            expected = schedule.version
            change(schedule, self._clock.now())
            if schedule.version == expected:
                return schedule  # nothing to change
            if await self._storage.update_schedule(schedule, expected):
                return schedule
        raise ConcurrencyConflict(_schedule_id(tenant_id, config_id))


def _schedule_id(tenant_id: str, config_id: str) -> str:
    return derive_schedule_id(require_id("tenant_id", tenant_id), require_id("config_id", config_id))
