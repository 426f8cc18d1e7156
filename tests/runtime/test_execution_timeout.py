"""The worker's execution timeout: a handler that runs too long is cancelled and its run fails
with error type ``Timeout``, retried per its policy (issue 13)."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import pytest

from pipestate.application import ScheduleManager, Scheduler, Worker
from pipestate.application.worker import Outcome, RunContext
from pipestate.domain.clock import FrozenClock
from pipestate.domain.errors import InvalidArgument
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.queue import QueueStatus
from pipestate.domain.retry import RetryPolicy
from pipestate.domain.run import PipelineRun, RunState
from tests.conftest import T0

TIMEOUT = timedelta(seconds=0.2)


async def one_due_run(schedules: ScheduleManager, scheduler: Scheduler, **schedule: Any) -> None:
    await schedules.add("acme", "ingest", "0 * * * *", start=T0, config={}, **schedule)
    await scheduler.tick(T0)


async def test_an_async_handler_running_past_the_timeout_is_cancelled_and_the_run_retried(
    storage: Storage, schedules: ScheduleManager, scheduler: Scheduler, clock: FrozenClock
) -> None:
    await one_due_run(schedules, scheduler)
    cancelled = asyncio.Event()

    async def hangs(run: PipelineRun | None, config: dict[str, Any]) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    worker = Worker(hangs, storage, clock=clock, poll_interval=0.01, timeout=TIMEOUT)
    (result,) = await worker.run_once()

    (run,) = await storage.find_runs(RunFilter())
    (item,) = await storage.find_queue_items(status=QueueStatus.FAILED)
    assert cancelled.is_set()
    assert result.outcome is Outcome.RETRY_SCHEDULED
    assert run.error_type == "Timeout" and "execution timeout of 0.2 s" in (run.error_message or "")
    assert run.state in (RunState.SCHEDULED, RunState.PENDING) and run.retry_count == 1
    assert item.error_message is not None and "Timeout" in item.error_message


async def test_a_sync_handler_sees_the_cancellation_and_the_run_fails_without_retries_left(
    storage: Storage, schedules: ScheduleManager, scheduler: Scheduler, clock: FrozenClock
) -> None:
    await one_due_run(schedules, scheduler, retry_policy=RetryPolicy(max_retries=0))
    stopped = threading.Event()

    def polls(run: PipelineRun | None, config: dict[str, Any], context: RunContext) -> None:
        if context.cancel_event.wait(30):  # the handler's own check, as RunContext documents
            stopped.set()

    worker = Worker(polls, storage, clock=clock, poll_interval=0.01, timeout=TIMEOUT)
    (result,) = await worker.run_once()
    await asyncio.to_thread(stopped.wait, 5)

    (run,) = await storage.find_runs(RunFilter())
    assert stopped.is_set()
    assert result.outcome is Outcome.FAILED
    assert (run.state, run.error_type) == (RunState.FAILED, "Timeout")


async def test_a_handler_within_the_timeout_completes(
    storage: Storage, schedules: ScheduleManager, scheduler: Scheduler, clock: FrozenClock
) -> None:
    await one_due_run(schedules, scheduler)

    async def quick(run: PipelineRun | None, config: dict[str, Any]) -> None:
        await asyncio.sleep(0)

    worker = Worker(quick, storage, clock=clock, poll_interval=0.01, timeout=timedelta(minutes=5))
    (result,) = await worker.run_once()

    assert result.outcome is Outcome.COMPLETED


@pytest.mark.parametrize("timeout", [timedelta(0), timedelta(seconds=-1), timedelta(days=400)])
def test_a_timeout_out_of_bounds_is_refused(storage: Storage, timeout: timedelta) -> None:
    with pytest.raises(InvalidArgument):
        Worker(lambda run, config: None, storage, timeout=timeout)
