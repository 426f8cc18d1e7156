"""Connections killed with ``pg_terminate_backend`` while a worker claims and completes items.

Whatever the moment of the kill, the caller gets a retried success or ``StorageUnavailable``
(never a driver exception), and every item ends up claimed, and completed, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.domain.errors import StorageUnavailable
from pipestate.domain.queue import QueueItem, QueueStatus
from pipestate.domain.run import PipelineRun
from tests.adapters.postgresql.conftest import PgTarget

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=1)
QUEUE = "x_meta_pipeline_queue"


class Worker:
    """A storage with one connection whose backend pids the test can see (and kill)."""

    def __init__(self, target: PgTarget) -> None:
        url, kwargs = target
        self.storage = SqlAlchemyStorage.from_url(url, pool_size=1, **kwargs)
        self.pids: list[int] = []
        event.listen(self.storage.engine, "connect", self._connected)

    def _connected(self, dbapi_connection: Any, _record: Any) -> None:
        self.pids.append(dbapi_connection.info.backend_pid)

    async def claim(self, token: str, now: datetime = T0, limit: int = 1) -> list[QueueItem]:
        return await self.storage.claim_queue_items(
            worker_id="w", claim_token=token, now=now, lease_expires_at=now + LEASE, limit=limit
        )


@pytest.fixture
async def worker(pg: PgTarget) -> AsyncIterator[Worker]:
    worker = Worker(pg)
    await worker.storage.create_schema()
    yield worker
    await worker.storage.close()


def terminate(admin: sa.Engine, pid: int) -> bool:
    """Kill a backend and wait (up to 5 s) until it is gone."""
    with admin.connect() as conn:
        return bool(conn.exec_driver_sql("SELECT pg_terminate_backend(%(pid)s, 5000)", {"pid": pid}).scalar())


@contextlib.contextmanager
def polling(admin: sa.Engine) -> Iterator[sa.Connection]:
    """A connection for polling pg_stat_activity: autocommit, since a transaction would see one
    frozen snapshot of it."""
    with admin.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


def wait_until_sleeping(admin: sa.Engine, pid: int) -> None:
    """Wait until backend ``pid`` sits in pg_sleep (inside a claim slowed down by a trigger)."""
    deadline = time.monotonic() + 10
    with polling(admin) as conn:
        while time.monotonic() < deadline:
            event_ = conn.exec_driver_sql(
                "SELECT wait_event FROM pg_stat_activity WHERE pid = %(pid)s", {"pid": pid}
            ).scalar()
            if event_ == "PgSleep":
                return
            time.sleep(0.005)
    raise AssertionError(f"backend {pid} never reached pg_sleep")


def slow_trigger(admin: sa.Engine, seconds: float, *, at_commit: bool = False) -> None:
    """Make every claim of a QUEUED row sleep, in the statement or (deferred) at commit."""
    with admin.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION slow_claim() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$"
        )
        if at_commit:
            conn.exec_driver_sql(
                f"CREATE CONSTRAINT TRIGGER slow_claim AFTER UPDATE ON {QUEUE} DEFERRABLE INITIALLY DEFERRED "
                "FOR EACH ROW WHEN (OLD.status = 'QUEUED') EXECUTE FUNCTION slow_claim()"
            )
        else:
            conn.exec_driver_sql(
                f"CREATE TRIGGER slow_claim BEFORE UPDATE ON {QUEUE} "
                "FOR EACH ROW WHEN (OLD.status = 'QUEUED') EXECUTE FUNCTION slow_claim()"
            )


def statuses(admin: sa.Engine) -> dict[str, tuple[str, int, str | None]]:
    with admin.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT queue_id, status, attempts, claim_token FROM x_meta_pipeline_queue"
        ).all()
    return {queue_id: (status, attempts, token) for queue_id, status, attempts, token in rows}


async def enqueue(storage: SqlAlchemyStorage, count: int) -> list[str]:
    ids = [f"q{n:03d}" for n in range(count)]
    await storage.insert_queue_items(
        [QueueItem(queue_id=i, tenant_id="t", config={}, priority=1, created_at=T0) for i in ids]
    )
    return ids


async def test_claim_after_the_idle_connection_was_killed_is_a_retried_success(
    worker: Worker, admin: sa.Engine
) -> None:
    await enqueue(worker.storage, 2)
    first = await worker.claim("t1")
    assert terminate(admin, worker.pids[-1])

    second = await worker.claim("t2")

    assert [i.queue_id for i in first + second] == ["q000", "q001"]
    assert len(worker.pids) == 2  # the retry reconnected
    assert statuses(admin) == {"q000": ("PROCESSING", 1, "t1"), "q001": ("PROCESSING", 1, "t2")}


async def test_claim_killed_mid_statement_is_retried_and_claims_once(
    worker: Worker, admin: sa.Engine
) -> None:
    await enqueue(worker.storage, 3)
    await worker.storage.get_queue_item("connect")
    slow_trigger(admin, 0.3)

    claim = asyncio.create_task(worker.claim("t1"))
    await asyncio.to_thread(wait_until_sleeping, admin, worker.pids[-1])
    assert await asyncio.to_thread(terminate, admin, worker.pids[-1])
    claimed = await claim

    assert [i.queue_id for i in claimed] == ["q000"]
    assert len(worker.pids) == 2
    assert statuses(admin) == {
        "q000": ("PROCESSING", 1, "t1"),  # the killed attempt rolled back: one claim, not two
        "q001": ("QUEUED", 0, None),
        "q002": ("QUEUED", 0, None),
    }


async def test_claim_killed_while_committing_is_retried_and_claims_once(
    worker: Worker, admin: sa.Engine
) -> None:
    await enqueue(worker.storage, 2)
    await worker.storage.get_queue_item("connect")
    slow_trigger(admin, 0.3, at_commit=True)

    claim = asyncio.create_task(worker.claim("t1"))
    await asyncio.to_thread(wait_until_sleeping, admin, worker.pids[-1])
    assert await asyncio.to_thread(terminate, admin, worker.pids[-1])
    claimed = await claim

    assert [i.queue_id for i in claimed] == ["q000"]
    assert statuses(admin) == {"q000": ("PROCESSING", 1, "t1"), "q001": ("QUEUED", 0, None)}


async def test_claim_whose_every_attempt_is_killed_raises_storage_unavailable_and_claims_nothing(
    worker: Worker, admin: sa.Engine
) -> None:
    await enqueue(worker.storage, 2)
    slow_trigger(admin, 0.2)
    stop = threading.Event()

    def kill_every_claim() -> None:
        with polling(admin) as conn:
            while not stop.is_set():
                sleeping = (
                    conn.exec_driver_sql(
                        "SELECT pid FROM pg_stat_activity "
                        "WHERE wait_event = 'PgSleep' AND pid = ANY(%(pids)s)",
                        {"pids": list(worker.pids)},
                    )
                    .scalars()
                    .all()
                )
                for pid in sleeping:
                    conn.exec_driver_sql("SELECT pg_terminate_backend(%(pid)s)", {"pid": pid})
                time.sleep(0.005)

    chaos = threading.Thread(target=kill_every_claim)
    chaos.start()
    try:
        with pytest.raises(StorageUnavailable) as raised:
            await worker.claim("t1")
    finally:
        stop.set()
        chaos.join()

    assert raised.value.operation == "claim"
    assert len(worker.pids) > 3  # it did retry, on fresh connections
    assert statuses(admin) == {"q000": ("QUEUED", 0, None), "q001": ("QUEUED", 0, None)}
    assert [i.queue_id for i in await worker.claim("t2")] == ["q000"]  # and works again


class _LoseNextAcknowledgement:
    """The storage's hot statements, except that the next statement's acknowledgement is lost."""

    def __init__(self, inner: Any, admin: sa.Engine) -> None:
        self._inner = inner
        self._admin = admin
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)

        def call(conn: Any, *args: Any) -> Any:
            result = method(conn, *args)  # autocommit: durable from here on
            if not self.fired:
                self.fired = True
                assert terminate(self._admin, conn.info.backend_pid)
                conn.execute("SELECT 1")  # the driver's real error for the dead connection
            return result

        return call


def lose_the_next_commit_acknowledgement(worker: Worker, admin: sa.Engine) -> Callable[[], bool]:
    """Let the next statement really commit, then kill the connection before its caller hears
    back: the caller sees a dropped connection for a statement that did commit.

    (A wrapper around the storage's compiled statements does the timing, at the driver
    boundary; the commit, the kill and the driver's error are all real.)
    """
    hot = _LoseNextAcknowledgement(worker.storage._pg, admin)
    worker.storage._pg = hot  # type: ignore[assignment]
    return lambda: hot.fired


async def test_claim_whose_commit_acknowledgement_was_lost_returns_what_it_claimed(
    worker: Worker, admin: sa.Engine
) -> None:
    await enqueue(worker.storage, 3)
    fired = lose_the_next_commit_acknowledgement(worker, admin)

    claimed = await worker.claim("t1", limit=2)

    assert fired()
    assert [i.queue_id for i in claimed] == ["q000", "q001"]
    assert statuses(admin) == {
        "q000": ("PROCESSING", 1, "t1"),
        "q001": ("PROCESSING", 1, "t1"),
        "q002": ("QUEUED", 0, None),  # the retry did not claim more
    }


async def test_completion_whose_commit_acknowledgement_was_lost_reports_success(
    worker: Worker, admin: sa.Engine
) -> None:
    await enqueue(worker.storage, 1)
    await worker.claim("t1")
    fired = lose_the_next_commit_acknowledgement(worker, admin)

    completed = await worker.storage.transition_queue_item(
        "q000", from_status=QueueStatus.PROCESSING, to_status=QueueStatus.COMPLETED, now=T0, claim_token="t1"
    )

    assert fired()
    assert completed  # not "lost the race": the first attempt's write is ours
    assert statuses(admin)["q000"] == ("COMPLETED", 1, "t1")


async def test_run_update_and_insert_whose_commit_acknowledgement_was_lost_report_success(
    worker: Worker, admin: sa.Engine, run_factory: Callable[..., PipelineRun]
) -> None:
    run = run_factory()
    fired = lose_the_next_commit_acknowledgement(worker, admin)
    inserted = await worker.storage.insert_runs([run])
    assert fired() and inserted == 1

    expected = run.version
    run.version += 1
    run.error_message = "changed"
    fired = lose_the_next_commit_acknowledgement(worker, admin)
    updated = await worker.storage.update_run(run, expected)

    assert fired() and updated
    assert await worker.storage.get_run(run.run_id) == run
    assert not await worker.storage.update_run(run, expected)  # a real lost race is still False


@pytest.mark.slow
async def test_worker_whose_connections_keep_dying_completes_every_item_exactly_once(
    worker: Worker, admin: sa.Engine
) -> None:
    ids = await enqueue(worker.storage, 150)
    slow_trigger(admin, 0.01)  # widen the window in which a kill lands mid-statement
    stop = threading.Event()
    kills = 0

    def killer() -> None:
        nonlocal kills
        rng = random.Random(5)
        while not stop.wait(rng.uniform(0.01, 0.05)):
            if worker.pids and terminate(admin, worker.pids[-1]):
                kills += 1

    chaos = threading.Thread(target=killer)
    chaos.start()
    completed: list[str] = []
    errors = 0
    now = T0
    try:
        for round_ in range(20):
            while True:  # work until nothing is claimable
                try:
                    items = await worker.claim(f"r{round_}-{len(completed)}-{errors}", now=now, limit=2)
                except StorageUnavailable:
                    errors += 1
                    continue
                if not items:
                    break
                for item in items:
                    try:
                        done = await worker.storage.transition_queue_item(
                            item.queue_id,
                            from_status=QueueStatus.PROCESSING,
                            to_status=QueueStatus.COMPLETED,
                            now=now,
                            claim_token=item.claim_token,
                        )
                    except StorageUnavailable:
                        errors += 1  # the lease will return it
                        continue
                    if done:
                        completed.append(item.queue_id)
            # Recovery: items claimed by an attempt whose caller never heard back return to the
            # queue when their lease expires.
            now += 2 * LEASE
            expired = await worker.storage.find_queue_items(
                status=QueueStatus.PROCESSING, lease_expired_before=now
            )
            if not expired:
                break
            for item in expired:
                await worker.storage.transition_queue_item(
                    item.queue_id, from_status=QueueStatus.PROCESSING, to_status=QueueStatus.QUEUED, now=now
                )
    finally:
        stop.set()
        chaos.join()
    print(f"{kills} connections killed, {len(worker.pids)} opened, {errors} StorageUnavailable")

    assert kills >= 10
    assert Counter(completed) == Counter(ids)  # each item completed once, by the worker holding it
    assert {status for status, _, _ in statuses(admin).values()} == {"COMPLETED"}
