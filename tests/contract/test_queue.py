"""QueueManager over every storage backend."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from pipestate.application import QueueManager
from pipestate.domain.clock import FrozenClock
from pipestate.domain.errors import InvalidArgument, InvalidIdentifier, InvalidPriority, QueueItemNotFound
from pipestate.domain.ports import Storage
from pipestate.domain.queue import QueueStatus


async def test_dequeue_takes_highest_priority_first_then_fifo(
    queue: QueueManager, clock: FrozenClock
) -> None:
    low = await queue.enqueue("t", {"n": 1}, priority=9)
    first = await queue.enqueue("t", {"n": 2}, priority=3)
    clock.advance(seconds=1)
    top = await queue.enqueue("t", {"n": 3}, priority=1)
    second = await queue.enqueue("t", {"n": 4}, priority=3)
    third = await queue.enqueue("t", {"n": 5}, priority=3)  # same created_at as `second`

    order = [(await queue.dequeue("w1")) for _ in range(6)]

    assert [i.queue_id if i else None for i in order] == [top, first, second, third, low, None]


async def test_dequeue_stamps_the_claim(queue: QueueManager, clock: FrozenClock) -> None:
    queue_id = await queue.enqueue("t", {"config_id": "daily", "params": [1, 2]}, priority=2, run_id="run-1")
    clock.advance(seconds=30)

    item = await queue.dequeue("worker-7")

    assert item is not None and item.queue_id == queue_id
    assert item.status is QueueStatus.PROCESSING
    assert (item.worker_id, item.attempts, item.run_id) == ("worker-7", 1, "run-1")
    assert item.claimed_at == clock.now() and item.lease_expires_at == clock.now() + timedelta(minutes=5)
    assert item.claim_token and item.config == {"config_id": "daily", "params": [1, 2]}
    assert item.wait_seconds == 30.0
    assert await queue.get_item(queue_id) == item


async def test_batch_dequeue_claims_up_to_n_in_order_with_one_token(queue: QueueManager) -> None:
    ids = [await queue.enqueue("t", {}, priority=5) for _ in range(5)]
    batch = await queue.dequeue_batch("w1", 3)
    rest = await queue.dequeue_batch("w2", 10)

    assert [i.queue_id for i in batch] == ids[:3]
    assert len({i.claim_token for i in batch}) == 1
    assert [i.queue_id for i in rest] == ids[3:]
    assert await queue.dequeue_batch("w3", 10) == []


async def test_completed_and_failed_items_are_final(queue: QueueManager, clock: FrozenClock) -> None:
    a = await queue.enqueue("t", {})
    b = await queue.enqueue("t", {})
    await queue.dequeue_batch("w", 2)
    clock.advance(seconds=5)

    assert await queue.mark_completed(a) is True
    assert await queue.mark_completed(a) is False
    assert await queue.mark_failed(b, "kaput") is True
    assert await queue.mark_completed(b) is False

    done, failed = await queue.get_item(a), await queue.get_item(b)
    assert done.status is QueueStatus.COMPLETED and done.completed_at == clock.now()
    assert failed.status is QueueStatus.FAILED and failed.error_message == "kaput"
    with pytest.raises(QueueItemNotFound):
        await queue.mark_completed("missing")


async def test_finishing_with_another_claim_token_is_refused(queue: QueueManager) -> None:
    queue_id = await queue.enqueue("t", {})
    item = await queue.dequeue("w1")
    assert item is not None and item.claim_token

    assert await queue.mark_completed(queue_id, claim_token="not-the-token") is False
    assert await queue.heartbeat(queue_id, "not-the-token") is False
    assert await queue.mark_completed(queue_id, claim_token=item.claim_token) is True


async def test_heartbeat_extends_the_lease_of_the_holder(queue: QueueManager, clock: FrozenClock) -> None:
    queue_id = await queue.enqueue("t", {})
    item = await queue.dequeue("w1")
    assert item is not None and item.claim_token
    clock.advance(minutes=3)

    assert await queue.heartbeat(queue_id, item.claim_token) is True
    assert (await queue.get_item(queue_id)).lease_expires_at == clock.now() + timedelta(minutes=5)


async def test_released_item_is_claimed_again(queue: QueueManager) -> None:
    queue_id = await queue.enqueue("t", {})
    await queue.dequeue("w1")
    assert await queue.release(queue_id)

    again = await queue.dequeue("w2")
    assert again is not None and again.queue_id == queue_id
    assert (again.worker_id, again.attempts) == ("w2", 2)


async def test_enqueue_with_a_queue_id_is_idempotent(queue: QueueManager) -> None:
    first = await queue.enqueue("t", {"a": 1}, queue_id="q-run-1-0")
    second = await queue.enqueue("t", {"a": 2}, queue_id="q-run-1-0")
    assert first == second == "q-run-1-0"
    assert await queue.get_queue_length() == 1
    assert (await queue.get_item(first)).config == {"a": 1}


async def test_queue_length_counts_waiting_items_per_tenant(queue: QueueManager) -> None:
    for tenant in ("a", "a", "b"):
        await queue.enqueue(tenant, {})
    await queue.dequeue("w")
    assert await queue.get_queue_length() == 2
    assert await queue.get_queue_length("a") + await queue.get_queue_length("b") == 2


async def test_queue_status_reports_counts_waits_and_oldest(queue: QueueManager, clock: FrozenClock) -> None:
    for priority in (1, 2, 2, 5):
        await queue.enqueue("t", {}, priority=priority)
    # All enqueued at T0; claimed at T0+10s, T0+30s and T0+60s; measured at T0+100s.
    clock.advance(seconds=10)
    first = await queue.dequeue("w")
    clock.advance(seconds=20)
    await queue.dequeue("w")
    clock.advance(seconds=30)
    await queue.dequeue("w")
    assert first is not None
    await queue.mark_completed(first.queue_id)
    clock.advance(seconds=40)

    status = await queue.get_queue_status()

    assert dict(status.by_status) == {
        QueueStatus.QUEUED: 1,
        QueueStatus.PROCESSING: 2,
        QueueStatus.COMPLETED: 1,
    }
    assert dict(status.waiting_by_priority) == {5: 1}
    assert status.total == 4 and status.waiting == 1
    assert status.avg_wait_seconds == pytest.approx((10 + 30 + 60) / 3, abs=0.01)
    assert status.p95_wait_seconds == pytest.approx(60, abs=0.01)
    assert status.oldest_waiting_age_seconds == pytest.approx(100, abs=0.01)


async def test_empty_queue_status(queue: QueueManager) -> None:
    status = await queue.get_queue_status()
    assert status.total == 0 and status.avg_wait_seconds is None and status.oldest_waiting_age_seconds is None


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("", {}), {}, InvalidIdentifier),
        (("t", {}), {"priority": 0}, InvalidPriority),
        (("t", {}), {"priority": 11}, InvalidPriority),
        (("t", {}), {"priority": "1"}, InvalidPriority),
        (("t", ["not", "a", "mapping"]), {}, InvalidArgument),
        (("t", {"x": object()}), {}, InvalidArgument),
    ],
)
async def test_bad_enqueues_raise_typed_errors_and_write_nothing(
    queue: QueueManager, args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await queue.enqueue(*args, **kwargs)  # type: ignore[arg-type]
    assert (await queue.get_queue_status()).total == 0


async def test_dequeue_needs_a_worker_id(queue: QueueManager) -> None:
    await queue.enqueue("t", {})
    with pytest.raises(InvalidIdentifier):
        await queue.dequeue("")
    with pytest.raises(InvalidArgument):
        await queue.dequeue_batch("w", 0)
    assert await queue.get_queue_length() == 1


async def test_concurrent_dequeues_never_hand_out_an_item_twice(storage: Storage, clock: FrozenClock) -> None:
    producer = QueueManager(storage, clock=clock)
    ids = {await producer.enqueue("t", {"i": i}) for i in range(40)}

    async def worker(name: str) -> list[str]:
        manager = QueueManager(storage, clock=clock)
        got: list[str] = []
        while (item := await manager.dequeue(name)) is not None:
            got.append(item.queue_id)
        return got

    results = await asyncio.gather(*(worker(f"w{i}") for i in range(4)))
    claimed = [queue_id for result in results for queue_id in result]
    assert sorted(claimed) == sorted(ids)


async def test_batch_lease_extension_extends_only_the_items_still_held(
    queue: QueueManager, storage: Storage, clock: FrozenClock
) -> None:
    ids = [await queue.enqueue("t", {"n": n}) for n in range(3)]
    items = await queue.dequeue_batch("w1", 3)
    assert [i.queue_id for i in items] == ids
    token = items[0].claim_token
    assert token is not None
    assert await queue.release(ids[2], claim_token=token)  # no longer held
    until = clock.now() + timedelta(minutes=9)

    held = await storage.extend_queue_leases(
        [(ids[0], token), (ids[1], "not-the-token"), (ids[2], token)], lease_expires_at=until
    )

    assert held == 1
    stored = [await queue.get_item(i) for i in ids]
    assert stored[0].lease_expires_at == until
    assert stored[1].lease_expires_at == clock.now() + timedelta(minutes=5)
    assert (stored[2].status, stored[2].lease_expires_at) == (QueueStatus.QUEUED, None)
    assert await storage.extend_queue_leases([], lease_expires_at=until) == 0


@pytest.mark.parametrize("to_status", [QueueStatus.COMPLETED, QueueStatus.FAILED])
async def test_batch_transition_is_fenced_per_item(
    queue: QueueManager, storage: Storage, clock: FrozenClock, to_status: QueueStatus
) -> None:
    ids = [await queue.enqueue("t", {"n": n}) for n in range(3)]
    items = await queue.dequeue_batch("w1", 3)
    token = items[0].claim_token
    assert token is not None
    clock.advance(seconds=7)

    moved = await storage.transition_queue_items(
        [(ids[0], token), (ids[1], "stale-token"), (ids[2], token), (ids[0], token)],
        from_status=QueueStatus.PROCESSING,
        to_status=to_status,
        now=clock.now(),
        error_message="boom",
    )

    assert moved == 2
    stored = [await queue.get_item(i) for i in ids]
    assert [s.status for s in stored] == [to_status, QueueStatus.PROCESSING, to_status]
    assert stored[0].completed_at == clock.now() and stored[1].completed_at is None
    assert stored[2].error_message == ("boom" if to_status is QueueStatus.FAILED else None)
    again = await storage.transition_queue_items(
        [(ids[0], token)], from_status=QueueStatus.PROCESSING, to_status=to_status, now=clock.now()
    )
    assert again == 0
