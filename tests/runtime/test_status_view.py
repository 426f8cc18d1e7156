"""The all-tenant status reads a constant number of port calls, and agrees with per-tenant reads."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pipestate.adapters.cli.serve import stats_for
from pipestate.application import ScheduleManager, Scheduler
from pipestate.application.views import tenant_statuses
from pipestate.domain.clock import FrozenClock
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.run import RunState
from tests.conftest import T0


class Counting:
    """``storage`` that counts the port calls made through it."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._storage, name)
        if callable(attribute):

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls.append(name)
                return attribute(*args, **kwargs)

            return counted
        return attribute


async def test_all_tenant_status_costs_the_same_for_6_and_7_tenants(
    storage: Storage, clock: FrozenClock
) -> None:
    schedules = ScheduleManager(storage, clock=clock)
    for i in range(6):
        await schedules.add(f"tenant-{i}", "ingest", "0 * * * *", start=T0 - timedelta(hours=2))
    await Scheduler(storage, clock=clock).tick(T0)
    runs = await storage.find_runs(RunFilter(states=[RunState.PENDING]))
    # Finish some runs so that last completed / last failed differ per tenant.
    for n, run in enumerate(runs[:4]):
        expected = run.version
        run.start(T0, worker_id="w", claim_token=f"t{n}", lease_expires_at=T0 + timedelta(minutes=5))
        if n % 2:
            run.complete(T0 + timedelta(minutes=n), claim_token=f"t{n}")
        else:
            run.fail(T0 + timedelta(minutes=n), error_message="x", retryable=False, claim_token=f"t{n}")
        assert await storage.update_run(run, expected)

    stats = stats_for(storage)
    assert stats is not None
    counting = Counting(storage)
    together = await tenant_statuses(counting, stats=stats, now=T0)
    one_by_one = [(await tenant_statuses(storage, f"tenant-{i}"))[0] for i in range(6)]

    assert [s.tenant_id for s in together] == [f"tenant-{i}" for i in range(6)]
    for mine, theirs in zip(together, one_by_one, strict=True):
        assert (mine.counts, mine.total) == (theirs.counts, theirs.total)
        assert mine.success_rate == theirs.success_rate
        assert mine.last_completed == theirs.last_completed and mine.last_failed == theirs.last_failed
    assert len(counting.calls) == 4  # schedules + 3 run reads (the grouped count is the stats store's)

    await schedules.add("tenant-x", "ingest", "0 * * * *", start=T0)
    counting.calls.clear()
    await tenant_statuses(counting, stats=stats, now=T0)
    assert len(counting.calls) == 4
