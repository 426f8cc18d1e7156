"""ScheduleCalculator: cron in a time zone -> the next fire time, correct across DST."""

from __future__ import annotations

from datetime import datetime

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.domain.clock import Clock
from pipestate.domain.cron import (
    DstFoldPolicy,
    DstGapPolicy,
    next_fire_time,
    validate_cron,
    validate_timezone,
)


class ScheduleCalculator:
    """Fire times of cron expressions in IANA time zones (pure; "now" comes from ``clock``).

    Iterates croniter on local wall time and resolves each candidate in the zone: a wall time in
    a spring-forward gap fires at the first instant after the gap (``dst_gap``), a wall time that
    occurs twice fires once, at its first occurrence (``dst_fold``).
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SYSTEM_CLOCK

    def calculate_next_run(
        self,
        cron_expression: str,
        timezone: str = "UTC",
        after: datetime | None = None,
        *,
        dst_gap: DstGapPolicy = DstGapPolicy.SHIFT,
        dst_fold: DstFoldPolicy = DstFoldPolicy.FIRST,
    ) -> datetime:
        """The first fire time strictly after ``after`` (default now), as aware UTC.

        Raises:
            InvalidCronExpression: the expression is invalid or never fires.
            InvalidTimezone: unknown zone.
            NaiveDatetime: ``after`` without a time zone.
        """
        start = self._clock.now() if after is None else after
        return next_fire_time(cron_expression, timezone, start, dst_gap=dst_gap, dst_fold=dst_fold)

    def is_due(
        self,
        cron_expression: str,
        timezone: str,
        last_run: datetime,
        now: datetime | None = None,
        *,
        dst_gap: DstGapPolicy = DstGapPolicy.SHIFT,
        dst_fold: DstFoldPolicy = DstFoldPolicy.FIRST,
    ) -> bool:
        """True when the first fire time after ``last_run`` is at or before ``now`` (default now)."""
        at = self._clock.now() if now is None else now
        return (
            self.calculate_next_run(cron_expression, timezone, last_run, dst_gap=dst_gap, dst_fold=dst_fold)
            <= at
        )

    @staticmethod
    def validate(cron_expression: str, timezone: str) -> tuple[str, str]:
        """Normalised (cron, zone).

        Raises:
            InvalidCronExpression, InvalidTimezone
        """
        return validate_cron(cron_expression), validate_timezone(timezone)
