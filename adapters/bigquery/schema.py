"""``schemas/*.json`` -> ``google.cloud.bigquery`` tables, and the parameter types of their columns."""

from __future__ import annotations

from typing import Final

from google.cloud import bigquery

from pipestate.schemas import TableSpec

PARAMETER_TYPES: Final = {
    "STRING": "STRING",
    "INTEGER": "INT64",
    "INT64": "INT64",
    "FLOAT": "FLOAT64",
    "FLOAT64": "FLOAT64",
    "BOOLEAN": "BOOL",
    "BOOL": "BOOL",
    "TIMESTAMP": "TIMESTAMP",
}
"""Column type (as written in the JSON schemas) -> query parameter type."""

VERSION_LABEL: Final = "pipestate_schema_version"


def parameter_type(spec: TableSpec, column: str) -> str:
    return PARAMETER_TYPES[spec.field(column).type]


def to_table(spec: TableSpec, table_id: str) -> bigquery.Table:
    """A ``bigquery.Table`` with the spec's fields, partitioning, clustering, description and a
    ``pipestate_schema_version`` label."""
    table = bigquery.Table(
        table_id, schema=[bigquery.SchemaField.from_api_repr(f) for f in spec.api_fields()]
    )
    table.description = spec.description
    table.labels = {"app": "pipestate", VERSION_LABEL: str(spec.version)}
    if spec.clustering:
        table.clustering_fields = list(spec.clustering)
    if spec.partition_field is not None:
        table.time_partitioning = bigquery.TimePartitioning(
            type_=spec.partition_type or bigquery.TimePartitioningType.DAY, field=spec.partition_field
        )
    return table
