from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipestate.domain.clock import FrozenClock
from pipestate.domain.ports import Storage
from pipestate.domain.run import PipelineRun
from tests.support.backends import BACKENDS

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def run_factory(clock: FrozenClock) -> Callable[..., PipelineRun]:
    counter = iter(range(1_000_000))

    def make(**overrides: Any) -> PipelineRun:
        fields: dict[str, Any] = {
            "tenant_id": "tenant-a",
            "config_id": f"config-{next(counter)}",
            "scheduled_time": clock.now(),
            "now": clock.now(),
        }
        state = overrides.pop("state", None)
        fields.update(overrides)
        run = PipelineRun.new(**fields)
        if state is not None:
            run.state = state
        return run

    return make


@pytest.fixture(params=sorted(BACKENDS))
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """A fresh, schema-ready store per test, once per backend (skips locally, fails in CI if missing)."""
    async with BACKENDS[request.param](tmp_path) as store:
        yield store
