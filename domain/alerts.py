"""Alerts: late, stuck, SLA-missed and repeatedly failing pipelines, as typed, deduplicated events.

Pure: detection takes runs, settings and "now" as arguments and returns :class:`Alert` values
whose ``key`` names one occurrence (the same late run gives the same key on every host and every
check). The store keeps the keys (:class:`AlertRepository`, insert-if-absent), so each occurrence
is delivered once, whichever monitor saw it first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Protocol, runtime_checkable

from pipestate.domain.errors import InvalidArgument
from pipestate.domain.run import LEASE_EXPIRED, PipelineRun, RunState, require_id

ANY: Final = "*"
"""``tenant_id``/``config_id`` of the default settings (they apply where no row is more specific)."""


class AlertKind(StrEnum):
    LATE = "late"
    """Due (scheduled_time <= now) but not started within the schedule's ``max_delay``."""
    STUCK = "stuck"
    """RUNNING past ``run_timeout``, or its lease expired on ``max_lease_expiries`` attempts."""
    SLA_MISS = "sla_miss"
    """Not COMPLETED by its slot + ``sla``."""
    CONSECUTIVE_FAILURES = "consecutive_failures"
    """The schedule's last ``consecutive_failures`` finished runs all failed for good."""

    @classmethod
    def parse(cls, value: AlertKind | str) -> AlertKind:
        """Raises: InvalidArgument: not a kind."""
        if isinstance(value, AlertKind):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise InvalidArgument("kind", value, f"one of {', '.join(k.value for k in cls)}") from None


@dataclass(frozen=True)
class Alert:
    """One occurrence of a problem. ``key`` identifies the occurrence (the dedupe key)."""

    key: str
    kind: AlertKind
    tenant_id: str
    config_id: str | None
    run_id: str | None
    reason: str
    detected_at: datetime
    details: Mapping[str, Any] = field(default_factory=dict)
    delivered_at: datetime | None = None
    delivery_error: str | None = None

    @property
    def text(self) -> str:
        """One line for people (the Slack-compatible ``text`` of the webhook payload)."""
        what = f"{self.tenant_id}/{self.config_id}" if self.config_id else self.tenant_id
        run = f" run {self.run_id[:8]}" if self.run_id else ""
        return f"[pipestate] {self.kind.value}: {what}{run}: {self.reason}"

    def payload(self) -> dict[str, Any]:
        """The JSON body sent to webhooks: Slack's ``text`` plus every field."""
        return {
            "text": self.text,
            "key": self.key,
            "kind": self.kind.value,
            "tenant_id": self.tenant_id,
            "config_id": self.config_id,
            "run_id": self.run_id,
            "reason": self.reason,
            "detected_at": self.detected_at.isoformat(),
            "details": dict(self.details),
        }


def _optional_positive(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidArgument(name, value, "must be a number > 0 (or unset)")


@dataclass(frozen=True)
class MonitorSettings:
    """What counts as late, stuck, an SLA miss or a failure streak for one schedule.

    ``tenant_id``/``config_id`` of ``"*"`` make defaults: a (tenant, "*") row applies to that
    tenant's schedules, ("*", "*") to all, the most specific row winning as a whole. Unset (None)
    disables that check. Kept in the monitor's own table, keyed by (tenant_id, config_id), not
    on the schedule row.

    Raises:
        InvalidArgument / InvalidIdentifier: a bad value (nothing is stored).
    """

    tenant_id: str = ANY
    config_id: str = ANY
    max_delay_seconds: float | None = None
    sla_seconds: float | None = None
    run_timeout_seconds: float | None = None
    max_lease_expiries: int | None = None
    consecutive_failures: int | None = None
    auto_pause: bool = False

    def __post_init__(self) -> None:
        require_id("tenant_id", self.tenant_id)
        require_id("config_id", self.config_id)
        if self.tenant_id == ANY and self.config_id != ANY:
            raise InvalidArgument("config_id", self.config_id, "defaults for all tenants use config '*'")
        _optional_positive("max_delay_seconds", self.max_delay_seconds)
        _optional_positive("sla_seconds", self.sla_seconds)
        _optional_positive("run_timeout_seconds", self.run_timeout_seconds)
        for name in ("max_lease_expiries", "consecutive_failures"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidArgument(name, value, "must be an integer >= 1 (or unset)")
        if self.auto_pause and self.consecutive_failures is None:
            raise InvalidArgument("auto_pause", True, "needs consecutive_failures")


class SettingsIndex:
    """Settings looked up by (tenant, config): exact row, else (tenant, "*"), else ("*", "*")."""

    def __init__(self, settings: Iterable[MonitorSettings]) -> None:
        self._rows = {(s.tenant_id, s.config_id): s for s in settings}

    def for_run(self, tenant_id: str, config_id: str) -> MonitorSettings | None:
        rows = self._rows
        return rows.get((tenant_id, config_id)) or rows.get((tenant_id, ANY)) or rows.get((ANY, ANY))

    def smallest(self, attribute: str) -> float | None:
        """The smallest value of ``attribute`` over all rows (the widest net for one query)."""
        values = [getattr(s, attribute) for s in self._rows.values() if getattr(s, attribute) is not None]
        return min(values) if values else None

    def __iter__(self) -> Iterator[MonitorSettings]:
        return iter(self._rows.values())


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def slot_time(run: PipelineRun) -> datetime:
    """The run's slot: a retry moves ``scheduled_time`` to the retry time, so take the earlier of
    it and ``created_at`` (a run is created at or after its slot)."""
    if run.created_at is not None and run.created_at < run.scheduled_time:
        return run.created_at
    return run.scheduled_time


# --------------------------------------------------------------------------- detection (pure)
def detect_late(runs: Iterable[PipelineRun], settings: SettingsIndex, now: datetime) -> list[Alert]:
    """SCHEDULED/PENDING runs due for longer than their ``max_delay``. One alert per run and
    due time (a retry that is late again is a new occurrence)."""
    alerts = []
    for run in runs:
        if run.state not in (RunState.SCHEDULED, RunState.PENDING):
            continue
        rule = settings.for_run(run.tenant_id, run.config_id)
        if rule is None or rule.max_delay_seconds is None:
            continue
        waited = (now - run.scheduled_time).total_seconds()
        if waited <= rule.max_delay_seconds:
            continue
        alerts.append(
            Alert(
                key=f"late:{run.run_id}:{run.scheduled_time.isoformat()}",
                kind=AlertKind.LATE,
                tenant_id=run.tenant_id,
                config_id=run.config_id,
                run_id=run.run_id,
                reason=(
                    f"{run.state.value} for {_ago(waited)} after it was due"
                    f" (max_delay {_ago(rule.max_delay_seconds)})"
                ),
                detected_at=now,
                details={
                    "state": run.state.value,
                    "due_at": run.scheduled_time.isoformat(),
                    "waited_seconds": waited,
                    "max_delay_seconds": rule.max_delay_seconds,
                },
            )
        )
    return alerts


def detect_stuck(runs: Iterable[PipelineRun], settings: SettingsIndex, now: datetime) -> list[Alert]:
    """RUNNING runs started more than ``run_timeout`` ago, and runs whose last attempt ended
    with an expired lease after ``max_lease_expiries`` or more starts. One alert per attempt."""
    alerts = []
    for run in runs:
        rule = settings.for_run(run.tenant_id, run.config_id)
        if rule is None:
            continue
        reason = None
        details: dict[str, Any] = {"state": run.state.value, "attempt": run.attempt}
        if (
            run.state is RunState.RUNNING
            and rule.run_timeout_seconds is not None
            and run.started_at is not None
            and (now - run.started_at).total_seconds() > rule.run_timeout_seconds
        ):
            running = (now - run.started_at).total_seconds()
            reason = f"RUNNING for {_ago(running)} (timeout {_ago(rule.run_timeout_seconds)})"
            details |= {"running_seconds": running, "run_timeout_seconds": rule.run_timeout_seconds}
        elif (
            rule.max_lease_expiries is not None
            and run.error_type == LEASE_EXPIRED
            and run.attempt >= rule.max_lease_expiries
            and not run.state.is_terminal
        ):
            reason = f"its lease expired again (attempt {run.attempt}); its worker keeps dying or hanging"
            details |= {"max_lease_expiries": rule.max_lease_expiries}
        if reason is None:
            continue
        alerts.append(
            Alert(
                key=f"stuck:{run.run_id}:{run.attempt}",
                kind=AlertKind.STUCK,
                tenant_id=run.tenant_id,
                config_id=run.config_id,
                run_id=run.run_id,
                reason=reason,
                detected_at=now,
                details=details,
            )
        )
    return alerts


def detect_sla_misses(runs: Iterable[PipelineRun], settings: SettingsIndex, now: datetime) -> list[Alert]:
    """Runs not COMPLETED (nor cancelled or skipped) by their slot + ``sla``. One alert per run."""
    alerts = []
    for run in runs:
        if run.state.is_terminal:
            continue
        rule = settings.for_run(run.tenant_id, run.config_id)
        if rule is None or rule.sla_seconds is None:
            continue
        deadline = slot_time(run) + timedelta(seconds=rule.sla_seconds)
        if deadline > now:
            continue
        alerts.append(
            Alert(
                key=f"sla_miss:{run.run_id}",
                kind=AlertKind.SLA_MISS,
                tenant_id=run.tenant_id,
                config_id=run.config_id,
                run_id=run.run_id,
                reason=f"not completed by {deadline.isoformat(timespec='seconds')}"
                f" (sla {_ago(rule.sla_seconds)}); {run.state.value}",
                detected_at=now,
                details={
                    "state": run.state.value,
                    "deadline": deadline.isoformat(),
                    "sla_seconds": rule.sla_seconds,
                },
            )
        )
    return alerts


def is_final_failure(run: PipelineRun) -> bool:
    return run.state is RunState.FAILED and run.next_retry_at is None


def detect_failure_streak(
    tenant_id: str, config_id: str, recent: Sequence[PipelineRun], threshold: int, now: datetime
) -> Alert | None:
    """``recent``: the schedule's finished runs (COMPLETED or FAILED), newest first. An alert
    when the newest ``threshold`` all failed for good; its key is the oldest failure of the streak
    seen in ``recent``, so one streak alerts once however long it grows."""
    streak = []
    for run in recent:
        if run.state is RunState.FAILED and run.next_retry_at is not None:
            continue  # failed, retry pending: not finished yet
        if not is_final_failure(run):
            break
        streak.append(run)
    if len(streak) < threshold:
        return None
    first = streak[-1]
    last_error = streak[0].error_type or "error"
    return Alert(
        key=f"consecutive_failures:{tenant_id}/{config_id}:{first.run_id}",
        kind=AlertKind.CONSECUTIVE_FAILURES,
        tenant_id=tenant_id,
        config_id=config_id,
        run_id=streak[0].run_id,
        reason=f"the last {len(streak)} runs failed (latest: {last_error})",
        detected_at=now,
        details={"failures": len(streak), "threshold": threshold, "run_ids": [r.run_id for r in streak]},
    )


# --------------------------------------------------------------------------- the port
@runtime_checkable
class AlertRepository(Protocol):
    """Where alerts and monitor settings are kept (one small table each).

    Every method maps to one statement; :meth:`record_alerts` is the cross-host dedupe.
    """

    async def create_alert_schema(self) -> None:
        """Create the alert and settings tables if absent (idempotent)."""
        ...

    async def record_alerts(self, alerts: Sequence[Alert]) -> list[Alert]:
        """Insert the alerts whose key is absent, atomically per key; return the ones this call
        inserted (so exactly one of several concurrent callers gets each new key)."""
        ...

    async def mark_delivered(self, key: str, *, at: datetime, error: str | None = None) -> None:
        """Note the delivery outcome of one alert (``error`` None when every target took it)."""
        ...

    async def list_alerts(
        self,
        *,
        tenant_id: str | None = None,
        kind: AlertKind | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        """Stored alerts, newest ``detected_at`` first."""
        ...

    async def list_settings(self) -> list[MonitorSettings]:
        """Every settings row."""
        ...

    async def put_settings(self, settings: MonitorSettings) -> None:
        """Insert or replace the row of (tenant_id, config_id)."""
        ...

    async def delete_settings(self, tenant_id: str, config_id: str) -> bool:
        """Remove a row; ``False`` if there was none."""
        ...


@runtime_checkable
class RunStatsRepository(Protocol):
    """Aggregates the core ports do not offer in one statement."""

    async def count_runs_by_tenant_and_state(self) -> dict[tuple[str, RunState], int]:
        """Run counts grouped by (tenant_id, state), in one statement (metrics, the status page)."""
        ...


@runtime_checkable
class MonitorStore(AlertRepository, RunStatsRepository, Protocol):
    """What the monitor, the metrics and the web app need beside :class:`~pipestate.domain.ports.Storage`."""
