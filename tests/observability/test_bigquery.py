"""BigQuery (on the emulator): the store gauges cost 3 jobs per refresh and none inside the cache
interval; the page reads grouped counts in one job; alerts are claimed once per key."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery
from prometheus_client.parser import text_string_to_metric_families

from pipestate.adapters.bigquery import BigQueryStorage, RetrySettings
from pipestate.adapters.bigquery.alerts import ALERTS, BigQueryAlertStore
from pipestate.adapters.bigquery.observed import ObservedClient, add_job_listener
from pipestate.adapters.bigquery.stats import OPERATION, BigQueryRunStats
from pipestate.adapters.cli.serve import monitor_store_for, stats_for
from pipestate.adapters.web.app import WebConfig, create_app
from pipestate.application.metrics import PipestateMetrics
from pipestate.application.monitor import Monitor
from pipestate.domain.alerts import Alert, AlertKind, MonitorSettings
from pipestate.domain.clock import FrozenClock
from pipestate.domain.errors import StorageUnavailable
from pipestate.domain.run import RunState
from tests.adapters.bigquery.faults import ScriptedClient
from tests.observability.conftest import Population, populate
from tests.support.backends import unavailable
from tests.support.bq_emulator import shared_client, shared_emulator


@pytest.fixture
async def bq(clock: FrozenClock) -> AsyncIterator[tuple[BigQueryStorage, ScriptedClient, Population]]:
    try:
        shared_emulator()
    except RuntimeError as error:
        unavailable(f"BigQuery emulator: {error}")
    client = ScriptedClient(shared_client())
    retry = RetrySettings(max_attempts=4, initial_wait=0.001, max_wait=0.005, max_elapsed=30.0)
    storage = BigQueryStorage(client, f"pst_{uuid.uuid4().hex[:16]}", retry=retry)  # type: ignore[arg-type]
    await storage.create_schema()
    try:
        population = await populate(storage, clock.now())
        client.reset()
        yield storage, client, population
    finally:
        await storage.close()
        client.real.delete_dataset(storage.dataset_id, delete_contents=True, not_found_ok=True)


async def test_a_metrics_refresh_costs_three_jobs_and_the_cache_none(
    bq: tuple[BigQueryStorage, ScriptedClient, Population], clock: FrozenClock
) -> None:
    storage, client, population = bq
    stats = stats_for(storage)
    assert stats is not None
    metrics = PipestateMetrics(storage, stats, clock=clock, min_interval=3600)
    snapshot = await metrics.refresh()
    assert client.count() == 3 == snapshot.port_calls
    assert client.count(operation=OPERATION) == 1
    job = next(j for j in client.jobs if j.operation == OPERATION)
    assert job.config.labels["app"] == "pipestate" and job.config.maximum_bytes_billed
    assert {(t, s.value): n for (t, s), n in snapshot.runs.items()} == {
        (r.tenant_id, r.state.value): population.count(r.tenant_id, r.state) for r in population.runs
    }
    await metrics.exposition()
    assert client.count() == 3  # inside min_interval: no job


async def test_grouped_counts_retry_transient_errors(
    bq: tuple[BigQueryStorage, ScriptedClient, Population],
) -> None:
    storage, client, population = bq
    client.fail(gexc.ServiceUnavailable("try later"), operation=OPERATION)
    counts = await BigQueryRunStats(storage).count_runs_by_tenant_and_state()
    assert sum(counts.values()) == len(population.runs) and client.count(operation=OPERATION) == 2
    ids = [j.kwargs["job_id"] for j in client.jobs]
    assert len(set(ids)) == 2  # a new job id per attempt
    client.fail(gexc.ServiceUnavailable("down"), operation=OPERATION, times=10)
    with pytest.raises(StorageUnavailable):
        await BigQueryRunStats(storage, attempts=2).count_runs_by_tenant_and_state()


async def test_the_page_api_on_bigquery(
    bq: tuple[BigQueryStorage, ScriptedClient, Population], clock: FrozenClock
) -> None:
    storage, client, population = bq
    config = WebConfig(storage, None, stats=stats_for(storage), clock=clock)
    transport = httpx.ASGITransport(app=create_app(config))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        body = (await http.get("/api/tenants")).json()
    assert body["monitored"] is False
    assert [(t["tenant_id"], t["counts"]["PENDING"]) for t in body["tenants"]] == [
        ("acme", population.count("acme", RunState.PENDING)),
        ("globex", population.count("globex", RunState.PENDING)),
    ]
    # schedules 1 + grouped counts 1 + due active runs 1 + queue statistics 1, whatever the tenants
    assert client.count() == 4


async def _alert_store(storage: BigQueryStorage) -> BigQueryAlertStore:
    store = monitor_store_for(storage)
    assert isinstance(store, BigQueryAlertStore)
    await store.create_alert_schema()
    return store


async def test_settings_round_trip(bq: tuple[BigQueryStorage, ScriptedClient, Population]) -> None:
    storage, _, _ = bq
    store = await _alert_store(storage)
    default = MonitorSettings(max_delay_seconds=600, run_timeout_seconds=3600.5)
    acme = MonitorSettings("acme", "orders", consecutive_failures=3, auto_pause=True)
    await store.put_settings(default)
    await store.put_settings(acme)
    await store.put_settings(MonitorSettings(max_delay_seconds=900))  # replaces the default row
    assert await store.list_settings() == [MonitorSettings(max_delay_seconds=900), acme]
    assert await store.delete_settings("acme", "orders") is True
    assert await store.delete_settings("acme", "orders") is False
    assert await store.list_settings() == [MonitorSettings(max_delay_seconds=900)]


async def test_a_late_run_alerts_once_with_two_monitors_on_bigquery(
    bq: tuple[BigQueryStorage, ScriptedClient, Population], clock: FrozenClock
) -> None:
    storage, client, population = bq
    first, second = await _alert_store(storage), await _alert_store(storage)
    await first.put_settings(MonitorSettings("acme", "orders", max_delay_seconds=600))
    seen: list[Alert] = []
    monitors = [
        Monitor(storage, store, clock=clock, hooks=[seen.append], load_entry_points=False)
        for store in (first, second)
    ]
    client.reset()
    reports = await asyncio.gather(*(m.check() for m in monitors))
    assert [len(r.detected) for r in reports] == [1, 1]
    assert sorted(len(r.new) for r in reports) == [0, 1]
    assert [a.run_id for a in seen] == [population.first("acme", RunState.PENDING).run_id]
    # per check: settings 1, due active runs 1, MERGE 1, claiming UPDATE 1 (+ read-back, + delivery 1)
    assert client.count() == 2 * 4 + 1 + 1
    assert (await monitors[0].check()).new == []
    (stored,) = await first.list_alerts()
    assert (
        stored.key == seen[0].key and stored.delivered_at is not None and stored.details["waited_seconds"] > 0
    )


async def test_a_duplicate_row_from_a_racing_merge_is_never_claimed_twice(
    bq: tuple[BigQueryStorage, ScriptedClient, Population], clock: FrozenClock
) -> None:
    storage, client, _ = bq
    store = await _alert_store(storage)
    alert = Alert("late:x:1", AlertKind.LATE, "acme", "orders", "x", "late", clock.now())
    table = f"{storage.dataset_id}.{ALERTS}"
    insert = (
        f"INSERT INTO `{table}` (`alert_key`, `kind`, `tenant_id`, `reason`, `details`, `detected_at`) "  # noqa: S608
        "VALUES (@k, 'late', 'acme', 'late', '{}', CURRENT_TIMESTAMP())"
    )
    params = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter("k", "STRING", alert.key)]
    )
    # two unclaimed rows of one key (what two concurrent insert-only MERGEs can leave): one winner
    client.real.query(insert, job_config=params).result()
    client.real.query(insert, job_config=params).result()
    assert await store.record_alerts([alert]) == [alert]
    # a third row arriving after the claim: nobody wins it again
    client.real.query(insert, job_config=params).result()
    assert await store.record_alerts([alert]) == []
    assert [a.key for a in await store.list_alerts()] == [alert.key]  # reads dedupe by key


async def test_jobs_and_bytes_billed_are_counted_per_operation(clock: FrozenClock) -> None:
    try:
        shared_emulator()
    except RuntimeError as error:
        unavailable(f"BigQuery emulator: {error}")
    scripted = ScriptedClient(shared_client())
    storage = BigQueryStorage(ObservedClient(scripted), f"pst_{uuid.uuid4().hex[:16]}")  # type: ignore[arg-type]
    await storage.create_schema()
    scripted.reset()  # create_schema's job (the writer-lease rows) ran before the listener
    metrics = PipestateMetrics(storage, None, clock=clock)
    remove = add_job_listener(metrics.observe_bigquery_job)
    try:
        await populate(storage, clock.now())
        values = gauges((await metrics.exposition())[0].decode())
    finally:
        remove()
        await storage.close()
        scripted.real.delete_dataset(storage.dataset_id, delete_contents=True, not_found_ok=True)
    jobs = {
        dict(k)["operation"]: v for (name, k), v in values.items() if name == "pipestate_bigquery_jobs_total"
    }
    assert sum(jobs.values()) == scripted.count()  # every job the adapter ran, the scrape's included
    assert jobs["insert_runs"] >= 1 and jobs["queue_stats"] == 1

    class Job:
        total_bytes_billed = 10 * 1024**2

        def result(self) -> list[object]:
            return []

    class Client:  # BigQuery bills; the emulator does not say how much, so a job that does
        def query(self, sql: str, job_config: object = None, **kwargs: object) -> Job:
            return Job()

    remove = add_job_listener(metrics.observe_bigquery_job)
    try:
        config = bigquery.QueryJobConfig(labels={"operation": "claim"})
        ObservedClient(Client()).query("SELECT 1", job_config=config).result()
    finally:
        remove()
    values = gauges((await metrics.exposition())[0].decode())
    assert values[("pipestate_bigquery_bytes_billed_total", (("operation", "claim"),))] == 10 * 1024**2


def gauges(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
