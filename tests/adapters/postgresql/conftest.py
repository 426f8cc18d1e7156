"""Fixtures for the PostgreSQL adapter tests: a fresh schema per test on the real server.

They skip with the reason when ``PIPESTATE_TEST_POSTGRES_URL`` is unset or the server is
unreachable, and fail instead under ``CI=true`` (see ``tests/support/backends.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from tests.support.backends import postgres_schema

PgTarget = tuple[str, dict[str, Any]]
"""(url, engine kwargs) of one test's schema."""


@pytest.fixture
def pg() -> Iterator[PgTarget]:
    with postgres_schema() as target:
        yield target


@pytest.fixture
def admin(pg: PgTarget) -> Iterator[sa.Engine]:
    """A plain engine on the test's schema, for set-up and checks behind the storage's back."""
    url, kwargs = pg
    engine = sa.create_engine(url, poolclass=sa.NullPool, **kwargs)
    yield engine
    engine.dispose()


@pytest.fixture
async def pg_storage(pg: PgTarget) -> AsyncIterator[SqlAlchemyStorage]:
    url, kwargs = pg
    storage = SqlAlchemyStorage.from_url(url, **kwargs)
    await storage.create_schema()
    yield storage
    await storage.close()
