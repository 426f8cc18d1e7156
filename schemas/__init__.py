"""BigQuery JSON table schemas: the source of truth for the BigQuery tables.

Each ``<table>.json`` holds one table: ``version`` (the schema version), ``table``, ``description``,
``time_partitioning`` (``{"field", "type"}`` or ``null``), ``clustering`` (column names) and
``fields`` (BigQuery ``TableFieldSchema`` objects, each with a ``description``). They are read with
:mod:`importlib.resources`, so this works from a checkout and from an installed wheel alike.

This module has no Google dependency; ``pipestate.adapters.bigquery.schema`` turns a :class:`TableSpec` into
``google.cloud.bigquery`` objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

RUNS: Final = "x_meta_scheduled_runs"
QUEUE: Final = "x_meta_pipeline_queue"
SCHEDULES: Final = "x_meta_pipeline_schedules"
RUN_EVENTS: Final = "x_meta_run_events"
TABLES: Final = (RUNS, QUEUE, SCHEDULES, RUN_EVENTS)
"""The tables of every backend (the SQL adapters mirror them)."""
LEASES: Final = "x_meta_writer_leases"
BIGQUERY_TABLES: Final = (*TABLES, LEASES)
"""Every table pipestate keeps in BigQuery: :data:`TABLES` plus the writer-lease table that only
BigQuery needs (it has no unique keys)."""
ALERTS: Final = "x_meta_pipeline_alerts"
MONITOR_SETTINGS: Final = "x_meta_pipeline_monitor_settings"
MONITOR_TABLES: Final = (ALERTS, MONITOR_SETTINGS)
"""The monitor's own tables (alerts and their settings), created by ``pipestate serve`` /
``pipestate alerts``, not by the core ``create_schema``."""


@dataclass(frozen=True)
class FieldSpec:
    """One column: BigQuery legacy type name (STRING, INTEGER, FLOAT, BOOLEAN, TIMESTAMP), mode
    (REQUIRED or NULLABLE) and description."""

    name: str
    type: str
    mode: str
    description: str

    @property
    def nullable(self) -> bool:
        return self.mode != "REQUIRED"


@dataclass(frozen=True)
class TableSpec:
    """A table as declared in ``schemas/<table>.json``."""

    table: str
    version: int
    description: str
    fields: tuple[FieldSpec, ...]
    clustering: tuple[str, ...]
    partition_field: str | None
    partition_type: str | None

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> FieldSpec:
        """The column called ``name``.

        Raises:
            KeyError: no such column.
        """
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def api_fields(self) -> list[dict[str, Any]]:
        """The fields as BigQuery REST ``TableFieldSchema`` dicts."""
        return [
            {"name": f.name, "type": f.type, "mode": f.mode, "description": f.description}
            for f in self.fields
        ]


def _parse(data: dict[str, Any]) -> TableSpec:
    partitioning = data.get("time_partitioning")
    fields = tuple(
        FieldSpec(
            name=str(f["name"]),
            type=str(f["type"]).upper(),
            mode=str(f.get("mode", "NULLABLE")).upper(),
            description=str(f["description"]),
        )
        for f in data["fields"]
    )
    return TableSpec(
        table=str(data["table"]),
        version=int(data["version"]),
        description=str(data.get("description", "")),
        fields=fields,
        clustering=tuple(str(c) for c in data.get("clustering") or ()),
        partition_field=None if not partitioning else str(partitioning["field"]),
        partition_type=None if not partitioning else str(partitioning.get("type", "DAY")).upper(),
    )


@cache
def load(table: str) -> TableSpec:
    """The spec of ``table`` (one of :data:`BIGQUERY_TABLES`).

    Raises:
        KeyError: not a pipestate table.
    """
    if table not in BIGQUERY_TABLES and table not in MONITOR_TABLES:
        raise KeyError(table)
    text = resources.files(__name__).joinpath(f"{table}.json").read_text(encoding="utf-8")
    return _parse(json.loads(text))


def load_all() -> tuple[TableSpec, ...]:
    """Every table spec, in :data:`TABLES` order."""
    return tuple(load(name) for name in TABLES)


def load_bigquery() -> tuple[TableSpec, ...]:
    """Every BigQuery table spec, in :data:`BIGQUERY_TABLES` order."""
    return tuple(load(name) for name in BIGQUERY_TABLES)


def load_monitor() -> tuple[TableSpec, ...]:
    """The monitor's table specs, in :data:`MONITOR_TABLES` order."""
    return tuple(load(name) for name in MONITOR_TABLES)


__all__ = [
    "ALERTS",
    "BIGQUERY_TABLES",
    "LEASES",
    "MONITOR_SETTINGS",
    "MONITOR_TABLES",
    "QUEUE",
    "RUNS",
    "RUN_EVENTS",
    "SCHEDULES",
    "TABLES",
    "FieldSpec",
    "TableSpec",
    "load",
    "load_all",
    "load_bigquery",
    "load_monitor",
]
