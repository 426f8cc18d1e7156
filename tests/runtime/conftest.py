"""Runtime services (scheduler, worker, recovery, schedules) over every storage backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from application import Recovery, ScheduleManager, Scheduler
from domain.clock import FrozenClock
from domain.ports import Storage
from tests.support.backends import BACKENDS


@pytest.fixture(params=sorted(BACKENDS))
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    async with BACKENDS[request.param](tmp_path) as store:
        yield store


@pytest.fixture
def schedules(storage: Storage, clock: FrozenClock) -> ScheduleManager:
    return ScheduleManager(storage, clock=clock)


@pytest.fixture
def scheduler(storage: Storage, clock: FrozenClock) -> Scheduler:
    return Scheduler(storage, clock=clock)


@pytest.fixture
def recovery(storage: Storage, clock: FrozenClock) -> Recovery:
    return Recovery(storage, clock=clock)
