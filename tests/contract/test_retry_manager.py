"""RetryManager over every storage backend."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipestate.application import PipelineStateManager, RetryManager
from pipestate.domain.clock import FrozenClock
from pipestate.domain.errors import InvalidArgument, NaiveDatetime, RunNotFound, TransitionRejected
from pipestate.domain.retry import RetryPolicy
from pipestate.domain.run import RunState


async def _failed(
    state: PipelineStateManager,
    clock: FrozenClock,
    error_type: str = "TimeoutError",
    retry_policy: RetryPolicy | None = None,
) -> str:
    run_id = await state.create_scheduled_run("acme", "c1", clock.now(), retry_policy=retry_policy)
    await state.transition_state(run_id, "SCHEDULED", "PENDING")
    await state.mark_as_running(run_id, "log")
    await state.mark_as_failed(run_id, "boom", error_type=error_type)
    return run_id


def test_calculate_retry_time_follows_the_backoff_table(retries: RetryManager, clock: FrozenClock) -> None:
    delays = [(retries.calculate_retry_time(n) - clock.now()) / timedelta(minutes=1) for n in range(1, 9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    base = clock.now() + timedelta(days=1)
    assert retries.calculate_retry_time(3, base_time=base) == base + timedelta(minutes=4)
    with pytest.raises(InvalidArgument):
        retries.calculate_retry_time(-1)
    with pytest.raises(NaiveDatetime):
        retries.calculate_retry_time(1, base_time=base.replace(tzinfo=None))


async def test_should_retry_a_failed_run_with_retries_left(
    retries: RetryManager, state: PipelineStateManager, clock: FrozenClock
) -> None:
    run_id = await _failed(state, clock)
    assert await retries.should_retry(run_id) is True
    assert await retries.should_retry(run_id, {"max_retries": 0}) is False


async def test_should_retry_only_listed_error_types(
    retries: RetryManager, state: PipelineStateManager, clock: FrozenClock
) -> None:
    config = {
        "max_retries": 3,
        "backoff_multiplier": 2,
        "retry_on_errors": ["TimeoutError", "TransientError"],
    }
    timeout = await _failed(state, clock, "TimeoutError")
    clock.advance(seconds=1)
    bad_data = await state.create_scheduled_run("acme", "c2", clock.now())
    await state.transition_state(bad_data, "SCHEDULED", "PENDING")
    await state.mark_as_running(bad_data, "log")
    await state.mark_as_failed(bad_data, "bad data", error_type="ValueError")

    assert await retries.should_retry(timeout, config) is True
    assert await retries.should_retry(bad_data, config) is False


async def test_should_not_retry_a_run_marked_not_retryable_or_not_failed(
    retries: RetryManager, state: PipelineStateManager, clock: FrozenClock
) -> None:
    scheduled = await state.create_scheduled_run("acme", "c9", clock.now())
    assert await retries.should_retry(scheduled) is False
    run_id = await state.create_scheduled_run("acme", "c1", clock.now())
    await state.transition_state(run_id, "SCHEDULED", "PENDING")
    await state.mark_as_running(run_id, "log")
    await state.mark_as_failed(run_id, "fatal", should_retry=False)
    assert await retries.should_retry(run_id) is False
    with pytest.raises(RunNotFound):
        await retries.should_retry("missing")


async def test_schedule_retry_in_the_future_reschedules_the_run(
    retries: RetryManager, state: PipelineStateManager, clock: FrozenClock
) -> None:
    run_id = await _failed(state, clock)
    at = retries.calculate_retry_time(1)

    assert await retries.schedule_retry(run_id, at) is True
    assert await retries.schedule_retry(run_id, at) is False
    run = await state.get_run_status(run_id)
    assert (run.state, run.scheduled_time, run.retry_count) == (RunState.SCHEDULED, at, 1)
    assert run.error_type == "TimeoutError"  # the last error stays for the record


async def test_schedule_retry_due_now_goes_to_pending(
    retries: RetryManager, state: PipelineStateManager, clock: FrozenClock
) -> None:
    run_id = await _failed(state, clock)
    assert await retries.schedule_retry(run_id, clock.now())
    assert (await state.get_run_status(run_id)).state is RunState.PENDING


async def test_retries_run_out_after_max_retries(
    retries: RetryManager, state: PipelineStateManager, clock: FrozenClock
) -> None:
    run_id = await _failed(state, clock, retry_policy=RetryPolicy(max_retries=2))
    executions = 1
    while await retries.should_retry(run_id):
        assert await retries.schedule_retry(run_id, clock.now())
        assert await state.mark_as_running(run_id, "log")
        executions += 1
        assert await state.mark_as_failed(run_id, "boom", error_type="TimeoutError")

    assert executions == 3
    with pytest.raises(TransitionRejected):
        await retries.schedule_retry(run_id, clock.now())
    run = await state.get_run_status(run_id)
    assert (run.state, run.retry_count, run.attempt) == (RunState.FAILED, 2, 3)
