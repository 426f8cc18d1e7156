"""The contract suite's fixtures: one parametrized ``storage`` per backend, fresh per test."""

from __future__ import annotations

import pytest

from pipestate.application import PipelineStateManager, QueueManager, RetryManager
from pipestate.domain.clock import FrozenClock
from pipestate.domain.ports import Storage


@pytest.fixture
def state(storage: Storage, clock: FrozenClock) -> PipelineStateManager:
    return PipelineStateManager(storage, clock=clock)


@pytest.fixture
def queue(storage: Storage, clock: FrozenClock) -> QueueManager:
    return QueueManager(storage, clock=clock)


@pytest.fixture
def retries(storage: Storage, clock: FrozenClock) -> RetryManager:
    return RetryManager(storage, clock=clock)
