"""A burst of runs due at the same minute on the model of BigQuery's limits, with and without
group commit.

``tenants x schedules`` runs are created (PENDING and queued, in MERGE batches), then claimed,
run by a no-op handler and completed by ``--workers`` Workers. The model
(``tests/support/bq_limits.py``) adds BigQuery's documented behaviour to the emulator: 2 s per
mutating DML (modelled), 2 running + 20 queued per table, partition conflicts with 3 reruns,
bytes billed per referenced table with a 10 MB minimum. Its limits live in one process, so the
workers are tasks of one event loop, each with its own ``BigQueryStorage`` (its own DML budget,
as a process would have) over the one model client.

Modelled time runs ``1 / --time-scale`` times faster than the wall clock, but the emulator's own
execution time (tenths of a second per statement) counts as modelled time too and dominates it.
So the drain time and runs/hour are computed from what the limits impose: the busiest table's
mutating statements x 2 s / 2 running at once (reads overlap with them); the measured modelled
time is printed beside it.

Printed per mode: runs/hour sustained (modelled), time to drain the burst, jobs and modelled
bytes per run, mutating DML per table per minute, conflicts (reruns and failures), DML-limit
errors, and the correctness checks (duplicates, lost, executed twice). Then bytes per run with
10k and 1M history rows (``add_synthetic_rows``), and the jobs/hour of an idle worker.

    python bench/bigquery_scale.py                       # 20 x 10 = 200 runs (a few minutes)
    python bench/bigquery_scale.py --full                # 100 x 50 = 5,000 runs (long)
    python bench/bigquery_scale.py --tenants 40 --schedules 10 --modes batched
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipestate import schemas
from pipestate.adapters.bigquery import BigQueryStorage
from pipestate.application.scheduler import queue_item_for
from pipestate.application.worker import Outcome, Worker, WorkResult
from pipestate.domain.ports import RunFilter
from pipestate.domain.run import PipelineRun, RunState
from tests.support.bq_limits import MUTATING, LimitedClient, Limits

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@dataclass
class Figures:
    mode: str
    runs: int
    modelled_seconds: float
    jobs: int
    bytes_billed: int
    dml_per_table_minute: dict[str, float]
    reruns: int
    conflict_failures: int
    outstanding_errors: int
    duplicates: int
    lost: int
    executed_twice: int
    not_completed: int

    dml_counts: dict[str, int]

    @property
    def dml_bound_seconds(self) -> float:
        """The drain time the documented DML limits impose: the busiest table's mutating
        statements, 2 s each, 2 at a time (independent of the emulator's own speed)."""
        busiest = max(self.dml_counts.values(), default=0)
        return busiest * Limits().dml_latency / Limits().mutating_running

    @property
    def runs_per_hour(self) -> float:
        return self.runs * 3600 / max(self.dml_bound_seconds, 1e-9)


async def burst(real: Any, args: argparse.Namespace, *, group_commit: bool) -> Figures:
    client = LimitedClient(real, Limits(time_scale=args.time_scale, estimate_bytes=False))
    dataset = f"scale_{uuid.uuid4().hex[:12]}"
    setup = BigQueryStorage(client, dataset)  # type: ignore[arg-type]
    await setup.create_schema()
    runs = []
    for tenant in range(args.tenants):
        for schedule in range(args.schedules):
            run = PipelineRun.new(
                tenant_id=f"tenant{tenant:03d}",
                config_id=f"pipeline{schedule:02d}",
                scheduled_time=T0,
                now=T0,
            )
            run.make_pending(T0)
            runs.append(run)
    await setup.insert_runs(runs)
    await setup.insert_queue_items([queue_item_for(r, T0) for r in runs])

    executed: Counter[str] = Counter()
    results: list[WorkResult] = []

    async def handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
        assert run is not None
        executed[run.run_id] += 1

    storages = [BigQueryStorage(client, dataset) for _ in range(args.workers)]  # type: ignore[arg-type]
    workers = [
        Worker(
            handler,
            storage,
            worker_id=f"w{n}",
            concurrency=args.concurrency,
            lease=timedelta(minutes=30),
            poll_interval=0.05,
            group_commit=group_commit,
            batch_delay=args.batch_delay if group_commit else 0.0,
            on_result=results.append,
        )
        for n, storage in enumerate(storages)
    ]
    first_job = len(client.jobs)
    start = client.clock.seconds()
    await asyncio.gather(*(w.run(exit_when_idle=True) for w in workers))
    # A worker that found the queue empty while others still held runs may have left early:
    # finish whatever is left with one more pass.
    await asyncio.gather(*(w.run(exit_when_idle=True) for w in workers))
    elapsed = client.clock.seconds() - start
    jobs = client.jobs[first_job:]

    stored = await setup.find_runs(RunFilter(), limit=len(runs) + 10)
    per_table: Counter[str] = Counter(
        j.target.rsplit(".", 1)[-1] for j in jobs if j.kind in MUTATING and j.target
    )
    completed_ids = [r.run_id for r in stored if r.state is RunState.COMPLETED]
    figures = Figures(
        mode="group commit" if group_commit else "one statement per run",
        runs=len(runs),
        modelled_seconds=elapsed,
        jobs=len(jobs),
        bytes_billed=sum(j.bytes_billed for j in jobs),
        dml_per_table_minute={t: n * 60 / max(elapsed, 1e-9) for t, n in sorted(per_table.items())},
        dml_counts=dict(per_table),
        reruns=sum(j.conflicts for j in jobs),
        conflict_failures=sum(1 for j in jobs if j.error_reason == "invalidQuery"),
        outstanding_errors=sum(1 for j in jobs if j.error_reason == "resourcesExceeded"),
        duplicates=len(stored) - len({r.run_id for r in stored}),
        lost=sum(1 for r in results if r.outcome is Outcome.LOST),
        executed_twice=sum(1 for n in executed.values() if n > 1),
        not_completed=len(runs) - len(set(completed_ids)),
    )
    for storage in [setup, *storages]:
        await storage.close()
    await asyncio.to_thread(
        real.delete_dataset, f"{real.project}.{dataset}", delete_contents=True, not_found_ok=True
    )
    return figures


async def bytes_per_run(real: Any, args: argparse.Namespace, history: int) -> float:
    """Modelled bytes billed per run through one batching worker with ``history`` more rows in the
    runs and queue tables."""
    client = LimitedClient(real, Limits(time_scale=args.time_scale, estimate_bytes=True))
    dataset = f"bytes_{uuid.uuid4().hex[:12]}"
    storage = BigQueryStorage(client, dataset)  # type: ignore[arg-type]
    await storage.create_schema()
    for table in (schemas.RUNS, schemas.QUEUE):
        client.add_synthetic_rows(storage.table_id(table), history)
    runs = []
    for n in range(args.bytes_runs):
        run = PipelineRun.new(tenant_id="t", config_id=f"c{n}", scheduled_time=T0, now=T0)
        run.make_pending(T0)
        runs.append(run)
    await storage.insert_runs(runs)
    await storage.insert_queue_items([queue_item_for(r, T0) for r in runs])
    first = len(client.jobs)
    worker = Worker(lambda run, config: None, storage, concurrency=args.bytes_runs, poll_interval=0.05)
    await worker.run(exit_when_idle=True)
    billed = sum(j.bytes_billed for j in client.jobs[first:])
    await storage.close()
    await asyncio.to_thread(
        real.delete_dataset, f"{real.project}.{dataset}", delete_contents=True, not_found_ok=True
    )
    return billed / len(runs)


async def idle_jobs_per_hour(real: Any, args: argparse.Namespace) -> tuple[int, float]:
    """Jobs of one empty claim, and the jobs/hour of a worker backed off to ``max_poll_interval``."""
    client = LimitedClient(real, Limits(time_scale=args.time_scale, estimate_bytes=False))
    dataset = f"idle_{uuid.uuid4().hex[:12]}"
    storage = BigQueryStorage(client, dataset)  # type: ignore[arg-type]
    await storage.create_schema()
    first = len(client.jobs)
    await storage.claim_queue_items(
        worker_id="w", claim_token=uuid.uuid4().hex, now=T0, lease_expires_at=T0, limit=10
    )
    per_poll = len(client.jobs) - first
    await storage.close()
    await asyncio.to_thread(
        real.delete_dataset, f"{real.project}.{dataset}", delete_contents=True, not_found_ok=True
    )
    return per_poll, per_poll * 3600 / args.max_poll_interval


def show(f: Figures) -> None:
    print(f"\n== {f.mode}: {f.runs} runs due at the same minute")
    print(
        f"  drained in          {f.dml_bound_seconds / 60:8.1f} modelled minutes by the DML limits "
        f"({f.modelled_seconds / 60:.1f} measured, emulator time included)"
    )
    print(f"  sustained           {f.runs_per_hour:8,.0f} runs/hour (target >= 20,000)")
    print(f"  DML statements      {sum(f.dml_counts.values())} ({f.dml_counts})")
    print(f"  jobs per run        {f.jobs / f.runs:8.2f}")
    print(f"  bytes per run       {f.bytes_billed / f.runs / 1e6:8.1f} MB (modelled)")
    for table, count in sorted(f.dml_counts.items()):
        rate = count * 60 / max(f.dml_bound_seconds, 1e-9)
        print(f"  DML/min {table:<28} {rate:6.1f} at the DML-bound pace (limit ~60: 2 running x 2 s)")
    print(f"  conflicts           {f.reruns} reruns, {f.conflict_failures} failed to serialize")
    print(f"  DML-limit errors    {f.outstanding_errors}")
    print(
        f"  duplicates {f.duplicates}, lost {f.lost}, executed twice {f.executed_twice}, "
        f"not completed {f.not_completed}"
    )


async def main_async(args: argparse.Namespace) -> None:
    from tests.support.bq_emulator import start_emulator

    with start_emulator() as emulator:
        real = emulator.client()
        print(
            f"model: 2 s per mutating DML, time scale {args.time_scale} (1 modelled s = "
            f"{args.time_scale * 1000:g} ms); {args.workers} workers x concurrency {args.concurrency}, "
            "tasks of one process sharing one model client"
        )
        modes = {"batched": True, "single": False}
        figures = []
        for mode in args.modes:
            started = time.monotonic()
            figures.append(await burst(real, args, group_commit=modes[mode]))
            show(figures[-1])
            print(f"  (wall clock {time.monotonic() - started:.0f} s)")
        if len(figures) == 2:
            gain = figures[0].runs_per_hour / figures[1].runs_per_hour
            print(f"\ngroup commit / baseline: {gain:.1f}x runs/hour (DML-bound)")
        if not args.skip_bytes:
            small = await bytes_per_run(real, args, 10_000)
            large = await bytes_per_run(real, args, 1_000_000)
            print(f"\nbytes per run, 10k history rows: {small / 1e6:8.1f} MB")
            print(f"bytes per run, 1M history rows:  {large / 1e6:8.1f} MB  ({large / small:.1f}x)")
        per_poll, per_hour = await idle_jobs_per_hour(real, args)
        print(
            f"\nidle worker: {per_poll} job(s) per empty poll; backed off to max_poll_interval="
            f"{args.max_poll_interval:g} s: {per_hour:.0f} jobs/hour (target <= 120)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--schedules", type=int, default=10)
    parser.add_argument("--full", action="store_true", help="100 tenants x 50 schedules")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--batch-delay", type=float, default=0.05)
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--modes", nargs="+", choices=["batched", "single"], default=["batched", "single"])
    parser.add_argument("--bytes-runs", type=int, default=20)
    parser.add_argument("--skip-bytes", action="store_true")
    parser.add_argument("--max-poll-interval", type=float, default=60.0)
    args = parser.parse_args()
    if args.full:
        args.tenants, args.schedules = 100, 50
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
