"""A worker process for the concurrency tests (imported by name in ``spawn`` children)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage


def claim_until_empty(
    url: str, engine_kwargs: dict[str, Any], worker_id: str, batch: int, start: Any, results: Any
) -> None:
    """Claim batches until the queue is empty; put ``(worker_id, claimed ids)`` on ``results``."""
    results.put((worker_id, asyncio.run(_claim(url, engine_kwargs, worker_id, batch, start))))


async def _claim(
    url: str, engine_kwargs: dict[str, Any], worker_id: str, batch: int, start: Any
) -> list[str]:
    storage = SqlAlchemyStorage.from_url(url, pool_size=1, **engine_kwargs)
    claimed: list[str] = []
    try:
        await storage.get_queue_item("warm-up")  # connect before the race starts
        start.wait()
        while True:
            now = datetime.now(UTC)
            items = await storage.claim_queue_items(
                worker_id=worker_id,
                claim_token=uuid.uuid4().hex,
                now=now,
                lease_expires_at=now + timedelta(minutes=5),
                limit=batch,
            )
            if not items:
                return claimed
            claimed.extend(item.queue_id for item in items)
    finally:
        await storage.close()
