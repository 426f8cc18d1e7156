from __future__ import annotations

from datetime import timedelta

import pytest

from pipestate.application import ScheduleManager
from pipestate.domain.clock import FrozenClock
from pipestate.domain.errors import InvalidArgument, InvalidCronExpression, InvalidTimezone, ScheduleNotFound
from pipestate.domain.pipeline_schedule import CatchupPolicy, derive_schedule_id
from pipestate.domain.ports import Storage
from tests.conftest import T0


async def test_add_stores_a_schedule_whose_first_slot_follows_now(
    storage: Storage, schedules: ScheduleManager
) -> None:
    added = await schedules.add("acme", "ingest", "*/15 * * * *", "Asia/Kolkata", priority=3, catchup="all")

    stored = await storage.get_schedule(derive_schedule_id("acme", "ingest"))
    assert stored == added
    assert (added.next_fire_time, added.catchup, added.priority) == (T0, CatchupPolicy.ALL, 3)


@pytest.mark.parametrize(
    ("cron", "zone", "error"),
    [("0 25 * * *", "UTC", InvalidCronExpression), ("0 * * * *", "Europe/Atlantis", InvalidTimezone)],
)
async def test_add_rejects_invalid_cron_or_zone_and_stores_nothing(
    storage: Storage, schedules: ScheduleManager, cron: str, zone: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await schedules.add("acme", "ingest", cron, zone)

    assert await schedules.list() == []


async def test_add_twice_is_rejected(schedules: ScheduleManager) -> None:
    await schedules.add("acme", "ingest", "0 * * * *")

    with pytest.raises(InvalidArgument, match="already has a schedule"):
        await schedules.add("acme", "ingest", "0 * * * *")


async def test_pause_resume_update_and_list(schedules: ScheduleManager, clock: FrozenClock) -> None:
    await schedules.add("acme", "ingest", "0 * * * *", start=T0)
    await schedules.add("globex", "report", "0 6 * * *", "America/New_York")

    paused = await schedules.pause("acme", "ingest")
    clock.advance(hours=5, minutes=10)
    resumed = await schedules.resume("acme", "ingest")
    updated = await schedules.update("acme", "ingest", cron="*/30 * * * *", priority=1)

    assert not paused.enabled
    assert resumed.enabled and resumed.next_fire_time == T0 + timedelta(hours=6)
    assert (updated.cron, updated.priority, updated.next_fire_time) == (
        "*/30 * * * *",
        1,
        T0 + timedelta(hours=5, minutes=30),
    )
    assert [(s.tenant_id, s.enabled) for s in await schedules.list()] == [("acme", True), ("globex", True)]
    assert [s.config_id for s in await schedules.list(tenant_id="globex")] == ["report"]
    with pytest.raises(ScheduleNotFound):
        await schedules.pause("acme", "missing")
