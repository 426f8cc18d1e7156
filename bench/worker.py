"""The full Worker path against a hand-written loop of the same statements, SQLite and PostgreSQL.

Per run: claim (in batches of ``concurrency``), read the run, start it (compare-and-set),
call a no-op async handler, complete it (compare-and-set), finish the queue item. pipestate runs
the public ``Worker``; the baseline runs the same compiled statements (the adapter's own SQL and
row mapping, the same domain transitions) in a plain synchronous loop on one raw driver
connection: no event loop, no threads, no retries. Both run in the same run on fresh stores
holding the same PENDING runs, so the ratio does not depend on the machine. Target: >= 0.6x.
The last columns run the Worker with ``group_commit=False`` (one statement per run and step):
the gain of group commit in the same run.

    python bench/worker.py [--runs 2000] [--concurrency 1 10] [--backends sqlite postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa

from pipestate import Worker
from pipestate.adapters.rows import RUN_MUTABLE_COLUMNS, queue_from_row, run_from_row, run_to_row
from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.adapters.sqlalchemy.sqlite_hotpath import write_transaction
from pipestate.adapters.sqlalchemy.storage import _postgres_hot, _sqlite_hot, _transition_name
from pipestate.application.scheduler import queue_item_for
from pipestate.domain.queue import QueueStatus
from pipestate.domain.run import PipelineRun, RunState

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)


async def noop(_run: PipelineRun | None, _config: dict[str, Any]) -> None:
    return None


def new_store(backend: str, workdir: Path, url: str) -> tuple[str, dict[str, Any]]:
    if backend == "sqlite":
        return f"sqlite:///{workdir / f'w-{secrets.token_hex(3)}.db'}", {}
    schema = f"bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    admin.dispose()
    return url, {"connect_args": {"options": f"-csearch_path={schema}"}}


async def fill(storage: SqlAlchemyStorage, count: int) -> None:
    await storage.create_schema()
    runs = []
    for n in range(count):
        run = PipelineRun.new(tenant_id="t", config_id=f"c{n}", scheduled_time=T0, now=T0)
        run.make_pending(T0)
        runs.append(run)
    await storage.insert_runs(runs)
    await storage.insert_queue_items([queue_item_for(r, T0) for r in runs])


async def ours(
    target: tuple[str, dict[str, Any]], count: int, concurrency: int, group_commit: bool = True
) -> float:
    storage = SqlAlchemyStorage.from_url(target[0], **target[1])
    await fill(storage, count)
    worker = Worker(
        noop, storage, concurrency=concurrency, worker_id="w", poll_interval=0.01, group_commit=group_commit
    )
    started = time.perf_counter()
    done = await worker.run(exit_when_idle=True)
    elapsed = time.perf_counter() - started
    assert done == count, done
    await storage.close()
    return count / elapsed


Execute = Callable[..., Any]
"""``execute(method, name, params)``: run ``method(handle, name, params)`` on the raw connection."""


def _loop(execute: Execute, hot: Any, count: int, batch: int) -> None:
    """The hand-written worker: the same statements, one at a time, in a plain loop."""
    done = 0
    while done < count:
        now = datetime.now(UTC)
        params = {"b_worker": "w", "b_token": secrets.token_hex(16), "b_now": now, "b_lease": now + LEASE}
        rows = execute(hot.fetch, "claim", {**params, "b_limit": batch})
        if not rows:
            break
        for item in (queue_from_row(r) for r in rows):
            assert item.run_id is not None and item.claim_token is not None
            run = run_from_row(execute(hot.fetch, "get_run", {"b_id": item.run_id})[0])
            expected = run.version
            run.start(now, worker_id="w", claim_token=item.claim_token, lease_expires_at=now + LEASE)
            assert execute(hot.execute, "update_run", _cas(run, expected)) == 1
            expected = run.version
            run.complete(datetime.now(UTC), claim_token=item.claim_token)
            assert run.state is RunState.COMPLETED
            assert execute(hot.execute, "update_run", _cas(run, expected)) == 1
            finish = {
                "b_id": item.queue_id,
                "b_from": "PROCESSING",
                "b_now": now,
                "b_token": item.claim_token,
            }
            name = _transition_name(QueueStatus.COMPLETED, True)
            assert execute(hot.execute, name, finish) == 1
            done += 1


def _cas(run: PipelineRun, expected: int) -> dict[str, Any]:
    row = run_to_row(run)
    params = {c: row[c] for c in RUN_MUTABLE_COLUMNS}
    params.update(b_id=run.run_id, b_expected=expected)
    return params


async def raw(backend: str, target: tuple[str, dict[str, Any]], count: int, concurrency: int) -> float:
    storage = SqlAlchemyStorage.from_url(target[0], **target[1])
    await fill(storage, count)
    await storage.close()
    if backend == "sqlite":
        conn = sqlite3.connect(target[0].removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        started = time.perf_counter()

        def on_sqlite(method: Callable[..., Any], name: str, params: dict[str, Any]) -> Any:
            return write_transaction(conn, lambda cursor: method(cursor, name, params))

        _loop(on_sqlite, _sqlite_hot(), count, concurrency)
        elapsed = time.perf_counter() - started
        conn.close()
        return count / elapsed
    import psycopg

    options = target[1]["connect_args"]["options"]
    plain = target[0].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, options=options, autocommit=True) as pg:
        started = time.perf_counter()

        def on_postgres(method: Callable[..., Any], name: str, params: dict[str, Any]) -> Any:
            return method(pg, name, params)

        _loop(on_postgres, _postgres_hot(), count, concurrency)
        elapsed = time.perf_counter() - started
    return count / elapsed


def drop(target: tuple[str, dict[str, Any]]) -> None:
    if not target[1]:
        return  # a SQLite file in the temporary folder
    admin = sa.create_engine(target[0])
    with admin.begin() as conn:
        conn.exec_driver_sql(
            f"DROP SCHEMA {target[1]['connect_args']['options'][len('-csearch_path=') :]} CASCADE"
        )
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "PIPESTATE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    print(
        f"Worker path (claim, read, start, no-op handler, complete, finish item), {args.runs} runs per cell"
    )
    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, cpus {os.cpu_count()}")
    print(
        f"{'backend':>10} {'concurrency':>11} | {'hand loop runs/s':>16} | {'Worker runs/s':>13}"
        f" | {'ratio':>6} | {'no group commit':>15} | {'gain':>5}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            for concurrency in args.concurrency:
                raws, ourss, singles = [], [], []
                for _ in range(args.repeat):
                    store = new_store(backend, Path(tmp), args.url)
                    singles.append(asyncio.run(ours(store, args.runs, concurrency, False)))
                    drop(store)
                    store = new_store(backend, Path(tmp), args.url)
                    raws.append(asyncio.run(raw(backend, store, args.runs, concurrency)))
                    drop(store)
                    store = new_store(backend, Path(tmp), args.url)
                    ourss.append(asyncio.run(ours(store, args.runs, concurrency)))
                    drop(store)
                r, o = statistics.median(raws), statistics.median(ourss)
                n = statistics.median(singles)
                print(
                    f"{backend:>10} {concurrency:>11} | {r:>16,.0f} | {o:>13,.0f} | {o / r:>5.2f}x"
                    f" | {n:>15,.0f} | {o / n:>4.2f}x"
                )


if __name__ == "__main__":
    main()
