from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from pipestate.domain.cron import (
    DstFoldPolicy,
    DstGapPolicy,
    fire_times_between,
    is_due,
    next_fire_time,
    validate_cron,
    validate_timezone,
)
from pipestate.domain.errors import InvalidArgument, InvalidCronExpression, InvalidTimezone, NaiveDatetime

NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
KOLKATA = ZoneInfo("Asia/Kolkata")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --------------------------------------------------------------------------- the DST transitions
@pytest.mark.parametrize(
    ("zone", "instant", "offset_before", "offset_after"),
    [
        (NEW_YORK, utc(2026, 3, 8, 7), -5.0, -4.0),
        (NEW_YORK, utc(2026, 11, 1, 6), -4.0, -5.0),
        (LONDON, utc(2026, 3, 29, 1), 0.0, 1.0),
        (LONDON, utc(2026, 10, 25, 1), 1.0, 0.0),
        (LORD_HOWE, utc(2026, 10, 3, 15, 30), 10.5, 11.0),
        (LORD_HOWE, utc(2026, 4, 4, 15), 11.0, 10.5),
    ],
)
def test_the_asserted_dst_transitions_are_the_real_ones(
    zone: ZoneInfo, instant: datetime, offset_before: float, offset_after: float
) -> None:
    before = (instant - timedelta(seconds=1)).astimezone(zone).utcoffset()
    after = instant.astimezone(zone).utcoffset()

    assert before == timedelta(hours=offset_before)
    assert after == timedelta(hours=offset_after)


# --------------------------------------------------------------------------- America/New_York
def test_nonexistent_wall_time_shifts_to_end_of_gap_by_default() -> None:
    after = datetime(2026, 3, 7, 12, tzinfo=NEW_YORK)

    fire = next_fire_time("30 2 * * *", "America/New_York", after)

    assert fire == utc(2026, 3, 8, 7, 0)
    assert fire.astimezone(NEW_YORK).strftime("%H:%M %Z") == "03:00 EDT"


def test_nonexistent_wall_time_with_skip_fires_next_day() -> None:
    after = datetime(2026, 3, 7, 12, tzinfo=NEW_YORK)

    fire = next_fire_time("30 2 * * *", "America/New_York", after, dst_gap=DstGapPolicy.SKIP)

    assert fire == utc(2026, 3, 9, 6, 30)


def test_gap_wall_times_shifting_onto_one_instant_fire_once() -> None:
    start, end = utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 7, 30)

    fires = fire_times_between("*/15 * * * *", "America/New_York", start, end)

    assert fires == [
        utc(2026, 3, 8, 6, 45),  # 01:45 EST
        utc(2026, 3, 8, 7, 0),  # 02:00, 02:15, 02:30, 02:45 and 03:00 local all land on 03:00 EDT
        utc(2026, 3, 8, 7, 15),
        utc(2026, 3, 8, 7, 30),
    ]


def test_gap_wall_times_with_skip_do_not_fire() -> None:
    start, end = utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 7, 30)

    fires = fire_times_between("*/15 * * * *", "America/New_York", start, end, dst_gap=DstGapPolicy.SKIP)

    assert fires == [
        utc(2026, 3, 8, 6, 45),
        utc(2026, 3, 8, 7, 0),
        utc(2026, 3, 8, 7, 15),
        utc(2026, 3, 8, 7, 30),
    ]


def test_gap_with_skip_drops_only_the_nonexistent_slots() -> None:
    start, end = utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 7, 30)

    fires = fire_times_between("10,40 * * * *", "America/New_York", start, end, dst_gap=DstGapPolicy.SKIP)

    assert fires == [utc(2026, 3, 8, 6, 40), utc(2026, 3, 8, 7, 10)]  # 01:40 EST, 03:10 EDT


def test_repeated_wall_time_fires_at_first_occurrence_by_default() -> None:
    after = datetime(2026, 10, 31, 12, tzinfo=NEW_YORK)

    fire = next_fire_time("30 1 * * *", "America/New_York", after)

    assert fire == utc(2026, 11, 1, 5, 30)
    assert fire.astimezone(NEW_YORK).strftime("%H:%M %Z") == "01:30 EDT"


def test_repeated_wall_time_does_not_fire_again_at_second_occurrence() -> None:
    after = utc(2026, 11, 1, 5, 30)

    fire = next_fire_time("30 1 * * *", "America/New_York", after)

    assert fire == utc(2026, 11, 2, 6, 30)  # 2026-11-02 01:30 EST


def test_repeated_wall_time_with_both_fires_at_second_occurrence() -> None:
    after = utc(2026, 11, 1, 5, 30)

    fire = next_fire_time("30 1 * * *", "America/New_York", after, dst_fold=DstFoldPolicy.BOTH)

    assert fire == utc(2026, 11, 1, 6, 30)
    assert fire.astimezone(NEW_YORK).strftime("%H:%M %Z") == "01:30 EST"


def test_half_hourly_across_fall_back_with_first_has_no_fires_in_repeated_hour() -> None:
    start, end = utc(2026, 11, 1, 4, 0), utc(2026, 11, 1, 8, 0)  # 00:00 EDT .. 03:00 EST

    fires = fire_times_between("*/30 * * * *", "America/New_York", start, end)

    assert fires == [
        utc(2026, 11, 1, 4, 30),  # 00:30 EDT
        utc(2026, 11, 1, 5, 0),  # 01:00 EDT
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT; 01:00 and 01:30 EST (06:00Z, 06:30Z) do not fire
        utc(2026, 11, 1, 7, 0),  # 02:00 EST
        utc(2026, 11, 1, 7, 30),
        utc(2026, 11, 1, 8, 0),
    ]


def test_half_hourly_across_fall_back_with_both_fires_every_instant_once() -> None:
    start, end = utc(2026, 11, 1, 4, 0), utc(2026, 11, 1, 8, 0)

    fires = fire_times_between("*/30 * * * *", "America/New_York", start, end, dst_fold=DstFoldPolicy.BOTH)

    assert fires == [utc(2026, 11, 1, 4, 30) + timedelta(minutes=30 * i) for i in range(8)]


def test_sub_hourly_cron_after_first_pass_of_repeated_hour_skips_second_pass() -> None:
    after = utc(2026, 11, 1, 5, 45)  # 01:45 EDT

    fire = next_fire_time("*/15 * * * *", "America/New_York", after)

    assert fire == utc(2026, 11, 1, 7, 0)  # 02:00 EST, not 01:00 EST


def test_sub_hourly_cron_inside_second_pass_with_both_fires_next_quarter() -> None:
    after = utc(2026, 11, 1, 6, 10)  # 01:10 EST

    fire = next_fire_time("*/15 * * * *", "America/New_York", after, dst_fold=DstFoldPolicy.BOTH)

    assert fire == utc(2026, 11, 1, 6, 15)


# --------------------------------------------------------------------------- Europe/London
def test_london_nonexistent_wall_time_shifts_to_0200_bst() -> None:
    after = utc(2026, 3, 28, 12)

    fire = next_fire_time("30 1 * * *", "Europe/London", after)

    assert fire == utc(2026, 3, 29, 1, 0)
    assert fire.astimezone(LONDON).strftime("%H:%M %Z") == "02:00 BST"


def test_london_nonexistent_wall_time_with_skip_fires_next_day() -> None:
    after = utc(2026, 3, 28, 12)

    fire = next_fire_time("30 1 * * *", "Europe/London", after, dst_gap=DstGapPolicy.SKIP)

    assert fire == utc(2026, 3, 30, 0, 30)


def test_london_repeated_wall_time_fires_once_at_first_occurrence() -> None:
    start, end = utc(2026, 10, 24, 12), utc(2026, 10, 26, 12)

    fires = fire_times_between("30 1 * * *", "Europe/London", start, end)

    assert fires == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_london_repeated_wall_time_with_both_fires_twice() -> None:
    start, end = utc(2026, 10, 24, 12), utc(2026, 10, 26, 12)

    fires = fire_times_between("30 1 * * *", "Europe/London", start, end, dst_fold=DstFoldPolicy.BOTH)

    assert fires == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30), utc(2026, 10, 26, 1, 30)]


# --------------------------------------------------------------------------- Australia/Lord_Howe
def test_lord_howe_half_hour_gap_shifts_to_0230() -> None:
    after = utc(2026, 10, 3, 0)

    fire = next_fire_time("15 2 * * *", "Australia/Lord_Howe", after)

    assert fire == utc(2026, 10, 3, 15, 30)
    assert fire.astimezone(LORD_HOWE).strftime("%Y-%m-%d %H:%M%z") == "2026-10-04 02:30+1100"


def test_lord_howe_half_hour_gap_with_skip_fires_next_day() -> None:
    after = utc(2026, 10, 3, 0)

    fire = next_fire_time("15 2 * * *", "Australia/Lord_Howe", after, dst_gap=DstGapPolicy.SKIP)

    assert fire == utc(2026, 10, 4, 15, 15)  # 2026-10-05 02:15 +11:00


def test_lord_howe_repeated_half_hour_fires_once_by_default() -> None:
    start, end = utc(2026, 4, 4, 0), utc(2026, 4, 6, 0)

    fires = fire_times_between("45 1 * * *", "Australia/Lord_Howe", start, end)

    assert fires == [utc(2026, 4, 4, 14, 45), utc(2026, 4, 5, 15, 15)]  # 01:45 +11:00, then +10:30


def test_lord_howe_repeated_half_hour_with_both_fires_thirty_minutes_apart() -> None:
    after = utc(2026, 4, 4, 14, 45)  # first 01:45, +11:00

    fire = next_fire_time("45 1 * * *", "Australia/Lord_Howe", after, dst_fold=DstFoldPolicy.BOTH)

    assert fire == utc(2026, 4, 4, 15, 15)  # second 01:45, +10:30


# --------------------------------------------------------------------------- Asia/Kolkata
def test_kolkata_half_hour_offset_is_applied() -> None:
    after = utc(2026, 1, 1, 0)

    fire = next_fire_time("0 9 * * *", "Asia/Kolkata", after)

    assert fire == utc(2026, 1, 1, 3, 30)


def test_after_in_another_zone_gives_the_same_instant() -> None:
    after_utc = utc(2026, 1, 1, 3, 30)
    after_kolkata = after_utc.astimezone(KOLKATA)

    fire_from_utc = next_fire_time("0 9 * * *", "Asia/Kolkata", after_utc)
    fire_from_kolkata = next_fire_time("0 9 * * *", "Asia/Kolkata", after_kolkata)

    assert fire_from_utc == fire_from_kolkata == utc(2026, 1, 2, 3, 30)


# --------------------------------------------------------------------------- result shape
def test_next_fire_time_is_a_plain_utc_datetime_strictly_after() -> None:
    after = utc(2026, 5, 1, 12, 0)

    fire = next_fire_time("0 12 * * *", "UTC", after)

    assert fire == utc(2026, 5, 2, 12, 0)
    assert type(fire) is datetime
    assert fire.tzinfo is UTC


def test_sub_second_after_does_not_refire_the_same_minute() -> None:
    after = utc(2026, 5, 1, 12, 0) + timedelta(microseconds=1)

    fire = next_fire_time("* * * * *", "UTC", after)

    assert fire == utc(2026, 5, 1, 12, 1)


def test_nickname_expression_is_accepted() -> None:
    fire = next_fire_time("@daily", "Asia/Kolkata", utc(2026, 1, 1, 0))

    assert fire == utc(2026, 1, 1, 18, 30)


# --------------------------------------------------------------------------- fire_times_between
def test_fire_times_between_returns_the_first_limit_times() -> None:
    start, end = utc(2026, 1, 1, 0), utc(2026, 1, 1, 12)

    fires = fire_times_between("0 * * * *", "UTC", start, end, limit=3)

    assert fires == [utc(2026, 1, 1, 1), utc(2026, 1, 1, 2), utc(2026, 1, 1, 3)]


def test_fire_times_between_includes_end_and_excludes_start() -> None:
    start, end = utc(2026, 1, 1, 0), utc(2026, 1, 1, 2)

    fires = fire_times_between("0 * * * *", "UTC", start, end)

    assert fires == [utc(2026, 1, 1, 1), utc(2026, 1, 1, 2)]


def test_fire_times_between_with_start_equal_to_end_is_empty() -> None:
    moment = utc(2026, 1, 1, 0)

    assert fire_times_between("* * * * *", "UTC", moment, moment) == []


def test_fire_times_between_with_end_before_start_is_empty() -> None:
    assert fire_times_between("* * * * *", "UTC", utc(2026, 1, 2), utc(2026, 1, 1)) == []


def test_fire_times_between_with_zero_limit_is_empty() -> None:
    assert fire_times_between("* * * * *", "UTC", utc(2026, 1, 1), utc(2026, 1, 2), limit=0) == []


@pytest.mark.parametrize("limit", [-1, 1.5, True])
def test_fire_times_between_rejects_bad_limit(limit: object) -> None:
    with pytest.raises(InvalidArgument):
        fire_times_between("* * * * *", "UTC", utc(2026, 1, 1), utc(2026, 1, 2), limit=limit)  # type: ignore[arg-type]


def test_fire_times_between_rejects_naive_end() -> None:
    with pytest.raises(NaiveDatetime):
        fire_times_between("* * * * *", "UTC", utc(2026, 1, 1), datetime(2026, 1, 2))


# --------------------------------------------------------------------------- is_due
def test_is_due_when_next_fire_time_has_passed() -> None:
    assert is_due("0 * * * *", "UTC", last_run=utc(2026, 1, 1, 0), now=utc(2026, 1, 1, 1, 0)) is True


def test_is_not_due_before_next_fire_time() -> None:
    assert is_due("0 * * * *", "UTC", last_run=utc(2026, 1, 1, 0), now=utc(2026, 1, 1, 0, 59)) is False


def test_is_due_honours_fold_policy() -> None:
    last_run, now = utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 30)

    assert is_due("30 1 * * *", "America/New_York", last_run, now) is False
    assert is_due("30 1 * * *", "America/New_York", last_run, now, dst_fold=DstFoldPolicy.BOTH) is True


def test_is_due_rejects_naive_now() -> None:
    with pytest.raises(NaiveDatetime):
        is_due("* * * * *", "UTC", utc(2026, 1, 1), datetime(2026, 1, 1))


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "expression",
    [
        "not a cron",
        "61 * * * *",
        "",
        "   ",
        "* * *",
        "0 0 * * * *",  # six fields (seconds) are rejected
        "0 0 0 * * * 2026",
        "@reboot",
        "R * * * *",  # random: non-deterministic
        "H * * * *",
        "0 0 30 2 *",  # never fires
    ],
)
def test_invalid_cron_is_rejected(expression: str) -> None:
    with pytest.raises(InvalidCronExpression):
        validate_cron(expression)


def test_cron_that_never_fires_is_rejected_with_reason() -> None:
    with pytest.raises(InvalidCronExpression, match="never fires"):
        next_fire_time("0 0 30 2 *", "UTC", utc(2026, 1, 1))


@pytest.mark.parametrize("expression", ["not a cron", "61 * * * *", "", "* * *"])
def test_next_fire_time_rejects_invalid_cron(expression: str) -> None:
    with pytest.raises(InvalidCronExpression):
        next_fire_time(expression, "UTC", utc(2026, 1, 1))


def test_non_string_cron_is_rejected() -> None:
    with pytest.raises(InvalidCronExpression):
        validate_cron(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [(" */5 * * * * ", "*/5 * * * *"), ("0 9 * * mon-fri", "0 9 * * mon-fri"), ("@hourly", "@hourly")],
)
def test_valid_cron_is_returned_stripped(expression: str, expected: str) -> None:
    assert validate_cron(expression) == expected


@pytest.mark.parametrize("name", ["Mars/Olympus", "", " UTC", "../etc/passwd", "localtime", None])
def test_unknown_timezone_is_rejected(name: str) -> None:
    with pytest.raises(InvalidTimezone):
        validate_timezone(name)


@pytest.mark.parametrize("name", ["Mars/Olympus", ""])
def test_next_fire_time_rejects_unknown_timezone(name: str) -> None:
    with pytest.raises(InvalidTimezone):
        next_fire_time("* * * * *", name, utc(2026, 1, 1))


@pytest.mark.parametrize(
    ("name", "expected"), [("UTC", "UTC"), ("utc", "UTC"), ("Asia/Kolkata", "Asia/Kolkata")]
)
def test_known_timezone_is_accepted(name: str, expected: str) -> None:
    assert validate_timezone(name) == expected


def test_naive_after_is_rejected() -> None:
    with pytest.raises(NaiveDatetime):
        next_fire_time("* * * * *", "UTC", datetime(2026, 1, 1))


# --------------------------------------------------------------------------- against an oracle
def _brute_force(
    cron: str, zone: ZoneInfo, start: datetime, end: datetime, gap: DstGapPolicy
) -> list[datetime]:
    """Walk every UTC minute; FIRST fold policy. A gap's matching wall times fire at its end (SHIFT)."""
    fires: list[datetime] = []
    previous_wall = start.astimezone(zone).replace(tzinfo=None)
    seen_walls = {previous_wall}
    instant = start + timedelta(minutes=1)
    while instant <= end:
        wall = instant.astimezone(zone).replace(tzinfo=None)
        skipped = [
            previous_wall + timedelta(minutes=m)
            for m in range(1, (wall - previous_wall) // timedelta(minutes=1))
        ]
        shifted = gap is DstGapPolicy.SHIFT and any(croniter.match(cron, w) for w in skipped)
        if wall not in seen_walls and (croniter.match(cron, wall) or shifted):
            fires.append(instant)
        seen_walls.add(wall)
        previous_wall = wall
        instant += timedelta(minutes=1)
    return fires


@pytest.mark.parametrize("gap", list(DstGapPolicy))
@pytest.mark.parametrize(
    "cron", ["*/15 * * * *", "*/7 1-3 * * *", "30 1,2 * * *", "5 * * * *", "0,45 2 * * *"]
)
@pytest.mark.parametrize(
    ("zone", "start"),
    [
        (NEW_YORK, utc(2026, 3, 8, 3)),
        (NEW_YORK, utc(2026, 11, 1, 3)),
        (LONDON, utc(2026, 3, 28, 23)),
        (LONDON, utc(2026, 10, 24, 23)),
        (LORD_HOWE, utc(2026, 10, 3, 13)),
        (LORD_HOWE, utc(2026, 4, 4, 12)),
    ],
)
def test_fire_times_match_a_minute_by_minute_oracle(
    cron: str, zone: ZoneInfo, start: datetime, gap: DstGapPolicy
) -> None:
    end = start + timedelta(hours=6)

    fires = fire_times_between(cron, zone.key, start, end, dst_gap=gap)

    assert fires == _brute_force(cron, zone, start, end, gap)
