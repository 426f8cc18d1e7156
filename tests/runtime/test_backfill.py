"""Backfill creates the tick's own runs for a past range: idempotent, capped, and dry-runnable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipestate.application import ScheduleManager, Scheduler
from pipestate.application.backfill import Backfill
from pipestate.domain.clock import FrozenClock
from pipestate.domain.errors import InvalidArgument, NaiveDatetime, ScheduleNotFound
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.run import RunState

START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(days=30)


@pytest.fixture
def backfill(storage: Storage, clock: FrozenClock) -> Backfill:
    return Backfill(storage, clock=clock)


async def test_thirty_days_of_an_hourly_schedule_are_720_runs_and_repeating_adds_none(
    storage: Storage, schedules: ScheduleManager, backfill: Backfill
) -> None:
    await schedules.add("acme", "hourly", "0 * * * *", priority=3, config={"t": 1})

    first = await backfill.run("acme", "hourly", START, END, max_runs=720)
    again = await backfill.run("acme", "hourly", START, END, max_runs=720)

    assert (len(first.slots), first.created, first.existing) == (720, 720, {})
    assert (again.created, again.existing, again.missing) == (0, {RunState.SCHEDULED: 720}, 0)
    runs = await storage.find_runs(RunFilter(tenant_id="acme"))
    assert len(runs) == 720
    assert {run.scheduled_time for run in runs} == set(first.slots)
    assert min(first.slots) == START and max(first.slots) == END - timedelta(hours=1)
    assert all(run.state is RunState.SCHEDULED and run.priority == 3 for run in runs)


async def test_a_dry_run_reports_the_slots_and_writes_nothing(
    storage: Storage, schedules: ScheduleManager, backfill: Backfill
) -> None:
    await schedules.add("acme", "hourly", "0 * * * *")

    report = await backfill.run("acme", "hourly", START, START + timedelta(days=1), dry_run=True)

    assert (len(report.slots), report.created, report.missing, report.dry_run) == (24, 0, 24, True)
    assert await storage.find_runs(RunFilter()) == []


async def test_backfill_overlapping_the_ticks_slots_makes_no_duplicates_and_the_tick_queues_them(
    storage: Storage, clock: FrozenClock, backfill: Backfill
) -> None:
    now = clock.now()
    schedules = ScheduleManager(storage, clock=clock)
    await schedules.add("acme", "hourly", "0 * * * *", start=now - timedelta(hours=6), catchup="all")
    scheduler = Scheduler(storage, clock=clock)
    await scheduler.tick(now)  # the tick's own slots: now-6h .. now (7 runs)

    report = await backfill.run("acme", "hourly", now - timedelta(hours=12), now)  # 12 slots
    await scheduler.tick(now)

    runs = await storage.find_runs(RunFilter(tenant_id="acme"))
    slots = sorted(run.scheduled_time for run in runs)
    assert slots == [now - timedelta(hours=h) for h in range(12, -1, -1)]  # 13 distinct slots
    assert (report.created, report.existing) == (6, {RunState.PENDING: 6})
    assert {run.state for run in runs} == {RunState.PENDING}


async def test_a_slot_skipped_by_catch_up_keeps_its_skipped_run(
    storage: Storage, clock: FrozenClock, backfill: Backfill
) -> None:
    now = clock.now()
    schedules = ScheduleManager(storage, clock=clock)
    await schedules.add("acme", "hourly", "0 * * * *", start=now - timedelta(hours=3), catchup="latest")
    await Scheduler(storage, clock=clock).tick(now)

    report = await backfill.run("acme", "hourly", now - timedelta(hours=3), now)

    assert (report.created, report.existing) == (0, {RunState.SKIPPED: 3})


async def test_a_range_with_more_slots_than_the_cap_is_refused_and_nothing_is_written(
    storage: Storage, schedules: ScheduleManager, backfill: Backfill
) -> None:
    await schedules.add("acme", "minutely", "* * * * *")

    with pytest.raises(InvalidArgument, match="max_runs"):
        await backfill.run("acme", "minutely", START, START + timedelta(days=1), max_runs=100)

    assert await storage.find_runs(RunFilter()) == []


@pytest.mark.parametrize(
    ("start", "end", "error"),
    [
        (START, START, InvalidArgument),
        (END, START, InvalidArgument),
        (START, datetime(2030, 1, 1, tzinfo=UTC), InvalidArgument),
        (START.replace(tzinfo=None), END, NaiveDatetime),
    ],
)
async def test_bad_ranges_are_typed_errors(
    storage: Storage,
    schedules: ScheduleManager,
    backfill: Backfill,
    start: datetime,
    end: datetime,
    error: type[Exception],
) -> None:
    await schedules.add("acme", "hourly", "0 * * * *")
    with pytest.raises(error):
        await backfill.run("acme", "hourly", start, end)
    assert await storage.find_runs(RunFilter()) == []


async def test_an_unknown_schedule_is_not_found(backfill: Backfill) -> None:
    with pytest.raises(ScheduleNotFound):
        await backfill.run("acme", "missing", START, END)
