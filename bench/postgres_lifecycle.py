"""Queue lifecycle throughput on PostgreSQL: pipestate's public async API against raw psycopg.

One lifecycle = enqueue -> claim -> complete. With ``batch`` n, a worker enqueues n items
(``enqueue_many``), claims n (``dequeue_batch``) and completes each. The baseline is a plain
psycopg loop running the same SQL (pipestate's own statements, on the same schema) on one
connection in autocommit mode with prepared statements, the batch insert pipelined in one
transaction: the driver's bound. Both run in the same process layout, interleaved, in the same
run, so the printed ratio does not depend on the machine. Each cell also measures the two
drivers' ways of waiting (a thread pool hop per statement vs psycopg's native async connection)
on the raw loop, the figures behind the choice of the thread pool.

A second table prints claim latency with a backlog: 0, 10k and 100k items QUEUED and 1M in
history (``--history``), on a never-analysed table.

    python bench/postgres_lifecycle.py [--url postgresql://postgres@127.0.0.1/test] [--items 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg.types.json import Jsonb

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.application import QueueManager

INSERT = (
    "INSERT INTO x_meta_pipeline_queue (queue_id, tenant_id, config, priority, created_at, status,"
    " run_id, version, attempts, worker_id, claim_token, claimed_at, lease_expires_at, completed_at,"
    " error_message, updated_at) VALUES (%s, %s, %s, %s, %s, 'QUEUED', NULL, 1, 0, NULL, NULL, NULL,"
    " NULL, NULL, NULL, %s) ON CONFLICT (queue_id) DO NOTHING RETURNING queue_id"
)
CLAIM = (
    "WITH picked AS (SELECT queue_id FROM x_meta_pipeline_queue WHERE status = 'QUEUED'"
    " ORDER BY priority, created_at, queue_id LIMIT %s FOR UPDATE SKIP LOCKED)"
    " UPDATE x_meta_pipeline_queue SET status = 'PROCESSING', worker_id = %s, claim_token = %s,"
    " claimed_at = %s, lease_expires_at = %s, updated_at = %s,"
    " attempts = x_meta_pipeline_queue.attempts + 1, version = x_meta_pipeline_queue.version + 1"
    " FROM picked WHERE x_meta_pipeline_queue.queue_id = picked.queue_id RETURNING x_meta_pipeline_queue.*"
)
COMPLETE = (
    "UPDATE x_meta_pipeline_queue SET status = 'COMPLETED', completed_at = %s, updated_at = %s,"
    " lease_expires_at = NULL, version = version + 1"
    " WHERE queue_id = %s AND status = 'PROCESSING' AND claim_token = %s"
)


def _options(schema: str) -> str:
    extra = os.environ.get("BENCH_PG_OPTIONS", "")  # e.g. -csynchronous_commit=off
    return f"-csearch_path={schema} {extra}".strip()


def schema_url(url: str, schema: str) -> tuple[str, dict[str, Any]]:
    return url, {"connect_args": {"options": _options(schema)}}


def dsn(url: str, schema: str) -> str:
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    return f"{plain}{'&' if '?' in plain else '?'}options={quote(_options(schema))}"


def fresh_schema(url: str) -> str:
    schema = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(dsn(url, "public"), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")

    async def create() -> None:
        target, kwargs = schema_url(url, schema)
        storage = SqlAlchemyStorage.from_url(target, **kwargs)
        await storage.create_schema()
        await storage.close()

    asyncio.run(create())
    return schema


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(dsn(url, "public"), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


# --------------------------------------------------------------------------- raw psycopg (the bound)
def _raw_batch(conn: psycopg.Connection[Any], worker: str, batch: int, i: int) -> list[Any]:
    now = datetime.now(UTC)
    rows = [
        (f"{worker}-{i}-{n}-{secrets.token_hex(4)}", "tenant", Jsonb({"i": i}), 5, now, now)
        for n in range(batch)
    ]
    if batch == 1:
        conn.execute(INSERT, rows[0], prepare=True).fetchall()
    else:
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(INSERT, rows, returning=True)
    return rows


def raw_sync(url: str, schema: str, items: int, worker: str, batch: int) -> float:
    conn = psycopg.connect(dsn(url, schema), autocommit=True)
    started = time.perf_counter()
    for i in range(items // batch):
        _raw_batch(conn, worker, batch, i)
        now = datetime.now(UTC)
        claimed = conn.execute(
            CLAIM, (batch, worker, secrets.token_hex(16), now, now + timedelta(minutes=5), now), prepare=True
        ).fetchall()
        for row in claimed:
            conn.execute(COMPLETE, (now, now, row[0], row[10]), prepare=True)
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def _fetch(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> list[Any]:
    cursor = conn.execute(sql, params, prepare=True)
    return cursor.fetchall() if cursor.description else []


def raw_threadpool(url: str, schema: str, items: int, worker: str, batch: int) -> float:
    """The raw loop, each statement handed to a thread as pipestate does."""
    conn = psycopg.connect(dsn(url, schema), autocommit=True)
    pool = ThreadPoolExecutor(1)

    async def main() -> float:
        loop = asyncio.get_running_loop()

        def hop(fn: Callable[[], Any]) -> Any:
            return loop.run_in_executor(pool, fn)

        started = time.perf_counter()
        for i in range(items // batch):
            await hop(functools.partial(_raw_batch, conn, worker, batch, i))
            now = datetime.now(UTC)
            params = (batch, worker, secrets.token_hex(16), now, now + timedelta(minutes=5), now)
            claimed = await hop(functools.partial(_fetch, conn, CLAIM, params))
            for row in claimed:
                await hop(functools.partial(_fetch, conn, COMPLETE, (now, now, row[0], row[10])))
        return time.perf_counter() - started

    elapsed = asyncio.run(main())
    pool.shutdown()
    conn.close()
    return elapsed


def raw_async(url: str, schema: str, items: int, worker: str, batch: int) -> float:
    """The raw loop on psycopg's native async connection."""

    async def main() -> float:
        conn = await psycopg.AsyncConnection.connect(dsn(url, schema), autocommit=True)
        started = time.perf_counter()
        for i in range(items // batch):
            now = datetime.now(UTC)
            rows = [
                (f"{worker}-{i}-{n}-{secrets.token_hex(4)}", "tenant", Jsonb({"i": i}), 5, now, now)
                for n in range(batch)
            ]
            if batch == 1:
                await (await conn.execute(INSERT, rows[0], prepare=True)).fetchall()
            else:
                async with conn.transaction(), conn.cursor() as cursor:
                    await cursor.executemany(INSERT, rows, returning=True)
            params = (batch, worker, secrets.token_hex(16), now, now + timedelta(minutes=5), now)
            claimed = await (await conn.execute(CLAIM, params, prepare=True)).fetchall()
            for row in claimed:
                await conn.execute(COMPLETE, (now, now, row[0], row[10]), prepare=True)
        elapsed = time.perf_counter() - started
        await conn.close()
        return elapsed

    return asyncio.run(main())


# --------------------------------------------------------------------------- pipestate
def ours(url: str, schema: str, items: int, worker: str, batch: int) -> float:
    async def main() -> float:
        target, kwargs = schema_url(url, schema)
        storage = SqlAlchemyStorage.from_url(target, pool_size=1, **kwargs)
        queue = QueueManager(storage)
        await queue.get_queue_length()  # open the connection before timing
        started = time.perf_counter()
        for i in range(items // batch):
            if batch == 1:
                await queue.enqueue("tenant", {"i": i}, 5)
            else:
                await queue.enqueue_many([queue.new_item("tenant", {"i": i}, 5) for _ in range(batch)])
            for item in await queue.dequeue_batch(worker, batch):
                await queue.mark_completed(item.queue_id, claim_token=item.claim_token)
        elapsed = time.perf_counter() - started
        await storage.close()
        return elapsed

    return asyncio.run(main())


KINDS: dict[str, Callable[[str, str, int, str, int], float]] = {
    "raw": raw_sync,
    "raw_pool": raw_threadpool,
    "raw_async": raw_async,
    "ours": ours,
}


def _call(kind: str, url: str, schema: str, items: int, worker: str, batch: int) -> float:
    return KINDS[kind](url, schema, items, worker, batch)


def measure(kind: str, url: str, workers: int, items: int, batch: int) -> float:
    """Lifecycles per second over all worker processes."""
    schema = fresh_schema(url)
    try:
        per = items // workers
        started = time.perf_counter()
        if workers == 1:
            _call(kind, url, schema, per, "w0", batch)
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                pool.starmap(_call, [(kind, url, schema, per, f"w{n}", batch) for n in range(workers)])
        wall = time.perf_counter() - started
        return (per // batch) * batch * workers / wall
    finally:
        drop_schema(url, schema)


# --------------------------------------------------------------------------- claim latency with a backlog
def claim_latency(url: str, queued: int, history: int, claims: int) -> tuple[float, float]:
    """Median claim+complete latency (ms) through pipestate and raw, on a never-analysed table."""
    schema = fresh_schema(url)
    try:
        with psycopg.connect(dsn(url, schema), autocommit=True) as conn:
            conn.execute("ALTER TABLE x_meta_pipeline_queue SET (autovacuum_enabled = false)")
            conn.execute(
                "INSERT INTO x_meta_pipeline_queue (queue_id, tenant_id, config, priority, created_at,"
                " status, version, attempts, claimed_at) SELECT 'h' || g, 't', '{}', 1 + mod(g, 10),"
                " timestamptz '2026-01-01' + g * interval '1 ms', 'COMPLETED', 2, 1,"
                " timestamptz '2026-01-01' + g * interval '1 ms' FROM generate_series(1, %s) g",
                (history,),
            )
            conn.execute(
                "INSERT INTO x_meta_pipeline_queue (queue_id, tenant_id, config, priority, created_at,"
                " status, version, attempts) SELECT 'q' || g, 't', '{}', 1 + mod(g, 10),"
                " timestamptz '2026-02-01' + g * interval '1 ms', 'QUEUED', 1, 0"
                " FROM generate_series(1, %s) g",
                (queued,),
            )
            conn.execute(
                "INSERT INTO x_meta_pipeline_queue (queue_id, tenant_id, config, priority, created_at,"
                " status, version, attempts) SELECT 'z' || g, 't', '{}', 10, now(), 'QUEUED', 1, 0"
                " FROM generate_series(1, %s) g",
                (2 * claims,),
            )

        async def pipestate() -> list[float]:
            target, kwargs = schema_url(url, schema)
            storage = SqlAlchemyStorage.from_url(target, pool_size=1, **kwargs)
            queue = QueueManager(storage)
            await queue.get_queue_length()
            times = []
            for _ in range(claims):
                started = time.perf_counter()
                item = await queue.dequeue("w")
                assert item is not None
                await queue.mark_completed(item.queue_id, claim_token=item.claim_token)
                times.append(time.perf_counter() - started)
            await storage.close()
            return times

        ours_ms = statistics.median(asyncio.run(pipestate())) * 1000
        raw_times = []
        with psycopg.connect(dsn(url, schema), autocommit=True) as conn:
            for _ in range(claims):
                started = time.perf_counter()
                now = datetime.now(UTC)
                row = conn.execute(
                    CLAIM, (1, "w", secrets.token_hex(16), now, now + timedelta(minutes=5), now), prepare=True
                ).fetchone()
                assert row is not None
                conn.execute(COMPLETE, (now, now, row[0], row[10]), prepare=True)
                raw_times.append(time.perf_counter() - started)
        return ours_ms, statistics.median(raw_times) * 1000
    finally:
        drop_schema(url, schema)


def settings(url: str) -> str:
    with psycopg.connect(dsn(url, "public")) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        sync = conn.execute("SHOW synchronous_commit").fetchone()
        buffers = conn.execute("SHOW shared_buffers").fetchone()
    assert version and sync and buffers
    return f"PostgreSQL {version[0]}, synchronous_commit={sync[0]}, shared_buffers={buffers[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("PIPESTATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--items", type=int, default=2000, help="lifecycles per measurement (all workers)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--repeat", type=int, default=3, help="measurements per cell; the median is shown")
    parser.add_argument("--backlogs", type=int, nargs="*", default=[0, 10_000, 100_000])
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument(
        "--synchronous-commit-off", action="store_true", help="SET synchronous_commit = off for every session"
    )
    args = parser.parse_args()
    url = args.url
    if args.synchronous_commit_off:
        os.environ["BENCH_PG_OPTIONS"] = "-csynchronous_commit=off"  # inherited by the worker processes

    print(
        "queue lifecycle on PostgreSQL (enqueue -> claim -> complete),"
        f" {args.items} per cell, median of {args.repeat}"
    )
    machine = f"{platform.machine()}, cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}"
    print(f"python {sys.version.split()[0]}, psycopg {psycopg.__version__}, {machine}, {settings(url)}")
    print(
        f"{'workers':>7} {'batch':>5} | {'raw psycopg /s':>14} | {'pipestate /s':>12} | {'ratio':>6}"
        f" | {'raw, thread hop /s':>18} | {'raw, async conn /s':>18}"
    )
    for workers in args.workers:
        for batch in args.batches:
            rates: dict[str, list[float]] = {k: [] for k in KINDS}
            for _ in range(args.repeat):  # interleave so drift hits every side alike
                for kind in KINDS:
                    rates[kind].append(measure(kind, url, workers, args.items, batch))
            med = {k: statistics.median(v) for k, v in rates.items()}
            print(
                f"{workers:>7} {batch:>5} | {med['raw']:>14,.0f} | {med['ours']:>12,.0f}"
                f" | {med['ours'] / med['raw']:>5.2f}x"
                f" | {med['raw_pool']:>18,.0f} | {med['raw_async']:>18,.0f}"
            )
    if args.backlogs:
        print(
            "\nclaim + complete latency with a backlog"
            f" (never-analysed table, {args.history:,} rows of history), median ms"
        )
        print(f"{'QUEUED':>8} | {'pipestate ms':>12} | {'raw ms':>7}")
        for queued in args.backlogs:
            ours_ms, raw_ms = claim_latency(url, queued, args.history, args.claims)
            print(f"{queued:>8,} | {ours_ms:>12.3f} | {raw_ms:>7.3f}")


if __name__ == "__main__":
    main()
