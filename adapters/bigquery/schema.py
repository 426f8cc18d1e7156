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


_TYPE_ALIASES: Final = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN"}


def _type_name(name: str) -> str:
    return _TYPE_ALIASES.get(name.upper(), name.upper())


def schema_differences(spec: TableSpec, table: bigquery.Table) -> list[str]:
    """How an existing table differs from ``spec`` (missing columns, other types or modes, other
    partitioning or clustering); empty when it matches. Extra columns are allowed."""
    problems: list[str] = []
    existing = {f.name: f for f in table.schema}
    missing = [name for name in spec.field_names if name not in existing]
    if missing:
        problems.append(f"exists without columns {missing}")
    for field in spec.fields:
        found = existing.get(field.name)
        if found is None:
            continue
        if _type_name(found.field_type) != _type_name(field.type):
            problems.append(f"column {field.name} is {found.field_type}, the schema says {field.type}")
        if (found.mode or "NULLABLE").upper() != field.mode and field.mode == "REQUIRED":
            problems.append(f"column {field.name} is {found.mode}, the schema says {field.mode}")
    partitioning = table.time_partitioning
    found_field = None if partitioning is None else (partitioning.field or "_PARTITIONTIME")
    if found_field != spec.partition_field:
        problems.append(f"partitioned by {found_field}, the schema says {spec.partition_field}")
    elif partitioning is not None and spec.partition_type and partitioning.type_ != spec.partition_type:
        problems.append(f"partitioned by {partitioning.type_}, the schema says {spec.partition_type}")
    if list(table.clustering_fields or []) != list(spec.clustering):
        problems.append(f"clustered by {table.clustering_fields}, the schema says {list(spec.clustering)}")
    return problems
