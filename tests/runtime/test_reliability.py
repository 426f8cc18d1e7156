"""Issue 9: no setting, input or short outage may block recovery, loop forever, or run a pipeline
twice. One regression test (at least) per numbered item, named after it.

Tests that wait on real ``asyncio`` time (heartbeats, leases of a second) run on the SQL
backends only (``sql_storage``); the others run on every backend (``storage``). Waits are inputs
(an outage of 1.5 s, a lock held for 2.5 s), never asserted durations.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from pipestate.application import (
    PipelineStateManager,
    QueueManager,
    Recovery,
    RetryManager,
    ScheduleManager,
    Scheduler,
    Worker,
)
from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.worker import Outcome, RunContext
from pipestate.domain.clock import FrozenClock
from pipestate.domain.errors import (
    InvalidArgument,
    InvalidIdentifier,
    InvalidInput,
    StorageError,
    StorageUnavailable,
)
from pipestate.domain.pipeline_schedule import PipelineSchedule
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.queue import QueueStatus
from pipestate.domain.retry import LEASE_EXPIRED, RetryPolicy
from pipestate.domain.run import PipelineRun, RunState
from tests.conftest import T0
from tests.support.backends import BACKENDS

LEASE = timedelta(minutes=2)


@pytest.fixture(params=["sqlite-file", "postgresql"])
async def sql_storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """A fresh store on the SQL backends only (tests that wait on real time)."""
    async with BACKENDS[request.param](tmp_path) as store:
        yield store


class Proxy:
    """The real store, with one method replaced: a fault injected at the port boundary."""

    def __init__(self, inner: Storage, **overrides: Callable[..., Any]) -> None:
        self._inner = inner
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def running_run(
    storage: Storage, clock: FrozenClock, *, tenant: str = "acme", policy: RetryPolicy | None = None
) -> PipelineRun:
    """A PENDING run, claimed and started by a worker that then died (lease until T0 + LEASE)."""
    state = PipelineStateManager(storage, clock=clock, lease=LEASE)
    run_id = await state.create_scheduled_run(tenant, "ingest", T0, retry_policy=policy)
    assert await state.transition_state(run_id, RunState.SCHEDULED, RunState.PENDING)
    assert await state.mark_as_running(run_id, "log-1", worker_id="dead")
    run = await storage.get_run(run_id)
    assert run is not None
    return run


async def pending_item(storage: Storage, clock: FrozenClock, **policy: Any) -> None:
    """One due schedule ticked: its run is PENDING with a queue item."""
    await ScheduleManager(storage, clock=clock).add(
        "acme", "ingest", "0 * * * *", start=T0, retry_policy=policy or None
    )
    await Scheduler(storage, clock=clock).tick(T0)


async def due_run_on_the_system_clock(storage: Storage) -> None:
    """One queued PENDING run, on the real clock (for tests where workers heartbeat)."""
    await PipelineStateManager(storage).create_scheduled_run("acme", "ingest", SYSTEM_CLOCK.now())
    report = await Scheduler(storage).tick()
    assert report.items_enqueued == 1


# --------------------------------------------------------------------------- item 1
@pytest.mark.parametrize(
    "policy",
    [
        {"base_delay": 1e12, "max_delay": 1e12},
        {"base_delay": math.nan},
        {"max_delay": math.inf},
        {"max_delay": math.inf, "max_retries": 40},
        {"backoff_multiplier": math.inf},
        {"base_delay": 120, "max_delay": 60},
        {"max_retries": 10**9},
        {"jitter": math.nan},
    ],
)
def test_item_01_a_backoff_that_cannot_be_added_to_now_is_rejected(policy: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        RetryPolicy.from_config(policy)


def test_item_01_the_largest_accepted_backoff_is_representable_after_any_attempt() -> None:
    policy = RetryPolicy(
        max_retries=1000, base_delay=366 * 86400, backoff_multiplier=100, max_delay=366 * 86400
    )
    assert policy.retry_at(1000, T0) == T0 + timedelta(days=366)


async def test_item_01_recovery_parks_a_run_with_an_unusable_stored_policy_and_recovers_the_others(
    storage: Storage, clock: FrozenClock
) -> None:
    broken = RetryPolicy()
    object.__setattr__(broken, "base_delay", 1e12)  # as an older version stored it
    object.__setattr__(broken, "max_delay", 1e12)
    bad = await running_run(storage, clock, tenant="broken", policy=broken)
    good = await running_run(storage, clock, tenant="fine")

    report = await Recovery(storage, clock=clock).run_once(T0 + LEASE)

    stored_bad, stored_good = await storage.get_run(bad.run_id), await storage.get_run(good.run_id)
    assert stored_bad is not None and stored_good is not None
    assert (stored_bad.state, stored_bad.next_retry_at) == (RunState.FAILED, None)
    assert "stored retry policy is invalid" in (stored_bad.error_message or "")
    assert [p.run_id for p in report.parked] == [bad.run_id]
    assert (stored_good.state, stored_good.retry_count) == (RunState.SCHEDULED, 1)
    assert report.expired_runs == 2


def test_item_01_a_failure_is_recorded_even_when_its_retry_time_is_past_year_9999() -> None:
    end = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
    policy = RetryPolicy(base_delay=7200, max_delay=7200)
    run = PipelineRun.new(tenant_id="t", config_id="c", scheduled_time=end, now=end, retry_policy=policy)
    run.state = RunState.RUNNING
    run.fail(end, error_message="boom", error_type="TimeoutError")
    assert (run.state, run.next_retry_at) == (RunState.FAILED, None)
    assert "not retried" in (run.error_message or "")


# --------------------------------------------------------------------------- item 2
@pytest.mark.parametrize(
    "options",
    [
        {"heartbeat_interval": 0},
        {"heartbeat_interval": -1},
        {"heartbeat_interval": math.nan},
        {"heartbeat_interval": 120},  # == the lease
        {"heartbeat_interval": 600},  # > the lease
        {"poll_interval": math.nan},
        {"poll_interval": math.inf},
        {"poll_interval": 0},
        {"concurrency": 0},
        {"lease": timedelta(0)},
        {"lease": timedelta(days=10_000)},
        {"worker_id": "w\x00"},
    ],
)
def test_item_02_worker_options_that_never_end_or_never_poll_are_rejected(
    storage: Storage, options: dict[str, Any]
) -> None:
    options.setdefault("lease", LEASE)
    with pytest.raises(InvalidInput):
        Worker(lambda run, config: None, storage, **options)


async def test_item_02_max_items_below_one_is_rejected(storage: Storage) -> None:
    with pytest.raises(InvalidArgument):
        await Worker(lambda run, config: None, storage).run(max_items=-3)


# --------------------------------------------------------------------------- item 3
async def test_item_03_a_short_outage_when_the_handler_returns_does_not_drop_the_result(
    sql_storage: Storage,
) -> None:
    clock = FrozenClock(T0)
    await pending_item(sql_storage, clock)
    loop = asyncio.get_running_loop()
    down_until = [0.0]
    calls = []

    async def update_run(run: PipelineRun, expected: int) -> bool:
        if loop.time() < down_until[0]:
            raise StorageUnavailable("server closed the connection unexpectedly")
        return await sql_storage.update_run(run, expected)

    async def handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
        calls.append(run)
        down_until[0] = loop.time() + 1.5  # the outage starts as the handler returns

    flaky = cast(Storage, Proxy(sql_storage, update_run=update_run))
    (result,) = await Worker(handler, flaky, clock=clock, lease=timedelta(minutes=5)).run_once()

    (run,) = await sql_storage.find_runs(RunFilter())
    (item,) = await sql_storage.find_queue_items()
    assert result.outcome is Outcome.COMPLETED
    assert (run.state, item.status, len(calls)) == (RunState.COMPLETED, QueueStatus.COMPLETED, 1)


async def test_item_03_a_heartbeat_in_flight_when_the_handler_returns_does_not_drop_the_result(
    sql_storage: Storage,
) -> None:
    clock = FrozenClock(T0)
    await pending_item(sql_storage, clock)
    beating = asyncio.Event()

    async def update_run(run: PipelineRun, expected: int) -> bool:
        applied = await sql_storage.update_run(run, expected)
        if run.state is RunState.RUNNING and run.attempt == 1 and expected > 2:
            beating.set()  # a heartbeat committed; its answer is still on its way
            await asyncio.sleep(0.3)
        return applied

    async def handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
        await beating.wait()

    slow = cast(Storage, Proxy(sql_storage, update_run=update_run))
    (result,) = await Worker(handler, slow, clock=clock, lease=LEASE, heartbeat_interval=0.05).run_once()

    (run,) = await sql_storage.find_runs(RunFilter())
    assert (result.outcome, run.state) == (Outcome.COMPLETED, RunState.COMPLETED)


# --------------------------------------------------------------------------- item 4
def test_item_04_lease_expiry_is_retried_even_when_the_policy_lists_error_types() -> None:
    listed = RetryPolicy(retry_on_errors=("TimeoutError",))
    assert listed.allows(0, LEASE_EXPIRED)
    assert not listed.allows(0, "KeyError")
    assert not RetryPolicy(retry_on_errors=("TimeoutError",), retry_on_lease_expiry=False).allows(
        0, LEASE_EXPIRED
    )


@pytest.mark.parametrize(("switch", "expected"), [(True, RunState.SCHEDULED), (False, RunState.FAILED)])
async def test_item_04_a_dead_workers_run_is_retried_unless_the_policy_switch_is_off(
    storage: Storage, clock: FrozenClock, switch: bool, expected: RunState
) -> None:
    policy = RetryPolicy(retry_on_errors=("TimeoutError",), retry_on_lease_expiry=switch)
    run = await running_run(storage, clock, policy=policy)

    await Recovery(storage, clock=clock).run_once(T0 + LEASE)

    stored = await storage.get_run(run.run_id)
    assert stored is not None and stored.retry_policy == policy
    assert (stored.state, stored.error_type) == (expected, LEASE_EXPIRED)


# --------------------------------------------------------------------------- item 5
async def test_item_05_recovery_queues_orphaned_pending_runs_beyond_the_first_page(
    storage: Storage, clock: FrozenClock
) -> None:
    state = PipelineStateManager(storage, clock=clock)
    for n in range(7):
        run_id = await state.create_scheduled_run("acme", f"c{n}", T0 - timedelta(minutes=n))
        assert await state.transition_state(run_id, RunState.SCHEDULED, RunState.PENDING)

    report = await Recovery(storage, clock=clock, batch_size=3).run_once(T0)

    assert report.requeued_runs == 7
    assert await storage.count_queue_items(QueueStatus.QUEUED) == 7


# --------------------------------------------------------------------------- item 6
async def test_item_06_a_nul_byte_in_an_exception_message_is_recorded(
    storage: Storage, clock: FrozenClock
) -> None:
    await pending_item(storage, clock, max_retries=0)

    def handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
        raise ValueError("bad \x00 byte \udcff and a bell \x07")

    (result,) = await Worker(handler, storage, clock=clock, lease=LEASE).run_once()

    (run,) = await storage.find_runs(RunFilter())
    (item,) = await storage.find_queue_items()
    assert result.outcome is Outcome.FAILED
    assert (run.state, run.error_type) == (RunState.FAILED, "ValueError")
    assert run.error_message == "bad \\x00 byte \\udcff and a bell \\x07"
    assert item.status is QueueStatus.FAILED and "\x00" not in (item.error_message or "")


@pytest.mark.parametrize(
    ("tenant", "config"),
    [
        ("nul\x00tenant", {}),
        ("x" * 256, {}),
        ("line\nbreak", {}),
        ("acme", {"v": math.nan}),
        ("acme", {"v": math.inf}),
        ("acme", {"v": "nul\x00"}),
        ("acme", {"v": 2**64}),
    ],
)
async def test_item_06_every_backend_refuses_the_same_inputs(
    storage: Storage, clock: FrozenClock, tenant: str, config: dict[str, Any]
) -> None:
    state = PipelineStateManager(storage, clock=clock)
    with pytest.raises(InvalidInput):
        await state.create_scheduled_run(tenant, "ingest", T0, config=config)
    with pytest.raises(InvalidInput):
        await QueueManager(storage, clock=clock).enqueue(tenant, config)
    assert await storage.find_runs(RunFilter()) == []
    assert await storage.count_queue_items() == 0


async def test_item_06_an_id_of_255_characters_is_accepted_everywhere(
    storage: Storage, clock: FrozenClock
) -> None:
    tenant = "t" * 255
    run_id = await PipelineStateManager(storage, clock=clock).create_scheduled_run(tenant, "c", T0)
    stored = await storage.get_run(run_id)
    assert stored is not None and stored.tenant_id == tenant


# --------------------------------------------------------------------------- item 7
async def test_item_07_an_item_without_a_run_keeps_its_lease_while_the_handler_runs(
    sql_storage: Storage,
) -> None:
    await QueueManager(sql_storage).enqueue("acme", {"job": "export"})
    calls: list[dict[str, Any]] = []
    recovered: list[int] = []

    async def handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
        calls.append(config)
        for _ in range(8):  # 4 s: two leases
            await asyncio.sleep(0.5)
            report = await Recovery(sql_storage).run_once()
            recovered.append(report.released_items + report.failed_items)

    worker = Worker(
        handler, sql_storage, lease=timedelta(seconds=2), heartbeat_interval=0.1, poll_interval=0.05
    )
    results = await worker.run_once()

    assert [r.outcome for r in results] == [Outcome.COMPLETED]
    assert (len(calls), sum(recovered)) == (1, 0)
    assert await sql_storage.count_queue_items(QueueStatus.COMPLETED) == 1


async def test_item_07_an_expired_item_without_a_run_is_not_handed_out_again(
    storage: Storage, clock: FrozenClock
) -> None:
    queue = QueueManager(storage, clock=clock, lease=LEASE)
    queue_id = await queue.enqueue("acme", {"job": "export"})
    assert await queue.dequeue("dead-worker") is not None  # the worker dies holding it

    report = await Recovery(storage, clock=clock).run_once(T0 + LEASE)

    item = await queue.get_item(queue_id)
    assert (report.released_items, report.failed_items) == (0, 1)
    assert item.status is QueueStatus.FAILED
    assert await queue.dequeue("w2") is None


async def test_item_07_max_item_attempts_allows_a_bounded_number_of_claims(
    storage: Storage, clock: FrozenClock
) -> None:
    queue = QueueManager(storage, clock=clock, lease=LEASE)
    queue_id = await queue.enqueue("acme", {"job": "export"})
    recovery = Recovery(storage, clock=clock, max_item_attempts=2)
    statuses = []
    for n in range(1, 3):
        assert await queue.dequeue(f"dead-{n}") is not None
        clock.advance(LEASE)
        await recovery.run_once()
        statuses.append((await queue.get_item(queue_id)).status)
    assert statuses == [QueueStatus.QUEUED, QueueStatus.FAILED]


# --------------------------------------------------------------------------- item 8
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_item_08_a_worker_that_loses_its_lease_stops_the_handler_and_writes_nothing(
    sql_storage: Storage, kind: str
) -> None:
    await due_run_on_the_system_clock(sql_storage)
    stopped: list[str] = []
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def async_handler(run: PipelineRun | None, config: dict[str, Any], context: RunContext) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            stopped.append("cancelled")
            raise

    def sync_handler(run: PipelineRun | None, config: dict[str, Any], context: RunContext) -> str:
        loop.call_soon_threadsafe(started.set)
        if context.cancel_event.wait(timeout=60):
            stopped.append("flag")
        return "result nobody may write"

    handler = async_handler if kind == "async" else sync_handler
    worker = Worker(
        handler, sql_storage, lease=timedelta(seconds=30), heartbeat_interval=0.1, worker_id="skewed"
    )
    task = asyncio.create_task(worker.run_once())
    await started.wait()
    # Another host whose clock runs an hour ahead reclaims the run as expired.
    report = await Recovery(sql_storage).run_once(SYSTEM_CLOCK.now() + timedelta(hours=1))
    (result,) = await task

    (run,) = await sql_storage.find_runs(RunFilter())
    assert report.expired_runs == 1
    assert result.outcome is Outcome.LOST
    assert stopped == ["cancelled" if kind == "async" else "flag"]
    assert run.state is not RunState.COMPLETED and run.error_type == LEASE_EXPIRED


def test_item_08_a_handler_taking_two_parameters_still_works(storage: Storage) -> None:
    from pipestate.application.worker import _takes_context

    def two(run: PipelineRun | None, config: dict[str, Any]) -> None: ...

    def three(run: PipelineRun | None, config: dict[str, Any], context: RunContext) -> None: ...

    assert (_takes_context(two), _takes_context(three)) == (False, True)


# --------------------------------------------------------------------------- item 9
async def test_item_09_a_locked_queue_table_does_not_stop_the_runs_heartbeat(tmp_path: Path) -> None:
    import sqlalchemy as sa

    async with BACKENDS["postgresql"](tmp_path) as storage:
        await due_run_on_the_system_clock(storage)
        engine = cast(Any, storage).engine
        started = asyncio.Event()
        loop = asyncio.get_running_loop()

        finish = threading.Event()

        def handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(started.set)
            finish.wait(60)

        def hold_lock(release: threading.Event) -> None:
            with engine.connect() as conn, conn.begin():
                conn.execute(sa.text("LOCK TABLE x_meta_pipeline_queue IN ACCESS EXCLUSIVE MODE"))
                release.wait(30)

        worker = Worker(handler, storage, lease=timedelta(seconds=2), heartbeat_interval=0.2)
        task = asyncio.create_task(worker.run_once())
        await started.wait()
        release = threading.Event()
        locker = loop.run_in_executor(None, hold_lock, release)
        await asyncio.sleep(3.0)  # past the lease the run had when the lock was taken
        (run,) = await storage.find_runs(RunFilter(states=[RunState.RUNNING]))
        lease_during_lock = run.lease_expires_at
        checked_at = SYSTEM_CLOCK.now()
        release.set()
        await locker
        finish.set()
        (result,) = await task

        assert lease_during_lock is not None and lease_during_lock > checked_at
        assert result.outcome is Outcome.COMPLETED


# --------------------------------------------------------------------------- item 10
async def test_item_10_schedules_the_tick_cannot_plan_are_parked_and_do_not_stop_the_others(
    storage: Storage, clock: FrozenClock
) -> None:
    for n in range(3):  # more than a page of broken schedules, all due first
        broken = PipelineSchedule.new(
            tenant_id=f"gone-{n}", config_id="c", cron="0 * * * *", timezone="UTC", now=T0, start=T0
        )
        broken.timezone = "Mars/Olympus_Mons"  # a zone removed from tzdata after it was stored
        broken.next_fire_time = T0 - timedelta(hours=1)
        assert await storage.insert_schedule(broken)
    await ScheduleManager(storage, clock=clock).add("acme", "ingest", "0 * * * *", start=T0)
    scheduler = Scheduler(storage, clock=clock, batch_size=2)

    first = await scheduler.tick(T0)
    second = await scheduler.tick(T0)

    (run,) = await storage.find_runs(RunFilter())
    paused = await storage.list_schedules(enabled=False)
    assert run.tenant_id == "acme"
    assert sorted(p.tenant_id for p in first.parked_schedules) == ["gone-0", "gone-1", "gone-2"]
    assert sorted(s.tenant_id for s in paused) == ["gone-0", "gone-1", "gone-2"]
    assert (second.schedule_errors, second.due_schedules) == (0, 0)


# --------------------------------------------------------------------------- item 12
async def test_item_12_two_recovery_passes_at_once_report_an_expiry_once(
    storage: Storage, clock: FrozenClock
) -> None:
    await running_run(storage, clock)
    arrived: list[int] = []
    both_read = asyncio.Event()

    async def update_runs(pairs: Any) -> int:
        arrived.append(1)
        if len(arrived) == 2:
            both_read.set()
        await both_read.wait()  # both passes read the run before either writes
        return await storage.update_runs(pairs)

    racing = cast(Storage, Proxy(storage, update_runs=update_runs))
    at = T0 + LEASE
    first, second = await asyncio.gather(
        Recovery(racing, clock=clock).run_once(at), Recovery(racing, clock=clock).run_once(at)
    )

    assert first.expired_runs + second.expired_runs == 1


# --------------------------------------------------------------------------- item 13
async def test_item_13_a_due_failed_run_with_next_retry_at_is_retried_by_recovery(
    storage: Storage, clock: FrozenClock
) -> None:
    run = await running_run(storage, clock)
    state = PipelineStateManager(storage, clock=clock)
    assert await state.mark_as_failed(run.run_id, "warehouse timeout", should_retry=True)
    failed = await state.get_run_status(run.run_id)
    assert failed.next_retry_at is not None

    early = await Recovery(storage, clock=clock).run_once(failed.next_retry_at - timedelta(seconds=1))
    due = await Recovery(storage, clock=clock).run_once(failed.next_retry_at)

    stored = await state.get_run_status(run.run_id)
    (item,) = await storage.find_queue_items(run_id=run.run_id)
    assert (early.due_retries, due.due_retries) == (0, 1)
    assert (stored.state, stored.retry_count, stored.next_retry_at) == (RunState.PENDING, 1, None)
    assert item.status is QueueStatus.QUEUED


async def test_item_13_the_seeds_literal_retry_calls_with_a_client_argument_work(
    storage: Storage, clock: FrozenClock
) -> None:
    run = await running_run(storage, clock)
    state, retry_manager = PipelineStateManager(storage, clock=clock), RetryManager(storage, clock=clock)
    bq_client = object()  # the seed passes its BigQuery client; pipestate uses its storage
    retry_config = {"max_retries": 3, "backoff_multiplier": 2, "retry_on_errors": ["TimeoutError"]}
    assert await state.mark_as_failed(run.run_id, "timeout", should_retry=True, error_type="TimeoutError")

    should_retry = await retry_manager.should_retry(run.run_id, retry_config, bq_client)
    retry_time = retry_manager.calculate_retry_time(attempt=1)
    scheduled = await retry_manager.schedule_retry(run.run_id, retry_time, bq_client)

    stored = await state.get_run_status(run.run_id)
    assert (should_retry, scheduled) == (True, True)
    assert (stored.state, stored.retry_count, stored.scheduled_time) == (RunState.SCHEDULED, 1, retry_time)


# --------------------------------------------------------------------------- item 14
@pytest.mark.parametrize(
    "config",
    [
        {"at": datetime(2026, 1, 1, tzinfo=UTC)},
        {"tags": {"a", "b"}},
        {"blob": b"\x00\x01"},
        {"n": 10**400},
        {1: "non-string key"},
    ],
    ids=["datetime", "set", "bytes", "huge-int", "int-key"],
)
async def test_item_14_configs_that_are_not_json_raise_a_typed_error(
    storage: Storage, clock: FrozenClock, config: dict[Any, Any]
) -> None:
    with pytest.raises(InvalidArgument):
        await PipelineStateManager(storage, clock=clock).create_scheduled_run("acme", "c", T0, config=config)
    with pytest.raises(InvalidArgument):
        await ScheduleManager(storage, clock=clock).add("acme", "c", "0 * * * *", config=config)
    assert await storage.find_runs(RunFilter()) == []
    assert await storage.list_schedules() == []


async def test_item_14_a_config_nested_5000_deep_raises_a_typed_error(
    storage: Storage, clock: FrozenClock
) -> None:
    deep: dict[str, Any] = {}
    for _ in range(5000):
        deep = {"x": deep}
    with pytest.raises(InvalidArgument):
        await QueueManager(storage, clock=clock).enqueue("acme", deep)
    assert await storage.count_queue_items() == 0


async def test_item_14_sync_handlers_run_as_parallel_as_the_concurrency_says(sql_storage: Storage) -> None:
    wanted = (os.cpu_count() or 1) + 5  # the default thread pool stops at cpu + 4
    queue = QueueManager(sql_storage)
    for n in range(wanted):
        await queue.enqueue("acme", {"n": n})
    together = threading.Barrier(wanted, timeout=30)

    def handler(run: PipelineRun | None, config: dict[str, Any]) -> None:
        together.wait()  # breaks (and fails the item) unless every handler runs at once

    results = await Worker(handler, sql_storage, concurrency=wanted).run_once()

    assert [r.outcome for r in results] == [Outcome.COMPLETED] * wanted


async def test_item_14_a_worker_on_a_store_without_tables_fails_instead_of_idling(tmp_path: Path) -> None:
    from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
    from tests.support.backends import postgres_schema

    with postgres_schema() as (url, engine_kwargs):
        storage = SqlAlchemyStorage.from_url(url, **engine_kwargs)  # no create_schema
        try:
            with pytest.raises(StorageError) as raised:
                await Worker(lambda run, config: None, storage, poll_interval=0.01).run(exit_when_idle=True)
            assert not isinstance(raised.value, StorageUnavailable)
        finally:
            await storage.close()


def test_item_14_identifier_errors_name_the_rule() -> None:
    with pytest.raises(InvalidIdentifier, match="at most 255"):
        PipelineRun.new(tenant_id="x" * 300, config_id="c", scheduled_time=T0, now=T0)
