"""``pipestate demo``: a simulated day of three tenants on a fresh SQLite file.

Everything runs in this process on a :class:`~pipestate.domain.clock.FrozenClock` stepped every five
minutes through Sunday 2026-03-08 (UTC), the day US clocks spring forward: schedules in UTC,
America/New_York and Asia/Kolkata; a scheduler tick per step; two workers (two runs at a time
each) with a handler that fails some runs with a retryable ``TransientError`` and one with a
non-retryable ``SchemaError``; a third worker killed mid-run and the recovery that takes its run
back; and, at the end, the per-tenant status table and the queue statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TextIO
from zoneinfo import ZoneInfo

from pipestate.adapters.cli.output import fmt_time, queue_stats_text, schedule_table, short, status_table
from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.application.recovery import Recovery, RecoveryReport
from pipestate.application.schedule_manager import ScheduleManager
from pipestate.application.scheduler import Scheduler
from pipestate.application.views import tenant_statuses
from pipestate.application.worker import Outcome, Worker, WorkResult
from pipestate.domain.clock import FrozenClock
from pipestate.domain.errors import InvalidArgument
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.queue import QueueStatus
from pipestate.domain.run import PipelineRun, RunState

DAY: Final = datetime(2026, 3, 8, tzinfo=UTC)
STEP: Final = timedelta(minutes=5)
LEASE: Final = timedelta(minutes=2)
DRAIN_ROUND_SECONDS: Final = 15
KILL_AT: Final = DAY + timedelta(hours=14)

SCHEDULES: Final[Sequence[dict[str, Any]]] = (
    {
        "tenant_id": "acme",
        "config_id": "orders-ingest",
        "cron": "0 * * * *",
        "timezone": "UTC",
        "priority": 3,
    },
    {
        "tenant_id": "acme",
        "config_id": "clickstream",
        "cron": "*/15 * * * *",
        "timezone": "UTC",
        "priority": 6,
    },
    {
        "tenant_id": "globex",
        "config_id": "hourly-sync",
        "cron": "30 * * * *",
        "timezone": "America/New_York",
        "priority": 5,
    },
    {
        "tenant_id": "globex",
        "config_id": "daily-report",
        "cron": "0 6 * * *",
        "timezone": "America/New_York",
        "priority": 1,
    },
    {
        "tenant_id": "initech",
        "config_id": "ledger-export",
        "cron": "0 */2 * * *",
        "timezone": "Asia/Kolkata",
        "priority": 2,
        "retry_policy": {"retry_on_errors": ["TransientError"]},
    },
    {
        "tenant_id": "initech",
        "config_id": "ml-features",
        "cron": "45 9,21 * * *",
        "timezone": "Asia/Kolkata",
        "priority": 4,
    },
)


class TransientError(Exception):
    """A failure worth retrying (a warehouse hiccup)."""


class SchemaError(Exception):
    """A failure no retry fixes."""


def _unlucky(run: PipelineRun) -> bool:
    digest = hashlib.sha256(run.run_id.encode()).digest()
    return digest[0] % 16 == 0


async def demo_handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
    """The demo's pipeline: fails deterministically, so every demo prints the same story."""
    assert run is not None
    await asyncio.sleep(0)
    if run.config_id == "daily-report" and run.attempt <= 3:
        raise TransientError("warehouse slot not available")
    if run.config_id == "ledger-export" and run.scheduled_time.hour == 6 and run.retry_count == 0:
        raise SchemaError("column 'amount' changed type from NUMERIC to STRING")
    if run.retry_count == 0 and _unlucky(run):
        raise TransientError("connection reset by peer")


class _Hang:
    """A handler that never returns (the worker that runs it will be killed)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.run: PipelineRun | None = None

    async def __call__(self, run: PipelineRun | None, config: dict[str, Any]) -> None:
        self.run = run
        self.entered.set()
        await asyncio.Event().wait()


async def run_demo(target: str, out: TextIO) -> int:
    url = _fresh_sqlite(target)
    started = time.perf_counter()
    storage = SqlAlchemyStorage.from_url(url)
    try:
        await storage.create_schema()
        await _Demo(storage, out).play(url)
    finally:
        await storage.close()
    print(f"\n(simulated 24 h in {time.perf_counter() - started:.1f} s; store: {url})", file=out)
    print(f"status page: pipestate serve --db {url}  (then open http://127.0.0.1:8080/)", file=out)
    return 0


def _fresh_sqlite(target: str) -> str:
    if "://" in target:
        if not target.startswith("sqlite:///") or target == "sqlite:///":
            raise InvalidArgument("--db", target, "the demo needs a SQLite file URL (sqlite:///file.db)")
        path = Path(target.removeprefix("sqlite:///"))
    else:
        path = Path(target)
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()
    return f"sqlite:///{path}"


class _Demo:
    def __init__(self, storage: Storage, out: TextIO) -> None:
        self.storage = storage
        self.out = out
        self.clock = FrozenClock(DAY)
        self.results: list[WorkResult] = []
        self.workers = [
            Worker(
                demo_handler,
                storage,
                clock=self.clock,
                worker_id=f"worker-{i}",
                concurrency=2,
                lease=LEASE,
                on_result=self._on_result,
            )
            for i in (1, 2)
        ]
        self.killed_run: str | None = None

    def say(self, line: str = "") -> None:
        print(line, file=self.out, flush=True)

    async def play(self, url: str) -> None:

        self.say(f"pipestate demo: a simulated day on {url}")
        self.say("Sunday 2026-03-08 (UTC) — US clocks spring forward at 07:00 UTC (02:00 EST -> 03:00 EDT)\n")
        manager = ScheduleManager(self.storage, clock=self.clock)
        for spec in SCHEDULES:
            await manager.add(**spec, start=DAY)
        self.say("Schedules (three tenants, three time zones):")
        self.say(schedule_table(await manager.list()))
        self.say(
            f"\nTicking every {STEP.seconds // 60} min; 2 workers x 2 slots, lease {LEASE.seconds // 60} min."
        )
        self.say("Failures and retries as they happen (backoff 1, 2, 4 ... min):")

        scheduler = Scheduler(self.storage, clock=self.clock)
        recovery = Recovery(self.storage, clock=self.clock)
        created = 0
        now = DAY
        while now <= DAY + timedelta(days=1):
            self.clock.set(now)
            recovered = await recovery.run_once()
            if recovered.anything:
                self._show_recovery(recovered)
            report = await scheduler.tick()
            created += report.runs_created
            if now == KILL_AT:
                await self._kill_a_worker()
            await self._drain()
            if now.minute == 0 and now.hour % 6 == 0 and now > DAY:
                await self._progress(created)
            now += STEP

        if self.killed_run is not None:
            run = await self.storage.get_run(self.killed_run)
            if run is not None:
                self.say(
                    f"\nThe killed worker's run {short(run.run_id)} ({run.tenant_id}/{run.config_id}) ended"
                    f" {run.state.value} on attempt {run.attempt} by {run.worker_id} — once."
                )
        await self._show_dst()
        self.say("\nPer-tenant status:")
        self.say(status_table(await tenant_statuses(self.storage, None)))
        self.say("\nQueue:")
        self.say(queue_stats_text(await self.storage.queue_stats(self.clock.now())))

    async def _show_dst(self) -> None:
        runs = await self.storage.find_runs(RunFilter(tenant_id="globex", config_id="hourly-sync"))
        around = [r for r in runs if DAY + timedelta(hours=5) < r.scheduled_time <= DAY + timedelta(hours=8)]
        zone = ZoneInfo("America/New_York")
        fires = ", ".join(r.scheduled_time.astimezone(zone).strftime("%H:%M %Z") for r in around)
        self.say(f"\nDST: globex/hourly-sync (30 * * * *, New York) around the gap: {fires}")
        self.say("     02:30 EST does not exist today; that slot fired at 03:00 EDT, once.")

    async def _drain(self) -> None:
        while True:
            # Workers poll, and each round of work takes simulated time: items queued by the tick
            # wait a little before their claim, later items in a busy slot wait longer.
            self.clock.advance(seconds=DRAIN_ROUND_SECONDS)
            batches = await asyncio.gather(*(w.run_once() for w in self.workers))
            if not any(batches):
                return

    def _on_result(self, result: WorkResult) -> None:
        self.results.append(result)
        at = fmt_time(self.clock.now())[11:16]
        name = f"{result.tenant_id}/{result.config_id}"
        if result.outcome is Outcome.RETRY_SCHEDULED and result.retry_at is not None:
            wait = (result.retry_at - self.clock.now()).total_seconds() / 60
            self.say(
                f"  {at} {name:<22} attempt {result.attempt} {result.error_type}: {result.error_message}"
                f" -> retry {result.retry_count} at {fmt_time(result.retry_at)[11:16]} (+{wait:g} min)"
            )
        elif result.outcome is Outcome.FAILED:
            self.say(
                f"  {at} {name:<22} attempt {result.attempt} {result.error_type}: {result.error_message}"
                " -> FAILED (not a retried error type)"
            )
        elif result.outcome is Outcome.COMPLETED and result.retry_count > 0:
            self.say(
                f"  {at} {name:<22} attempt {result.attempt} completed after"
                f" {result.retry_count} {'retry' if result.retry_count == 1 else 'retries'}"
            )

    async def _kill_a_worker(self) -> None:
        hang = _Hang()
        doomed = Worker(hang, self.storage, clock=self.clock, worker_id="worker-3", lease=LEASE)
        task = asyncio.create_task(doomed.run_once())
        await asyncio.wait_for(hang.entered.wait(), timeout=10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert hang.run is not None
        self.killed_run = hang.run.run_id
        stored = await self.storage.get_run(hang.run.run_id)
        lease = fmt_time(stored.lease_expires_at)[11:16] if stored and stored.lease_expires_at else "-"
        self.say(
            f"  {fmt_time(self.clock.now())[11:16]} worker-3 took {hang.run.tenant_id}/{hang.run.config_id}"
            f" (run {short(hang.run.run_id)}) and was KILLED mid-run: run RUNNING, lease until {lease}"
        )

    def _show_recovery(self, report: RecoveryReport) -> None:
        at = fmt_time(report.now)[11:16]
        for run in report.runs:
            then = f"retry at {fmt_time(run.retry_at)[11:16]}" if run.retry_at else "no retry left"
            self.say(
                f"  {at} recovery: run {short(run.run_id)} {run.tenant_id}/{run.config_id}"
                f" of {run.worker_id}: lease expired -> FAILED (LeaseExpired) -> {then}"
            )
        if report.failed_items or report.released_items:
            self.say(
                f"  {at} recovery: {report.failed_items} stale queue item(s) failed,"
                f" {report.released_items} released"
            )

    async def _progress(self, created: int) -> None:
        counts = await self.storage.count_runs_by_state()
        queued = await self.storage.count_queue_items(QueueStatus.QUEUED)
        done = counts.get(RunState.COMPLETED, 0)
        retries = sum(1 for r in self.results if r.outcome is Outcome.RETRY_SCHEDULED)
        self.say(
            f"  -- {fmt_time(self.clock.now())[11:16]} UTC: {created} runs created, {done} completed,"
            f" {retries} retries so far, {queued} queued"
        )
        pending = await self.storage.find_runs(RunFilter(states=[RunState.PENDING]), limit=1)
        if pending:
            self.say(f"     oldest pending: {short(pending[0].run_id)}")
