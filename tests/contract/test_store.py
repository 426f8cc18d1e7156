"""The Storage port itself: compare-and-set, batches, filters, schedules, time semantics."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from pipestate.domain.clock import FrozenClock
from pipestate.domain.cron import DstFoldPolicy, DstGapPolicy
from pipestate.domain.errors import RunNotFound, ScheduleNotFound
from pipestate.domain.pipeline_schedule import CatchupPolicy, PipelineSchedule, derive_schedule_id
from pipestate.domain.ports import RunFilter, RunOrder, Storage
from pipestate.domain.retry import RetryPolicy
from pipestate.domain.run import PipelineRun, RunState

RunFactory = Callable[..., PipelineRun]


async def test_insert_runs_is_insert_if_absent(storage: Storage, run_factory: RunFactory) -> None:
    runs = [run_factory() for _ in range(3)]
    assert await storage.insert_runs(runs) == 3
    changed = runs[0].copy()
    changed.priority = 9
    assert await storage.insert_runs([changed, run_factory(), runs[1]]) == 1
    stored = await storage.get_run(runs[0].run_id)
    assert stored == runs[0]


async def test_update_run_is_a_compare_and_set_on_version(storage: Storage, run_factory: RunFactory) -> None:
    run = run_factory()
    await storage.insert_runs([run])
    mine, theirs = run.copy(), run.copy()
    mine.cancel(run.created_at or run.scheduled_time, reason="mine")
    theirs.skip(run.scheduled_time, reason="theirs")

    assert await storage.update_run(mine, expected_version=1) is True
    assert await storage.update_run(theirs, expected_version=1) is False
    stored = await storage.get_run(run.run_id)
    assert stored == mine and stored is not None and stored.version == 2


async def test_update_of_a_missing_run_raises_run_not_found(
    storage: Storage, run_factory: RunFactory
) -> None:
    with pytest.raises(RunNotFound):
        await storage.update_run(run_factory(), expected_version=1)


async def test_batch_update_applies_only_pairs_whose_version_matches(
    storage: Storage, run_factory: RunFactory, clock: FrozenClock
) -> None:
    runs = [run_factory() for _ in range(4)]
    await storage.insert_runs(runs)
    pairs = []
    for i, run in enumerate(runs):
        moved = run.copy()
        moved.make_pending(clock.now())
        pairs.append((moved, 1 if i % 2 == 0 else 7))

    assert await storage.update_runs(pairs) == 2
    states = {r.run_id: r.state for r in await storage.get_runs([r.run_id for r in runs])}
    assert [states[r.run_id] for r in runs] == [RunState.PENDING, RunState.SCHEDULED] * 2
    assert await storage.update_runs([]) == 0


async def test_every_field_round_trips(storage: Storage, clock: FrozenClock) -> None:
    now = clock.now()
    run = PipelineRun.new(
        tenant_id="t",
        config_id="c",
        scheduled_time=datetime(2026, 3, 8, 2, 30, 0, 123456, tzinfo=timezone(timedelta(hours=-5))),
        now=now,
        priority=1,
        retry_policy=RetryPolicy(max_retries=5, retry_on_errors=("TimeoutError",), jitter=0.25),
        schedule_id="sched-1",
        config={"sql": "SELECT 1", "nested": {"list": [1, 2.5, None, True]}},
    )
    await storage.insert_runs([run])
    expected = run.copy()
    run.make_pending(now + timedelta(days=10))
    run.start(
        now,
        worker_id="w",
        claim_token="tok",
        lease_expires_at=now + timedelta(minutes=5),
        pipeline_logging_id="l",
    )
    run.fail(now + timedelta(seconds=1, microseconds=5), error_message="x" * 2000, error_type="TimeoutError")
    assert await storage.update_run(run, expected.version)

    stored = await storage.get_run(run.run_id)

    assert stored == run
    assert stored is not None and stored.scheduled_time == datetime(2026, 3, 8, 7, 30, 0, 123456, tzinfo=UTC)
    assert all(
        getattr(stored, f).tzinfo is not None
        for f in (
            "scheduled_time",
            "started_at",
            "completed_at",
            "next_retry_at",
            "lease_expires_at",
            "created_at",
        )
        if getattr(stored, f) is not None
    )


async def test_find_runs_filters_orders_and_limits(
    storage: Storage, run_factory: RunFactory, clock: FrozenClock
) -> None:
    now = clock.now()
    early = run_factory(scheduled_time=now - timedelta(hours=2))
    late = run_factory(scheduled_time=now + timedelta(hours=2))
    other = run_factory(tenant_id="other", scheduled_time=now - timedelta(hours=1))
    running = run_factory(scheduled_time=now - timedelta(hours=3))
    await storage.insert_runs([early, late, other, running])
    expected = running.version
    running.make_pending(now)
    running.start(now, worker_id="w", claim_token="t", lease_expires_at=now + timedelta(minutes=1))
    await storage.update_run(running, expected)

    due = await storage.find_runs(RunFilter(states=[RunState.SCHEDULED], scheduled_before=now))
    mine = await storage.find_runs(RunFilter(tenant_id="tenant-a"), limit=2)
    expired = await storage.find_runs(RunFilter(lease_expired_before=now + timedelta(minutes=1)))
    not_yet = await storage.find_runs(RunFilter(lease_expired_before=now))
    by_config = await storage.find_runs(RunFilter(config_id=late.config_id))

    assert [r.run_id for r in due] == [early.run_id, other.run_id]
    assert [r.run_id for r in mine] == [running.run_id, early.run_id]
    assert [r.run_id for r in expired] == [running.run_id] and not_yet == []
    assert [r.run_id for r in by_config] == [late.run_id]


async def test_find_runs_newest_completed_first(
    storage: Storage, run_factory: RunFactory, clock: FrozenClock
) -> None:
    runs = [run_factory() for _ in range(3)]
    await storage.insert_runs(runs)
    for minutes, run in zip((5, 1, 3), runs, strict=True):
        version = run.version
        run.cancel(clock.now() + timedelta(minutes=minutes))
        await storage.update_run(run, version)
    unfinished = run_factory()
    await storage.insert_runs([unfinished])

    newest = await storage.find_runs(RunFilter(), order=RunOrder.COMPLETED_DESC)

    assert [r.run_id for r in newest] == [runs[0].run_id, runs[2].run_id, runs[1].run_id, unfinished.run_id]


async def test_counts_by_state(storage: Storage, run_factory: RunFactory, clock: FrozenClock) -> None:
    runs = [run_factory() for _ in range(3)] + [run_factory(tenant_id="b")]
    await storage.insert_runs(runs)
    runs[0].make_pending(clock.now())
    await storage.update_run(runs[0], 1)
    assert await storage.count_runs_by_state() == {RunState.SCHEDULED: 3, RunState.PENDING: 1}
    assert await storage.count_runs_by_state("b") == {RunState.SCHEDULED: 1}


def _schedule(
    clock: FrozenClock, tenant: str = "t", config_id: str = "c", **overrides: object
) -> PipelineSchedule:
    fields: dict[str, object] = {
        "schedule_id": derive_schedule_id(tenant, config_id),
        "tenant_id": tenant,
        "config_id": config_id,
        "cron": "*/15 * * * *",
        "timezone": "America/New_York",
        "next_fire_time": clock.now(),
        "created_at": clock.now(),
        "updated_at": clock.now(),
    }
    fields.update(overrides)
    return PipelineSchedule(**fields)  # type: ignore[arg-type]


async def test_schedules_round_trip_and_insert_if_absent(storage: Storage, clock: FrozenClock) -> None:
    schedule = _schedule(
        clock,
        retry_policy=RetryPolicy(max_retries=1),
        catchup=CatchupPolicy.ALL,
        dst_gap=DstGapPolicy.SKIP,
        dst_fold=DstFoldPolicy.BOTH,
        config={"k": "v"},
        last_scheduled_time=clock.now() - timedelta(minutes=15),
    )
    assert await storage.insert_schedule(schedule) is True
    assert await storage.insert_schedule(schedule) is False
    assert await storage.get_schedule(schedule.schedule_id) == schedule
    assert await storage.get_schedule("missing") is None


async def test_due_schedules_are_enabled_and_due_earliest_first(storage: Storage, clock: FrozenClock) -> None:
    now = clock.now()
    later = _schedule(clock, config_id="later", next_fire_time=now - timedelta(minutes=1))
    earliest = _schedule(clock, config_id="earliest", next_fire_time=now - timedelta(minutes=5))
    future = _schedule(clock, config_id="future", next_fire_time=now + timedelta(seconds=1))
    paused = _schedule(clock, config_id="paused", next_fire_time=now - timedelta(hours=1), enabled=False)
    for schedule in (later, earliest, future, paused):
        await storage.insert_schedule(schedule)

    due = await storage.due_schedules(now, limit=10)
    first = await storage.due_schedules(now, limit=1)

    assert [s.config_id for s in due] == ["earliest", "later"]
    assert [s.config_id for s in first] == ["earliest"]
    assert [s.config_id for s in await storage.list_schedules(enabled=False)] == ["paused"]
    assert len(await storage.list_schedules(tenant_id="t")) == 4


async def test_schedule_updates_are_compare_and_set(storage: Storage, clock: FrozenClock) -> None:
    a, b = _schedule(clock, config_id="a"), _schedule(clock, config_id="b")
    await storage.insert_schedule(a)
    await storage.insert_schedule(b)
    a.enabled, a.version = False, 2
    assert await storage.update_schedule(a, expected_version=1) is True
    assert await storage.update_schedule(a, expected_version=1) is False
    b.next_fire_time, b.version = clock.now() + timedelta(minutes=15), 2
    a2 = a.copy()
    a2.version = 3
    assert await storage.update_schedules([(b, 1), (a2, 1)]) == 1
    assert await storage.get_schedule(b.schedule_id) == b
    with pytest.raises(ScheduleNotFound):
        await storage.update_schedule(_schedule(clock, config_id="nope"), expected_version=1)
