"""Schema set-up: tables from ``schemas/*.json``, idempotent, partitioned and clustered."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from pipestate import schemas
from pipestate.adapters.bigquery import BigQueryStorage
from pipestate.domain.errors import StorageError
from pipestate.domain.ports import RunFilter
from pipestate.domain.run import PipelineRun
from tests.adapters.bigquery.faults import ScriptedClient
from tests.support.bq_emulator import DEFAULT_LOCATION

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def test_create_schema_builds_every_table_as_declared(storage: BigQueryStorage) -> None:
    for spec in schemas.load_bigquery():
        table = storage.client.get_table(storage.table_id(spec.table))

        assert [f.name for f in table.schema] == list(spec.field_names)
        assert [(f.field_type, f.mode, f.description) for f in table.schema] == [
            (f.type, f.mode, f.description) for f in spec.fields
        ]
        assert table.clustering_fields == list(spec.clustering)
        if spec.partition_field is None:
            assert table.time_partitioning is None
        else:
            assert table.time_partitioning.field == spec.partition_field
        assert table.labels["pipestate_schema_version"] == str(spec.version)


async def test_create_schema_is_idempotent_and_issues_no_jobs(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    await storage.create_schema()
    await storage.create_schema()

    assert client.count() == 0


async def test_create_schema_refuses_a_table_missing_columns(storage: BigQueryStorage) -> None:
    client = storage.client
    table_id = storage.table_id(schemas.QUEUE)
    client.delete_table(table_id)
    client.query(f"CREATE TABLE `{table_id}` (queue_id STRING)").result()

    with pytest.raises(StorageError, match="exists without columns"):
        await storage.create_schema()


@pytest.mark.parametrize("dataset", ["bad-name", "p.d.x", "d;DROP", "pro`ject.d", ""])
def test_invalid_dataset_names_are_rejected(client: ScriptedClient, dataset: str) -> None:
    with pytest.raises(StorageError, match="invalid BigQuery dataset"):
        BigQueryStorage(client, dataset)  # type: ignore[arg-type]


async def test_create_schema_reports_other_partitioning_clustering_or_types(storage: BigQueryStorage) -> None:
    client = storage.client
    table_id = storage.table_id(schemas.SCHEDULES)
    spec = schemas.load(schemas.SCHEDULES)
    client.delete_table(table_id)
    fields = [bigquery.SchemaField.from_api_repr(f) for f in spec.api_fields()]
    fields[[f.name for f in fields].index("priority")] = bigquery.SchemaField("priority", "STRING")
    table = bigquery.Table(table_id, schema=fields)
    table.clustering_fields = ["tenant_id"]
    client.create_table(table)

    with pytest.raises(StorageError) as caught:
        await storage.create_schema()

    message = str(caught.value)
    assert "column priority is STRING, the schema says INTEGER" in message
    assert "clustered by ['tenant_id']" in message


async def test_create_schema_on_an_existing_dataset_never_calls_dataset_create(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    calls: list[str] = []
    real_create = client.real.create_dataset

    def refuse(*args: Any, **kwargs: Any) -> Any:  # a dataEditor on the dataset has no such right
        calls.append("create_dataset")
        raise gexc.Forbidden("Access Denied: Project p: User does not have bigquery.datasets.create")

    client.real.create_dataset = refuse  # type: ignore[method-assign]
    try:
        await storage.create_schema()
    finally:
        client.real.create_dataset = real_create  # type: ignore[method-assign]

    assert calls == []


async def test_creating_a_dataset_needs_an_explicit_location(client: ScriptedClient, dataset: str) -> None:
    client.location = None  # type: ignore[attr-defined]  # a client built without location=
    try:
        storage = BigQueryStorage(client, dataset)  # type: ignore[arg-type]
        with pytest.raises(StorageError, match="no location was given"):
            await storage.create_schema()
        await storage.close()
    finally:
        del client.location
    assert client.location == DEFAULT_LOCATION

    with pytest.raises(gexc.NotFound):
        client.real.get_dataset(f"{client.project}.{dataset}")


async def test_an_existing_dataset_in_another_location_is_refused(storage: BigQueryStorage) -> None:
    other = BigQueryStorage(storage.client, storage.dataset_id, location="asia-northeast1")
    try:
        with pytest.raises(StorageError, match="not in the configured location asia-northeast1"):
            await other.create_schema()
    finally:
        await other.close()


@pytest.mark.parametrize(
    "labels",
    [
        {"1team": "x"},
        {"_team": "x"},
        {"-team": "x"},
        {"Team": "x"},
        {"team": "X"},
        {"t" * 64: "x"},
        {"": "x"},
    ],
)
def test_labels_bigquery_would_reject_are_refused_up_front(
    client: ScriptedClient, labels: dict[str, str]
) -> None:
    with pytest.raises(StorageError, match="invalid BigQuery job label"):
        BigQueryStorage(client, "d", labels=labels)  # type: ignore[arg-type]


def test_valid_labels_are_accepted(client: ScriptedClient) -> None:
    BigQueryStorage(client, "d", labels={"team": "data-eng", "env": "", "cost_center": "42"})  # type: ignore[arg-type]


async def test_a_listing_without_a_limit_is_bounded(client: ScriptedClient, dataset: str) -> None:
    storage = BigQueryStorage(client, dataset, max_rows_per_read=3)  # type: ignore[arg-type]
    await storage.create_schema()
    try:
        runs = [
            PipelineRun.new(tenant_id="t", config_id=f"c{i}", scheduled_time=T0, now=T0) for i in range(4)
        ]
        await storage.insert_runs(runs)

        assert len(await storage.find_runs(RunFilter(), limit=4)) == 4
        with pytest.raises(StorageError, match="more than max_rows_per_read=3 rows; pass a limit"):
            await storage.find_runs(RunFilter())
        client.reset()
        await storage.find_runs(RunFilter(), limit=2)
        [job] = client.jobs
        assert job.sql.endswith("LIMIT @limit")
    finally:
        await storage.drop_dataset()
        await storage.close()
