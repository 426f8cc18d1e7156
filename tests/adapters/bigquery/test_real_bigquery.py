"""Opt-in: the adapter against a real BigQuery project (see ``docs/bigquery.md``).

Skipped unless ``PIPESTATE_TEST_BIGQUERY_PROJECT`` is set (with Application Default
Credentials); never runs in CI. With it set, the contract suite also runs on a ``bigquery-real``
backend (``tests/support/backends.py``). Run::

    PIPESTATE_TEST_BIGQUERY_PROJECT=my-project PIPESTATE_TEST_BIGQUERY_LOCATION=EU \\
        .venv/bin/python -m pytest -q -s -m real_bigquery tests/adapters/bigquery/test_real_bigquery.py
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from pipestate.adapters.bigquery import BigQueryStorage
from pipestate.adapters.bigquery.errors import BytesBilledLimitExceeded
from pipestate.domain.ports import RunFilter
from pipestate.domain.queue import QueueItem
from pipestate.domain.run import PipelineRun
from tests.support import real_bigquery
from tests.support.bq_statements import catalogue

pytestmark = [
    pytest.mark.real_bigquery,
    pytest.mark.skipif(real_bigquery.project() is None, reason=real_bigquery.SKIP_REASON),
]

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
STARTED = datetime.now(UTC)


@pytest.fixture
async def real() -> AsyncIterator[BigQueryStorage]:
    storage = BigQueryStorage(
        real_bigquery.client(), real_bigquery.scratch_dataset(), location=real_bigquery.location()
    )
    await storage.create_schema()
    try:
        yield storage
    finally:
        await storage.drop_dataset()
        await storage.close()


async def test_every_catalogued_statement_passes_a_dry_run(real: BigQueryStorage) -> None:
    from google.cloud import bigquery

    failures = []
    for entry in catalogue().values():
        sql = entry["sql"].replace("{dataset}", real.dataset_id)
        config = bigquery.QueryJobConfig(
            dry_run=True,
            use_query_cache=False,
            query_parameters=real_bigquery.parameters(entry["parameters"]),
        )
        try:
            real.client.query(sql, job_config=config).result()
        except Exception as error:
            failures.append(f"{entry['operations']}: {error}")
    assert failures == []


async def test_two_concurrent_run_creations_make_one_row_per_key(real: BigQueryStorage) -> None:
    other = BigQueryStorage(real.client, real.dataset_id, location=real_bigquery.location())
    runs = [PipelineRun.new(tenant_id="t", config_id=f"c{i}", scheduled_time=T0, now=T0) for i in range(5)]
    try:
        await asyncio.gather(real.insert_runs(runs), other.insert_runs(runs))
    finally:
        await other.close()

    rows = real.client.query(
        f"SELECT run_id, COUNT(*) AS n FROM `{real.table_id('x_meta_scheduled_runs')}` GROUP BY run_id"
    ).result()
    assert {r["run_id"]: r["n"] for r in rows} == {r.run_id: 1 for r in runs}


async def test_two_concurrent_claims_never_stamp_one_item_twice(real: BigQueryStorage) -> None:
    await real.insert_queue_items(
        [
            QueueItem(
                queue_id=f"q{i}", tenant_id="t", config={}, priority=5, created_at=T0 + timedelta(seconds=i)
            )
            for i in range(6)
        ]
    )
    other = BigQueryStorage(real.client, real.dataset_id, location=real_bigquery.location())
    lease = datetime.now(UTC) + timedelta(minutes=5)
    try:
        a, b = await asyncio.gather(
            real.claim_queue_items(worker_id="a", claim_token="ta", now=T0, lease_expires_at=lease, limit=4),
            other.claim_queue_items(worker_id="b", claim_token="tb", now=T0, lease_expires_at=lease, limit=4),
        )
    finally:
        await other.close()

    claimed = Counter(i.queue_id for i in [*a, *b])
    assert set(claimed.values()) <= {1}


async def test_a_byte_cap_hit_raises_a_permanent_error(real: BigQueryStorage) -> None:
    capped = BigQueryStorage(
        real.client, real.dataset_id, location=real_bigquery.location(), maximum_bytes_billed=1
    )
    try:
        with pytest.raises(BytesBilledLimitExceeded):
            await capped.find_runs(RunFilter(), limit=1)
    finally:
        await capped.close()


def test_print_dml_latency_and_bytes_billed_per_operation() -> None:
    """A table from INFORMATION_SCHEMA.JOBS of this session's jobs, by ``operation`` label."""
    client = real_bigquery.client()
    sql = (
        f"SELECT (SELECT value FROM UNNEST(labels) WHERE key = 'operation') AS operation, "
        "COUNT(*) AS jobs, AVG(TIMESTAMP_DIFF(end_time, start_time, MILLISECOND)) AS avg_run_ms, "
        "AVG(TIMESTAMP_DIFF(start_time, creation_time, MILLISECOND)) AS avg_queued_ms, "
        "SUM(total_bytes_billed) AS bytes_billed "
        f"FROM `region-{real_bigquery.location().lower()}`.INFORMATION_SCHEMA.JOBS_BY_USER "
        "WHERE creation_time >= @since AND EXISTS (SELECT 1 FROM UNNEST(labels) WHERE key = 'app' "
        "AND value = 'pipestate') GROUP BY operation ORDER BY operation"
    )
    from google.cloud import bigquery

    config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter("since", "TIMESTAMP", STARTED)]
    )
    rows = list(client.query(sql, job_config=config).result())
    print(f"\n{'operation':<24}{'jobs':>6}{'run ms':>10}{'queued ms':>11}{'bytes billed':>16}")
    for row in rows:
        print(
            f"{row['operation'] or '-':<24}{row['jobs']:>6}{row['avg_run_ms'] or 0:>10.0f}"
            f"{row['avg_queued_ms'] or 0:>11.0f}{row['bytes_billed'] or 0:>16,}"
        )
    assert rows, "no pipestate jobs found for this session"
