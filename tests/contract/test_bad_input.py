"""The bad-input catalogue (issue 9): every input the reliability review listed, through the public
API, on every backend. Each raises a typed ``pipestate.errors.InvalidInput`` and writes nothing.
The command-line side of the catalogue is ``tests/e2e/test_bad_input_cli.py``."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipestate import (
    PipelineStateManager,
    QueueManager,
    RetryManager,
    RetryPolicy,
    ScheduleManager,
    Worker,
    errors,
)
from pipestate.domain.clock import FrozenClock
from pipestate.domain.ports import RunFilter, Storage
from tests.conftest import T0


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"x": value}
    return value


class Api:
    def __init__(self, storage: Storage, clock: FrozenClock) -> None:
        self.storage = storage
        self.state = PipelineStateManager(storage, clock=clock)
        self.queue = QueueManager(storage, clock=clock)
        self.retries = RetryManager(storage, clock=clock)
        self.schedules = ScheduleManager(storage, clock=clock)

    async def run(self, tenant: str = "acme", config: Any = None, **kw: Any) -> object:
        return await self.state.create_scheduled_run(tenant, "ingest", T0, config=config, **kw)

    async def schedule(self, **kw: Any) -> object:
        kw.setdefault("cron", "0 * * * *")
        return await self.schedules.add("acme", kw.pop("config_id", "ingest"), kw.pop("cron"), **kw)

    async def worker(self, **kw: Any) -> object:
        kw.setdefault("lease", timedelta(minutes=2))
        return Worker(lambda run, config: None, self.storage, **kw)


Case = Callable[[Api], Awaitable[object]]

CASES: dict[str, Case] = {
    # ids
    "tenant with NUL": lambda a: a.run(tenant="ac\x00me"),
    "tenant of 256 characters": lambda a: a.run(tenant="t" * 256),
    "tenant with a newline": lambda a: a.run(tenant="acme\n"),
    "tenant with a lone surrogate": lambda a: a.run(tenant="acme\udcff"),
    "blank tenant": lambda a: a.run(tenant="   "),
    "queue tenant with NUL": lambda a: a.queue.enqueue("ac\x00me", {}),
    "queue_id of 300 characters": lambda a: a.queue.enqueue("acme", {}, queue_id="q" * 300),
    "worker id with NUL": lambda a: a.queue.dequeue("w\x00"),
    "schedule config_id with NUL": lambda a: a.schedule(config_id="in\x00gest"),
    # configs
    "config with NaN": lambda a: a.run(config={"v": math.nan}),
    "config with infinity": lambda a: a.run(config={"v": -math.inf}),
    "config with a datetime": lambda a: a.run(config={"v": datetime(2026, 1, 1, tzinfo=UTC)}),
    "config with a set": lambda a: a.queue.enqueue("acme", {"v": {1, 2}}),
    "config with bytes": lambda a: a.schedule(config={"v": b"\x00"}),
    "config with a huge int": lambda a: a.run(config={"v": 10**30}),
    "config nested 5000 deep": lambda a: a.run(config=_deep(5000)),
    "config nested 33 deep": lambda a: a.queue.enqueue("acme", _deep(33)),
    "config over 1 MB": lambda a: a.run(config={"v": "x" * 1_000_001}),
    "config with a NUL string": lambda a: a.schedule(config={"v": "a\x00b"}),
    "config that is a list": lambda a: a.queue.enqueue("acme", [1, 2]),  # type: ignore[arg-type]
    # retry policies and durations
    "retry delay of 1e12 s": lambda a: a.run(retry_policy={"base_delay": 1e12, "max_delay": 1e12}),
    "retry delay NaN": lambda a: a.run(retry_policy={"base_delay": math.nan}),
    "retry max delay infinite": lambda a: a.schedule(retry_policy={"max_delay": math.inf, "max_retries": 40}),
    "retry max delay below the delay": lambda a: a.run(retry_policy={"base_delay": 120, "max_delay": 60}),
    "retry multiplier infinite": lambda a: a.run(retry_policy={"backoff_multiplier": math.inf}),
    "retry count a billion": lambda a: a.run(retry_policy={"max_retries": 10**9}),
    "retry error name with NUL": lambda a: a.run(retry_policy={"retry_on_errors": ["Time\x00out"]}),
    "retry config as a string": lambda a: a.retries.should_retry("r", "max_retries=3"),  # type: ignore[arg-type]
    "misfire grace of 10**20 s": lambda a: a.schedule(misfire_grace_seconds=10**20),
    "catch-up runs a billion": lambda a: a.schedule(max_catchup_runs=10**9),
    "completion duration NaN": lambda a: a.state.mark_as_completed("r", math.nan),
    "state manager lease of zero": lambda a: _build(PipelineStateManager, a.storage, lease=timedelta(0)),
    "queue lease of 10,000 days": lambda a: _build(QueueManager, a.storage, lease=timedelta(days=10_000)),
    # worker options
    "worker heartbeat 0": lambda a: a.worker(heartbeat_interval=0),
    "worker heartbeat negative": lambda a: a.worker(heartbeat_interval=-1),
    "worker heartbeat longer than the lease": lambda a: a.worker(heartbeat_interval=600),
    "worker poll NaN": lambda a: a.worker(poll_interval=math.nan),
    "worker poll infinite": lambda a: a.worker(poll_interval=math.inf),
    "worker concurrency 0": lambda a: a.worker(concurrency=0),
    "worker lease infinite": lambda a: a.worker(lease=math.inf),
}


async def _build(factory: Callable[..., object], *args: Any, **kw: Any) -> object:
    return factory(*args, **kw)


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_input_raises_a_typed_error_and_writes_nothing(
    storage: Storage, clock: FrozenClock, case: str
) -> None:
    api = Api(storage, clock)

    with pytest.raises(errors.InvalidInput) as raised:
        await CASES[case](api)

    assert len(str(raised.value)) < 1_000  # a bounded one-line message, whatever the input
    assert await storage.find_runs(RunFilter()) == []
    assert await storage.count_queue_items() == 0
    assert await storage.list_schedules() == []


def test_every_policy_field_is_bounded_in_the_domain() -> None:
    with pytest.raises(errors.InvalidArgument, match="max_delay"):
        RetryPolicy(base_delay=10, max_delay=5)
