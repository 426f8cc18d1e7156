from __future__ import annotations

from datetime import timedelta
from typing import Any

from pipestate.application import QueueManager, Recovery, ScheduleManager, Scheduler, Worker
from pipestate.application.worker import Outcome
from pipestate.domain.clock import FrozenClock
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.queue import QueueStatus
from pipestate.domain.run import LEASE_EXPIRED, PipelineRun, RunState
from tests.conftest import T0

LEASE = timedelta(minutes=2)


async def started_run(
    storage: Storage, clock: FrozenClock, schedules: ScheduleManager, **kw: Any
) -> PipelineRun:
    """A due run that a worker claimed and started, then died (no heartbeat, no completion)."""
    await schedules.add("acme", "ingest", "0 * * * *", start=T0, **kw)
    await Scheduler(storage, clock=clock).tick(T0)
    (item,) = await QueueManager(storage, clock=clock, lease=LEASE).dequeue_batch("dead", 1)
    run = await storage.get_run(item.run_id or "")
    assert run is not None and item.claim_token is not None
    expected = run.version
    run.start(T0, worker_id="dead", claim_token=item.claim_token, lease_expires_at=T0 + LEASE)
    assert await storage.update_run(run, expected)
    return run


def ok(run: PipelineRun | None, config: dict[str, Any]) -> None:
    return None


async def test_expired_run_is_failed_with_lease_expired_and_retried_then_completed_once(
    storage: Storage, clock: FrozenClock, schedules: ScheduleManager, recovery: Recovery
) -> None:
    run = await started_run(storage, clock, schedules)

    early = await recovery.run_once(T0 + LEASE - timedelta(seconds=1))
    clock.set(T0 + LEASE)
    report = await recovery.run_once()
    again = await recovery.run_once()

    stored = await storage.get_run(run.run_id)
    assert stored is not None
    assert not early.anything
    assert (report.expired_runs, report.retried, report.failed_items) == (1, 1, 1)
    assert not again.anything
    assert (stored.state, stored.error_type, stored.retry_count) == (RunState.SCHEDULED, LEASE_EXPIRED, 1)
    assert stored.scheduled_time == T0 + LEASE + timedelta(minutes=1)

    clock.set(stored.scheduled_time)
    await Scheduler(storage, clock=clock).tick()
    results = await Worker(ok, storage, clock=clock, worker_id="w2").run_once()
    assert await Worker(ok, storage, clock=clock).run_once() == []

    final = await storage.get_run(run.run_id)
    assert final is not None
    assert [r.outcome for r in results] == [Outcome.COMPLETED]
    assert (final.state, final.attempt, final.worker_id) == (RunState.COMPLETED, 2, "w2")
    assert await storage.count_queue_items(QueueStatus.COMPLETED) == 1
    assert await storage.count_queue_items(QueueStatus.FAILED) == 1


async def test_expired_run_without_retries_left_stays_failed(
    storage: Storage, clock: FrozenClock, schedules: ScheduleManager, recovery: Recovery
) -> None:
    run = await started_run(storage, clock, schedules, retry_policy={"max_retries": 0})

    report = await recovery.run_once(T0 + LEASE)

    stored = await storage.get_run(run.run_id)
    assert stored is not None
    assert (report.expired_runs, report.retried) == (1, 0)
    assert (stored.state, stored.error_type, stored.next_retry_at) == (RunState.FAILED, LEASE_EXPIRED, None)


async def test_item_claimed_by_a_worker_that_died_before_starting_goes_back_to_the_queue(
    storage: Storage, clock: FrozenClock, schedules: ScheduleManager, recovery: Recovery
) -> None:
    await schedules.add("acme", "ingest", "0 * * * *", start=T0)
    await Scheduler(storage, clock=clock).tick(T0)
    (claimed,) = await QueueManager(storage, clock=clock, lease=LEASE).dequeue_batch("dead", 1)

    report = await recovery.run_once(T0 + LEASE)
    results = await Worker(ok, storage, clock=clock).run_once()

    item = await storage.get_queue_item(claimed.queue_id)
    assert item is not None
    assert report.released_items == 1
    assert [r.outcome for r in results] == [Outcome.COMPLETED]
    assert item.status is QueueStatus.COMPLETED and item.attempts == 2


async def test_pending_run_without_a_queue_item_is_queued_once(
    storage: Storage, clock: FrozenClock, schedules: ScheduleManager, recovery: Recovery
) -> None:
    await schedules.add("acme", "ingest", "0 * * * *", start=T0)
    await Scheduler(storage, clock=clock).tick(T0)
    (item,) = await storage.find_queue_items()
    # Simulate a scheduler that died between promoting the run and queueing it.
    (run,) = await storage.find_runs(RunFilter())
    other = PipelineRun.new(tenant_id="acme", config_id="manual", scheduled_time=T0, now=T0)
    await storage.insert_runs([other])
    expected = other.version
    other.make_pending(T0)
    assert await storage.update_run(other, expected)

    first = await recovery.run_once(T0)
    second = await recovery.run_once(T0)

    assert (first.requeued_runs, second.requeued_runs) == (1, 0)
    assert {i.run_id for i in await storage.find_queue_items()} == {run.run_id, other.run_id}
    assert item.run_id == run.run_id
