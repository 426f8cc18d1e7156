"""Many worker processes claiming from one PostgreSQL queue at once."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.domain.queue import QueueItem
from tests.adapters.postgresql._claimer import claim_until_empty
from tests.adapters.postgresql.conftest import PgTarget

WORKERS = 8
ITEMS = 10_000
BATCH = 10


def race(url: str, kwargs: dict[str, Any]) -> tuple[dict[str, list[str]], float, list[int | None]]:
    """Start the worker processes, release them at once, collect what each claimed."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    workers = [
        ctx.Process(target=claim_until_empty, args=(url, kwargs, f"w{n}", BATCH, start, results))
        for n in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    time.sleep(0.5)  # let most children import and connect; stragglers join the race late
    started = time.monotonic()
    start.set()
    claimed = dict(results.get(timeout=120) for _ in workers)
    elapsed = time.monotonic() - started
    for worker in workers:
        worker.join(timeout=30)
    return claimed, elapsed, [worker.exitcode for worker in workers]


@pytest.mark.slow
async def test_eight_processes_claim_ten_thousand_items_each_exactly_once(
    pg: PgTarget, pg_storage: SqlAlchemyStorage, admin: sa.Engine
) -> None:
    url, kwargs = pg
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    ids = [f"q{n:05d}" for n in range(ITEMS)]
    await pg_storage.insert_queue_items(
        [
            QueueItem(
                queue_id=i,
                tenant_id="t",
                config={},
                priority=1 + n % 10,
                created_at=t0 + timedelta(milliseconds=n),
            )
            for n, i in enumerate(ids)
        ]
    )
    claimed, elapsed, exitcodes = await asyncio.to_thread(race, url, kwargs)
    print(
        f"{ITEMS} items, {WORKERS} processes, batch {BATCH}: {elapsed:.2f} s; "
        f"per worker {sorted(len(c) for c in claimed.values())}"
    )

    everything = Counter(i for ids_ in claimed.values() for i in ids_)
    assert exitcodes == [0] * WORKERS
    assert set(everything) == set(ids)
    assert max(everything.values()) == 1
    assert sum(1 for c in claimed.values() if c) >= 2  # they really raced
    with admin.connect() as conn:
        attempts = conn.exec_driver_sql(
            "SELECT status, attempts, count(*) FROM x_meta_pipeline_queue GROUP BY 1, 2"
        ).all()
    assert attempts == [("PROCESSING", 1, ITEMS)]
