"""Read models: the questions operators ask of the store, answered beside the services.

Entry points (the command line, the demo) call these; they do not assemble reports themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pipestate.application.state_manager import PipelineStateManager
from pipestate.domain.errors import RunNotFound
from pipestate.domain.events import RunEvent
from pipestate.domain.ports import Storage
from pipestate.domain.run import PipelineRun, RunState
from pipestate.domain.status import TenantStatus


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


async def tenant_statuses(storage: Storage, tenant: str | None = None) -> list[TenantStatus]:
    """The status of one tenant, or of every tenant that has a schedule (sorted by tenant id)."""
    manager = PipelineStateManager(storage)
    if tenant is not None:
        tenants = [tenant]
    else:
        tenants = sorted({s.tenant_id for s in await storage.list_schedules()})
    return [await manager.get_customer_pipeline_status(t) for t in tenants]
