"""One retry-settings type serves every store; its waits stay inside their documented bounds."""

from __future__ import annotations

import pytest
from tenacity import RetryCallState

from pipestate.adapters import bigquery as bigquery_adapter
from pipestate.adapters import sqlalchemy as sql_adapter
from pipestate.adapters.retry import RetrySettings
from pipestate.domain.errors import StorageUnavailable


def test_both_adapters_take_the_one_retry_settings_type() -> None:
    assert bigquery_adapter.RetrySettings is RetrySettings
    assert sql_adapter.RetrySettings is RetrySettings
    assert isinstance(sql_adapter.SQL_RETRY_SETTINGS, RetrySettings)


@pytest.mark.parametrize("attempt", [1, 2, 3, 8])
def test_waits_stay_within_their_bounds(attempt: int) -> None:
    settings = RetrySettings(initial_wait=0.5, max_wait=2.0, contention_wait=5.0, max_contention_wait=20.0)
    for _ in range(200):
        assert 0 <= settings.wait(attempt) <= min(0.5 * 2 ** (attempt - 1), 2.0)
        assert 5.0 <= settings.wait(attempt, contention=True) <= min(5.0 * 2 ** (attempt - 1), 20.0)


def test_retrying_stops_after_max_attempts_and_retries_only_what_it_is_told() -> None:
    settings = RetrySettings(max_attempts=3, initial_wait=0.0, max_wait=0.0)
    calls: list[int] = []
    seen: list[RetryCallState] = []

    def transient() -> None:
        calls.append(1)
        raise StorageUnavailable("down")

    retrying = settings.retrying(lambda e: isinstance(e, StorageUnavailable), on_retry=seen.append)
    with pytest.raises(StorageUnavailable):
        retrying(transient)
    assert (len(calls), len(seen)) == (3, 2)

    def permanent() -> None:
        calls.append(1)
        raise ValueError("bad")

    calls.clear()
    with pytest.raises(ValueError):
        settings.retrying(lambda e: isinstance(e, StorageUnavailable))(permanent)
    assert len(calls) == 1


async def test_a_sql_store_is_built_with_explicit_settings_and_keeps_them() -> None:
    settings = RetrySettings(max_attempts=1)
    storage = sql_adapter.SqlAlchemyStorage.from_url("sqlite://", retry=settings)
    try:
        await storage.create_schema()
        assert await storage.count_runs_by_state() == {}
        assert storage._sessions.retry is settings
    finally:
        await storage.close()
