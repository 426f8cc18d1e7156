"""Run history through the real services: every transition, with its actor, worker and traceback."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pipestate.application import ScheduleManager, Scheduler, Worker
from pipestate.application.views import run_history
from pipestate.domain.clock import FrozenClock
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.run import PipelineRun
from tests.conftest import T0


class FlakyWarehouse(Exception):
    pass


def _raise_deep(attempt: int) -> None:
    raise FlakyWarehouse(f"timeout on attempt {attempt}")


async def test_a_run_that_fails_twice_then_succeeds_shows_three_attempts_and_every_transition(
    storage: Storage, clock: FrozenClock
) -> None:
    await ScheduleManager(storage, clock=clock).add("acme", "ingest", "0 * * * *", start=T0)
    scheduler = Scheduler(storage, clock=clock)
    await scheduler.tick(T0)

    def flaky(run: PipelineRun | None, config: dict[str, Any]) -> None:
        assert run is not None
        if run.attempt < 3:
            _raise_deep(run.attempt)

    worker = Worker(
        flaky, storage, clock=clock, poll_interval=0.01, lease=timedelta(minutes=2), worker_id="w-7"
    )
    for _ in range(3):
        (result,) = await worker.run_once()
        if result.retry_at is not None:
            clock.set(result.retry_at)
            await scheduler.tick()

    (run,) = await storage.find_runs(RunFilter())
    history = await run_history(storage, run.run_id)

    assert history.run.state.value == "COMPLETED"
    assert [(a.number, a.worker_id, a.outcome, a.ended_by) for a in history.attempts] == [
        (1, "w-7", "FAILED", "worker"),
        (2, "w-7", "FAILED", "worker"),
        (3, "w-7", "COMPLETED", "worker"),
    ]
    for attempt in history.attempts[:2]:
        assert attempt.error_type == "FlakyWarehouse"
        assert attempt.traceback is not None
        assert (
            "_raise_deep" in attempt.traceback and "FlakyWarehouse: timeout on attempt" in attempt.traceback
        )
    assert history.attempts[2].traceback is None
    moves = [(e.from_state, e.to_state, e.actor) for e in history.events]
    assert moves == [
        (None, "SCHEDULED", "scheduler"),
        ("SCHEDULED", "PENDING", "scheduler"),
        ("PENDING", "RUNNING", "worker"),
        ("RUNNING", "FAILED", "worker"),
        ("FAILED", "SCHEDULED", "worker"),
        ("SCHEDULED", "PENDING", "scheduler"),
        ("PENDING", "RUNNING", "worker"),
        ("RUNNING", "FAILED", "worker"),
        ("FAILED", "SCHEDULED", "worker"),
        ("SCHEDULED", "PENDING", "scheduler"),
        ("PENDING", "RUNNING", "worker"),
        ("RUNNING", "COMPLETED", "worker"),
    ]
    assert [e.version for e in history.events] == sorted({e.version for e in history.events})
    assert history.events[-1].version == history.run.version
