"""Storage backends for the contract suite: each yields a fresh, isolated, schema-ready store.

A backend that cannot run here skips locally and fails under CI (``CI=true``): a missing backend
must never pass silently.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from adapters.sqlalchemy import SqlAlchemyStorage
from domain.ports import Storage

BackendFactory = Callable[[Path], AbstractAsyncContextManager[Storage]]


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"required backend unavailable in CI: {reason}")
    pytest.skip(reason)


@asynccontextmanager
async def sqlite_memory(_tmp: Path) -> AsyncIterator[Storage]:
    storage = SqlAlchemyStorage.from_url("sqlite://")
    await storage.create_schema()
    try:
        yield storage
    finally:
        await storage.close()


@asynccontextmanager
async def sqlite_file(tmp: Path) -> AsyncIterator[Storage]:
    storage = SqlAlchemyStorage.from_url(f"sqlite:///{tmp / 'pipestate.db'}")
    await storage.create_schema()
    try:
        yield storage
    finally:
        await storage.close()


BACKENDS: dict[str, BackendFactory] = {
    "sqlite-memory": sqlite_memory,
    "sqlite-file": sqlite_file,
}
