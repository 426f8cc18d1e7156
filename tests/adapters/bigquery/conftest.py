"""Adapter-only fixtures: the session's emulator, a fresh dataset per test, a scripted client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pipestate.adapters.bigquery import BigQueryStorage, RetrySettings
from tests.adapters.bigquery.faults import ScriptedClient
from tests.support.backends import unavailable
from tests.support.bq_emulator import BigQueryEmulator, shared_client, shared_emulator

FAST_RETRY_KW: dict[str, Any] = {
    "max_attempts": 4,
    "initial_wait": 0.001,
    "max_wait": 0.005,
    "contention_wait": 0.001,
    "max_contention_wait": 0.005,
    "max_elapsed": 30.0,
}


@pytest.fixture(scope="session")
def emulator() -> BigQueryEmulator:
    try:
        return shared_emulator()
    except RuntimeError as error:
        unavailable(f"BigQuery emulator: {error}")
        raise


@pytest.fixture
def client(emulator: BigQueryEmulator) -> ScriptedClient:
    return ScriptedClient(shared_client())


@pytest.fixture
def dataset() -> str:
    return f"pst_{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def storage(client: ScriptedClient, dataset: str) -> AsyncIterator[BigQueryStorage]:
    store = BigQueryStorage(client, dataset, retry=RetrySettings(**FAST_RETRY_KW))  # type: ignore[arg-type]
    await store.create_schema()
    client.reset()
    try:
        yield store
    finally:
        await store.close()
        client.real.delete_dataset(store.dataset_id, delete_contents=True, not_found_ok=True)
