from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipestate.domain.errors import InvalidArgument
from pipestate.domain.retry import RetryPolicy

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_backoff_table_doubles_from_one_minute_and_caps_at_sixty() -> None:
    policy = RetryPolicy()
    minutes = [policy.delay(n).total_seconds() / 60 for n in range(1, 9)]
    assert minutes == [1, 2, 4, 8, 16, 32, 60, 60]


def test_huge_attempt_numbers_stay_capped() -> None:
    assert RetryPolicy().delay(10_000) == timedelta(hours=1)


@pytest.mark.parametrize("attempt", [0, -1, True, 1.5])
def test_attempt_must_be_a_positive_integer(attempt: object) -> None:
    with pytest.raises(InvalidArgument):
        RetryPolicy().delay(attempt)  # type: ignore[arg-type]


def test_jitter_is_deterministic_per_run_and_attempt_and_never_exceeds_the_delay() -> None:
    policy = RetryPolicy(jitter=0.5)
    first = policy.delay(3, run_id="run-1")
    assert first == policy.delay(3, run_id="run-1")
    assert first != policy.delay(3, run_id="run-2")
    assert timedelta(minutes=2) <= first <= timedelta(minutes=4)


def test_retry_on_errors_filters_by_type_name() -> None:
    policy = RetryPolicy(retry_on_errors=("TimeoutError", "TransientError"))
    assert policy.allows(0, "TimeoutError")
    assert not policy.allows(0, "ValueError")
    assert not policy.allows(0, None)
    assert RetryPolicy().allows(0, None)


def test_retries_stop_at_max_retries() -> None:
    policy = RetryPolicy(max_retries=2)
    assert [policy.allows(n, "E") for n in range(4)] == [True, True, False, False]


def test_dict_config_from_the_seed_builds_the_same_policy() -> None:
    policy = RetryPolicy.from_config(
        {"max_retries": 3, "backoff_multiplier": 2, "retry_on_errors": ["TimeoutError", "TransientError"]}
    )
    assert policy == RetryPolicy(retry_on_errors=("TimeoutError", "TransientError"))
    assert RetryPolicy.from_config(policy.to_dict()) == policy


@pytest.mark.parametrize(
    "config",
    [
        {"max_retries": -1},
        {"backoff_multiplier": 0.5},
        {"unknown": 1},
        {"retry_on_errors": "TimeoutError"},
        {"jitter": 2},
        {"base_delay": 120, "max_delay": 60},
    ],
)
def test_invalid_configs_raise_invalid_argument(config: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        RetryPolicy.from_config(config)


def test_retry_at_adds_the_delay_to_the_base_time() -> None:
    assert RetryPolicy().retry_at(4, NOW) == NOW + timedelta(minutes=8)
