"""The contract suite's fixtures: one parametrized ``storage`` per backend, fresh per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from application import PipelineStateManager, QueueManager, RetryManager
from domain.clock import FrozenClock
from domain.ports import Storage
from tests.support.backends import BACKENDS


@pytest.fixture(params=sorted(BACKENDS))
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    async with BACKENDS[request.param](tmp_path) as store:
        yield store


@pytest.fixture
def state(storage: Storage, clock: FrozenClock) -> PipelineStateManager:
    return PipelineStateManager(storage, clock=clock)


@pytest.fixture
def queue(storage: Storage, clock: FrozenClock) -> QueueManager:
    return QueueManager(storage, clock=clock)


@pytest.fixture
def retries(storage: Storage, clock: FrozenClock) -> RetryManager:
    return RetryManager(storage, clock=clock)
