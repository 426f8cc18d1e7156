"""Slot planning (domain.pipeline_schedule): catch-up policies, bounds, DST days. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pipestate.domain.errors import InvalidArgument, InvalidCronExpression, InvalidTimezone
from pipestate.domain.pipeline_schedule import (
    MAX_RECORDED_SKIPS,
    CatchupPolicy,
    PipelineSchedule,
    SlotPlan,
    advance,
    derive_schedule_id,
    plan_slots,
    runs_for_plan,
)
from pipestate.domain.run import RunState, derive_run_id

NEW_YORK = ZoneInfo("America/New_York")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def schedule(
    cron: str = "0 * * * *", timezone: str = "UTC", *, start: datetime = T0, **kw: Any
) -> PipelineSchedule:
    return PipelineSchedule.new(
        tenant_id="t", config_id="c", cron=cron, timezone=timezone, now=start, start=start, **kw
    )


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


# --------------------------------------------------------------------------- creation
def test_new_schedule_first_slot_is_first_fire_time_at_or_after_start() -> None:
    on_the_hour = schedule(start=T0)
    mid_hour = schedule(start=T0 + timedelta(minutes=1))

    assert on_the_hour.next_fire_time == T0
    assert mid_hour.next_fire_time == T0 + hours(1)
    assert on_the_hour.schedule_id == derive_schedule_id("t", "c")


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"cron": "61 * * * *"}, InvalidCronExpression),
        ({"cron": "* * * *"}, InvalidCronExpression),
        ({"timezone": "Mars/Olympus"}, InvalidTimezone),
        ({"catchup": "sometimes"}, InvalidArgument),
        ({"max_catchup_runs": 0}, InvalidArgument),
        ({"misfire_grace_seconds": -1}, InvalidArgument),
        ({"dst_gap": "maybe"}, InvalidArgument),
        ({"config": {"x": object()}}, InvalidArgument),
    ],
)
def test_new_schedule_rejects_invalid_settings(overrides: dict[str, Any], error: type[Exception]) -> None:
    fields: dict[str, Any] = {"cron": "0 * * * *", "timezone": "UTC"} | overrides
    with pytest.raises(error):
        PipelineSchedule.new(tenant_id="t", config_id="c", now=T0, **fields)


# --------------------------------------------------------------------------- normal ticks
def test_nothing_due_gives_an_empty_plan_and_keeps_next_fire_time() -> None:
    s = schedule(start=T0 + hours(1))

    plan = plan_slots(s, T0)

    assert plan == SlotPlan((), (), T0 + hours(1), None)


def test_one_due_slot_runs_under_every_policy() -> None:
    for policy in CatchupPolicy:
        plan = plan_slots(schedule(catchup=policy), T0 + timedelta(seconds=30))

        assert plan.run == (T0,)
        assert plan.skip == ()
        assert plan.next_fire_time == T0 + hours(1)
        assert plan.last_scheduled_time == T0
        assert plan.unrecorded_since is None


def test_disabled_schedule_plans_nothing() -> None:
    s = schedule(enabled=False)

    assert plan_slots(s, T0 + hours(5)).due == 0


# --------------------------------------------------------------------------- a 3-day outage
OUTAGE_END = T0 + timedelta(days=3, minutes=2)  # 73 hourly slots are due: T0 .. T0+72h


def test_catchup_all_runs_the_newest_max_catchup_runs_and_skips_the_rest() -> None:
    plan = plan_slots(schedule(catchup="all", max_catchup_runs=5), OUTAGE_END)

    assert plan.run == tuple(T0 + hours(h) for h in range(68, 73))
    assert plan.skip == tuple(T0 + hours(h) for h in range(68))
    assert plan.unrecorded_since is None
    assert plan.next_fire_time == T0 + hours(73)


def test_catchup_latest_runs_only_the_newest_slot() -> None:
    plan = plan_slots(schedule(catchup="latest"), OUTAGE_END)

    assert plan.run == (T0 + hours(72),)
    assert len(plan.skip) == 72
    assert plan.last_scheduled_time == T0 + hours(72)


def test_catchup_none_runs_the_newest_slot_only_within_the_grace_period() -> None:
    within = plan_slots(schedule(catchup="none", misfire_grace_seconds=300), OUTAGE_END)
    beyond = plan_slots(schedule(catchup="none", misfire_grace_seconds=60), OUTAGE_END)

    assert within.run == (T0 + hours(72),)
    assert beyond.run == ()
    assert len(beyond.skip) == 73
    assert beyond.next_fire_time == T0 + hours(73)


def test_skipped_rows_are_bounded_for_a_dense_cron_after_a_long_outage() -> None:
    s = schedule("* * * * *", catchup="all", max_catchup_runs=10)

    plan = plan_slots(s, T0 + timedelta(days=3))  # 4,321 minute slots are due

    assert len(plan.run) == 10
    assert len(plan.skip) == MAX_RECORDED_SKIPS
    assert plan.run[-1] == T0 + timedelta(days=3)
    assert plan.skip[-1] == plan.run[0] - timedelta(minutes=1)  # the newest dropped slots
    assert plan.unrecorded_since == T0
    runs = runs_for_plan(s, plan, T0 + timedelta(days=3))
    assert "dropped without a row" in (runs[0].cancel_reason or "")


def test_skip_bound_is_configurable() -> None:
    plan = plan_slots(schedule(catchup="latest"), OUTAGE_END, max_recorded_skips=3)

    assert plan.skip == tuple(T0 + hours(h) for h in (69, 70, 71))
    assert plan.unrecorded_since == T0


def test_runs_for_plan_creates_scheduled_and_skipped_runs_with_derived_ids() -> None:
    s = schedule(catchup="latest", priority=2, config={"k": 1})
    plan = plan_slots(s, T0 + hours(2))

    runs = runs_for_plan(s, plan, T0 + hours(2))

    assert [r.state for r in runs] == [RunState.SKIPPED, RunState.SKIPPED, RunState.SCHEDULED]
    assert [r.run_id for r in runs] == [derive_run_id("t", "c", T0 + hours(h)) for h in (0, 1, 2)]
    assert all(r.priority == 2 and r.config == {"k": 1} and r.schedule_id == s.schedule_id for r in runs)


def test_advance_moves_the_schedule_and_bumps_its_version() -> None:
    s = schedule()
    plan = plan_slots(s, T0 + hours(3))

    moved = advance(s, plan, T0 + hours(3))

    assert (moved.next_fire_time, moved.last_scheduled_time, moved.version) == (
        T0 + hours(4),
        T0 + hours(3),
        2,
    )
    assert s.version == 1


# --------------------------------------------------------------------------- DST (America/New_York)
def _local_day(day: datetime) -> tuple[datetime, datetime]:
    start = day.replace(tzinfo=NEW_YORK).astimezone(UTC)
    end = (day + timedelta(days=1)).replace(tzinfo=NEW_YORK).astimezone(UTC)
    return start, end


def _slots_of_day(cron: str, day: datetime) -> list[datetime]:
    """Tick every 5 minutes through the local day, collecting every slot run."""
    start, end = _local_day(day)
    s = PipelineSchedule.new(
        tenant_id="t", config_id="c", cron=cron, timezone="America/New_York", now=start, catchup="all"
    )
    slots: list[datetime] = []
    now = start
    while now < end:
        plan = plan_slots(s, now)
        slots.extend(plan.run)
        assert plan.skip == ()
        s = advance(s, plan, now)
        now += timedelta(minutes=5)
    return slots


def test_spring_forward_day_hourly_schedule_fires_the_missing_0230_slot_at_0300_once() -> None:
    slots = _slots_of_day("30 * * * *", datetime(2026, 3, 8))

    local = [t.astimezone(NEW_YORK).strftime("%H:%M") for t in slots]
    assert len(slots) == 24  # 00:30 .. 23:30 local, with 02:30 shifted to 03:00
    assert local[:4] == ["00:30", "01:30", "03:00", "03:30"]
    assert len(set(slots)) == len(slots)


def test_spring_forward_daily_schedule_inside_the_gap_runs_once() -> None:
    slots = _slots_of_day("30 2 * * *", datetime(2026, 3, 8))

    assert [t.astimezone(NEW_YORK).strftime("%H:%M %Z") for t in slots] == ["03:00 EDT"]


def test_fall_back_day_hourly_schedule_has_no_duplicate_for_the_repeated_hour() -> None:
    slots = _slots_of_day("30 * * * *", datetime(2026, 11, 1))

    assert len(slots) == 24  # 25 hours, but 01:30 fires once
    assert len(set(slots)) == 24
    one_thirty = [t for t in slots if t.astimezone(NEW_YORK).strftime("%H:%M") == "01:30"]
    assert [t.astimezone(NEW_YORK).strftime("%Z") for t in one_thirty] == ["EDT"]


def test_fall_back_day_with_fold_both_fires_the_repeated_hour_twice() -> None:
    start, end = _local_day(datetime(2026, 11, 1))
    s = PipelineSchedule.new(
        tenant_id="t",
        config_id="c",
        cron="30 1 * * *",
        timezone="America/New_York",
        now=start,
        catchup="all",
        dst_fold="both",
    )

    plan = plan_slots(s, end)

    assert [t.astimezone(NEW_YORK).strftime("%H:%M %Z") for t in plan.run] == ["01:30 EDT", "01:30 EST"]
