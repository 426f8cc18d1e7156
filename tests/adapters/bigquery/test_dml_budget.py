"""The adapter's DML budget and per-operation byte caps, on the model of BigQuery's limits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from pipestate import schemas
from pipestate.adapters.bigquery import BigQueryStorage
from pipestate.adapters.bigquery.errors import BytesBilledLimitExceeded
from pipestate.adapters.bigquery.storage import DEFAULT_MAXIMUM_BYTES_BILLED, HOT_PATH_BYTE_CAPS
from pipestate.domain.errors import StorageError
from pipestate.domain.run import PipelineRun
from tests.support.bq_emulator import BigQueryEmulator, shared_client
from tests.support.bq_limits import LimitedClient, Limits

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

Make = Callable[..., Any]


class Capped(LimitedClient):
    """The model, also noting each job's operation and byte cap."""

    caps: list[tuple[str, int]]

    def query(self, sql: str, job_config: Any = None, **kwargs: Any) -> Any:
        self.__dict__.setdefault("caps", []).append(
            (job_config.labels["operation"], job_config.maximum_bytes_billed)
        )
        return super().query(sql, job_config, **kwargs)


@pytest.fixture
async def make(emulator: BigQueryEmulator) -> AsyncIterator[Make]:
    """Storages over one fresh dataset, each through its own model client."""
    dataset = f"dml_{uuid.uuid4().hex[:12]}"
    made: list[BigQueryStorage] = []

    async def build(limits: Limits | None = None, **options: Any) -> tuple[BigQueryStorage, Capped]:
        client = Capped(shared_client(), limits or Limits(time_scale=0.0005, estimate_bytes=False))
        storage = BigQueryStorage(client, dataset, **options)  # type: ignore[arg-type]
        await storage.create_schema()
        made.append(storage)
        return storage, client

    yield build
    for storage in made:
        await storage.close()
    await asyncio.to_thread(shared_client().delete_dataset, dataset, delete_contents=True, not_found_ok=True)


async def _concurrent_updates(storage: BigQueryStorage, n: int) -> list[bool]:
    runs = [PipelineRun.new(tenant_id="t", config_id=f"c{i}", scheduled_time=T0, now=T0) for i in range(n)]
    await storage.insert_runs(runs)
    moved = []
    for run in runs:
        copy = run.copy()
        copy.make_pending(T0)
        moved.append(copy)
    return list(await asyncio.gather(*(storage.update_run(run, 1) for run in moved)))


async def test_no_more_than_two_mutating_statements_per_table_are_ever_outstanding(make: Make) -> None:
    storage, client = await make(threads=32)

    applied = await _concurrent_updates(storage, 24)

    assert applied == [True] * 24
    runs_table = storage.table_id(schemas.RUNS)
    assert client.peak_outstanding(runs_table) <= 2
    assert client.errors("resourcesExceeded") == []
    assert storage.dml_statements()[schemas.RUNS] >= 24
    assert storage.dml_per_minute()[schemas.RUNS] >= 24  # all within the last minute


async def test_without_the_budget_the_same_burst_queues_in_bigquery(make: Make) -> None:
    storage, client = await make(threads=32, dml_slots_per_table=32)

    await _concurrent_updates(storage, 24)

    assert client.peak_outstanding(storage.table_id(schemas.RUNS)) > 2


async def test_an_empty_claim_costs_one_job(make: Make) -> None:
    storage, client = await make()
    before = len(client.jobs)

    claimed = await storage.claim_queue_items(
        worker_id="w", claim_token="tok", now=T0, lease_expires_at=T0, limit=10
    )

    assert claimed == []
    assert len(client.jobs) - before == 1


async def test_byte_caps_are_per_operation_and_a_hit_is_permanent_and_named(make: Make) -> None:
    limits = Limits(time_scale=0.0005, estimate_bytes=True)
    storage, client = await make(limits, byte_caps={**HOT_PATH_BYTE_CAPS, "get_run": 5_000_000})
    jobs = len(client.jobs)
    client.caps.clear()

    with pytest.raises(BytesBilledLimitExceeded) as caught:
        await storage.get_run("missing")  # bills the 10 MB minimum: over a 5 MB cap

    assert "get_run" in str(caught.value) and "5,000,000" in str(caught.value)
    assert len(client.jobs) - jobs == 1  # not retried
    assert await storage.get_runs(["missing"]) == []  # 1 GiB cap: under it
    assert await storage.count_runs_by_state() == {}  # not in the map: the blanket cap
    assert client.caps == [
        ("get_run", 5_000_000),
        ("get_runs", HOT_PATH_BYTE_CAPS["get_runs"]),
        ("count_runs_by_state", DEFAULT_MAXIMUM_BYTES_BILLED),
    ]


@pytest.mark.parametrize("options", [{"byte_caps": {"get_run": 0}}, {"dml_slots_per_table": 0}])
def test_bad_budgets_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(StorageError):
        BigQueryStorage(shared_client(), "some_dataset", **options)
