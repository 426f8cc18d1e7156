"""Several OS processes claiming from one SQLite file: each item exactly once, none lost, no lock errors."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.application import QueueManager

ITEMS = 2_000
PROCESSES = 4


def _claim_all(url: str, worker_id: str, batch: int) -> tuple[list[str], list[str]]:
    async def main() -> tuple[list[str], list[str]]:
        storage = SqlAlchemyStorage.from_url(url)
        queue = QueueManager(storage)
        claimed: list[str] = []
        errors: list[str] = []
        try:
            while True:
                try:
                    items = await queue.dequeue_batch(worker_id, batch)
                    if not items:
                        return claimed, errors
                    for item in items:
                        claimed.append(item.queue_id)
                        await queue.mark_completed(item.queue_id, claim_token=item.claim_token)
                except Exception as exc:  # every error is reported to the parent, none hidden
                    errors.append(f"{type(exc).__name__}: {exc}")
                    if len(errors) > 20:
                        return claimed, errors
        finally:
            await storage.close()

    return asyncio.run(main())


async def _fill(url: str) -> set[str]:
    storage = SqlAlchemyStorage.from_url(url)
    await storage.create_schema()
    queue = QueueManager(storage)
    items = [queue.new_item(f"tenant-{i % 7}", {"i": i}, priority=1 + i % 10) for i in range(ITEMS)]
    await queue.enqueue_many(items)
    await storage.close()
    return {i.queue_id for i in items}


def _run_processes(url: str, batch: int) -> tuple[list[str], list[str]]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        results = pool.starmap(_claim_all, [(url, f"proc-{n}", batch) for n in range(PROCESSES)])
    claimed = [q for ids, _ in results for q in ids]
    errors = [e for _, errs in results for e in errs]
    return claimed, errors


def test_four_processes_claim_every_item_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    expected = asyncio.run(_fill(url))

    claimed, errors = _run_processes(url, batch=1)

    assert errors == []
    assert len(claimed) == len(set(claimed)) == ITEMS
    assert set(claimed) == expected


def test_batch_claims_from_four_processes_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    expected = asyncio.run(_fill(url))

    claimed, errors = _run_processes(url, batch=25)

    assert errors == []
    assert sorted(claimed) == sorted(expected)


async def test_the_file_is_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    storage = SqlAlchemyStorage.from_url(f"sqlite:///{tmp_path / 'x.db'}")
    await storage.create_schema()
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    await storage.close()


def test_one_storage_shared_by_event_loops_in_two_threads_claims_each_item_once(tmp_path: Path) -> None:
    import threading

    url = f"sqlite:///{tmp_path / 'threads.db'}"
    expected = asyncio.run(_fill(url))
    storage = SqlAlchemyStorage.from_url(url)
    claimed: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def drain(slot: int) -> None:
        async def main() -> None:
            queue = QueueManager(storage)
            start.wait()
            while (item := await queue.dequeue(f"thread-{slot}")) is not None:
                claimed[slot].append(item.queue_id)
                await queue.mark_completed(item.queue_id, claim_token=item.claim_token)
                await asyncio.sleep(0.0002)  # let the other thread's loop interleave its claims

        asyncio.run(main())

    threads = [threading.Thread(target=drain, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    asyncio.run(storage.close())

    everything = claimed[0] + claimed[1]
    assert claimed[0] and claimed[1]
    assert len(everything) == len(set(everything)) == ITEMS and set(everything) == expected
