"""Scheduler: one tick materialises the due runs of every due schedule and queues due runs.

A tick is a fixed handful of batched port calls per page of ``batch_size`` due schedules, never
one call per schedule:

1. ``due_schedules(now, batch_size)``: only schedules with ``next_fire_time <= now`` (indexed);
2. ``insert_runs``: every new run of the page in one insert-if-absent batch, SKIPPED slots
   included. Run ids are derived from (tenant, config, slot), so a repeated or concurrent tick
   inserts nothing twice;
3. ``update_schedules``: one batch compare-and-set advancing ``next_fire_time`` and
   ``last_scheduled_time``; a schedule another scheduler advanced first is left alone (its runs
   were the same rows);

then, per page of ``batch_size`` due SCHEDULED runs (new slots and retries whose time has come):

4. ``find_runs(SCHEDULED, scheduled_before=now)``;
5. ``update_runs``: SCHEDULED -> PENDING, one batch compare-and-set;
6. ``insert_queue_items``: one item per run with a deterministic ``queue_id`` derived from
   ``(run_id, retry_count)``, so a run is never queued twice for one attempt (a new retry gets a
   new id). Only when the compare-and-set lost some races (another scheduler promoted them) is
   there one more call, ``get_runs``, to queue only the runs that really are PENDING.

So a tick with ``D`` due schedules and ``R`` due runs costs ``3 * ceil(D / batch) + 3 * ceil(R /
batch) + 2`` port calls (the last two are the empty pages that end each loop, skipped when a
page is short). With the default batch of 5,000, a tick over 10,000 due schedules is about a dozen
statements.

A run left PENDING without a queue item (a crash between steps 5 and 6) is queued again by
:class:`pipestate.application.recovery.Recovery` (same deterministic id, so never twice).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.domain.clock import Clock, ensure_aware
from pipestate.domain.errors import InvalidArgument
from pipestate.domain.pipeline_schedule import (
    MAX_RECORDED_SKIPS,
    PipelineSchedule,
    advance,
    plan_slots,
    runs_for_plan,
)
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.queue import QueueItem
from pipestate.domain.run import PipelineRun, RunState, derive_token
from pipestate.domain.validation import require_instant

log = logging.getLogger("pipestate.scheduler")

DEFAULT_BATCH_SIZE: Final = 5_000


def queue_id_for(run: PipelineRun) -> str:
    """The queue id of a run's current attempt: one per ``(run_id, retry_count)``."""
    return derive_token(run.run_id, str(run.retry_count))


def queue_item_for(run: PipelineRun, now: datetime) -> QueueItem:
    """The queue item that hands ``run`` (PENDING) to a worker.

    Its config is the run's config plus ``config_id``; its priority is the run's.
    """
    return QueueItem(
        queue_id=queue_id_for(run),
        tenant_id=run.tenant_id,
        config={**run.config, "config_id": run.config_id},
        priority=run.priority,
        created_at=now,
        run_id=run.run_id,
        updated_at=now,
    )


async def enqueue_pending(storage: Storage, runs: Sequence[PipelineRun], now: datetime) -> int:
    """Queue the PENDING runs among ``runs`` (insert-if-absent); return how many items were new."""
    items = [queue_item_for(r, now) for r in runs if r.state is RunState.PENDING]
    return await storage.insert_queue_items(items) if items else 0


@dataclass(frozen=True)
class ParkedSchedule:
    """A due schedule the tick could not plan: paused, with the reason (fix it, then resume)."""

    schedule_id: str
    tenant_id: str
    config_id: str
    reason: str


@dataclass
class TickReport:
    """What one tick did."""

    now: datetime
    due_schedules: int = 0
    """Due schedules planned (a schedule seen on two pages counts twice)."""
    runs_created: int = 0
    """Run rows inserted (SCHEDULED and SKIPPED); 0 for slots that already had their row."""
    runs_skipped: int = 0
    """SKIPPED slots planned by the catch-up policies (inserted or already present)."""
    schedules_advanced: int = 0
    schedule_conflicts: int = 0
    """Schedules another scheduler advanced first."""
    runs_promoted: int = 0
    """SCHEDULED -> PENDING applied by this tick."""
    items_enqueued: int = 0
    schedule_errors: int = 0
    """Due schedules that could not be planned (invalid stored cron/zone, a zone gone from the
    time-zone database); each is paused (parked) and listed in :attr:`parked_schedules`."""
    parked_schedules: list[ParkedSchedule] = field(default_factory=list)
    port_calls: int = 0
    """Storage calls made by the tick (each one statement/transaction on SQL backends)."""


ProgressCallback = Callable[[str], None]


class Scheduler:
    """Turns schedules into runs and due runs into queue items.

    Args:
        storage: any :class:`~pipestate.domain.ports.Storage`.
        clock: where "now" comes from when :meth:`tick` is not given one.
        batch_size: schedules (and runs) handled per page of batched port calls.
        max_recorded_skips: bound on SKIPPED rows per schedule and tick (see
            :mod:`pipestate.domain.pipeline_schedule`).
        progress: called with a short line after each page (for the command line).
    """

    def __init__(
        self,
        storage: Storage,
        *,
        clock: Clock | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_recorded_skips: int = MAX_RECORDED_SKIPS,
        progress: ProgressCallback | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidArgument("batch_size", batch_size, "must be an integer >= 1")
        self._storage = storage
        self._clock = clock or SYSTEM_CLOCK
        self._batch = batch_size
        self._max_skips = max_recorded_skips
        self._progress = progress

    async def tick(self, now: datetime | None = None) -> TickReport:
        """Create the due runs of every due schedule, then queue every due SCHEDULED run.

        Idempotent and safe to run concurrently with other ticks: no slot gets two runs and no
        run attempt gets two queue items.

        Raises:
            NaiveDatetime: ``now`` without a time zone.
            StorageError: the store failed (what was written stays consistent; tick again).
        """
        at = require_instant("now", ensure_aware(now, "now") if now is not None else self._clock.now())
        report = TickReport(now=at)
        await self._materialise(at, report)
        await self._promote(at, report)
        return report

    # ------------------------------------------------------------------ 1-3: schedules -> runs
    async def _materialise(self, now: datetime, report: TickReport) -> None:
        page = 0
        while True:
            due = await self._storage.due_schedules(now, self._batch)
            report.port_calls += 1
            if not due:
                return
            page += 1
            runs: list[PipelineRun] = []
            moved: list[tuple[PipelineSchedule, int]] = []
            for schedule in due:
                try:
                    plan = plan_slots(schedule, now, max_recorded_skips=self._max_skips)
                    runs.extend(runs_for_plan(schedule, plan, now))
                except Exception as exc:  # one broken row must not stop every tenant's tick
                    # Park it: pause it (in the same batch compare-and-set), so that it leaves the
                    # due set instead of heading every page of every later tick.
                    log.error(
                        "schedule %s (%s/%s) cannot be planned and is paused: %s",
                        schedule.schedule_id,
                        schedule.tenant_id,
                        schedule.config_id,
                        exc,
                    )
                    report.schedule_errors += 1
                    report.parked_schedules.append(
                        ParkedSchedule(schedule.schedule_id, schedule.tenant_id, schedule.config_id, str(exc))
                    )
                    parked = schedule.copy()
                    parked.pause(now)
                    moved.append((parked, schedule.version))
                    continue
                report.runs_skipped += len(plan.skip)
                moved.append((advance(schedule, plan, now), schedule.version))
            report.due_schedules += len(due)
            if runs:
                report.runs_created += await self._storage.insert_runs(runs)
                report.port_calls += 1
            applied = await self._storage.update_schedules(moved)
            report.port_calls += 1
            report.schedules_advanced += applied
            report.schedule_conflicts += len(moved) - applied
            if self._progress is not None:
                self._progress(
                    f"tick page {page}: {len(due)} due schedules, {len(runs)} slots, {applied} advanced"
                )
            # A short page was the last one; a page where nothing advanced would come back again.
            if len(due) < self._batch or applied == 0:
                return

    # ------------------------------------------------------------------ 4-6: due runs -> queue
    async def _promote(self, now: datetime, report: TickReport) -> None:
        due_filter = RunFilter(states=[RunState.SCHEDULED], scheduled_before=now)
        while True:
            runs = await self._storage.find_runs(due_filter, limit=self._batch)
            report.port_calls += 1
            if not runs:
                return
            pairs: list[tuple[PipelineRun, int]] = []
            for run in runs:
                expected = run.version
                run.make_pending(now)
                pairs.append((run, expected))
            applied = await self._storage.update_runs(pairs)
            report.port_calls += 1
            report.runs_promoted += applied
            promoted: Sequence[PipelineRun] = runs
            if applied < len(runs):
                # Some runs were promoted (or cancelled) by someone else: queue only the ones
                # that are PENDING now. Ids are deterministic, so a double insert would be a no-op
                # anyway; this keeps items for cancelled runs out of the queue.
                promoted = await self._storage.get_runs([r.run_id for r in runs])
                report.port_calls += 1
            report.items_enqueued += await enqueue_pending(self._storage, promoted, now)
            report.port_calls += 1
            if len(runs) < self._batch or applied == 0:
                return
