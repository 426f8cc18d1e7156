"""/metrics: the store gauges equal the store's counts, cost a constant number of statements and are
cached; the worker's counters and histograms; the worker's own /metrics endpoint."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from pipestate.adapters.cli.serve import start_worker_metrics
from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.application.metrics import PipestateMetrics
from pipestate.application.scheduler import enqueue_pending
from pipestate.application.worker import Worker
from pipestate.domain.clock import FrozenClock
from pipestate.domain.errors import StorageError
from pipestate.domain.queue import QueueStatus
from pipestate.domain.run import PipelineRun, RunState
from tests.observability.conftest import SqlTarget, make_run, populate


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def runs_gauge(values: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[tuple[str, str], int]:
    return {
        (dict(labels)["tenant"], dict(labels)["state"]): int(v)
        for (name, labels), v in values.items()
        if name == "pipestate_runs"
    }


@contextmanager
def counting(engine: sa.Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(*args: Any) -> None:
        if args[2].lstrip().upper().startswith("SELECT"):
            statements.append(args[2])

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


async def test_store_gauges_match_the_store_in_constant_statements_and_are_cached(
    sql_target: SqlTarget, clock: FrozenClock
) -> None:
    storage, alerts = await sql_target.open()
    population = await populate(storage, clock.now())
    metrics = PipestateMetrics(storage, alerts, clock=clock, min_interval=3600)
    with counting(storage.engine) as first:
        body, content_type = await metrics.exposition()
    values = samples(body.decode())
    assert content_type.startswith("text/plain")
    expected = {(r.tenant_id, r.state.value): population.count(r.tenant_id, r.state) for r in population.runs}
    assert runs_gauge(values) == expected
    assert values[("pipestate_queue_items", (("status", "QUEUED"),))] == 3
    assert values[("pipestate_queue_waiting", (("priority", "2"),))] == 1
    assert values[("pipestate_queue_oldest_waiting_seconds", ())] >= 0
    assert values[("pipestate_store_snapshot_port_calls", ())] == 3
    with counting(storage.engine) as cached:
        await metrics.exposition()
    assert cached == []  # inside min_interval: served from the cache
    # Ten times the tenants and runs: the same number of statements.
    more = [
        make_run(f"tenant-{i}", "cfg", clock.now() - timedelta(minutes=m), state, clock.now())
        for i in range(20)
        for m, state in ((5, RunState.PENDING), (50, RunState.COMPLETED), (70, RunState.FAILED))
    ]
    await storage.insert_runs(more)
    await enqueue_pending(storage, more, clock.now())
    with counting(storage.engine) as bigger:
        await metrics.refresh(force=True)
    # grouped run counts 1, queue_stats 5 (4 + the p95 read once items were claimed), due schedules 1;
    # the SQL adapter's hot paths (due schedules) run on the raw driver, unseen by SQLAlchemy's
    # events, so the count seen here is at most 7 and the port calls (3, above) bound the rest.
    assert len(bigger) == len(first) and 1 <= len(first) <= 7
    assert metrics.snapshot is not None
    assert metrics.snapshot.runs_in(RunState.PENDING) == 3 + 20


async def test_a_store_without_the_grouped_count_falls_back_per_tenant(
    sql_target: SqlTarget, clock: FrozenClock
) -> None:
    storage, _ = await sql_target.open()
    population = await populate(storage, clock.now())
    metrics = PipestateMetrics(storage, None, clock=clock)
    snapshot = await metrics.refresh()
    assert snapshot.port_calls == 2 + 1 + 2  # queue, due schedules; list_schedules; one per tenant
    assert {(t, s.value): n for (t, s), n in snapshot.runs.items()} == {
        (r.tenant_id, r.state.value): population.count(r.tenant_id, r.state) for r in population.runs
    }


async def test_worker_metrics_during_a_run_of_the_queue(sql_target: SqlTarget, clock: FrozenClock) -> None:
    storage, alerts = await sql_target.open()
    now = clock.now()
    runs = [make_run("acme", f"c{i}", now - timedelta(seconds=i), RunState.PENDING, now) for i in range(12)]
    await storage.insert_runs(runs)
    await enqueue_pending(storage, runs, now)
    metrics = PipestateMetrics(storage, alerts, min_interval=0)
    totals: list[int] = []

    async def handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
        snapshot = await metrics.refresh()  # a scrape in the middle of the lifecycle
        totals.append(sum(snapshot.runs.values()))
        if run is not None and run.config_id == "c3":
            raise RuntimeError("boom")

    worker = Worker(
        metrics.instrument(handler),
        metrics.count_errors(storage),
        concurrency=2,
        on_result=metrics.observe_result,
        poll_interval=0.05,
    )
    processed = await worker.run(exit_when_idle=True)
    assert processed == 12 and set(totals) == {12}  # every scrape saw every run, in one state each
    values = samples((await metrics.exposition())[0].decode())
    stored = await storage.count_runs_by_state()
    assert runs_gauge(values) == {("acme", s.value): n for s, n in stored.items()}
    assert values[("pipestate_handler_duration_seconds_count", (("outcome", "ok"),))] == 11
    assert values[("pipestate_handler_duration_seconds_count", (("outcome", "error"),))] == 1
    assert values[("pipestate_start_delay_seconds_count", ())] == 12
    assert values[("pipestate_worker_results_total", (("outcome", "completed"),))] == 11
    assert values[("pipestate_retries_total", ())] == 1
    assert stored == {RunState.COMPLETED: 11, RunState.SCHEDULED: 1}  # the failure waits for its retry
    assert values[("pipestate_queue_items", (("status", QueueStatus.COMPLETED.value),))] == 11


async def test_storage_errors_are_counted_by_kind(sql_target: SqlTarget, clock: FrozenClock) -> None:
    storage, alerts = await sql_target.open()
    metrics = PipestateMetrics(storage, alerts, clock=clock)
    counted = metrics.count_errors(storage)
    broken = SqlAlchemyStorage.from_url("sqlite:////nonexistent-dir/x.db")
    with pytest.raises(StorageError):
        await metrics.count_errors(broken).queue_stats(clock.now())
    await broken.close()
    assert counted.capabilities == storage.capabilities  # non-async attributes pass through
    values = samples((await metrics.exposition())[0].decode())
    kinds = {
        dict(labels)["kind"]: v
        for (name, labels), v in values.items()
        if name == "pipestate_storage_errors_total"
    }
    assert sum(kinds.values()) >= 1 and set(kinds) <= {"StorageError", "StorageUnavailable"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_the_worker_metrics_port_serves_fresh_store_gauges_from_its_thread(
    sql_target: SqlTarget, clock: FrozenClock
) -> None:
    storage, _ = await sql_target.open()
    population = await populate(storage, clock.now())
    port = _free_port()
    metrics = await start_worker_metrics(storage, port)
    metrics.min_interval = 0
    await storage.insert_runs([make_run("zeta", "z", clock.now(), RunState.COMPLETED, clock.now())])

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text: str = response.read().decode()
            return text

    try:
        text = await asyncio.to_thread(scrape)  # the HTTP thread asks this loop for a refresh
    finally:
        metrics.close()
    gauge = runs_gauge(samples(text))
    assert gauge[("zeta", "COMPLETED")] == 1
    assert gauge[("acme", "PENDING")] == population.count("acme", RunState.PENDING)
