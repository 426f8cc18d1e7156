"""A hypothesis state machine over a real store (SQLite file, PostgreSQL): random sequences of tick,
claim, start, heartbeat, complete, fail, cancel, recovery, worker crashes, real workers and clock
jumps, with the system's invariants checked after every step:

* at most one run row per slot, and at most one live queue item per run attempt;
* at most one holder can write a RUNNING run (the stored claim token belongs to one claim);
* no run is completed twice, and no attempt is executed twice by the worker;
* nothing is stuck forever: once the clock moves on and tick, recovery and a worker have had
  their turns, no run is waiting or running and no queue item is queued or held.

Bounded (few examples, short sequences) so that both backends run in well under a minute.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pipestate.application import (
    PipelineStateManager,
    QueueManager,
    Recovery,
    ScheduleManager,
    Scheduler,
    Worker,
)
from pipestate.application.scheduler import enqueue_pending
from pipestate.application.worker import Outcome, WorkResult
from pipestate.domain.clock import FrozenClock
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.queue import QueueItem, QueueStatus
from pipestate.domain.run import PipelineRun, RunState
from tests.conftest import T0
from tests.support.backends import BACKENDS

LEASE = timedelta(minutes=5)
WAITING = [RunState.SCHEDULED, RunState.PENDING, RunState.RUNNING]


class Claim:
    """A manual worker's hold on one queue item (and, once started, its run)."""

    def __init__(self, item: QueueItem) -> None:
        self.item = item
        self.token = item.claim_token or ""
        self.run: PipelineRun | None = None


class PipelineMachine(RuleBasedStateMachine):
    backend: ClassVar[str] = "sqlite-file"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        self.context: AbstractAsyncContextManager[Storage] = BACKENDS[self.backend](Path(self.tmp.name))
        self.storage: Storage = self.await_(self.context.__aenter__())
        self.clock = FrozenClock(T0)
        self.claims: list[Claim] = []
        self.completions: Counter[str] = Counter()
        self.executions: Counter[tuple[str, int]] = Counter()
        schedules = ScheduleManager(self.storage, clock=self.clock)
        for tenant, cron in (("acme", "*/15 * * * *"), ("globex", "0 * * * *")):
            self.await_(schedules.add(tenant, "ingest", cron, start=T0, retry_policy={"max_retries": 2}))

    def await_(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    def teardown(self) -> None:
        try:
            self.drain_and_check_nothing_is_stuck()
        finally:
            self.await_(self.context.__aexit__(None, None, None))
            self.loop.close()
            self.tmp.cleanup()

    # ------------------------------------------------------------------ the system's own actors
    @rule()
    def tick(self) -> None:
        self.await_(Scheduler(self.storage, clock=self.clock).tick())

    @rule()
    def recover(self) -> None:
        self.await_(Recovery(self.storage, clock=self.clock).run_once())

    @rule(concurrency=st.integers(1, 3))
    def real_worker(self, concurrency: int) -> None:
        worker = Worker(self.handler, self.storage, clock=self.clock, concurrency=concurrency, lease=LEASE)
        for result in self.await_(worker.run_once()):
            self.record(result)

    def handler(self, run: PipelineRun | None, config: dict[str, Any]) -> None:
        assert run is not None
        self.executions[(run.run_id, run.attempt)] += 1

    def record(self, result: WorkResult) -> None:
        if result.outcome is Outcome.COMPLETED and result.run_id is not None:
            self.completions[result.run_id] += 1

    @rule(minutes=st.integers(1, 120))
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)

    @rule(minutes=st.sampled_from([-3, -1, 600, 1440]))
    def clock_jumps(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)

    # ------------------------------------------------------------------ a manual worker, step by step
    @rule()
    def claim(self) -> None:
        queue = QueueManager(self.storage, clock=self.clock, lease=LEASE)
        item = self.await_(queue.dequeue("manual"))
        if item is not None:
            self.claims.append(Claim(item))

    @precondition(lambda self: bool(self.claims))
    @rule(pick=st.integers(0, 7))
    def start(self, pick: int) -> None:
        claim = self.claims[pick % len(self.claims)]
        if claim.run is not None or claim.item.run_id is None:
            return
        run = self.await_(self.storage.get_run(claim.item.run_id))
        if run is None or run.state is not RunState.PENDING:
            return
        now, expected = self.clock.now(), run.version
        run.start(now, worker_id="manual", claim_token=claim.token, lease_expires_at=now + LEASE)
        if self.await_(self.storage.update_run(run, expected)):
            claim.run = run
            self.executions[(run.run_id, run.attempt)] += 1

    @precondition(lambda self: any(c.run is not None for c in self.claims))
    @rule(pick=st.integers(0, 7))
    def heartbeat(self, pick: int) -> None:
        claim = self.started(pick)
        assert claim.run is not None
        beat, now = claim.run.copy(), self.clock.now()
        expected = beat.version
        beat.heartbeat(now, claim_token=claim.token, lease_expires_at=now + LEASE)
        if self.await_(self.storage.update_run(beat, expected)):
            claim.run = beat
            self.await_(
                self.storage.extend_queue_lease(
                    claim.item.queue_id, claim_token=claim.token, lease_expires_at=now + LEASE
                )
            )

    @precondition(lambda self: any(c.run is not None for c in self.claims))
    @rule(pick=st.integers(0, 7), fails=st.booleans())
    def finish(self, pick: int, fails: bool) -> None:
        claim = self.started(pick)
        self.claims.remove(claim)
        assert claim.run is not None
        run, now = claim.run.copy(), self.clock.now()
        expected = run.version
        if fails:
            run.fail(now, error_message="boom", error_type="TransientError", claim_token=claim.token)
            if run.next_retry_at is not None:
                run.retry(now)
        else:
            run.complete(now, claim_token=claim.token)
        if not self.await_(self.storage.update_run(run, expected)):
            return  # fenced: the lease was lost and the run taken back
        queue = QueueManager(self.storage, clock=self.clock)
        if fails:
            self.await_(queue.mark_failed(claim.item.queue_id, "boom", claim_token=claim.token))
            self.await_(enqueue_pending(self.storage, [run], now))
        else:
            self.completions[run.run_id] += 1
            self.await_(queue.mark_completed(claim.item.queue_id, claim_token=claim.token))

    @precondition(lambda self: bool(self.claims))
    @rule(pick=st.integers(0, 7))
    def crash(self, pick: int) -> None:
        self.claims.pop(pick % len(self.claims))  # the worker dies: nothing is written

    @rule(pick=st.integers(0, 30))
    def cancel(self, pick: int) -> None:
        runs = self.await_(self.storage.find_runs(RunFilter(states=WAITING)))
        if runs:
            state = PipelineStateManager(self.storage, clock=self.clock)
            self.await_(state.cancel_run(runs[pick % len(runs)].run_id, "operator"))

    def started(self, pick: int) -> Claim:
        started = [c for c in self.claims if c.run is not None]
        return started[pick % len(started)]

    # ------------------------------------------------------------------ invariants
    @invariant()
    def one_row_per_slot_and_one_live_item_per_attempt(self) -> None:
        runs = self.await_(self.storage.find_runs(RunFilter()))
        assert len({r.run_id for r in runs}) == len(runs)
        items = self.await_(self.storage.find_queue_items())
        live = Counter(i.run_id for i in items if i.run_id is not None and i.status is QueueStatus.QUEUED)
        assert all(n <= 1 for n in live.values()), live

    @invariant()
    def one_holder_can_write_a_running_run(self) -> None:
        running = self.await_(self.storage.find_runs(RunFilter(states=[RunState.RUNNING])))
        for run in running:
            assert run.claim_token is not None and run.lease_expires_at is not None
            holders = [c for c in self.claims if c.run is not None and c.run.run_id == run.run_id]
            assert sum(c.token == run.claim_token for c in holders) <= 1

    @invariant()
    def nothing_completed_or_executed_twice(self) -> None:
        assert all(n == 1 for n in self.completions.values()), self.completions
        assert all(n == 1 for n in self.executions.values()), self.executions

    def drain_and_check_nothing_is_stuck(self) -> None:
        self.claims.clear()  # every manual worker dies
        for _ in range(8):
            self.clock.advance(hours=3)  # past every lease and every backoff
            self.tick()
            self.recover()
            for _ in range(20):
                results = self.await_(
                    Worker(self.handler, self.storage, clock=self.clock, concurrency=4).run_once()
                )
                for result in results:
                    self.record(result)
                if not results:
                    break
        now = self.clock.now()
        waiting = self.await_(self.storage.find_runs(RunFilter(states=WAITING)))
        assert [r for r in waiting if r.state is not RunState.SCHEDULED or r.scheduled_time <= now] == []
        assert self.await_(self.storage.count_queue_items(QueueStatus.QUEUED)) == 0
        assert self.await_(self.storage.count_queue_items(QueueStatus.PROCESSING)) == 0
        self.nothing_completed_or_executed_twice()


BOUNDED = settings(
    max_examples=6,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class SqliteFileMachine(PipelineMachine):
    backend = "sqlite-file"


class PostgresMachine(PipelineMachine):
    backend = "postgresql"


TestStatefulSqliteFile = SqliteFileMachine.TestCase
TestStatefulSqliteFile.settings = BOUNDED
TestStatefulPostgres = PostgresMachine.TestCase
TestStatefulPostgres.settings = BOUNDED
