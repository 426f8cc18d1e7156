"""Backfill: create a schedule's runs for a past range of slots, as the tick would have made them.

The runs are the very rows the tick makes for those slots: the same run ids (derived from tenant,
config and slot), priority, retry policy and config. A backfill is therefore idempotent — run it
twice, or over slots the tick already made, and nothing is duplicated — and the tick's next pass
queues the backfilled runs whose time has come, like any SCHEDULED run. A backfill does not move the
schedule's own ``next_fire_time``; paused schedules can be backfilled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.schedule_manager import ScheduleManager
from pipestate.domain.clock import Clock, ensure_aware
from pipestate.domain.cron import fire_times_between
from pipestate.domain.errors import InvalidArgument
from pipestate.domain.pipeline_schedule import PipelineSchedule, SlotPlan, runs_for_plan
from pipestate.domain.ports import Storage
from pipestate.domain.run import RunState

DEFAULT_MAX_RUNS: Final = 1000
"""A backfill refuses a range holding more slots than this unless the caller raises the cap."""
_BATCH: Final = 1000
_EPSILON: Final = timedelta(microseconds=1)


@dataclass(frozen=True)
class BackfillReport:
    """What a backfill found and did."""

    tenant_id: str
    config_id: str
    start: datetime
    """First instant of the range (inclusive)."""
    end: datetime
    """End of the range (exclusive)."""
    slots: tuple[datetime, ...]
    """Every slot of the schedule in ``[start, end)``, oldest first."""
    created: int
    """Runs inserted now (0 on a dry run)."""
    existing: Mapping[RunState, int]
    """Slots that already had a run (made by the tick or an earlier backfill), by the run's state.
    A slot that a catch-up policy SKIPPED keeps its SKIPPED run: backfill fills gaps, it does not
    run a slot again."""
    dry_run: bool

    @property
    def missing(self) -> int:
        """Slots without a run before this backfill."""
        return len(self.slots) - sum(self.existing.values())


class Backfill:
    """Creates the runs of a schedule's past slots.

    Args:
        storage: any :class:`~pipestate.domain.ports.Storage`.
        clock: where "now" comes from (the end of a range may not be later than now).
    """

    def __init__(self, storage: Storage, *, clock: Clock | None = None) -> None:
        self._storage = storage
        self._clock = clock or SYSTEM_CLOCK
        self._schedules = ScheduleManager(storage, clock=self._clock)

    async def run(
        self,
        tenant_id: str,
        config_id: str,
        start: datetime,
        end: datetime,
        *,
        max_runs: int = DEFAULT_MAX_RUNS,
        dry_run: bool = False,
    ) -> BackfillReport:
        """Create the runs of every slot in ``[start, end)`` that has none yet.

        Per 1,000 slots: one read of the slots' existing runs and (unless ``dry_run``) one
        insert-if-absent statement.

        Raises:
            ScheduleNotFound: no such schedule.
            NaiveDatetime: ``start`` or ``end`` without a time zone.
            InvalidArgument: ``end`` not after ``start``, ``end`` later than now (the tick makes
                future runs), ``max_runs`` < 1, or more than ``max_runs`` slots in the range
                (nothing is written).
        """
        first = ensure_aware(start, "start")
        last = ensure_aware(end, "end")
        if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1:
            raise InvalidArgument("max_runs", max_runs, "must be an integer >= 1")
        if last <= first:
            raise InvalidArgument("end", end, "must be after start")
        now = self._clock.now()
        if last > now:
            raise InvalidArgument(
                "end", end, f"is later than now ({now.isoformat()}); the tick makes future runs"
            )
        schedule = await self._schedules.get(tenant_id, config_id)
        slots = self._slots(schedule, first, last, max_runs)
        created = 0
        existing: Counter[RunState] = Counter()
        for offset in range(0, len(slots), _BATCH):
            batch = slots[offset : offset + _BATCH]
            plan = SlotPlan(batch, (), schedule.next_fire_time, schedule.last_scheduled_time)
            runs = runs_for_plan(schedule, plan, now)
            stored = await self._storage.get_runs([run.run_id for run in runs])
            existing.update(run.state for run in stored)
            if not dry_run and len(stored) < len(runs):
                created += await self._storage.insert_runs(runs)
        return BackfillReport(
            schedule.tenant_id, schedule.config_id, first, last, slots, created, dict(existing), dry_run
        )

    @staticmethod
    def _slots(
        schedule: PipelineSchedule, start: datetime, end: datetime, max_runs: int
    ) -> tuple[datetime, ...]:
        found = fire_times_between(
            schedule.cron,
            schedule.timezone,
            start - _EPSILON,  # fire_times_between is (start, end]; a backfill is [start, end)
            end - _EPSILON,
            dst_gap=schedule.dst_gap,
            dst_fold=schedule.dst_fold,
            limit=max_runs + 1,
        )
        if len(found) > max_runs:
            raise InvalidArgument(
                "max_runs",
                max_runs,
                f"the range {start.isoformat()} .. {end.isoformat()} holds more slots; "
                "narrow the range or raise the cap",
            )
        return tuple(found)
