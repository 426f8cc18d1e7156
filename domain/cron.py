"""When a cron schedule fires: pure functions of (cron, time zone, an instant, the DST policies).

A schedule's cron expression is read in the schedule's own time zone, as local wall-clock time.
croniter is iterated on **naive local wall time** (so it never applies DST rules of its own), and
every candidate wall time is then resolved to an instant in the zone:

* an ordinary wall time has exactly one instant;
* a wall time inside a spring-forward gap does not exist: :attr:`DstGapPolicy.SHIFT` (the
  default) fires at the first valid instant after the gap, i.e. the transition itself (02:30 on
  the New York spring-forward day fires at 03:00 EDT); :attr:`DstGapPolicy.SKIP` drops that slot.
  Several gap wall times that shift onto the same instant (``*/15``: 02:00, 02:15, 02:30, 02:45
  -> 03:00) fire once;
* a wall time inside a fall-back overlap occurs twice: :attr:`DstFoldPolicy.FIRST` (the default)
  fires only at the first occurrence, so the repeated hour has no fires of its own (``*/30``
  fires at 01:00 and 01:30 EDT, not again at 01:00 and 01:30 EST); :attr:`DstFoldPolicy.BOTH`
  fires at both.

The fire times are therefore a strictly increasing sequence of instants, and every function here
answers a question about that sequence given an instant ``after``/``start``; nothing reads a
clock, does logging or touches storage. Results are plain ``datetime`` objects in
``datetime.timezone.utc``.

Time zones are validated and loaded with pendulum (``pendulum.timezone``); pendulum's
``Timezone`` is a ``zoneinfo.ZoneInfo`` subclass, so the gap/fold arithmetic is the standard
PEP 495 arithmetic on stdlib datetimes (``fold=0``/``fold=1``), which is much cheaper than building
pendulum ``DateTime`` objects per candidate. Loaded zones are memoised (a pure cache), because a
``pendulum.timezone`` call costs tens of microseconds.

Cron dialect: exactly five fields (minute, hour, day of month, month, day of week) with croniter's
extensions (names, ``L``, ``#``, ``W``), or one of the nicknames croniter expands to five fields
(``@yearly``, ``@annually``, ``@monthly``, ``@weekly``, ``@daily``, ``@midnight``, ``@hourly``).
Rejected on purpose:

* six/seven-field forms: croniter puts the seconds field *last* while Quartz/APScheduler put it
  first, so a six-field expression means different things to different readers; the scheduler
  ticks at minute resolution anyway; and a year field would let a schedule silently stop firing;
* ``H``/``R`` (hashed/random) fields: ``R`` is random per parse, which would make fire times
  non-deterministic, and ``H`` needs a hash id the schedule does not carry;
* expressions that can never fire (``0 0 30 2 *``).

Cost: one croniter is built per call and stepped once per candidate wall time (~180 us each on
the reference machine); the tz resolution per candidate is a few microseconds.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from functools import lru_cache
from typing import Final

import pendulum
from croniter import CroniterBadDateError, CroniterError, croniter

from pipestate.domain.errors import InvalidArgument, InvalidCronExpression, InvalidTimezone, NaiveDatetime

__all__ = [
    "DstFoldPolicy",
    "DstGapPolicy",
    "fire_times_between",
    "is_due",
    "next_fire_time",
    "validate_cron",
    "validate_timezone",
]


class DstGapPolicy(StrEnum):
    """What a wall time that does not exist (spring-forward gap) does."""

    SHIFT = "shift"
    """Fire at the first valid instant after the gap (the transition instant)."""
    SKIP = "skip"
    """Do not fire that slot that day."""


class DstFoldPolicy(StrEnum):
    """What a wall time that occurs twice (fall-back overlap) does."""

    FIRST = "first"
    """Fire once, at the first occurrence."""
    BOTH = "both"
    """Fire at both occurrences."""


_CRON_FIELDS: Final = 5
_HASHED_FIELD: Final = re.compile(r"^[hr](\(\d+-\d+\))?(/\d+)?$", re.IGNORECASE)
# A safety net, not a tuning knob: the longest honest run of candidates that do not fire is one
# gap or overlap worth of minutes (60, or 1440 for a skipped day); croniter itself gives up on
# expressions that never match.
_MAX_SILENT_CANDIDATES: Final = 10_000
_UTC: Final = UTC  # the same object as datetime.timezone.utc
# Time-zone names pendulum/zoneinfo would load that are not IANA zones but machine settings.
_NOT_IANA: Final = frozenset({"localtime"})


# --------------------------------------------------------------------------- validation
def validate_cron(expression: str) -> str:
    """Check a five-field cron expression and return it stripped.

    Raises:
        InvalidCronExpression: not a string, empty, not five fields (or an ``@`` nickname),
            hashed/random fields, anything croniter rejects, or an expression that never fires.
    """
    cleaned = _check_cron_syntax(expression)
    # A fixed reference, not the clock. Five fields have no year, so an expression either matches
    # within a few years of any date or never; croniter raises CroniterBadDateError for the latter.
    _safe_step(_build_iterator(cleaned, datetime(2000, 1, 1)), cleaned)
    return cleaned


def validate_timezone(name: str) -> str:
    """Check an IANA time-zone name with pendulum and return its canonical spelling.

    ``"UTC"`` (any case) is accepted and returned as ``"UTC"``; other names are returned as given.

    Raises:
        InvalidTimezone: not a string, empty, or not a zone of the tz database.
    """
    return _zone(name).key


def _zone(name: str) -> pendulum.Timezone:
    if not isinstance(name, str) or not name or name != name.strip() or name in _NOT_IANA:
        raise InvalidTimezone(str(name))
    return _load_zone(name)


@lru_cache(maxsize=512)
def _load_zone(name: str) -> pendulum.Timezone:
    try:
        return pendulum.timezone(name)
    except (ValueError, OSError) as exc:  # pendulum's InvalidTimezone is a ValueError
        raise InvalidTimezone(name) from exc


def _check_cron_syntax(expression: str) -> str:
    if not isinstance(expression, str):
        raise InvalidCronExpression(str(expression), "must be a string")
    cleaned = expression.strip()
    if not cleaned:
        raise InvalidCronExpression(expression, "empty")
    fields = cleaned.split()
    if len(fields) == 1 and cleaned.startswith("@"):
        return cleaned  # nicknames: croniter rejects the ones it does not know (e.g. @reboot)
    if len(fields) != _CRON_FIELDS:
        raise InvalidCronExpression(
            expression,
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}",
        )
    for field in fields:
        if _HASHED_FIELD.match(field):
            raise InvalidCronExpression(expression, f"hashed/random field {field!r} is not supported")
    return cleaned


def _build_iterator(expression: str, start: datetime) -> croniter:
    try:
        return croniter(expression, start)
    except (CroniterError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise InvalidCronExpression(expression, str(exc)) from exc


def _safe_step(iterator: croniter, expression: str) -> datetime:
    try:
        return iterator.get_next(datetime)
    except CroniterBadDateError as exc:
        raise InvalidCronExpression(expression, "it never fires") from exc


# --------------------------------------------------------------------------- fire times
def next_fire_time(
    cron: str,
    timezone: str,
    after: datetime,
    *,
    dst_gap: DstGapPolicy = DstGapPolicy.SHIFT,
    dst_fold: DstFoldPolicy = DstFoldPolicy.FIRST,
) -> datetime:
    """Return the first fire time strictly after ``after``, as an aware UTC datetime.

    Raises:
        InvalidCronExpression: the expression is invalid or never fires.
        InvalidTimezone: the zone is unknown.
        NaiveDatetime: ``after`` has no time zone.
    """
    return next(_fire_times(cron, timezone, after, "after", dst_gap, dst_fold))


def fire_times_between(
    cron: str,
    timezone: str,
    start: datetime,
    end: datetime,
    *,
    dst_gap: DstGapPolicy = DstGapPolicy.SHIFT,
    dst_fold: DstFoldPolicy = DstFoldPolicy.FIRST,
    limit: int | None = None,
) -> list[datetime]:
    """Return the fire times ``t`` with ``start < t <= end``, oldest first, at most ``limit`` of them.

    With ``limit`` the *first* ``limit`` fire times are returned. ``end <= start`` gives ``[]``.

    Raises:
        InvalidCronExpression: the expression is invalid or never fires.
        InvalidTimezone: the zone is unknown.
        NaiveDatetime: ``start`` or ``end`` has no time zone.
        InvalidArgument: ``limit`` is not a non-negative integer.
    """
    _require_aware("end", end)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidArgument("limit", limit, "must be a non-negative integer or None")
    times = _fire_times(cron, timezone, start, "start", dst_gap, dst_fold)
    if end <= start or limit == 0:
        return []
    found: list[datetime] = []
    for fire in times:
        if fire > end:
            break
        found.append(fire)
        if limit is not None and len(found) >= limit:
            break
    return found


def is_due(
    cron: str,
    timezone: str,
    last_run: datetime,
    now: datetime,
    *,
    dst_gap: DstGapPolicy = DstGapPolicy.SHIFT,
    dst_fold: DstFoldPolicy = DstFoldPolicy.FIRST,
) -> bool:
    """Whether a fire time falls in ``(last_run, now]``.

    Raises:
        InvalidCronExpression, InvalidTimezone: as :func:`next_fire_time`.
        NaiveDatetime: ``last_run`` or ``now`` has no time zone.
    """
    _require_aware("now", now)
    _require_aware("last_run", last_run)
    return next_fire_time(cron, timezone, last_run, dst_gap=dst_gap, dst_fold=dst_fold) <= now


def _require_aware(field: str, value: datetime) -> None:
    if not isinstance(value, datetime):
        raise InvalidArgument(field, value, "must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise NaiveDatetime(field, value)


def _fire_times(
    cron: str,
    zone_name: str,
    after: datetime,
    after_field: str,
    dst_gap: DstGapPolicy,
    dst_fold: DstFoldPolicy,
) -> Iterator[datetime]:
    """Validate eagerly, then return the lazy, strictly increasing fire times after ``after``."""
    expression = _check_cron_syntax(cron)
    zone = _zone(zone_name)
    _require_aware(after_field, after)
    gap_policy = DstGapPolicy(dst_gap)
    fold_policy = DstFoldPolicy(dst_fold)
    after_utc = after.astimezone(_UTC)
    iterator = _build_iterator(expression, _first_wall_to_consider(after_utc, zone, fold_policy))
    return _resolve_all(iterator, expression, zone, after_utc, gap_policy, fold_policy)


def _first_wall_to_consider(after_utc: datetime, zone: tzinfo, fold_policy: DstFoldPolicy) -> datetime:
    """The naive wall time croniter starts from (it yields wall times strictly after it).

    Usually the wall time of ``after``. When ``after`` lies in the first pass of a fall-back
    overlap and both passes fire, the second pass of earlier wall times is still ahead of
    ``after``, so start one overlap earlier.
    """
    local = after_utc.astimezone(zone)
    wall = local.replace(tzinfo=None)
    if fold_policy is DstFoldPolicy.BOTH and local.fold == 0:
        first_offset = local.utcoffset()
        second_offset = local.replace(fold=1).utcoffset()
        if first_offset is not None and second_offset is not None and first_offset > second_offset:
            return wall - (first_offset - second_offset)
    return wall


def _resolve_all(
    iterator: croniter,
    expression: str,
    zone: tzinfo,
    after_utc: datetime,
    gap_policy: DstGapPolicy,
    fold_policy: DstFoldPolicy,
) -> Iterator[datetime]:
    """Turn croniter's wall times into the increasing sequence of distinct fire instants.

    The earliest instant of a wall time (its first occurrence, or the transition for a gap wall)
    never decreases as wall time increases, so once the current wall's earliest instant has been
    reached, every pending instant at or before it is final. Only second occurrences (BOTH) wait
    in the heap; with the defaults every instant is yielded as soon as it is seen.
    """
    last = after_utc
    pending: list[datetime] = []
    silent = 0
    while True:
        wall = _safe_step(iterator, expression)
        earliest, instants = _resolve_wall(wall, zone, gap_policy, fold_policy)
        for instant in instants:
            if instant > last:
                heapq.heappush(pending, instant)
        emitted = False
        while pending and pending[0] <= earliest:
            instant = heapq.heappop(pending)
            if instant > last:  # several gap wall times can shift onto one instant
                last = instant
                emitted = True
                yield instant
        silent = 0 if emitted else silent + 1
        if silent > _MAX_SILENT_CANDIDATES:
            raise InvalidCronExpression(
                expression,
                f"no fire time in {_MAX_SILENT_CANDIDATES} consecutive candidate wall times",
            )


def _resolve_wall(
    wall: datetime, zone: tzinfo, gap_policy: DstGapPolicy, fold_policy: DstFoldPolicy
) -> tuple[datetime, tuple[datetime, ...]]:
    """Return (a lower bound of this wall's instants, the instants it fires at) in UTC.

    PEP 495: for an ambiguous wall ``fold=0`` is the first occurrence (larger offset); for a
    nonexistent wall ``fold=0`` carries the offset before the gap, so its offset is smaller.
    """
    first = wall.replace(tzinfo=zone)
    first_offset = first.utcoffset()
    second_offset = wall.replace(tzinfo=zone, fold=1).utcoffset()
    assert first_offset is not None and second_offset is not None  # a ZoneInfo always has one
    naive_first = wall - first_offset
    if first_offset == second_offset:
        instant = naive_first.replace(tzinfo=_UTC)
        return instant, (instant,)
    if first_offset > second_offset:  # fall-back overlap: the wall time occurs twice
        instant = naive_first.replace(tzinfo=_UTC)
        if fold_policy is DstFoldPolicy.BOTH:
            return instant, (instant, (wall - second_offset).replace(tzinfo=_UTC))
        return instant, (instant,)
    # Spring-forward gap: the wall time does not exist.
    transition = _transition_instant(
        (wall - second_offset).replace(tzinfo=_UTC), naive_first.replace(tzinfo=_UTC), zone
    )
    if gap_policy is DstGapPolicy.SKIP:
        return transition, ()
    return transition, (transition,)


def _transition_instant(before: datetime, at_or_after: datetime, zone: tzinfo) -> datetime:
    """The first instant (to the second) in ``(before, at_or_after]`` with a different UTC offset.

    ``before`` and ``at_or_after`` are the two readings of a nonexistent wall time, so the
    transition lies between them; tz database transitions fall on whole seconds.
    """
    old_offset = before.astimezone(zone).utcoffset()
    low = 0  # seconds after ``before``: offset is still the old one
    high = int((at_or_after - before).total_seconds())  # offset is already the new one
    while high - low > 1:
        middle = (low + high) // 2
        if (before + timedelta(seconds=middle)).astimezone(zone).utcoffset() == old_offset:
            low = middle
        else:
            high = middle
    return before + timedelta(seconds=high)
