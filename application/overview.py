"""The status page's read model: every tenant at a glance, in a constant number of port calls.

``build_overview`` reads: the run counts grouped by (tenant, state) (1), the schedules (1), the
due active runs (1, at most ``limit``), the monitor settings (1) and the queue statistics (1; a
tenant-scoped view reads only that tenant's waiting count). Late, stuck and SLA-missed runs are
the monitor's pure detection applied to the same runs, so the page and the alerts agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from pipestate.domain.alerts import (
    AlertKind,
    MonitorStore,
    RunStatsRepository,
    SettingsIndex,
    detect_late,
    detect_sla_misses,
    detect_stuck,
)
from pipestate.domain.ports import RunFilter, RunOrder, Storage
from pipestate.domain.queue import QueueStats, QueueStatus
from pipestate.domain.run import PipelineRun, RunState

DEFAULT_LIMIT: Final = 5000


@dataclass(frozen=True)
class TenantOverview:
    tenant_id: str
    counts: dict[RunState, int]
    schedules: int = 0
    paused: int = 0
    late: int = 0
    stuck: int = 0
    sla_misses: int = 0
    oldest_waiting_seconds: float | None = None
    """Age of the oldest due SCHEDULED or PENDING run (how long work has been waiting)."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def success_rate(self) -> float | None:
        """completed / (completed + failed), ``None`` before any run finished."""
        done = self.counts.get(RunState.COMPLETED, 0)
        finished = done + self.counts.get(RunState.FAILED, 0)
        return done / finished if finished else None

    def count(self, state: RunState) -> int:
        return self.counts.get(state, 0)


@dataclass(frozen=True)
class Overview:
    now: datetime
    tenants: list[TenantOverview]
    queue: QueueStats | None
    """Whole-queue statistics (``None`` in a tenant-scoped view)."""
    waiting: int
    """QUEUED items (of the tenant, in a scoped view)."""
    monitored: bool
    """Whether late/stuck/SLA figures are computed (the store keeps monitor settings)."""
    examined_runs: int = 0
    truncated: bool = False
    """More due active runs exist than were examined (``limit``)."""
    active: list[PipelineRun] = field(default_factory=list)

    def total(self, kind: AlertKind) -> int:
        attribute = {AlertKind.LATE: "late", AlertKind.STUCK: "stuck", AlertKind.SLA_MISS: "sla_misses"}[kind]
        return sum(getattr(t, attribute) for t in self.tenants)


async def build_overview(
    storage: Storage,
    store: MonitorStore | None,
    now: datetime,
    *,
    tenant: str | None = None,
    limit: int = DEFAULT_LIMIT,
    stats: RunStatsRepository | None = None,
) -> Overview:
    """Every tenant (or one) at ``now``. ``stats`` (default: ``store``) gives the grouped counts;
    without either, one ``count_runs_by_state`` per tenant is read instead."""
    schedules = await storage.list_schedules(tenant_id=tenant)
    stats = stats if stats is not None else store
    if stats is not None:
        grouped = await stats.count_runs_by_tenant_and_state()
    else:
        names = {s.tenant_id for s in schedules} if tenant is None else {tenant}
        grouped = {}
        for name in sorted(names):
            grouped |= {(name, state): n for state, n in (await storage.count_runs_by_state(name)).items()}
    counts: dict[str, dict[RunState, int]] = {}
    for (tenant_id, state), n in grouped.items():
        if tenant is None or tenant_id == tenant:
            counts.setdefault(tenant_id, {})[state] = n
    for schedule in schedules:
        counts.setdefault(schedule.tenant_id, {})
    active = await storage.find_runs(
        RunFilter(
            states=[RunState.SCHEDULED, RunState.PENDING, RunState.RUNNING],
            tenant_id=tenant,
            scheduled_before=now,
        ),
        order=RunOrder.SCHEDULED_ASC,
        limit=limit,
    )
    settings = SettingsIndex(await store.list_settings() if store is not None else [])
    late = _by_tenant(a.tenant_id for a in detect_late(active, settings, now))
    stuck = _by_tenant(a.tenant_id for a in detect_stuck(active, settings, now))
    sla = _by_tenant(a.tenant_id for a in detect_sla_misses(active, settings, now))
    oldest: dict[str, float] = {}
    for run in active:
        if run.state in (RunState.SCHEDULED, RunState.PENDING) and run.tenant_id not in oldest:
            oldest[run.tenant_id] = max((now - run.scheduled_time).total_seconds(), 0.0)
    tenants = [
        TenantOverview(
            tenant_id=name,
            counts=counts[name],
            schedules=sum(1 for s in schedules if s.tenant_id == name),
            paused=sum(1 for s in schedules if s.tenant_id == name and not s.enabled),
            late=late.get(name, 0),
            stuck=stuck.get(name, 0),
            sla_misses=sla.get(name, 0),
            oldest_waiting_seconds=oldest.get(name),
        )
        for name in sorted(counts)
    ]
    if tenant is None:
        queue: QueueStats | None = await storage.queue_stats(now)
        waiting = queue.waiting if queue is not None else 0
    else:
        queue = None
        waiting = await storage.count_queue_items(QueueStatus.QUEUED, tenant)
    return Overview(
        now=now,
        tenants=tenants,
        queue=queue,
        waiting=waiting,
        monitored=store is not None,
        examined_runs=len(active),
        truncated=len(active) >= limit,
        active=active,
    )


def _by_tenant(tenants: Iterable[str]) -> dict[str, int]:
    result: dict[str, int] = {}
    for name in tenants:
        result[name] = result.get(name, 0) + 1
    return result
