"""``Scheduler.tick`` over N due schedules, on a SQLite file and on PostgreSQL.

Every schedule is due with one slot: the tick creates N runs, advances N schedules, promotes
the N runs to PENDING and queues N items (about a dozen batched port calls per 5,000). Beside it,
in the same run and on the same schema, the write floor: the driver's own ``executemany`` of the
same N run rows and N queue rows in one transaction (what any tick must at least write). The
time the tick spends awaiting storage is printed beside it (the rest is planning: cron and
domain objects), with its ratio to that floor. Targets (issue 12): 10,000 due
schedules < 1 s on SQLite and < 1.5 s on PostgreSQL; 100,000 < 10 s.

    python bench/tick.py [--sizes 10000 100000] [--backends sqlite postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa

from pipestate import Scheduler
from pipestate.adapters.rows import schedule_to_row
from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.adapters.sqlalchemy.tables import queue, runs, schedules
from pipestate.domain.pipeline_schedule import PipelineSchedule

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def due_schedules(count: int) -> list[PipelineSchedule]:
    template = PipelineSchedule.new(
        tenant_id="t",
        config_id="c",
        cron="0 * * * *",
        timezone="Europe/London",
        now=T0 - timedelta(minutes=30),
    )
    return [
        replace(template, schedule_id=f"s{n:07d}", tenant_id=f"t{n % 100}", config_id=f"c{n}", config={})
        for n in range(count)
    ]


def target(backend: str, workdir: Path, url: str) -> tuple[str, dict[str, Any], sa.Engine]:
    if backend == "sqlite":
        path = workdir / f"tick-{secrets.token_hex(3)}.db"
        return f"sqlite:///{path}", {}, sa.create_engine(f"sqlite:///{path}")
    schema = f"bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    admin.dispose()
    kwargs = {"connect_args": {"options": f"-csearch_path={schema}"}}
    return url, kwargs, sa.create_engine(url, **kwargs)


class TimedStorage:
    """The storage, with the time spent awaiting its port calls added up."""

    def __init__(self, storage: SqlAlchemyStorage) -> None:
        self._storage = storage
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._storage, name)
        if not callable(method):
            return method

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


async def measure(backend: str, count: int, workdir: Path, url: str) -> tuple[float, float, float]:
    """(tick seconds, of which awaiting storage, write-floor seconds)."""
    storage_url, kwargs, engine = target(backend, workdir, url)
    storage = SqlAlchemyStorage.from_url(storage_url, **kwargs)
    await storage.create_schema()
    with engine.begin() as conn:
        conn.execute(schedules.insert(), [schedule_to_row(s) for s in due_schedules(count)])
    now = T0 + timedelta(minutes=1)

    timed = TimedStorage(storage)
    started = time.perf_counter()
    report = await Scheduler(timed).tick(now)
    tick = time.perf_counter() - started
    assert report.runs_created == count and report.items_enqueued == count, report
    await storage.close()

    # The write floor: the same rows (read back, under new ids), written by the driver's
    # executemany in one transaction.
    with engine.connect() as conn:
        run_rows = [dict(r) for r in conn.execute(sa.select(runs)).mappings()]
        item_rows = [dict(r) for r in conn.execute(sa.select(queue)).mappings()]
    for row in run_rows:
        row["run_id"] = f"x{row['run_id']}"
    for row in item_rows:
        row["queue_id"] = f"x{row['queue_id']}"
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        run_sql, run_params = _insert_sql(engine, runs, run_rows)
        item_sql, item_params = _insert_sql(engine, queue, item_rows)
        started = time.perf_counter()
        cursor.executemany(run_sql, run_params)
        cursor.executemany(item_sql, item_params)
        raw.commit()
        floor = time.perf_counter() - started
    finally:
        raw.close()
        if backend == "postgresql":
            with engine.begin() as conn:
                conn.exec_driver_sql(
                    f"DROP SCHEMA {kwargs['connect_args']['options'][len('-csearch_path=') :]} CASCADE"
                )
        engine.dispose()
    return tick, timed.seconds, floor


def _insert_sql(engine: sa.Engine, table: sa.Table, rows: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    compiled = table.insert().compile(dialect=engine.dialect, column_keys=list(rows[0]))
    processors: dict[str, Any] = dict(compiled._bind_processors)
    if engine.dialect.name == "sqlite":
        names = compiled.positiontup or []
        params: list[Any] = [
            tuple(processors[n](row[n]) if n in processors else row[n] for n in names) for row in rows
        ]
    else:
        from psycopg.types.json import Jsonb

        params = [{k: Jsonb(v) if isinstance(v, dict) else v for k, v in row.items()} for row in rows]
    return compiled.string, params


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "PIPESTATE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    print(f"Scheduler.tick, every schedule due with one slot; python {sys.version.split()[0]}")
    print(f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    print(
        f"{'backend':>10} {'due':>8} | {'tick s':>7} | {'µs/schedule':>11} | {'storage s':>9}"
        f" | {'write floor s':>13} | {'storage/floor':>13}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            for count in args.sizes:
                tick, io, floor = asyncio.run(measure(backend, count, Path(tmp), args.url))
                print(
                    f"{backend:>10} {count:>8,} | {tick:>7.2f} | {tick / count * 1e6:>11.0f} | {io:>9.2f}"
                    f" | {floor:>13.2f} | {io / floor:>12.1f}x"
                )


if __name__ == "__main__":
    main()
