from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from pipestate.application import QueueManager, Recovery, ScheduleManager, Scheduler, Worker
from pipestate.application.worker import Outcome
from pipestate.domain.clock import FrozenClock
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.queue import QueueStatus
from pipestate.domain.run import PipelineRun, RunState
from tests.conftest import T0

LEASE = timedelta(minutes=2)


class TransientError(Exception):
    pass


async def one_due_run(schedules: ScheduleManager, scheduler: Scheduler, **schedule: Any) -> None:
    await schedules.add("acme", "ingest", "0 * * * *", start=T0, config={"table": "orders"}, **schedule)
    await scheduler.tick(T0)


def ok(run: PipelineRun | None, config: dict[str, Any]) -> None:
    return None


def worker(storage: Storage, clock: FrozenClock, handler: Any, **kw: Any) -> Worker:
    kw.setdefault("lease", LEASE)
    return Worker(handler, storage, clock=clock, poll_interval=0.01, **kw)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_worker_runs_the_handler_and_completes_run_and_item(
    storage: Storage, schedules: ScheduleManager, scheduler: Scheduler, clock: FrozenClock, kind: str
) -> None:
    await one_due_run(schedules, scheduler)
    seen: list[tuple[RunState, dict[str, Any]]] = []

    def sync_handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
        assert run is not None
        seen.append((run.state, config))

    async def async_handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
        sync_handler(run, config)

    handler = sync_handler if kind == "sync" else async_handler
    (result,) = await worker(storage, clock, handler, worker_id="w1").run_once()

    (run,) = await storage.find_runs(RunFilter())
    (item,) = await storage.find_queue_items()
    assert seen == [(RunState.RUNNING, {"table": "orders", "config_id": "ingest"})]
    assert result.outcome is Outcome.COMPLETED
    assert (run.state, run.attempt, run.worker_id, run.claim_token) == (RunState.COMPLETED, 1, "w1", None)
    assert item.status is QueueStatus.COMPLETED


async def test_failures_are_retried_with_backoff_1_2_4_minutes_then_fail(
    storage: Storage, schedules: ScheduleManager, scheduler: Scheduler, clock: FrozenClock
) -> None:
    await one_due_run(schedules, scheduler)

    def always_fails(run: PipelineRun | None, config: dict[str, Any]) -> None:
        raise TransientError("warehouse timeout")

    w = worker(storage, clock, always_fails)
    delays: list[float] = []
    outcomes: list[Outcome] = []
    for _ in range(4):
        (result,) = await w.run_once()
        outcomes.append(result.outcome)
        if result.retry_at is not None:
            delays.append((result.retry_at - clock.now()).total_seconds() / 60)
            clock.set(result.retry_at)
            await scheduler.tick()

    (run,) = await storage.find_runs(RunFilter())
    assert delays == [1, 2, 4]
    assert outcomes == [Outcome.RETRY_SCHEDULED] * 3 + [Outcome.FAILED]
    assert (run.state, run.attempt, run.retry_count) == (RunState.FAILED, 4, 3)
    assert (run.error_type, run.error_message, run.next_retry_at) == (
        "TransientError",
        "warehouse timeout",
        None,
    )
    assert await storage.count_queue_items(QueueStatus.FAILED) == 4


async def test_an_error_type_the_policy_does_not_list_is_not_retried(
    storage: Storage, schedules: ScheduleManager, scheduler: Scheduler, clock: FrozenClock
) -> None:
    await one_due_run(schedules, scheduler, retry_policy={"retry_on_errors": ["TransientError"]})

    def schema_error(run: PipelineRun | None, config: dict[str, Any]) -> None:
        raise KeyError("amount")

    (result,) = await worker(storage, clock, schema_error).run_once()

    (run,) = await storage.find_runs(RunFilter())
    assert result.outcome is Outcome.FAILED
    assert (run.state, run.error_type, run.retry_count, run.next_retry_at) == (
        RunState.FAILED,
        "KeyError",
        0,
        None,
    )


async def test_a_worker_whose_lease_expired_and_was_reclaimed_cannot_complete_the_run(
    storage: Storage, schedules: ScheduleManager, scheduler: Scheduler, clock: FrozenClock
) -> None:
    await one_due_run(schedules, scheduler, retry_policy={"base_delay": 0})
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(run: PipelineRun | None, config: dict[str, Any]) -> None:
        entered.set()
        await release.wait()

    stale = worker(storage, clock, slow, worker_id="stale")
    stale_task = asyncio.create_task(stale.run_once())
    await entered.wait()
    clock.advance(LEASE + timedelta(seconds=1))
    report = await Recovery(storage, clock=clock).run_once()
    (fresh_result,) = await worker(storage, clock, ok, worker_id="fresh").run_once()
    release.set()
    (stale_result,) = await stale_task

    (run,) = await storage.find_runs(RunFilter())
    assert (report.expired_runs, report.retried) == (1, 1)
    assert fresh_result.outcome is Outcome.COMPLETED
    assert stale_result.outcome is Outcome.LOST
    assert (run.state, run.worker_id, run.attempt, run.retry_count) == (RunState.COMPLETED, "fresh", 2, 1)


async def test_heartbeat_extends_the_run_and_item_leases(
    storage: Storage, schedules: ScheduleManager, scheduler: Scheduler, clock: FrozenClock
) -> None:
    await one_due_run(schedules, scheduler)
    seen: list[Any] = []

    async def long_running(run: PipelineRun | None, config: dict[str, Any]) -> None:
        assert run is not None
        clock.advance(minutes=1)
        for _ in range(200):
            await asyncio.sleep(0.02)
            stored = await storage.get_run(run.run_id)
            if stored is not None and stored.lease_expires_at == clock.now() + LEASE:
                break
        seen.append(stored.lease_expires_at if stored else None)
        seen.append((await storage.find_queue_items(run_id=run.run_id))[0].lease_expires_at)

    (result,) = await worker(storage, clock, long_running, heartbeat_interval=0.05).run_once()

    assert seen == [T0 + timedelta(minutes=1) + LEASE] * 2
    assert result.outcome is Outcome.COMPLETED


async def test_items_without_a_run_get_a_config_only_call(storage: Storage, clock: FrozenClock) -> None:
    await QueueManager(storage, clock=clock).enqueue("acme", {"job": "vacuum"})
    calls: list[tuple[Any, dict[str, Any]]] = []

    (result,) = await worker(storage, clock, lambda run, config: calls.append((run, config))).run_once()

    assert calls == [(None, {"job": "vacuum"})]
    assert result.outcome is Outcome.COMPLETED
    assert await storage.count_queue_items(QueueStatus.COMPLETED) == 1


async def test_concurrency_runs_several_items_at_once(storage: Storage, clock: FrozenClock) -> None:
    queue = QueueManager(storage, clock=clock)
    for i in range(3):
        await queue.enqueue("acme", {"i": i})
    running = 0
    peak = 0

    async def handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    results = await worker(storage, clock, handler, concurrency=3).run_once()

    assert len(results) == 3 and peak == 3


async def test_stop_finishes_the_current_run_and_takes_no_more(storage: Storage, clock: FrozenClock) -> None:
    queue = QueueManager(storage, clock=clock)
    await queue.enqueue("acme", {"i": 1})
    await queue.enqueue("acme", {"i": 2})
    entered = asyncio.Event()
    release = asyncio.Event()

    async def handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
        entered.set()
        await release.wait()

    w = worker(storage, clock, handler)
    task = asyncio.create_task(w.run())
    await entered.wait()
    w.stop()
    release.set()
    processed = await asyncio.wait_for(task, timeout=5)

    assert processed == 1
    assert await storage.count_queue_items(QueueStatus.COMPLETED) == 1
    assert await storage.count_queue_items(QueueStatus.QUEUED) == 1


async def test_a_cancelled_run_is_not_started(
    storage: Storage, schedules: ScheduleManager, scheduler: Scheduler, clock: FrozenClock
) -> None:
    await one_due_run(schedules, scheduler)
    (run,) = await storage.find_runs(RunFilter())
    expected = run.version
    run.cancel(T0, reason="tenant offboarded")
    assert await storage.update_run(run, expected)
    calls: list[Any] = []

    (result,) = await worker(storage, clock, lambda r, c: calls.append(r)).run_once()

    assert calls == [] and result.outcome is Outcome.NOT_RUNNABLE
    assert await storage.count_queue_items(QueueStatus.FAILED) == 1
