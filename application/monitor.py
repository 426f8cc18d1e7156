"""Monitor: find late, stuck, SLA-missed and repeatedly failing pipelines and deliver each alert once.

A check costs a constant number of port calls: the settings (1), the due active runs (1, at most
``limit``), the insert-if-absent of the alerts found (1), plus one read per schedule whose
settings ask for ``consecutive_failures`` (and one ``list_schedules`` when a default row asks for
it), plus one write per alert delivered. Any number of monitors (``pipestate serve`` processes,
``pipestate alerts --check`` runs) may check at once: the store's insert-if-absent on the alert
key lets exactly one of them deliver each occurrence.

Delivery targets: hooks (plain or async callables, registered with :meth:`Monitor.add_hook` or
published by an installed package under the entry point group ``pipestate.alert_hooks``) and
notifiers (objects with ``async send(alert)``, such as the webhook adapter). A failing target is
logged and noted on the alert (``delivery_error``); it never stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from typing import Any, Final, Protocol

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.schedule_manager import ScheduleManager
from pipestate.domain.alerts import (
    ANY,
    Alert,
    AlertKind,
    AlertRepository,
    SettingsIndex,
    detect_failure_streak,
    detect_late,
    detect_sla_misses,
    detect_stuck,
)
from pipestate.domain.clock import Clock
from pipestate.domain.errors import PipestateError
from pipestate.domain.ports import RunFilter, RunOrder, Storage
from pipestate.domain.run import RunState

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "pipestate.alert_hooks"
DEFAULT_LIMIT: Final = 5000
STREAK_LOOKBACK: Final = 20
"""Finished runs read beyond the threshold to find where a failure streak began."""

AlertHook = Callable[[Alert], Awaitable[None] | None]


class AlertNotifier(Protocol):
    """A delivery target (the webhook adapter is one). ``send`` raises when it gave up."""

    async def send(self, alert: Alert) -> None: ...


def entry_point_hooks(group: str = ENTRY_POINT_GROUP) -> list[AlertHook]:
    """The callables installed packages publish under ``group``
    (``[project.entry-points."pipestate.alert_hooks"]`` in their pyproject)."""
    hooks: list[AlertHook] = []
    for entry in metadata.entry_points(group=group):
        try:
            hook = entry.load()
        except Exception:
            log.exception("cannot load alert hook %s", entry.name)
            continue
        if callable(hook):
            hooks.append(hook)
        else:
            log.error("alert hook %s is not callable", entry.name)
    return hooks


@dataclass
class CheckReport:
    """What one check found and did."""

    now: datetime
    detected: list[Alert] = field(default_factory=list)
    """Every alert condition that holds now (old ones included)."""
    new: list[Alert] = field(default_factory=list)
    """The occurrences this monitor recorded first, and so delivered."""
    delivery_errors: dict[str, str] = field(default_factory=dict)
    paused: list[str] = field(default_factory=list)
    """Schedules (tenant/config) auto-paused after a failure streak."""

    def count(self, kind: AlertKind) -> int:
        return sum(1 for a in self.detected if a.kind is kind)


class Monitor:
    """Detect and deliver alerts.

    Args:
        storage: the core store (runs and schedules).
        alerts: where alerts are deduplicated and settings kept.
        hooks: callables given each new alert.
        notifiers: objects with ``async send(alert)`` (webhooks).
        load_entry_points: also call the hooks installed packages publish.
        limit: at most this many due active runs are examined per check (oldest first).
    """

    def __init__(
        self,
        storage: Storage,
        alerts: AlertRepository,
        *,
        clock: Clock | None = None,
        hooks: Iterable[AlertHook] = (),
        notifiers: Iterable[AlertNotifier] = (),
        load_entry_points: bool = True,
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        self._storage = storage
        self._alerts = alerts
        self._clock = clock or SYSTEM_CLOCK
        self._hooks: list[AlertHook] = list(hooks)
        if load_entry_points:
            self._hooks.extend(entry_point_hooks())
        self._notifiers = list(notifiers)
        self._limit = limit

    def add_hook(self, hook: AlertHook) -> None:
        self._hooks.append(hook)

    async def check(self, now: datetime | None = None) -> CheckReport:
        """One pass: detect, record (first recorder wins), deliver, auto-pause."""
        now = now or self._clock.now()
        report = CheckReport(now)
        settings = SettingsIndex(await self._alerts.list_settings())
        report.detected = await self.detect(now, settings)
        report.new = await self._alerts.record_alerts(report.detected)
        for alert in report.new:
            error = await self._deliver(alert)
            if error is not None:
                report.delivery_errors[alert.key] = error
            await self._alerts.mark_delivered(alert.key, at=self._clock.now(), error=error)
            if alert.kind is AlertKind.CONSECUTIVE_FAILURES and alert.config_id is not None:
                rule = settings.for_run(alert.tenant_id, alert.config_id)
                if rule is not None and rule.auto_pause:
                    await self._pause(alert, report)
        return report

    async def detect(self, now: datetime | None = None, settings: SettingsIndex | None = None) -> list[Alert]:
        """The alert conditions that hold at ``now``, without recording or delivering them."""
        now = now or self._clock.now()
        if settings is None:
            settings = SettingsIndex(await self._alerts.list_settings())
        if not any(True for _ in settings):
            return []
        return [*await self._run_alerts(settings, now), *await self._streak_alerts(settings, now)]

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Check every ``interval`` seconds until ``stop`` is set; errors are logged, not raised."""
        while not stop.is_set():
            try:
                report = await self.check()
                if report.new:
                    log.info("monitor: %d new alerts", len(report.new))
            except PipestateError as exc:
                log.warning("monitor check failed: %s", exc)
            except Exception:  # a bug must not silently end the loop of a long-running server
                log.exception("monitor check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def _run_alerts(self, settings: SettingsIndex, now: datetime) -> list[Alert]:
        wants = [settings.smallest(a) for a in ("max_delay_seconds", "sla_seconds", "run_timeout_seconds")]
        if all(w is None for w in wants) and settings.smallest("max_lease_expiries") is None:
            return []
        active = await self._storage.find_runs(
            RunFilter(
                states=[RunState.SCHEDULED, RunState.PENDING, RunState.RUNNING],
                scheduled_before=now,
            ),
            order=RunOrder.SCHEDULED_ASC,
            limit=self._limit,
        )
        return [
            *detect_late(active, settings, now),
            *detect_stuck(active, settings, now),
            *detect_sla_misses(active, settings, now),
        ]

    async def _streak_alerts(self, settings: SettingsIndex, now: datetime) -> list[Alert]:
        rules = [s for s in settings if s.consecutive_failures is not None]
        if not rules:
            return []
        if any(r.config_id == ANY for r in rules):
            targets = {(s.tenant_id, s.config_id) for s in await self._storage.list_schedules()}
        else:
            targets = set()
        targets |= {(r.tenant_id, r.config_id) for r in rules if r.config_id != ANY}
        found = []
        for tenant_id, config_id in sorted(targets):
            rule = settings.for_run(tenant_id, config_id)
            if rule is None or rule.consecutive_failures is None:
                continue
            recent = await self._storage.find_runs(
                RunFilter(
                    states=[RunState.COMPLETED, RunState.FAILED], tenant_id=tenant_id, config_id=config_id
                ),
                order=RunOrder.COMPLETED_DESC,
                limit=rule.consecutive_failures + STREAK_LOOKBACK,
            )
            alert = detect_failure_streak(tenant_id, config_id, recent, rule.consecutive_failures, now)
            if alert is not None:
                found.append(alert)
        return found

    async def _deliver(self, alert: Alert) -> str | None:
        errors = []
        for hook in self._hooks:
            try:
                result: Any = hook(alert)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                name = getattr(hook, "__qualname__", type(hook).__name__)
                log.warning("alert hook %s failed on %s: %s", name, alert.key, type(exc).__name__)
                errors.append(f"hook {name}: {type(exc).__name__}: {exc}")
        for notifier in self._notifiers:
            try:
                await notifier.send(alert)
            except Exception as exc:
                log.warning("alert notifier %s failed on %s: %s", notifier, alert.key, type(exc).__name__)
                errors.append(f"{notifier}: {exc}")
        return "; ".join(errors) if errors else None

    async def _pause(self, alert: Alert, report: CheckReport) -> None:
        assert alert.config_id is not None
        try:
            await ScheduleManager(self._storage, clock=self._clock).pause(alert.tenant_id, alert.config_id)
        except PipestateError as exc:
            log.warning("cannot auto-pause %s/%s: %s", alert.tenant_id, alert.config_id, exc)
            return
        report.paused.append(f"{alert.tenant_id}/{alert.config_id}")


def describe(alerts: Sequence[Alert]) -> list[str]:
    """One line per alert (the CLI's and the logs' form)."""
    return [a.text for a in alerts]
