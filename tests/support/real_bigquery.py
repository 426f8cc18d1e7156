"""The opt-in real-BigQuery backend: ``PIPESTATE_TEST_BIGQUERY_PROJECT`` (and optionally
``PIPESTATE_TEST_BIGQUERY_LOCATION``, default ``US``) plus Application Default Credentials.

Never part of CI (no project exists there): when the variable is unset the real-BigQuery tests
are skipped, and the contract suite has no ``bigquery-real`` backend at all. This is a genuine
skip, not the "backend missing" rule (:func:`tests.support.backends.unavailable`), which would
fail CI.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.cloud import bigquery

    from pipestate.domain.ports import Storage

PROJECT_ENV = "PIPESTATE_TEST_BIGQUERY_PROJECT"
LOCATION_ENV = "PIPESTATE_TEST_BIGQUERY_LOCATION"
SKIP_REASON = f"real-BigQuery tests are opt-in: set {PROJECT_ENV} and Application Default Credentials"


def project() -> str | None:
    return os.environ.get(PROJECT_ENV) or None


def location() -> str:
    return os.environ.get(LOCATION_ENV) or "US"


def client() -> bigquery.Client:
    from google.cloud import bigquery

    return bigquery.Client(project=project(), location=location())


def scratch_dataset() -> str:
    return f"pst_real_{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def bigquery_real(_tmp: Path) -> AsyncIterator[Storage]:
    """A scratch dataset in the real project, dropped after the test."""
    from pipestate.adapters.bigquery import BigQueryStorage

    storage = BigQueryStorage(client(), scratch_dataset(), location=location())
    await storage.create_schema()
    try:
        yield storage
    finally:
        await storage.drop_dataset()
        await storage.close()


def dummy_value(parameter_type: dict[str, Any]) -> Any:
    """A query parameter of ``parameter_type`` for a dry run."""
    from datetime import UTC, datetime

    from google.cloud import bigquery

    kind = parameter_type["type"]
    if kind == "ARRAY":
        inner = parameter_type["arrayType"]
        if inner["type"] == "STRUCT":
            fields = inner["structTypes"]
            struct_type = bigquery.StructQueryParameterType(  # type: ignore[no-untyped-call]
                *(bigquery.ScalarQueryParameterType(f["type"]["type"], name=f["name"]) for f in fields)  # type: ignore[no-untyped-call]
            )
            row = bigquery.StructQueryParameter(
                None,
                *(
                    bigquery.ScalarQueryParameter(f["name"], f["type"]["type"], dummy_value(f["type"]))
                    for f in fields
                ),
            )
            return struct_type, [row]
        return inner["type"], [dummy_value(inner)]
    return {
        "STRING": "x",
        "INT64": 1,
        "FLOAT64": 1.0,
        "BOOL": True,
        "TIMESTAMP": datetime(2026, 1, 1, tzinfo=UTC),
    }[kind]


def parameters(types: dict[str, Any]) -> list[Any]:
    from google.cloud import bigquery

    out: list[Any] = []
    for name, parameter_type in types.items():
        if parameter_type["type"] == "ARRAY":
            array_type, values = dummy_value(parameter_type)
            out.append(bigquery.ArrayQueryParameter(name, array_type, values))
        else:
            out.append(
                bigquery.ScalarQueryParameter(name, parameter_type["type"], dummy_value(parameter_type))
            )
    return out
