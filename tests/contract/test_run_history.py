"""Run history in the Storage port: events stored with their transition, and only then."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from pipestate.domain.clock import FrozenClock
from pipestate.domain.events import Actor
from pipestate.domain.ports import Storage
from pipestate.domain.run import PipelineRun

RunFactory = Callable[..., PipelineRun]


async def test_a_lost_compare_and_set_stores_no_event(storage: Storage, run_factory: RunFactory) -> None:
    run = run_factory()
    await storage.insert_runs([run])
    assert run.pending_events == []  # the adapter took them
    mine, theirs = run.copy(), run.copy()
    mine.cancel(run.scheduled_time, reason="an operator said so")
    theirs.skip(run.scheduled_time, reason="theirs")

    assert await storage.update_run(mine, expected_version=1) is True
    assert await storage.update_run(theirs, expected_version=1) is False

    events = await storage.get_run_events(run.run_id)
    assert [(e.from_state, e.to_state, e.actor, e.reason) for e in events] == [
        (None, "SCHEDULED", "scheduler", None),
        ("SCHEDULED", "CANCELLED", "operator", "an operator said so"),
    ]
    assert [e.version for e in events] == [1, 2]
    assert await storage.get_run_events("no-such-run") == []


async def test_a_batch_stores_the_events_of_the_pairs_it_applied(
    storage: Storage, run_factory: RunFactory, clock: FrozenClock
) -> None:
    runs = [run_factory() for _ in range(3)]
    await storage.insert_runs(runs)
    now = clock.now()
    moved = [r.copy() for r in runs]
    for r in moved:
        r.make_pending(now)
        r.start(
            now, worker_id="w1", claim_token=f"tok-{r.run_id}", lease_expires_at=now + timedelta(minutes=1)
        )
    pairs = [(moved[0], 1), (moved[1], 1), (moved[2], 7)]  # the last one is stale

    assert await storage.update_runs(pairs) == 2

    for run, stored in zip(moved, [True, True, False], strict=True):
        events = await storage.get_run_events(run.run_id)
        shown = [(e.to_state, e.actor, e.worker_id, e.attempt) for e in events]
        if stored:
            assert shown == [
                ("SCHEDULED", "scheduler", None, 0),
                ("PENDING", "scheduler", None, 0),
                ("RUNNING", "worker", "w1", 1),
            ]
        else:
            assert shown == [("SCHEDULED", "scheduler", None, 0)]


async def test_failure_events_keep_the_error_and_traceback_and_prune_removes_old_events(
    storage: Storage, run_factory: RunFactory, clock: FrozenClock
) -> None:
    run = run_factory()
    await storage.insert_runs([run])
    now = clock.now()
    run.make_pending(now)
    run.start(now, worker_id="w1", claim_token="tok", lease_expires_at=now + timedelta(minutes=1))
    assert await storage.update_run(run, 1)
    later = now + timedelta(days=10)
    trace = "Traceback (most recent call last):\n" + "  frame\n" * 2000 + "ValueError: bad row"
    run.fail(later, error_message="bad row", error_type="ValueError", claim_token="tok", traceback=trace)
    assert await storage.update_run(run, 3)

    *_, failed = await storage.get_run_events(run.run_id)
    assert (failed.to_state, failed.actor, failed.error_type, failed.error_message) == (
        "FAILED",
        Actor.WORKER.value,
        "ValueError",
        "bad row",
    )
    assert failed.traceback is not None and len(failed.traceback) <= 8192
    assert failed.traceback.endswith("ValueError: bad row")

    await storage.prune_events(now + timedelta(days=1))
    assert [e.to_state for e in await storage.get_run_events(run.run_id)] == ["FAILED"]
    stored = await storage.get_run(run.run_id)
    assert stored is not None and stored.error_type == "ValueError"
