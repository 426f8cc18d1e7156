"""Schema set-up: tables from ``schemas/*.json``, idempotent, partitioned and clustered."""

from __future__ import annotations

import pytest

from pipestate import schemas
from pipestate.adapters.bigquery import BigQueryStorage
from pipestate.domain.errors import StorageError
from tests.adapters.bigquery.faults import ScriptedClient


async def test_create_schema_builds_every_table_as_declared(storage: BigQueryStorage) -> None:
    for spec in schemas.load_all():
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
