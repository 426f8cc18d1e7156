"""The run lifecycle as data: every state x trigger, its destination or its error."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipestate.domain.errors import (
    InvalidIdentifier,
    InvalidPriority,
    InvalidState,
    InvalidTransition,
    NaiveDatetime,
    StaleClaim,
    TransitionRejected,
)
from pipestate.domain.retry import RetryPolicy
from pipestate.domain.run import (
    EDGES,
    LIFECYCLE,
    TRANSITIONS,
    PipelineRun,
    RunState,
    derive_run_id,
    trigger_for,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S = RunState

# Arguments that make every guard pass (due, lease expired, retry allowed).
TRIGGER_KWARGS: dict[str, dict[str, Any]] = {
    "make_pending": {},
    "start": {"worker_id": "w1", "claim_token": "tok", "lease_expires_at": NOW + timedelta(minutes=5)},
    "complete": {},
    "fail": {"error_message": "boom", "error_type": "TimeoutError"},
    "retry": {},
    "cancel": {"reason": "operator"},
    "expire_lease": {},
    "skip": {"reason": "misfire"},
}

# (state, trigger) -> destination; anything absent must raise InvalidTransition.
EXPECTED: dict[tuple[RunState, str], RunState] = {
    (S.SCHEDULED, "make_pending"): S.PENDING,
    (S.PENDING, "start"): S.RUNNING,
    (S.RUNNING, "complete"): S.COMPLETED,
    (S.RUNNING, "fail"): S.FAILED,
    (S.FAILED, "retry"): S.SCHEDULED,  # retry_at defaults to now + backoff, in the future
    (S.SCHEDULED, "cancel"): S.CANCELLED,
    (S.PENDING, "cancel"): S.CANCELLED,
    (S.RUNNING, "cancel"): S.CANCELLED,
    (S.RUNNING, "expire_lease"): S.FAILED,
    (S.SCHEDULED, "skip"): S.SKIPPED,
}


def _run_in(state: RunState) -> PipelineRun:
    run = PipelineRun.new(tenant_id="t", config_id="c", scheduled_time=NOW - timedelta(minutes=1), now=NOW)
    run.state = state
    if state is S.RUNNING:
        run.claim_token = "tok"
        run.lease_expires_at = NOW - timedelta(seconds=1)
        run.started_at = NOW - timedelta(minutes=2)
    if state is S.FAILED:
        run.error_type = "TimeoutError"
    return run


@pytest.mark.parametrize("state", list(RunState))
@pytest.mark.parametrize("trigger", list(TRIGGER_KWARGS))
def test_every_state_and_trigger_moves_or_raises_as_the_table_says(state: RunState, trigger: str) -> None:
    run = _run_in(state)
    version = run.version
    expected = EXPECTED.get((state, trigger))

    if expected is None:
        with pytest.raises(InvalidTransition) as info:
            run.apply(trigger, NOW, **TRIGGER_KWARGS[trigger])
        assert info.value.run_id == run.run_id
        assert info.value.trigger == trigger
        assert run.state is state and run.version == version
    else:
        run.apply(trigger, NOW, **TRIGGER_KWARGS[trigger])
        assert run.state is expected
        assert run.version == version + 1


def test_transition_table_lists_exactly_the_expected_edges() -> None:
    declared: set[tuple[RunState, str, RunState]] = set()
    for spec in TRANSITIONS:
        sources = spec["source"] if isinstance(spec["source"], list) else [spec["source"]]
        declared.update((src, spec["trigger"], spec["dest"]) for src in sources)
    expected = {(state, trigger, dest) for (state, trigger), dest in EXPECTED.items()}
    expected.add((S.FAILED, "retry", S.PENDING))  # the retry edge taken when retry_at <= now
    assert declared == expected
    assert set(LIFECYCLE.events) == {t["trigger"] for t in TRANSITIONS}
    assert EDGES[(S.FAILED, S.PENDING)] == "retry" and EDGES[(S.RUNNING, S.FAILED)] == "fail"


def test_one_machine_is_shared_and_nothing_is_attached_to_runs() -> None:
    run = _run_in(S.SCHEDULED)
    run.make_pending(NOW)
    assert not LIFECYCLE.models
    assert not hasattr(run, "trigger") and not hasattr(run, "to_PENDING")


def test_make_pending_before_scheduled_time_is_rejected() -> None:
    run = PipelineRun.new(tenant_id="t", config_id="c", scheduled_time=NOW + timedelta(seconds=1), now=NOW)
    with pytest.raises(TransitionRejected, match="not due"):
        run.make_pending(NOW)
    assert run.state is S.SCHEDULED


def test_start_records_attempt_worker_token_and_lease() -> None:
    run = _run_in(S.PENDING)
    lease = NOW + timedelta(minutes=5)
    run.start(NOW, worker_id="w9", claim_token="tok9", lease_expires_at=lease, pipeline_logging_id="log-1")
    assert (run.attempt, run.worker_id, run.claim_token, run.lease_expires_at) == (1, "w9", "tok9", lease)
    assert run.pipeline_logging_id == "log-1" and run.started_at == NOW


def test_complete_computes_duration_from_started_at() -> None:
    run = _run_in(S.RUNNING)
    run.complete(NOW)
    assert run.duration_seconds == 120.0 and run.completed_at == NOW and run.claim_token is None


def test_complete_with_a_stale_claim_token_is_refused() -> None:
    run = _run_in(S.RUNNING)
    with pytest.raises(StaleClaim):
        run.complete(NOW, claim_token="someone-else")
    assert run.state is S.RUNNING


def test_heartbeat_extends_the_lease_only_for_the_holder() -> None:
    run = _run_in(S.RUNNING)
    later = NOW + timedelta(minutes=10)
    run.heartbeat(NOW, claim_token="tok", lease_expires_at=later)
    assert run.lease_expires_at == later
    with pytest.raises(StaleClaim):
        run.heartbeat(NOW, claim_token="other", lease_expires_at=later)


def test_expire_lease_is_rejected_while_the_lease_is_valid() -> None:
    run = _run_in(S.RUNNING)
    run.lease_expires_at = NOW + timedelta(seconds=1)
    with pytest.raises(TransitionRejected):
        run.expire_lease(NOW)
    run.expire_lease(NOW + timedelta(seconds=1))
    assert run.state is S.FAILED and run.error_type == "LeaseExpired"


def test_fail_with_retries_left_schedules_retry_with_backoff() -> None:
    run = _run_in(S.RUNNING)
    run.fail(NOW, error_message="timeout", error_type="TimeoutError")
    assert run.next_retry_at == NOW + timedelta(minutes=1)
    run.retry(NOW)
    assert run.state is S.SCHEDULED and run.scheduled_time == NOW + timedelta(minutes=1)
    assert run.retry_count == 1


def test_retry_at_or_before_now_goes_straight_to_pending() -> None:
    run = _run_in(S.FAILED)
    run.retry(NOW, retry_at=NOW)
    assert run.state is S.PENDING


def test_retry_is_rejected_when_the_policy_is_exhausted() -> None:
    run = _run_in(S.FAILED)
    run.retry_policy = RetryPolicy(max_retries=2)
    run.retry_count = 2
    with pytest.raises(TransitionRejected, match="no retry allowed"):
        run.retry(NOW)
    assert run.state is S.FAILED


def test_retry_is_rejected_for_an_unlisted_error_type() -> None:
    run = _run_in(S.RUNNING)
    run.retry_policy = RetryPolicy(retry_on_errors=("TimeoutError",))
    run.fail(NOW, error_message="bad data", error_type="ValueError")
    assert run.next_retry_at is None
    with pytest.raises(TransitionRejected):
        run.retry(NOW)


def test_max_retries_two_means_at_most_three_executions() -> None:
    run = PipelineRun.new(
        tenant_id="t", config_id="c", scheduled_time=NOW, now=NOW, retry_policy=RetryPolicy(max_retries=2)
    )
    run.make_pending(NOW)
    executions = 0
    clock = NOW
    while True:
        if run.state is S.SCHEDULED:
            clock = run.scheduled_time
            run.make_pending(clock)
        run.start(
            clock, worker_id="w", claim_token=f"t{executions}", lease_expires_at=clock + timedelta(minutes=5)
        )
        executions += 1
        run.fail(clock, error_message="x", error_type="E")
        if run.next_retry_at is None:
            break
        run.retry(clock)
    assert executions == 3 and run.state is S.FAILED


def test_trigger_for_unknown_edge_raises_invalid_transition() -> None:
    assert trigger_for("r", S.SCHEDULED, S.PENDING) == "make_pending"
    with pytest.raises(InvalidTransition):
        trigger_for("r", S.COMPLETED, S.RUNNING)


@pytest.mark.parametrize("name", ["pending", " RUNNING ", "Completed"])
def test_state_names_parse_case_insensitively(name: str) -> None:
    assert RunState.parse(name).value == name.strip().upper()


@pytest.mark.parametrize("bad", ["", "DONE", 3, None])
def test_unknown_state_names_raise_invalid_state(bad: object) -> None:
    with pytest.raises(InvalidState):
        RunState.parse(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"tenant_id": ""}, InvalidIdentifier),
        ({"tenant_id": "   "}, InvalidIdentifier),
        ({"config_id": ""}, InvalidIdentifier),
        ({"priority": 0}, InvalidPriority),
        ({"priority": 11}, InvalidPriority),
        ({"priority": True}, InvalidPriority),
        ({"scheduled_time": datetime(2026, 3, 1, 12, 0)}, NaiveDatetime),
    ],
)
def test_new_run_rejects_bad_input_with_typed_errors(
    overrides: dict[str, Any], error: type[Exception]
) -> None:
    fields: dict[str, Any] = {"tenant_id": "t", "config_id": "c", "scheduled_time": NOW, "now": NOW}
    fields.update(overrides)
    with pytest.raises(error):
        PipelineRun.new(**fields)


def test_run_id_is_derived_from_the_slot() -> None:
    a = derive_run_id("t", "c", NOW)
    assert a == derive_run_id("t", "c", NOW.astimezone(UTC))
    assert a != derive_run_id("t", "c", NOW + timedelta(microseconds=1))
    assert a != derive_run_id("t2", "c", NOW)


def _all_runs() -> list[Callable[[], PipelineRun]]:
    return [lambda s=s: _run_in(s) for s in RunState]  # type: ignore[misc]


def test_a_copied_run_compares_equal_field_by_field() -> None:
    for make in _all_runs():
        run = make()
        assert run.copy() == run
