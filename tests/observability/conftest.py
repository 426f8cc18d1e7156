"""Observability tests: SQL stores (SQLite file, PostgreSQL) populated with runs in every state."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.adapters.sqlalchemy.alerts import SqlAlertStore
from pipestate.application.schedule_manager import ScheduleManager
from pipestate.application.scheduler import enqueue_pending
from pipestate.domain.clock import FrozenClock
from pipestate.domain.ports import Storage
from pipestate.domain.run import PipelineRun, RunState
from tests.support.backends import postgres_schema

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@contextmanager
def _sql_target(kind: str, tmp: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if kind == "sqlite_file":
        yield f"sqlite:///{tmp / 'pipestate.db'}", {}
    else:
        with postgres_schema() as target:
            yield target


@dataclass
class SqlTarget:
    """A database both the test and any number of stores on it can open."""

    url: str
    kwargs: dict[str, Any]
    opened: list[SqlAlchemyStorage] = field(default_factory=list)

    async def open(self) -> tuple[SqlAlchemyStorage, SqlAlertStore]:
        storage = SqlAlchemyStorage.from_url(self.url, **self.kwargs)
        self.opened.append(storage)
        await storage.create_schema()
        alerts = SqlAlertStore(storage.engine)
        await alerts.create_alert_schema()
        return storage, alerts


@pytest.fixture(params=["sqlite_file", "postgresql"])
async def sql_target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlTarget]:
    with _sql_target(request.param, tmp_path) as (url, kwargs):
        target = SqlTarget(url, kwargs)
        try:
            yield target
        finally:
            for storage in target.opened:
                await storage.close()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


def make_run(
    tenant: str, config: str, slot: datetime, state: RunState, now: datetime, *, priority: int = 5
) -> PipelineRun:
    """A run brought to ``state`` through the lifecycle (a final failure for FAILED)."""
    run = PipelineRun.new(
        tenant_id=tenant, config_id=config, scheduled_time=slot, now=slot, priority=priority
    )
    if state is RunState.SCHEDULED:
        return run
    run.make_pending(max(slot, now - timedelta(hours=3)))
    if state is RunState.PENDING:
        return run
    if state is RunState.CANCELLED:
        run.cancel(now, reason="test")
        return run
    started = slot + timedelta(seconds=30)
    run.start(
        started, worker_id="w1", claim_token=f"t-{run.run_id}", lease_expires_at=now + timedelta(minutes=5)
    )
    if state is RunState.COMPLETED:
        run.complete(started + timedelta(seconds=60))
    elif state is RunState.FAILED:
        run.fail(
            started + timedelta(seconds=10), error_message="boom", error_type="SchemaError", retryable=False
        )
    return run


@dataclass
class Population:
    runs: list[PipelineRun]

    def count(self, tenant: str | None = None, state: RunState | None = None) -> int:
        return sum(
            1
            for r in self.runs
            if (tenant is None or r.tenant_id == tenant) and (state is None or r.state is state)
        )

    def first(self, tenant: str, state: RunState) -> PipelineRun:
        return next(r for r in self.runs if r.tenant_id == tenant and r.state is state)


async def populate(storage: Storage, now: datetime) -> Population:
    """Two tenants: acme (orders, clicks) and globex (sync), runs in every state, PENDING ones queued.

    acme/orders has a PENDING run due two hours ago (late for any max_delay under 2 h) and a
    RUNNING run started two hours ago.
    """
    manager = ScheduleManager(storage, clock=FrozenClock(now))
    await manager.add("acme", "orders", "0 * * * *", priority=2)
    await manager.add("acme", "clicks", "*/15 * * * *", priority=6)
    await manager.add("globex", "sync", "30 * * * *")
    hour = timedelta(hours=1)
    plan = [
        ("acme", "orders", now - 6 * hour, RunState.COMPLETED, 2),
        ("acme", "orders", now - 5 * hour, RunState.COMPLETED, 2),
        ("acme", "orders", now - 4 * hour, RunState.FAILED, 2),
        ("acme", "orders", now - 2 * hour, RunState.PENDING, 2),
        ("acme", "orders", now - 2 * hour - timedelta(minutes=1), RunState.RUNNING, 2),
        ("acme", "clicks", now - 3 * hour, RunState.COMPLETED, 6),
        ("acme", "clicks", now - 1 * hour, RunState.CANCELLED, 6),
        ("acme", "clicks", now - timedelta(minutes=1), RunState.PENDING, 6),
        ("globex", "sync", now - 3 * hour, RunState.COMPLETED, 5),
        ("globex", "sync", now - 2 * hour, RunState.FAILED, 5),
        ("globex", "sync", now - timedelta(minutes=2), RunState.PENDING, 5),
        ("globex", "sync", now + hour, RunState.SCHEDULED, 5),
    ]
    runs = [make_run(t, c, slot, state, now, priority=p) for t, c, slot, state, p in plan]
    await storage.insert_runs(runs)
    await enqueue_pending(storage, runs, now)
    return Population(runs)


def browser_required() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
