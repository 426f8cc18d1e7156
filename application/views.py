"""Read models: the questions operators ask of the store, answered beside the services.

Entry points (the command line, the demo) call these; they do not assemble reports themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.state_manager import PipelineStateManager
from pipestate.domain.alerts import RunStatsRepository
from pipestate.domain.errors import RunNotFound
from pipestate.domain.events import RunEvent
from pipestate.domain.ports import RunFilter, RunOrder, Storage
from pipestate.domain.run import PipelineRun, RunState
from pipestate.domain.status import TenantStatus

STATUS_WINDOW: Final = 1000
"""Runs per state read for the all-tenant status (see :func:`tenant_statuses`)."""


@dataclass(frozen=True)
class Attempt:
    """One execution of a run: from the event that started it to the one that ended it."""

    number: int
    worker_id: str | None
    started_at: datetime
    ended_at: datetime | None
    """``None`` while it runs."""
    outcome: str | None
    """The state it ended in (COMPLETED, FAILED, CANCELLED), ``None`` while it runs."""
    ended_by: str | None
    """The actor of the ending event (worker, recovery, operator)."""
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None


@dataclass(frozen=True)
class RunHistory:
    """``pipestate run show``: the run as stored, its attempts and every transition."""

    run: PipelineRun
    attempts: list[Attempt]
    events: list[RunEvent]


def attempts_of(events: list[RunEvent]) -> list[Attempt]:
    """The attempts a run's events (oldest first) describe."""
    attempts: list[Attempt] = []
    current: RunEvent | None = None
    for event in events:
        if event.to_state == RunState.RUNNING.value:
            current = event
            continue
        if current is not None and event.from_state == RunState.RUNNING.value:
            attempts.append(_attempt(current, event))
            current = None
    if current is not None:
        attempts.append(_attempt(current, None))
    return attempts


def _attempt(start: RunEvent, end: RunEvent | None) -> Attempt:
    return Attempt(
        number=start.attempt,
        worker_id=start.worker_id,
        started_at=start.at,
        ended_at=None if end is None else end.at,
        outcome=None if end is None else end.to_state,
        ended_by=None if end is None else end.actor,
        error_type=None if end is None else end.error_type,
        error_message=None if end is None else end.error_message,
        traceback=None if end is None else end.traceback,
    )


async def run_history(storage: Storage, run_id: str) -> RunHistory:
    """The run, its attempts and events (2 port calls).

    Raises:
        RunNotFound: no such run.
    """
    run = await storage.get_run(run_id)
    if run is None:
        raise RunNotFound(run_id)
    events = await storage.get_run_events(run_id)
    return RunHistory(run=run, attempts=attempts_of(events), events=events)


async def tenant_statuses(
    storage: Storage,
    tenant: str | None = None,
    *,
    stats: RunStatsRepository | None = None,
    now: datetime | None = None,
    window: int = STATUS_WINDOW,
) -> list[TenantStatus]:
    """The status of one tenant, or of every tenant that has a schedule (sorted by tenant id).

    One tenant: 4 port calls. Every tenant, with ``stats`` (the grouped run count of the SQL or
    BigQuery adapter): 5 calls whatever the number of tenants — the schedules, the grouped
    counts, and the ``window`` newest COMPLETED, newest FAILED and oldest PENDING runs, of which
    each tenant's first is its own. Only a tenant that has such runs but none among those
    ``window`` costs its own 4 calls (never the common case). Without ``stats`` every tenant is
    read on its own.
    """
    manager = PipelineStateManager(storage)
    if tenant is not None:
        return [await manager.get_customer_pipeline_status(tenant)]
    tenants = sorted({s.tenant_id for s in await storage.list_schedules()})
    if stats is None:
        return [await manager.get_customer_pipeline_status(t) for t in tenants]
    at = now or SYSTEM_CLOCK.now()
    counts: dict[str, dict[RunState, int]] = {t: {} for t in tenants}
    for (name, state), n in (await stats.count_runs_by_tenant_and_state()).items():
        if name in counts:
            counts[name][state] = n
    newest = {
        state: _first_per_tenant(
            await storage.find_runs(RunFilter(states=[state]), order=order, limit=window)
        )
        for state, order in (
            (RunState.COMPLETED, RunOrder.COMPLETED_DESC),
            (RunState.FAILED, RunOrder.COMPLETED_DESC),
            (RunState.PENDING, RunOrder.SCHEDULED_ASC),
        )
    }
    result = []
    for name in tenants:
        by_state = counts[name]
        if any(by_state.get(state, 0) and name not in first for state, first in newest.items()):
            result.append(await manager.get_customer_pipeline_status(name))  # beyond the window
            continue
        finished = by_state.get(RunState.COMPLETED, 0) + by_state.get(RunState.FAILED, 0)
        pending = newest[RunState.PENDING].get(name)
        result.append(
            TenantStatus(
                tenant_id=name,
                counts=by_state,
                total=sum(by_state.values()),
                success_rate=by_state.get(RunState.COMPLETED, 0) / finished if finished else None,
                last_completed=newest[RunState.COMPLETED].get(name),
                last_failed=newest[RunState.FAILED].get(name),
                oldest_pending_age_seconds=(
                    None if pending is None else max((at - pending.scheduled_time).total_seconds(), 0.0)
                ),
            )
        )
    return result


def _first_per_tenant(runs: list[PipelineRun]) -> dict[str, PipelineRun]:
    first: dict[str, PipelineRun] = {}
    for run in runs:
        first.setdefault(run.tenant_id, run)
    return first
