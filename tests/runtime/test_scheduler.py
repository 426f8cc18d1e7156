from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipestate.application import ScheduleManager, Scheduler
from pipestate.domain.clock import FrozenClock
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.queue import QueueStatus
from pipestate.domain.run import RunState
from tests.conftest import T0


class CountingStorage:
    """A storage proxy that counts the port calls made through it."""

    def __init__(self, inner: Storage) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await attribute(*args, **kwargs)

        return call


async def states(storage: Storage, **criteria: Any) -> dict[RunState, int]:
    runs = await storage.find_runs(RunFilter(**criteria))
    counts: dict[RunState, int] = {}
    for run in runs:
        counts[run.state] = counts.get(run.state, 0) + 1
    return counts


async def test_tick_creates_the_due_run_and_queues_it_with_the_schedule_priority(
    storage: Storage, schedules: ScheduleManager, scheduler: Scheduler
) -> None:
    await schedules.add("acme", "ingest", "0 * * * *", priority=2, config={"table": "orders"}, start=T0)

    report = await scheduler.tick(T0 + timedelta(seconds=5))

    (run,) = await storage.find_runs(RunFilter())
    (item,) = await storage.find_queue_items()
    assert (report.runs_created, report.runs_promoted, report.items_enqueued) == (1, 1, 1)
    assert run.state is RunState.PENDING and run.scheduled_time == T0
    assert (item.run_id, item.priority, item.status) == (run.run_id, 2, QueueStatus.QUEUED)
    assert item.config == {"table": "orders", "config_id": "ingest"}
    schedule = await schedules.get("acme", "ingest")
    assert (schedule.next_fire_time, schedule.last_scheduled_time) == (T0 + timedelta(hours=1), T0)


async def test_double_tick_is_idempotent(
    storage: Storage, schedules: ScheduleManager, scheduler: Scheduler
) -> None:
    await schedules.add("acme", "ingest", "0 * * * *", catchup="all", start=T0 - timedelta(hours=2))
    now = T0 + timedelta(minutes=1)

    first = await scheduler.tick(now)
    second = await scheduler.tick(now)

    assert (first.runs_created, first.items_enqueued) == (3, 3)
    assert (second.runs_created, second.runs_promoted, second.items_enqueued) == (0, 0, 0)
    assert await states(storage) == {RunState.PENDING: 3}
    assert await storage.count_queue_items() == 3


async def test_two_concurrent_ticks_create_one_run_per_slot_and_one_item_per_run(
    storage: Storage, schedules: ScheduleManager, clock: FrozenClock
) -> None:
    for config in ("a", "b", "c"):
        await schedules.add("acme", config, "*/15 * * * *", catchup="all", start=T0 - timedelta(hours=1))
    now = T0 + timedelta(minutes=1)
    one, two = Scheduler(storage, clock=clock), Scheduler(storage, clock=clock)

    reports = await asyncio.gather(one.tick(now), two.tick(now), one.tick(now))

    runs = await storage.find_runs(RunFilter())
    items = await storage.find_queue_items()
    assert len(runs) == 3 * 5  # 11:00, 11:15, 11:30, 11:45, 12:00 for each schedule
    assert len({r.run_id for r in runs}) == 15
    assert sorted(i.run_id or "" for i in items) == sorted(r.run_id for r in runs)
    assert sum(r.runs_created for r in reports) == 15
    assert sum(r.items_enqueued for r in reports) == 15


@pytest.mark.parametrize(
    ("policy", "extra", "expected"),
    [
        ("all", {"max_catchup_runs": 5}, {RunState.PENDING: 5, RunState.SKIPPED: 68}),
        ("latest", {}, {RunState.PENDING: 1, RunState.SKIPPED: 72}),
        ("none", {"misfire_grace_seconds": 300}, {RunState.PENDING: 1, RunState.SKIPPED: 72}),
        ("none", {"misfire_grace_seconds": 60}, {RunState.SKIPPED: 73}),
    ],
)
async def test_catchup_policy_after_a_three_day_outage(
    storage: Storage,
    schedules: ScheduleManager,
    scheduler: Scheduler,
    policy: str,
    extra: dict[str, Any],
    expected: dict[RunState, int],
) -> None:
    await schedules.add("acme", "ingest", "0 * * * *", catchup=policy, start=T0, **extra)
    back = T0 + timedelta(days=3, minutes=2)  # 73 hourly slots were due: T0 .. T0 + 72 h

    report = await scheduler.tick(back)

    assert await states(storage) == expected
    assert await storage.count_queue_items() == expected.get(RunState.PENDING, 0)
    assert report.runs_skipped == expected[RunState.SKIPPED]
    newest = await storage.find_runs(RunFilter(states=[RunState.PENDING]))
    assert all(r.scheduled_time > back - timedelta(hours=5) for r in newest)
    schedule = await schedules.get("acme", "ingest")
    assert schedule.next_fire_time == T0 + timedelta(hours=73)
    assert (await scheduler.tick(back)).runs_created == 0


@pytest.mark.parametrize(("day", "local_times"), [(datetime(2026, 3, 8), 24), (datetime(2026, 11, 1), 24)])
async def test_dst_day_for_a_new_york_schedule_makes_one_run_per_local_slot(
    storage: Storage, schedules: ScheduleManager, scheduler: Scheduler, day: datetime, local_times: int
) -> None:
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("America/New_York")
    start = day.replace(tzinfo=zone).astimezone(UTC)
    end = (day + timedelta(days=1)).replace(tzinfo=zone).astimezone(UTC) - timedelta(minutes=1)
    await schedules.add(
        "globex", "sync", "30 * * * *", "America/New_York", catchup="all", max_catchup_runs=30, start=start
    )

    await scheduler.tick(end)
    await scheduler.tick(end)

    runs = await storage.find_runs(RunFilter())
    walls = [r.scheduled_time.astimezone(zone).strftime("%H:%M") for r in runs]
    assert len(runs) == local_times
    assert len(set(walls)) == len(walls)  # fall back: 01:30 only once; spring: 02:30 -> 03:00 once
    assert walls.count("01:30") == 1


async def test_tick_cost_grows_with_pages_not_with_schedules(
    storage: Storage, schedules: ScheduleManager, clock: FrozenClock
) -> None:
    for i in range(12):
        await schedules.add(f"t{i % 4}", f"c{i}", "0 * * * *", start=T0)
    counting = CountingStorage(storage)

    one_page = await Scheduler(counting, clock=clock, batch_size=1000).tick(T0 + timedelta(minutes=1))

    assert one_page.due_schedules == 12 and one_page.items_enqueued == 12
    assert counting.calls == [
        "due_schedules",
        "insert_runs",
        "update_schedules",
        "find_runs",
        "update_runs",
        "insert_queue_items",
    ]
    assert one_page.port_calls == len(counting.calls)

    counting.calls.clear()
    paged = await Scheduler(counting, clock=clock, batch_size=5).tick(T0 + timedelta(hours=1, minutes=1))

    assert paged.due_schedules == 12 and paged.items_enqueued == 12
    assert len(counting.calls) == paged.port_calls == 3 * 3 + 3 * 3  # 3 pages of schedules, 3 of runs


async def test_paused_schedule_makes_no_runs_and_resume_does_not_catch_up(
    storage: Storage, schedules: ScheduleManager, scheduler: Scheduler, clock: FrozenClock
) -> None:
    await schedules.add("acme", "ingest", "0 * * * *", catchup="all", start=T0)
    await schedules.pause("acme", "ingest")

    await scheduler.tick(T0 + timedelta(hours=3, minutes=1))
    clock.set(T0 + timedelta(hours=3, minutes=2))
    resumed = await schedules.resume("acme", "ingest")
    await scheduler.tick(T0 + timedelta(hours=4, minutes=1))

    runs = await storage.find_runs(RunFilter())
    assert resumed.next_fire_time == T0 + timedelta(hours=4)
    assert [r.scheduled_time for r in runs] == [T0 + timedelta(hours=4)]


async def test_a_retried_run_is_queued_when_its_retry_time_comes_with_a_new_item(
    storage: Storage, schedules: ScheduleManager, scheduler: Scheduler, clock: FrozenClock
) -> None:
    await schedules.add("acme", "ingest", "0 * * * *", start=T0)
    await scheduler.tick(T0)
    (run,) = await storage.find_runs(RunFilter())
    expected = run.version
    run.start(T0, worker_id="w", claim_token="tok", lease_expires_at=T0 + timedelta(minutes=5))
    run.fail(T0, error_message="boom", error_type="TransientError")
    run.retry(T0)
    assert await storage.update_run(run, expected)

    early = await scheduler.tick(T0 + timedelta(seconds=59))
    due = await scheduler.tick(T0 + timedelta(minutes=1))

    assert early.items_enqueued == 0
    assert due.items_enqueued == 1
    items = await storage.find_queue_items(run_id=run.run_id)
    assert len(items) == 2 and len({i.queue_id for i in items}) == 2
