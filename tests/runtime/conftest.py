"""Runtime services (scheduler, worker, recovery, schedules) over every storage backend."""

from __future__ import annotations

import pytest

from pipestate.application import Recovery, ScheduleManager, Scheduler
from pipestate.domain.clock import FrozenClock
from pipestate.domain.ports import Storage


@pytest.fixture
def schedules(storage: Storage, clock: FrozenClock) -> ScheduleManager:
    return ScheduleManager(storage, clock=clock)


@pytest.fixture
def scheduler(storage: Storage, clock: FrozenClock) -> Scheduler:
    return Scheduler(storage, clock=clock)


@pytest.fixture
def recovery(storage: Storage, clock: FrozenClock) -> Recovery:
    return Recovery(storage, clock=clock)
