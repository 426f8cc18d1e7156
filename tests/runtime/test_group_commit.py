"""Group commit: a worker holding N runs writes each step as one statement per table, and every
run still gets its own exact outcome."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any, cast

import pytest

from pipestate.application import PipelineStateManager, Worker
from pipestate.application.scheduler import enqueue_pending
from pipestate.application.worker import Outcome
from pipestate.domain.clock import FrozenClock
from pipestate.domain.errors import InvalidArgument
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.queue import QueueStatus
from pipestate.domain.run import PipelineRun, RunState
from tests.conftest import T0

LEASE = timedelta(minutes=2)


class Counting:
    """The real store; counts the port methods called, and may run a hook before one."""

    def __init__(self, inner: Storage, hooks: dict[str, Any] | None = None) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()
        self.batches: list[tuple[str, int]] = []
        self._hooks = hooks or {}
        self.beats = asyncio.Event()
        """Set once ``update_runs`` went out three times (a start and heartbeats)."""

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target) or name.startswith("_"):
            return target

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if name == "update_runs" and self.calls[name] >= 3:
                self.beats.set()
            if args and isinstance(args[0], list):
                self.batches.append((name, len(args[0])))
            hook = self._hooks.pop(name, None)
            if hook is not None:
                await hook(*args, **kwargs)
            return await target(*args, **kwargs)

        return counted


async def pending_runs(storage: Storage, clock: FrozenClock, n: int) -> list[str]:
    state = PipelineStateManager(storage, clock=clock)
    ids = []
    for i in range(n):
        run_id = await state.create_scheduled_run("acme", f"cfg{i}", T0)
        assert await state.transition_state(run_id, RunState.SCHEDULED, RunState.PENDING)
        ids.append(run_id)
    await enqueue_pending(storage, await storage.get_runs(ids), clock.now())
    return ids


async def steal(storage: Storage, run_id: str, clock: FrozenClock) -> None:
    """Another writer takes the run (as recovery or a second claimant would): its version moves.
    Retried when the worker's own heartbeat moved it first."""
    while True:
        stored = await storage.get_run(run_id)
        assert stored is not None
        expected = stored.version
        if stored.state is RunState.PENDING:
            stored.start(
                clock.now(), worker_id="thief", claim_token="thief", lease_expires_at=clock.now() + LEASE
            )
        else:
            stored.heartbeat(clock.now(), claim_token=stored.claim_token or "", lease_expires_at=clock.now())
            stored.claim_token = "thief"
        if await storage.update_run(stored, expected):
            return


async def test_a_batch_of_runs_is_started_and_completed_with_one_statement_per_table(
    storage: Storage, clock: FrozenClock
) -> None:
    ids = await pending_runs(storage, clock, 4)
    counting = Counting(storage)

    async def handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
        return None

    results = await Worker(
        handler, cast(Storage, counting), clock=clock, concurrency=4, lease=LEASE, batch_delay=0.05
    ).run_once()

    assert [r.outcome for r in results] == [Outcome.COMPLETED] * 4
    assert {r.state for r in await storage.get_runs(ids)} == {RunState.COMPLETED}
    assert {i.status for i in await storage.find_queue_items()} == {QueueStatus.COMPLETED}
    calls = counting.calls
    assert (calls["claim_queue_items"], calls["get_runs"], calls["update_runs"]) == (1, 1, 2)
    assert (calls["transition_queue_items"], calls["update_run"], calls["transition_queue_item"]) == (1, 0, 0)
    assert ("update_runs", 4) in counting.batches and ("transition_queue_items", 4) in counting.batches


async def test_without_group_commit_every_run_takes_its_own_statements(
    storage: Storage, clock: FrozenClock
) -> None:
    await pending_runs(storage, clock, 3)
    counting = Counting(storage)

    results = await Worker(
        lambda run, config: None, cast(Storage, counting), clock=clock, concurrency=3, group_commit=False
    ).run_once()

    assert [r.outcome for r in results] == [Outcome.COMPLETED] * 3
    assert (counting.calls["update_run"], counting.calls["transition_queue_item"]) == (6, 3)
    assert counting.calls["update_runs"] == 0


async def test_a_run_taken_before_its_batched_start_is_not_run_and_the_others_are(
    storage: Storage, clock: FrozenClock
) -> None:
    ids = await pending_runs(storage, clock, 3)
    ran: list[str] = []

    async def thief(pairs: list[tuple[PipelineRun, int]]) -> None:
        await steal(storage, pairs[1][0].run_id, clock)

    async def handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
        assert run is not None
        ran.append(run.run_id)

    counting = Counting(storage, {"update_runs": thief})
    results = await Worker(
        handler, cast(Storage, counting), clock=clock, concurrency=3, lease=LEASE, batch_delay=0.05
    ).run_once()

    outcomes = {str(r.run_id): r.outcome for r in results}
    stolen = next(run_id for run_id, outcome in outcomes.items() if outcome is Outcome.NOT_RUNNABLE)
    assert sorted(outcomes.values()) == sorted([Outcome.NOT_RUNNABLE, Outcome.COMPLETED, Outcome.COMPLETED])
    assert stolen not in ran and len(ran) == 2
    stored = {r.run_id: r for r in await storage.get_runs(ids)}
    assert (stored[stolen].state, stored[stolen].claim_token) == (RunState.RUNNING, "thief")
    assert [stored[i].state for i in ids if i != stolen] == [RunState.COMPLETED] * 2


async def test_one_heartbeat_statement_renews_every_held_run_and_a_lost_one_is_stopped_alone(
    storage: Storage, clock: FrozenClock
) -> None:
    ids = await pending_runs(storage, clock, 3)
    release = asyncio.Event()
    stolen: list[str] = []
    counting = Counting(storage)

    async def handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
        assert run is not None
        if not stolen:
            stolen.append(run.run_id)
            await steal(storage, run.run_id, clock)
        await release.wait()

    async def watch() -> None:
        # Release the handlers once the heartbeats have gone out a few times.
        await counting.beats.wait()
        release.set()

    watcher = asyncio.create_task(watch())
    results = await Worker(
        handler,
        cast(Storage, counting),
        clock=clock,
        concurrency=3,
        lease=LEASE,
        heartbeat_interval=0.4,  # longer than a statement takes: the rounds stay merged
    ).run_once()
    await watcher

    outcomes = {r.run_id: r.outcome for r in results}
    assert outcomes.pop(stolen[0]) is Outcome.LOST
    assert set(outcomes.values()) == {Outcome.COMPLETED}
    stored = {r.run_id: r for r in await storage.get_runs(ids)}
    assert stored[stolen[0]].claim_token == "thief"
    beats = [n for name, n in counting.batches if name == "update_runs"][1:-1]
    assert beats and max(beats) >= 2  # the held runs renewed together
    assert counting.calls["update_run"] <= 1  # at most the lost run's beat, once it was alone


async def test_idle_polling_backs_off_and_resets_when_work_appears(
    storage: Storage, clock: FrozenClock
) -> None:
    waits: list[float] = []
    worker: Worker

    async def claim(**kwargs: Any) -> list[Any]:
        waits.append(worker.idle_wait)
        if len(waits) == 6:
            await pending_runs(storage, clock, 1)
        if len(waits) == 8:
            worker.stop()
        return cast(list[Any], await storage.claim_queue_items(**kwargs))

    counting = Counting(storage)
    counting.__dict__["claim_queue_items"] = claim
    worker = Worker(
        lambda run, config: None,
        cast(Storage, counting),
        clock=clock,
        lease=LEASE,
        poll_interval=0.01,
        max_poll_interval=0.04,
    )
    await worker.run()

    assert waits[:6] == [0.01, 0.02, 0.04, 0.04, 0.04, 0.04]
    assert waits[6] == 0.01  # the claim that found work reset it
    assert (await storage.find_runs(RunFilter()))[0].state is RunState.COMPLETED


@pytest.mark.parametrize(
    "options",
    [
        {"max_poll_interval": 0.5, "poll_interval": 1.0},
        {"max_poll_interval": -1},
        {"batch_delay": -0.1},
        {"batch_delay": float("nan")},
    ],
)
def test_bad_polling_and_batching_options_are_rejected(storage: Storage, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        Worker(lambda run, config: None, storage, **options)
