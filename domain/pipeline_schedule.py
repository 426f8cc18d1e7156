"""A pipeline schedule: a tenant's cron, in its time zone, with retry and catch-up policies.

Besides the :class:`PipelineSchedule` record this module holds the *pure* part of a scheduler
tick: given a schedule and the instant ``now``, :func:`plan_slots` says which slots are due, which
of them run and which are SKIPPED under the catch-up policy, and where the schedule's
``next_fire_time`` moves; :func:`runs_for_plan` turns a plan into the run rows to insert.
Nothing here reads a clock or touches storage.

Bounded catch-up
----------------
After a long outage a dense cron has many missed slots (a 1-minute cron misses 4,320 in three
days). A tick never enumerates or records all of them:

* the slots that *run* are the newest ones (``max_catchup_runs`` for ALL, one for LATEST/NONE);
* at most :data:`MAX_RECORDED_SKIPS` older missed slots are recorded as SKIPPED runs (the newest
  of the dropped ones); older missed slots are not materialised at all. The oldest recorded
  SKIPPED run's ``cancel_reason`` names the range of slots that were dropped without a row
  (:attr:`SlotPlan.unrecorded_since`).
* finding the newest slots does not walk the whole outage forwards: when a forward walk finds
  more slots than the tick will record, the search continues *backwards from now* in doubling
  windows, so the cost is proportional to the slots kept, not to the length of the outage.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final, TypeVar

from pipestate.domain.clock import ensure_aware
from pipestate.domain.cron import (
    DstFoldPolicy,
    DstGapPolicy,
    fire_times_between,
    next_fire_time,
    validate_cron,
    validate_timezone,
)
from pipestate.domain.errors import InvalidArgument
from pipestate.domain.retry import RetryPolicy
from pipestate.domain.run import PipelineRun, RunState, require_id, require_priority
from pipestate.domain.validation import MAX_DURATION_SECONDS, require_config, require_int

MAX_CATCHUP_RUNS: Final = 10_000
"""The most slots one schedule may run in one catch-up."""

MAX_RECORDED_SKIPS: Final = 100
"""At most this many dropped slots per schedule and tick become SKIPPED rows (the newest ones)."""

_ONE_MICROSECOND: Final = timedelta(microseconds=1)
_E = TypeVar("_E", bound=StrEnum)


class CatchupPolicy(StrEnum):
    """What a tick does with the slots it missed while the scheduler was down.

    ALL runs every missed slot (at most ``max_catchup_runs``, the newest; older ones are SKIPPED);
    LATEST runs only the newest missed slot; NONE runs only a slot that is not older than the
    misfire grace period. Slots that are not run are recorded as SKIPPED runs.
    """

    ALL = "all"
    LATEST = "latest"
    NONE = "none"

    @classmethod
    def parse(cls, value: CatchupPolicy | str) -> CatchupPolicy:
        if isinstance(value, CatchupPolicy):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise InvalidArgument("catchup", value, "must be one of all, latest, none") from None


SCHEDULE_NAMESPACE: Final = uuid.UUID("0b7f3a52-3c1e-4c55-8f7e-2d5b9a6c1e44")


def derive_schedule_id(tenant_id: str, config_id: str) -> str:
    """One schedule per (tenant, config): its id is derived from them."""
    return str(uuid.uuid5(SCHEDULE_NAMESPACE, f"{tenant_id}\x1f{config_id}"))


@dataclass(eq=True)
class PipelineSchedule:
    schedule_id: str
    tenant_id: str
    config_id: str
    cron: str
    timezone: str
    next_fire_time: datetime
    priority: int = 5
    enabled: bool = True
    retry_policy: RetryPolicy | None = None
    catchup: CatchupPolicy = CatchupPolicy.LATEST
    max_catchup_runs: int = 10
    misfire_grace_seconds: int = 300
    dst_gap: DstGapPolicy = DstGapPolicy.SHIFT
    dst_fold: DstFoldPolicy = DstFoldPolicy.FIRST
    last_scheduled_time: datetime | None = None
    version: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> PipelineSchedule:
        return replace(self, config=dict(self.config))

    # ------------------------------------------------------------------ creation and changes
    @classmethod
    def new(
        cls,
        *,
        tenant_id: str,
        config_id: str,
        cron: str,
        timezone: str,
        now: datetime,
        start: datetime | None = None,
        priority: int = 5,
        enabled: bool = True,
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
        catchup: CatchupPolicy | str = CatchupPolicy.LATEST,
        max_catchup_runs: int = 10,
        misfire_grace_seconds: int = 300,
        dst_gap: DstGapPolicy | str = DstGapPolicy.SHIFT,
        dst_fold: DstFoldPolicy | str = DstFoldPolicy.FIRST,
        config: Mapping[str, Any] | None = None,
    ) -> PipelineSchedule:
        """A validated schedule whose first slot is the first fire time at or after ``start``.

        ``start`` defaults to ``now``; a ``start`` in the past makes the first tick catch up
        from there (under the catch-up policy).

        Raises:
            InvalidIdentifier: empty tenant_id or config_id.
            InvalidCronExpression: the cron expression is invalid or never fires.
            InvalidTimezone: unknown zone.
            InvalidPriority: priority outside 1..10.
            InvalidArgument: any other invalid setting (catch-up, DST policy, retry policy, config).
            NaiveDatetime: ``now`` or ``start`` without a time zone.
        """
        at = ensure_aware(now, "now")
        schedule = cls(
            schedule_id=derive_schedule_id(
                require_id("tenant_id", tenant_id), require_id("config_id", config_id)
            ),
            tenant_id=tenant_id,
            config_id=config_id,
            cron=validate_cron(cron),
            timezone=validate_timezone(timezone),
            next_fire_time=at,  # placeholder, computed below once the policies are valid
            priority=require_priority(priority),
            enabled=_require_bool("enabled", enabled),
            retry_policy=None if retry_policy is None else RetryPolicy.from_config(retry_policy),
            catchup=CatchupPolicy.parse(catchup),
            max_catchup_runs=require_int(
                "max_catchup_runs", max_catchup_runs, minimum=1, maximum=MAX_CATCHUP_RUNS
            ),
            misfire_grace_seconds=require_int(
                "misfire_grace_seconds", misfire_grace_seconds, minimum=0, maximum=MAX_DURATION_SECONDS
            ),
            dst_gap=_parse_enum(DstGapPolicy, "dst_gap", dst_gap),
            dst_fold=_parse_enum(DstFoldPolicy, "dst_fold", dst_fold),
            created_at=at,
            updated_at=at,
            config=_require_json("config", config or {}),
        )
        first = ensure_aware(start, "start") if start is not None else at
        schedule.next_fire_time = schedule.fire_time_after(first - _ONE_MICROSECOND)
        return schedule

    def fire_time_after(self, after: datetime) -> datetime:
        """The schedule's first fire time strictly after ``after`` (aware UTC)."""
        return next_fire_time(self.cron, self.timezone, after, dst_gap=self.dst_gap, dst_fold=self.dst_fold)

    def pause(self, now: datetime) -> None:
        """Stop firing. Idempotent."""
        self.enabled = False
        self._touch(now)

    def resume(self, now: datetime) -> None:
        """Fire again from the first fire time after ``now``: slots of the paused period are not
        caught up (pausing is deliberate). Idempotent for an enabled schedule."""
        if self.enabled:
            return
        self.enabled = True
        self.next_fire_time = self.fire_time_after(now)
        self._touch(now)

    def change(self, now: datetime, **changes: Any) -> None:
        """Apply validated changes; a new cron, zone or DST policy moves ``next_fire_time`` to the
        first fire time after ``now`` under the new rules.

        Raises:
            InvalidArgument: an unknown or immutable field, or an invalid value (and the errors of
                :meth:`new` for cron, zone and priority).
        """
        allowed = {
            "cron",
            "timezone",
            "priority",
            "enabled",
            "retry_policy",
            "catchup",
            "max_catchup_runs",
            "misfire_grace_seconds",
            "dst_gap",
            "dst_fold",
            "config",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidArgument("changes", sorted(unknown), f"only {sorted(allowed)} can be changed")
        timing = False
        for name, value in changes.items():
            if name == "cron":
                self.cron, timing = validate_cron(value), True
            elif name == "timezone":
                self.timezone, timing = validate_timezone(value), True
            elif name == "priority":
                self.priority = require_priority(value)
            elif name == "enabled":
                enabled = _require_bool("enabled", value)
                timing = timing or (enabled and not self.enabled)
                self.enabled = enabled
            elif name == "retry_policy":
                self.retry_policy = None if value is None else RetryPolicy.from_config(value)
            elif name == "catchup":
                self.catchup = CatchupPolicy.parse(value)
            elif name == "max_catchup_runs":
                self.max_catchup_runs = require_int(name, value, minimum=1, maximum=MAX_CATCHUP_RUNS)
            elif name == "misfire_grace_seconds":
                self.misfire_grace_seconds = require_int(name, value, minimum=0, maximum=MAX_DURATION_SECONDS)
            elif name == "dst_gap":
                self.dst_gap, timing = _parse_enum(DstGapPolicy, name, value), True
            elif name == "dst_fold":
                self.dst_fold, timing = _parse_enum(DstFoldPolicy, name, value), True
            else:
                self.config = _require_json("config", value)
        if timing:
            self.next_fire_time = self.fire_time_after(now)
        self._touch(now)

    def _touch(self, now: datetime) -> None:
        self.version += 1
        self.updated_at = now


# --------------------------------------------------------------------------- slot planning
@dataclass(frozen=True)
class SlotPlan:
    """What one tick does with one due schedule (see :func:`plan_slots`)."""

    run: tuple[datetime, ...]
    """Slots that become SCHEDULED runs, oldest first."""
    skip: tuple[datetime, ...]
    """Slots recorded as SKIPPED runs, oldest first (at most ``MAX_RECORDED_SKIPS``)."""
    next_fire_time: datetime
    """The schedule's first fire time after ``now``."""
    last_scheduled_time: datetime | None
    """The newest due slot (run or skipped); ``None`` when nothing was due."""
    unrecorded_since: datetime | None = None
    """When set, the missed slots from this instant up to (excluding) the oldest recorded slot were
    dropped without a row (the bound on materialised catch-up)."""

    @property
    def due(self) -> int:
        """Slots that became rows in this plan."""
        return len(self.run) + len(self.skip)


def plan_slots(
    schedule: PipelineSchedule, now: datetime, *, max_recorded_skips: int = MAX_RECORDED_SKIPS
) -> SlotPlan:
    """Decide which of the schedule's due slots run and which are SKIPPED at ``now``.

    The due slots are the fire times ``t`` with ``next_fire_time <= t <= now`` (``next_fire_time``
    is itself a slot). Under the catch-up policy:

    * ALL: the newest ``max_catchup_runs`` due slots run, older ones are skipped;
    * LATEST: the newest due slot runs, older ones are skipped;
    * NONE: the newest due slot runs only if ``now - slot <= misfire_grace_seconds``; every other
      slot is skipped.

    Only the newest ``max_recorded_skips`` skipped slots are returned (module docstring). A
    disabled schedule, or one whose ``next_fire_time`` is after ``now``, gets an empty plan with an
    unchanged ``next_fire_time``.

    Raises:
        NaiveDatetime: ``now`` without a time zone.
        InvalidArgument: negative ``max_recorded_skips``.
    """
    at = ensure_aware(now, "now")
    if max_recorded_skips < 0:
        raise InvalidArgument("max_recorded_skips", max_recorded_skips, "must be >= 0")
    first = schedule.next_fire_time
    if not schedule.enabled or first > at:
        return SlotPlan((), (), first, schedule.last_scheduled_time)
    run_count = schedule.max_catchup_runs if schedule.catchup is CatchupPolicy.ALL else 1
    keep = run_count + max_recorded_skips
    slots, complete = _newest_due_slots(schedule, at, keep)
    newest = slots[-1]
    if (
        schedule.catchup is CatchupPolicy.NONE
        and (at - newest).total_seconds() > schedule.misfire_grace_seconds
    ):
        run_count = 0
    split = len(slots) - min(run_count, len(slots))
    to_run = tuple(slots[split:])
    to_skip = tuple(slots[max(split - max_recorded_skips, 0) : split])
    recorded = to_skip or to_run
    everything_recorded = complete and bool(recorded) and recorded[0] == slots[0]
    return SlotPlan(
        run=to_run,
        skip=to_skip,
        next_fire_time=schedule.fire_time_after(at),
        last_scheduled_time=newest,
        unrecorded_since=None if everything_recorded else first,
    )


def _newest_due_slots(schedule: PipelineSchedule, now: datetime, keep: int) -> tuple[list[datetime], bool]:
    """The newest ``keep`` due slots (or all of them if fewer), oldest first, and whether that is
    every due slot.

    First walks forwards from ``next_fire_time`` for at most ``keep + 1`` slots (the normal tick:
    one or a few slots). Only when there are more does it search backwards from ``now`` in
    doubling windows, so a long outage costs about ``2 * keep`` cron steps, not one per missed slot.
    """
    first = schedule.next_fire_time
    slots = [first, *_between(schedule, first, now, keep)]
    if len(slots) <= keep:
        return slots, True
    period = max(slots[1] - slots[0], timedelta(seconds=1))
    window = period * (keep + 1)
    while True:
        start = now - window
        if start <= first:
            tail = [first, *_between(schedule, first, now, None)]
            return tail[-keep:], len(tail) <= keep
        found = _between(schedule, start, now, None)
        if len(found) >= keep:
            return found[-keep:], False
        window *= 2


def _between(schedule: PipelineSchedule, start: datetime, end: datetime, limit: int | None) -> list[datetime]:
    return fire_times_between(
        schedule.cron,
        schedule.timezone,
        start,
        end,
        dst_gap=schedule.dst_gap,
        dst_fold=schedule.dst_fold,
        limit=limit,
    )


def runs_for_plan(schedule: PipelineSchedule, plan: SlotPlan, now: datetime) -> list[PipelineRun]:
    """The run rows a plan creates: SCHEDULED runs for ``plan.run``, SKIPPED runs (with a reason)
    for ``plan.skip``. Ids are derived from (tenant, config, slot), so inserting them again is a
    no-op."""
    reason = f"missed slot dropped by catch-up policy {schedule.catchup.value!r}"
    runs: list[PipelineRun] = []
    for slot in plan.skip:
        run = _new_run(schedule, slot, now)
        detail = reason
        if plan.unrecorded_since is not None and slot == plan.skip[0]:
            detail += (
                f"; older missed slots from {plan.unrecorded_since.isoformat()} were dropped without a"
                " row (catch-up bound)"
            )
        run.skip(now, reason=detail)
        runs.append(run)
    runs.extend(_new_run(schedule, slot, now) for slot in plan.run)
    return runs


def _new_run(schedule: PipelineSchedule, slot: datetime, now: datetime) -> PipelineRun:
    return PipelineRun.new(
        tenant_id=schedule.tenant_id,
        config_id=schedule.config_id,
        scheduled_time=slot,
        now=now,
        priority=schedule.priority,
        retry_policy=schedule.retry_policy,
        schedule_id=schedule.schedule_id,
        config=schedule.config,
        state=RunState.SCHEDULED,
    )


def advance(schedule: PipelineSchedule, plan: SlotPlan, now: datetime) -> PipelineSchedule:
    """A copy of ``schedule`` moved past the plan's slots (version + 1), to store with a CAS."""
    moved = schedule.copy()
    moved.next_fire_time = plan.next_fire_time
    moved.last_scheduled_time = plan.last_scheduled_time
    moved._touch(now)
    return moved


# --------------------------------------------------------------------------- validation helpers
def _require_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(name, value, "must be true or false")
    return value


def _parse_enum(kind: type[_E], name: str, value: object) -> _E:
    try:
        return kind(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise InvalidArgument(name, value, f"must be one of {choices}") from None


def _require_json(name: str, value: object) -> dict[str, Any]:
    return require_config(name, value)
