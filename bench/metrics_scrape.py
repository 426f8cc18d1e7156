"""/metrics scraped during the queue lifecycle: the gauges match the store, a scrape costs a constant
number of statements, and scraping barely slows the lifecycle.

On a SQLite file holding ``--tenants`` tenants' runs, a loop runs enqueue -> dequeue ->
mark_completed through the public API (as ``bench/lifecycle.py`` does) while another task scrapes
``PipestateMetrics.exposition()`` every ``--every`` seconds with no cache (``min_interval=0``, the
worst case). Printed: statements per scrape (min/max over all scrapes), median scrape time, the
lifecycle rate with and without scraping (a ratio measured in the same run), and whether the last
scrape equals the store's own counts.

    python bench/metrics_scrape.py [--items 2000] [--tenants 50] [--every 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.adapters.sqlalchemy.alerts import SqlAlertStore
from pipestate.application import QueueManager
from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.metrics import PipestateMetrics
from pipestate.domain.queue import QueueStatus
from pipestate.domain.run import PipelineRun


async def lifecycles(queue: QueueManager, items: int) -> float:
    started = time.perf_counter()
    for i in range(items):
        await queue.enqueue("tenant-0", {"i": i})
        item = await queue.dequeue("bench")
        assert item is not None
        await queue.mark_completed(item.queue_id, claim_token=item.claim_token)
    return items / (time.perf_counter() - started)


def gauges(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(
    url: str, every: float, done: threading.Event, statements: list[int], durations: list[float]
) -> None:
    async def loop() -> None:
        storage = SqlAlchemyStorage.from_url(url)
        metrics = PipestateMetrics(storage, SqlAlertStore(storage.engine), min_interval=0)
        current: list[str] = []

        def record(*args: Any) -> None:
            if str(args[2]).lstrip().upper().startswith("SELECT"):
                current.append(args[2])

        sa.event.listen(storage.engine, "before_cursor_execute", record)
        try:
            while not done.is_set():
                current.clear()
                started = time.perf_counter()
                await metrics.exposition()
                durations.append(time.perf_counter() - started)
                statements.append(len(current))
                await asyncio.sleep(every)
        finally:
            await storage.close()

    asyncio.run(loop())


def final_scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async def once() -> bytes:
        storage = SqlAlchemyStorage.from_url(url)
        try:
            return (await PipestateMetrics(storage, SqlAlertStore(storage.engine)).exposition())[0]
        finally:
            await storage.close()

    return gauges(asyncio.run(once()).decode())


async def main(items: int, tenants: int, every: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        storage = SqlAlchemyStorage.from_url(f"sqlite:///{tmp}/bench.db")
        await storage.create_schema()
        now = SYSTEM_CLOCK.now()
        await storage.insert_runs(
            [
                PipelineRun.new(tenant_id=f"tenant-{t}", config_id=f"c{i}", scheduled_time=now, now=now)
                for t in range(tenants)
                for i in range(20)
            ]
        )
        queue = QueueManager(storage)
        alone = await lifecycles(queue, items)
        done = threading.Event()
        statements: list[int] = []
        durations: list[float] = []
        url = f"sqlite:///{tmp}/bench.db"
        thread = threading.Thread(target=scrape, args=(url, every, done, statements, durations))
        thread.start()  # the scraping server: its own thread, event loop and connections
        scraped = await lifecycles(queue, items)
        done.set()
        thread.join()
        last = await asyncio.to_thread(final_scrape, url)
        stored_runs = await storage.count_runs_by_state()
        completed = await storage.count_queue_items(QueueStatus.COMPLETED)
        runs_total = sum(v for (name, _), v in last.items() if name == "pipestate_runs")
        matches = (
            runs_total == sum(stored_runs.values())
            and last[("pipestate_queue_items", (("status", "COMPLETED"),))] == completed
        )
        await storage.close()
    print(f"{tenants} tenants, {tenants * 20} runs; {items} lifecycles alone and again while scraping")
    print(f"scrapes: {len(statements)}; SELECTs per scrape: min {min(statements)}, max {max(statements)}")
    print(f"scrape time: median {statistics.median(durations) * 1000:.1f} ms")
    print(f"lifecycles/s: alone {alone:,.0f}, while scraping {scraped:,.0f} ({scraped / alone:.2f}x)")
    print(f"last scrape equals the store's counts: {matches}")
    if not matches:
        raise SystemExit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--every", type=float, default=0.05, help="seconds between scrapes")
    options = parser.parse_args()
    asyncio.run(main(options.items, options.tenants, options.every))
