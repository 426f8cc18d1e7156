"""QueueManager: a priority work queue (1 = highest … 10), FIFO within a priority, atomic claims."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.ids import new_id, new_token
from pipestate.domain.clock import Clock
from pipestate.domain.errors import InvalidArgument, QueueItemNotFound
from pipestate.domain.ports import Storage
from pipestate.domain.queue import QueueItem, QueueStats, QueueStatus, queue_edge
from pipestate.domain.run import require_id, require_priority
from pipestate.domain.validation import clean_text, require_config, require_duration

DEFAULT_QUEUE_LEASE = timedelta(minutes=5)


def validate_config(config: object) -> dict[str, Any]:
    """A deep copy of a bounded JSON-object config (see :func:`pipestate.domain.validation.require_config`).

    Raises:
        InvalidArgument: not a mapping, not JSON, non-finite numbers, too deep or too large.
    """
    return require_config("config", config)


class QueueManager:
    """Enqueue, claim and finish queue items.

    Args:
        storage: any :class:`~pipestate.domain.ports.Storage`.
        clock: where "now" comes from.
        lease: how long a claim holds an item before recovery may return it to the queue.
    """

    def __init__(
        self, storage: Storage, *, clock: Clock | None = None, lease: timedelta = DEFAULT_QUEUE_LEASE
    ):
        self._storage = storage
        self._clock = clock or SYSTEM_CLOCK
        self._lease = require_duration("lease", lease)

    async def enqueue(
        self,
        tenant_id: str,
        config: Mapping[str, Any],
        priority: int = 5,
        *,
        run_id: str | None = None,
        queue_id: str | None = None,
    ) -> str:
        """Add an item; return its queue_id.

        Passing ``queue_id`` makes the call idempotent: an existing id is left as it is.

        Raises:
            InvalidIdentifier: empty tenant_id (or run_id/queue_id when given).
            InvalidPriority: priority outside 1..10.
            InvalidArgument: config not a JSON-serialisable mapping.
        """
        item = self.new_item(tenant_id, config, priority, run_id=run_id, queue_id=queue_id)
        await self._storage.insert_queue_items([item])
        return item.queue_id

    def new_item(
        self,
        tenant_id: str,
        config: Mapping[str, Any],
        priority: int = 5,
        *,
        run_id: str | None = None,
        queue_id: str | None = None,
    ) -> QueueItem:
        """Validate and build an item without storing it (for batch enqueues)."""
        require_id("tenant_id", tenant_id)
        require_priority(priority)
        if run_id is not None:
            require_id("run_id", run_id)
        if queue_id is not None:
            require_id("queue_id", queue_id)
        now = self._clock.now()
        return QueueItem(
            queue_id=queue_id or new_id(),
            tenant_id=tenant_id,
            config=validate_config(config),
            priority=priority,
            created_at=now,
            run_id=run_id,
            updated_at=now,
        )

    async def enqueue_many(self, items: list[QueueItem]) -> int:
        """Store items built with :meth:`new_item` in one insert-if-absent batch; return how many were new."""
        return await self._storage.insert_queue_items(items) if items else 0

    async def dequeue(self, worker_id: str) -> QueueItem | None:
        """Claim the next item for ``worker_id``: priority 1 first, FIFO within a priority.

        Atomic: two workers never get the same item. ``None`` when nothing waits.

        Raises:
            InvalidIdentifier: empty worker_id.
        """
        items = await self.dequeue_batch(worker_id, 1)
        return items[0] if items else None

    async def dequeue_batch(self, worker_id: str, limit: int) -> list[QueueItem]:
        """Claim up to ``limit`` items at once (one claim token for the batch).

        Raises:
            InvalidIdentifier: empty worker_id.
            InvalidArgument: limit < 1.
        """
        require_id("worker_id", worker_id)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidArgument("limit", limit, "must be an integer >= 1")
        now = self._clock.now()
        return await self._storage.claim_queue_items(
            worker_id=worker_id,
            claim_token=new_token(),
            now=now,
            lease_expires_at=now + self._lease,
            limit=limit,
        )

    async def mark_completed(self, queue_id: str, *, claim_token: str | None = None) -> bool:
        """PROCESSING -> COMPLETED; ``False`` if the item is not PROCESSING (or held by another token).

        Raises:
            QueueItemNotFound: no such item.
        """
        return await self._finish(queue_id, "complete", claim_token, None)

    async def mark_failed(self, queue_id: str, error_message: str, *, claim_token: str | None = None) -> bool:
        """PROCESSING -> FAILED with ``error_message`` (stored cleaned, see
        :func:`pipestate.domain.validation.clean_text`); ``False`` if not PROCESSING.

        Raises:
            QueueItemNotFound: no such item.
        """
        return await self._finish(queue_id, "fail", claim_token, clean_text(error_message))

    async def release(self, queue_id: str, *, claim_token: str | None = None) -> bool:
        """PROCESSING -> QUEUED (give the item back); ``False`` if not PROCESSING.

        Raises:
            QueueItemNotFound: no such item.
        """
        return await self._finish(queue_id, "release", claim_token, None)

    async def heartbeat(self, queue_id: str, claim_token: str) -> bool:
        """Extend the lease of an item still held by ``claim_token``; ``False`` if it is not."""
        require_id("queue_id", queue_id)
        require_id("claim_token", claim_token)
        lease_expires_at = self._clock.now() + self._lease
        return await self._storage.extend_queue_lease(
            queue_id, claim_token=claim_token, lease_expires_at=lease_expires_at
        )

    async def get_queue_length(self, tenant_id: str | None = None) -> int:
        """Number of items waiting (QUEUED), optionally of one tenant."""
        if tenant_id is not None:
            require_id("tenant_id", tenant_id)
        return await self._storage.count_queue_items(QueueStatus.QUEUED, tenant_id)

    async def get_queue_status(self) -> QueueStats:
        """Counts by status and by priority, average and p95 wait, age of the oldest waiting item."""
        return await self._storage.queue_stats(self._clock.now())

    async def get_item(self, queue_id: str) -> QueueItem:
        """The stored item.

        Raises:
            QueueItemNotFound: no such item.
        """
        require_id("queue_id", queue_id)
        item = await self._storage.get_queue_item(queue_id)
        if item is None:
            raise QueueItemNotFound(queue_id)
        return item

    async def _finish(self, queue_id: str, trigger: str, claim_token: str | None, error: str | None) -> bool:
        require_id("queue_id", queue_id)
        source = QueueStatus.PROCESSING
        dest = queue_edge(queue_id, source, trigger)
        applied = await self._storage.transition_queue_item(
            queue_id,
            from_status=source,
            to_status=dest,
            now=self._clock.now(),
            claim_token=claim_token,
            error_message=error,
        )
        if not applied and await self._storage.get_queue_item(queue_id) is None:
            raise QueueItemNotFound(queue_id)
        return applied
