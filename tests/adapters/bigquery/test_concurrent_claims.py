"""Four workers, each with its own client and event loop in its own thread, claim 200 items."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

from pipestate.adapters.bigquery import BigQueryStorage
from pipestate.domain.queue import QueueItem, QueueStatus
from tests.support.bq_emulator import BigQueryEmulator

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WORKERS = 4
ITEMS = 200
BATCH = 7


def _worker(emulator: BigQueryEmulator, dataset: str, name: str, out: dict[str, list[QueueItem]]) -> None:
    async def work() -> list[QueueItem]:
        client = emulator.client()
        storage = BigQueryStorage(client, dataset, threads=1)
        claimed: list[QueueItem] = []
        try:
            for n in range(ITEMS):
                batch = await storage.claim_queue_items(
                    worker_id=name,
                    claim_token=f"{name}-{n}",
                    now=T0 + timedelta(microseconds=n),
                    lease_expires_at=T0 + timedelta(minutes=5),
                    limit=BATCH,
                )
                if not batch:
                    return claimed
                claimed.extend(batch)
            return claimed
        finally:
            await storage.close()
            client.close()  # type: ignore[no-untyped-call]

    out[name] = asyncio.run(work())


async def test_four_workers_claim_each_of_200_items_exactly_once(
    storage: BigQueryStorage, emulator: BigQueryEmulator
) -> None:
    await storage.insert_queue_items(
        [
            QueueItem(
                queue_id=f"q{i:04d}",
                tenant_id="t",
                config={"i": i},
                priority=i % 3 + 1,
                created_at=T0 + timedelta(microseconds=i),
            )
            for i in range(ITEMS)
        ]
    )
    out: dict[str, list[QueueItem]] = {}
    threads = [
        threading.Thread(target=_worker, args=(emulator, storage.dataset_id, f"w{n}", out))
        for n in range(WORKERS)
    ]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert sorted(out) == [f"w{n}" for n in range(WORKERS)]
    claims = Counter(item.queue_id for items in out.values() for item in items)
    assert len(claims) == ITEMS and set(claims.values()) == {1}
    stored = await storage.find_queue_items(status=QueueStatus.PROCESSING)
    assert len(stored) == ITEMS and all(i.attempts == 1 for i in stored)
    owner = {item.queue_id: (name, item.claim_token) for name, items in out.items() for item in items}
    assert all(owner[i.queue_id] == (i.worker_id, i.claim_token) for i in stored)
