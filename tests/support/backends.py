"""Storage backends for the contract suite: each yields a fresh, isolated, schema-ready store.

A backend that cannot run here skips locally and fails under CI (``CI=true``): a missing backend
must never pass silently.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.domain.ports import Storage

BackendFactory = Callable[[Path], AbstractAsyncContextManager[Storage]]


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"required backend unavailable in CI: {reason}")
    pytest.skip(reason)


@asynccontextmanager
async def _ready(storage: Storage) -> AsyncIterator[Storage]:
    """``storage`` with its schema created, closed afterwards."""
    try:
        await storage.create_schema()
        yield storage
    finally:
        await storage.close()


def sqlite_memory(_tmp: Path) -> AbstractAsyncContextManager[Storage]:
    return _ready(SqlAlchemyStorage.from_url("sqlite://"))


def sqlite_file(tmp: Path) -> AbstractAsyncContextManager[Storage]:
    return _ready(SqlAlchemyStorage.from_url(f"sqlite:///{tmp / 'pipestate.db'}"))


POSTGRES_URL_ENV = "PIPESTATE_TEST_POSTGRES_URL"
"""e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``; unset means "no PostgreSQL here"."""


@functools.cache
def _postgres_problem(url: str) -> str | None:
    """Why the PostgreSQL at ``url`` cannot serve the tests (``None`` when it can); asked once."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url, poolclass=sa.NullPool, connect_args={"connect_timeout": 3})
    except Exception as error:  # a missing driver (pipestate[postgres]) or a malformed URL
        return f"{POSTGRES_URL_ENV}={url!r} is not usable: {error}"
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as error:
        return f"PostgreSQL at {url!r} is unreachable: {str(error).splitlines()[0]}"
    finally:
        engine.dispose()
    return None


def postgres_url() -> str:
    """The test server's URL; skips (locally) or fails (CI) when it is unset or unreachable."""
    url = os.environ.get(POSTGRES_URL_ENV, "")
    if not url:
        unavailable(
            f"PostgreSQL tests need {POSTGRES_URL_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        )
    problem = _postgres_problem(url)
    if problem is not None:
        unavailable(problem)
    return url


@contextmanager
def postgres_schema() -> Iterator[tuple[str, dict[str, Any]]]:
    """A fresh, empty PostgreSQL schema ``pst_<hex>`` for one test, dropped (CASCADE) after.

    Yields ``(url, engine_kwargs)``: engines built with these kwargs see only that schema.
    """
    import sqlalchemy as sa

    url = postgres_url()
    schema = f"pst_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        yield url, {"connect_args": {"options": f"-csearch_path={schema}"}}
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.dispose()


@asynccontextmanager
async def postgresql(_tmp: Path) -> AsyncIterator[Storage]:
    with postgres_schema() as (url, engine_kwargs):
        async with _ready(SqlAlchemyStorage.from_url(url, **engine_kwargs)) as storage:
            yield storage


@asynccontextmanager
async def bigquery_emulator(_tmp: Path, *, limited: bool = False) -> AsyncIterator[Storage]:
    """A fresh dataset ``pst_<hex>`` on the session's one ``bqemulator`` (started lazily), dropped
    after the test. ``limited``: through the model of BigQuery's limits (latency, DML queue,
    partition conflicts, bytes billed; ``tests/support/bq_limits.py``)."""
    import asyncio

    from tests.support.bq_emulator import shared_client

    try:
        client: Any = await asyncio.to_thread(shared_client)
    except RuntimeError as error:
        unavailable(f"BigQuery emulator: {error}")
    from pipestate.adapters.bigquery import BigQueryStorage

    if limited:
        from tests.support.bq_limits import LimitedClient, Limits

        client = LimitedClient(client, Limits(time_scale=0.0005, estimate_bytes=False))
    storage = BigQueryStorage(client, f"pst_{uuid.uuid4().hex[:16]}")
    await storage.create_schema()
    try:
        yield storage
    finally:
        await storage.close()  # idempotent: the test may have closed it already
        await asyncio.to_thread(
            client.delete_dataset, storage.dataset_id, delete_contents=True, not_found_ok=True
        )


def bigquery_limits(tmp: Path) -> AbstractAsyncContextManager[Storage]:
    return bigquery_emulator(tmp, limited=True)


BACKENDS: dict[str, BackendFactory] = {
    "sqlite-memory": sqlite_memory,
    "sqlite-file": sqlite_file,
    "postgresql": postgresql,
    "bigquery-emulator": bigquery_emulator,
    "bigquery-limits": bigquery_limits,
}
if os.environ.get("PIPESTATE_TEST_BIGQUERY_PROJECT"):  # opt-in, never in CI: tests/support/real_bigquery.py
    from tests.support.real_bigquery import bigquery_real

    BACKENDS["bigquery-real"] = bigquery_real
