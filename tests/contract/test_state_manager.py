"""PipelineStateManager over every storage backend."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipestate.application import PipelineStateManager, RunSpec
from pipestate.domain.clock import FrozenClock
from pipestate.domain.errors import (
    InvalidIdentifier,
    InvalidPriority,
    InvalidState,
    InvalidTransition,
    NaiveDatetime,
    RunNotFound,
    TransitionRejected,
)
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.run import RunState

INJECTION = "x'; DROP TABLE x_meta_scheduled_runs; --"


async def _running(
    state: PipelineStateManager, clock: FrozenClock, tenant: str = "acme", config: str = "c1"
) -> str:
    run_id = await state.create_scheduled_run(tenant, config, clock.now())
    assert await state.transition_state(run_id, RunState.SCHEDULED, RunState.PENDING)
    assert await state.mark_as_running(run_id, "log-1", worker_id="w1")
    return run_id


async def test_create_scheduled_run_is_idempotent_per_slot(
    state: PipelineStateManager, storage: Storage, clock: FrozenClock
) -> None:
    slot = clock.now() + timedelta(hours=1)
    first = await state.create_scheduled_run("acme", "daily", slot, priority=2)
    second = await state.create_scheduled_run("acme", "daily", slot, priority=2)
    other = await state.create_scheduled_run("acme", "daily", slot + timedelta(minutes=1))

    assert first == second != other
    runs = await storage.find_runs(RunFilter(tenant_id="acme"))
    assert [r.run_id for r in runs] == [first, other]
    stored = await state.get_run_status(first)
    assert (stored.state, stored.priority, stored.scheduled_time, stored.version) == (
        RunState.SCHEDULED,
        2,
        slot,
        1,
    )


async def test_batch_creation_returns_ids_in_input_order_and_writes_each_slot_once(
    state: PipelineStateManager, storage: Storage, clock: FrozenClock
) -> None:
    specs = [RunSpec("acme", f"c{i % 3}", clock.now() + timedelta(minutes=i // 3)) for i in range(30)]
    ids = await state.create_scheduled_runs(specs + specs[:5])
    assert len(ids) == 35 and len(set(ids)) == 30
    assert sum((await storage.count_runs_by_state("acme")).values()) == 30


async def test_stored_run_round_trips_field_by_field(state: PipelineStateManager, clock: FrozenClock) -> None:
    run_id = await _running(state, clock)
    assert await state.mark_as_failed(run_id, "it broke: 'quotes' \"and\" ünïcode", error_type="TimeoutError")
    stored = await state.get_run_status(run_id)
    again = await state.get_run_status(run_id)
    assert stored == again
    assert stored.error_message == "it broke: 'quotes' \"and\" ünïcode"
    assert stored.started_at == clock.now() and stored.started_at.tzinfo is not None
    assert stored.next_retry_at == clock.now() + timedelta(minutes=1)


async def test_transition_state_is_a_compare_and_set(state: PipelineStateManager, clock: FrozenClock) -> None:
    run_id = await state.create_scheduled_run("acme", "c1", clock.now())

    assert await state.transition_state(run_id, "SCHEDULED", "PENDING") is True
    assert await state.transition_state(run_id, "SCHEDULED", "PENDING") is False
    assert (await state.get_run_status(run_id)).state is RunState.PENDING


async def test_transition_state_rejects_edges_outside_the_lifecycle(
    state: PipelineStateManager, clock: FrozenClock
) -> None:
    run_id = await state.create_scheduled_run("acme", "c1", clock.now())
    with pytest.raises(InvalidTransition):
        await state.transition_state(run_id, "SCHEDULED", "COMPLETED")
    with pytest.raises(InvalidState):
        await state.transition_state(run_id, "SCHEDULED", "DONE")
    with pytest.raises(RunNotFound):
        await state.transition_state("no-such-run", "SCHEDULED", "PENDING")
    assert (await state.get_run_status(run_id)).state is RunState.SCHEDULED


async def test_making_a_future_run_pending_is_rejected(
    state: PipelineStateManager, clock: FrozenClock
) -> None:
    run_id = await state.create_scheduled_run("acme", "c1", clock.now() + timedelta(minutes=5))
    with pytest.raises(TransitionRejected):
        await state.transition_state(run_id, "SCHEDULED", "PENDING")
    assert (await state.get_run_status(run_id)).version == 1


async def test_full_lifecycle_to_completed_records_duration(
    state: PipelineStateManager, clock: FrozenClock
) -> None:
    run_id = await _running(state, clock)
    clock.advance(seconds=42)

    assert await state.mark_as_completed(run_id) is True
    assert await state.mark_as_completed(run_id) is False
    run = await state.get_run_status(run_id)
    assert run.state is RunState.COMPLETED
    assert run.duration_seconds == 42.0
    assert (run.attempt, run.worker_id, run.pipeline_logging_id) == (1, "w1", "log-1")
    assert run.claim_token is None and run.lease_expires_at is None


async def test_explicit_duration_is_stored(state: PipelineStateManager, clock: FrozenClock) -> None:
    run_id = await _running(state, clock)
    assert await state.mark_as_completed(run_id, duration_seconds=12.5)
    assert (await state.get_run_status(run_id)).duration_seconds == 12.5


async def test_mark_as_running_needs_a_pending_run(state: PipelineStateManager, clock: FrozenClock) -> None:
    run_id = await state.create_scheduled_run("acme", "c1", clock.now())
    assert await state.mark_as_running(run_id, "log") is False
    with pytest.raises(RunNotFound):
        await state.mark_as_running("missing", "log")


async def test_mark_as_failed_without_retry_leaves_no_retry_time(
    state: PipelineStateManager, clock: FrozenClock
) -> None:
    run_id = await _running(state, clock)
    assert await state.mark_as_failed(run_id, "bad input", should_retry=False, error_type="ValueError")
    run = await state.get_run_status(run_id)
    assert run.state is RunState.FAILED and not run.retryable and run.next_retry_at is None
    assert run.error_type == "ValueError"


async def test_cancel_from_active_states_only(state: PipelineStateManager, clock: FrozenClock) -> None:
    run_id = await state.create_scheduled_run("acme", "c1", clock.now())
    assert await state.cancel_run(run_id, "operator")
    assert await state.cancel_run(run_id) is False
    run = await state.get_run_status(run_id)
    assert run.state is RunState.CANCELLED and run.cancel_reason == "operator"


async def test_queries_by_state_and_tenant(state: PipelineStateManager, clock: FrozenClock) -> None:
    a1 = await state.create_scheduled_run("a", "c1", clock.now() - timedelta(minutes=2))
    a2 = await state.create_scheduled_run("a", "c2", clock.now() - timedelta(minutes=5))
    a3 = await state.create_scheduled_run("a", "c3", clock.now() + timedelta(minutes=5))
    b1 = await state.create_scheduled_run("b", "c1", clock.now() - timedelta(minutes=1))
    await state.transition_state(a1, "SCHEDULED", "PENDING")

    scheduled_a = await state.get_pipelines_by_state("SCHEDULED", tenant_id="a")
    assert [r.run_id for r in scheduled_a] == [a2, a3]
    assert [r.run_id for r in await state.get_pipelines_by_state(RunState.PENDING)] == [a1]
    assert [r.run_id for r in await state.get_yet_to_run_pipelines()] == [a2, a1, b1]
    assert [r.run_id for r in await state.get_yet_to_run_pipelines("b")] == [b1]


async def test_customer_status_summarises_a_tenant(state: PipelineStateManager, clock: FrozenClock) -> None:
    done = await _running(state, clock, "acme", "c1")
    clock.advance(minutes=1)
    await state.mark_as_completed(done)
    failed = await _running(state, clock, "acme", "c2")
    clock.advance(minutes=1)
    await state.mark_as_failed(failed, "boom", should_retry=False)
    waiting = await state.create_scheduled_run("acme", "c3", clock.now() - timedelta(minutes=10))
    await state.transition_state(waiting, "SCHEDULED", "PENDING")
    await state.create_scheduled_run("other", "c1", clock.now())
    clock.advance(minutes=5)

    status = await state.get_customer_pipeline_status("acme")

    assert status.total == 3
    assert dict(status.counts) == {RunState.COMPLETED: 1, RunState.FAILED: 1, RunState.PENDING: 1}
    assert status.success_rate == 0.5
    assert status.last_completed is not None and status.last_completed.run_id == done
    assert status.last_failed is not None and status.last_failed.run_id == failed
    assert status.oldest_pending_age_seconds == pytest.approx(15 * 60)


async def test_status_of_an_unknown_tenant_is_empty(state: PipelineStateManager) -> None:
    status = await state.get_customer_pipeline_status("nobody")
    assert status.total == 0 and status.success_rate is None and status.last_completed is None


async def test_hostile_tenant_id_is_stored_and_read_back_verbatim(
    state: PipelineStateManager, clock: FrozenClock
) -> None:
    run_id = await state.create_scheduled_run(INJECTION, "c1", clock.now())
    runs = await state.get_pipelines_by_state("SCHEDULED", tenant_id=INJECTION)
    assert [(r.run_id, r.tenant_id) for r in runs] == [(run_id, INJECTION)]
    assert (await state.get_customer_pipeline_status(INJECTION)).total == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("", "c1"), {}, InvalidIdentifier),
        (("t", ""), {}, InvalidIdentifier),
        (("t", "c1"), {"priority": 0}, InvalidPriority),
        (("t", "c1"), {"priority": 11}, InvalidPriority),
    ],
)
async def test_bad_input_raises_typed_errors_and_writes_nothing(
    state: PipelineStateManager,
    storage: Storage,
    clock: FrozenClock,
    args: tuple[str, str],
    kwargs: dict[str, int],
    error: type[Exception],
) -> None:
    tenant, config = args
    with pytest.raises(error):
        await state.create_scheduled_run(tenant, config, clock.now(), priority=kwargs.get("priority", 5))
    assert await storage.count_runs_by_state() == {}


async def test_naive_scheduled_time_is_rejected(state: PipelineStateManager, storage: Storage) -> None:
    from datetime import datetime

    with pytest.raises(NaiveDatetime):
        await state.create_scheduled_run("t", "c", datetime(2026, 1, 1, 12, 0))
    assert await storage.count_runs_by_state() == {}


async def test_batch_with_one_bad_spec_writes_nothing(
    state: PipelineStateManager, storage: Storage, clock: FrozenClock
) -> None:
    specs = [RunSpec("t", "c1", clock.now()), RunSpec("t", "c2", clock.now(), priority=42)]
    with pytest.raises(InvalidPriority):
        await state.create_scheduled_runs(specs)
    assert await storage.count_runs_by_state() == {}
