"""``schemas/*.json``, the SQLAlchemy tables and the domain dataclasses describe the same rows.

Same field names in the same order, compatible types, and the same nullability. JSON documents
(``config``, ``retry_policy``) are ``STRING`` columns in BigQuery and ``JSON`` in SQLAlchemy.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from datetime import datetime
from importlib import resources
from typing import Any

import pytest
import sqlalchemy as sa

from pipestate import schemas
from pipestate.adapters.rows import JSON_COLUMNS
from pipestate.adapters.sqlalchemy import tables
from pipestate.domain.events import RunEvent
from pipestate.domain.pipeline_schedule import PipelineSchedule
from pipestate.domain.queue import QueueItem
from pipestate.domain.retry import RetryPolicy
from pipestate.domain.run import PipelineRun

CASES = [
    pytest.param(schemas.RUNS, tables.runs, PipelineRun, id="runs"),
    pytest.param(schemas.QUEUE, tables.queue, QueueItem, id="queue"),
    pytest.param(schemas.SCHEDULES, tables.schedules, PipelineSchedule, id="schedules"),
    pytest.param(schemas.RUN_EVENTS, tables.run_events, RunEvent, id="run_events"),
]

BQ_TYPES = {"STRING", "INTEGER", "FLOAT", "BOOLEAN", "TIMESTAMP"}


def _python_type(cls: type, name: str) -> tuple[type, bool]:
    """(base type, nullable) of a dataclass field."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    nullable = type(None) in args
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in args if a is not type(None))
    return typing.get_origin(hint) or hint, nullable


def _expected_bq_type(base: type, column: str) -> str:
    if column in JSON_COLUMNS:
        return "STRING"
    if issubclass(base, bool):
        return "BOOLEAN"
    if issubclass(base, int):
        return "INTEGER"
    if issubclass(base, float):
        return "FLOAT"
    if issubclass(base, datetime):
        return "TIMESTAMP"
    if issubclass(base, str | enum.Enum):
        return "STRING"
    raise AssertionError(f"{column}: no BigQuery type for {base}")


def _sa_bq_type(column: sa.Column[Any]) -> str:
    kind = column.type
    if isinstance(kind, sa.TypeDecorator):
        kind = kind.impl if isinstance(kind.impl, sa.types.TypeEngine) else kind.impl()
    if isinstance(kind, sa.JSON):
        return "STRING"  # a JSON document, held as text in BigQuery
    if isinstance(kind, sa.Boolean):
        return "BOOLEAN"
    if isinstance(kind, sa.Integer):
        return "INTEGER"
    if isinstance(kind, sa.Float):
        return "FLOAT"
    if isinstance(kind, sa.DateTime):
        return "TIMESTAMP"
    if isinstance(kind, sa.String):
        return "STRING"
    raise AssertionError(f"{column.name}: no BigQuery type for {kind!r}")


@pytest.mark.parametrize(("table", "sa_table", "cls"), CASES)
def test_json_schema_sqlalchemy_table_and_dataclass_list_the_same_fields(
    table: str, sa_table: sa.Table, cls: type
) -> None:
    spec = schemas.load(table)

    # In-memory bookkeeping (a run's unsaved events: compare=False) is no column.
    dataclass_fields = [f.name for f in dataclasses.fields(cls) if f.compare]
    assert list(spec.field_names) == dataclass_fields
    assert [c.name for c in sa_table.columns] == dataclass_fields
    assert spec.table == sa_table.name


@pytest.mark.parametrize(("table", "sa_table", "cls"), CASES)
def test_types_and_nullability_agree(table: str, sa_table: sa.Table, cls: type) -> None:
    spec = schemas.load(table)

    for field in spec.fields:
        base, nullable = _python_type(cls, field.name)
        column = sa_table.columns[field.name]
        assert field.type == _expected_bq_type(base, field.name), field.name
        assert field.type == _sa_bq_type(column), field.name
        assert field.nullable == nullable == bool(column.nullable), field.name


@pytest.mark.parametrize(("table", "sa_table", "cls"), CASES)
def test_json_documents_hold_what_the_domain_keeps_there(table: str, sa_table: sa.Table, cls: type) -> None:
    for name in JSON_COLUMNS & set(schemas.load(table).field_names):
        base, _ = _python_type(cls, name)
        assert base in (dict, RetryPolicy), name


@pytest.mark.parametrize("spec", schemas.load_all(), ids=lambda s: s.table)
def test_every_schema_is_versioned_described_partitioned_and_clustered_sensibly(
    spec: schemas.TableSpec,
) -> None:
    assert spec.version >= 1
    assert spec.description
    assert all(f.description.strip() for f in spec.fields), "every field needs a description"
    assert {f.type for f in spec.fields} <= BQ_TYPES
    assert {f.mode for f in spec.fields} <= {"REQUIRED", "NULLABLE"}
    assert 1 <= len(spec.clustering) <= 4 and set(spec.clustering) <= set(spec.field_names)
    if spec.partition_field is not None:
        # Only an immutable column: created_at is written once, by the insert; an event (``at``)
        # is never updated at all.
        assert spec.partition_field == ("at" if spec.table == schemas.RUN_EVENTS else "created_at")
        assert spec.field(spec.partition_field).type == "TIMESTAMP"
        assert spec.partition_type in ("HOUR", "DAY", "MONTH", "YEAR")


def test_hot_tables_are_clustered_as_designed() -> None:
    assert schemas.load(schemas.RUNS).clustering[:2] == ("state", "tenant_id")
    assert schemas.load(schemas.QUEUE).clustering[:2] == ("status", "priority")
    assert schemas.load(schemas.SCHEDULES).clustering[:2] == ("enabled", "next_fire_time")


def test_schemas_ship_as_package_data() -> None:
    files = {p.name for p in resources.files("schemas").iterdir()}

    assert {f"{t}.json" for t in schemas.TABLES} <= files
    for table in schemas.TABLES:
        raw = json.loads(resources.files("schemas").joinpath(f"{table}.json").read_text(encoding="utf-8"))
        assert raw["table"] == table and isinstance(raw["version"], int)
