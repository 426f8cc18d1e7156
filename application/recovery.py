"""Recovery: take back what dead workers held, so that nothing is lost or run twice.

One pass (:meth:`Recovery.run_once`):

1. RUNNING runs whose lease expired (``lease_expires_at <= now``): ``expire_lease`` (FAILED with
   error_type ``LeaseExpired``) and, when the run's retry policy allows, ``retry`` on the same
   object (SCHEDULED at the backoff time, or PENDING when already due) — one batch
   compare-and-set. A worker that was merely slow loses its claim: its later writes fail their
   compare-and-set (fencing), so the run is never completed twice.
2. PROCESSING queue items whose lease expired: an item whose run is still PENDING (the worker
   died between claim and start), or that has no run, goes back to QUEUED; any other item is
   FAILED (its run was failed and, if retried, has a new item for the new attempt). Each change
   is fenced by the item's claim token.
3. PENDING runs without a queue item for their current attempt (a scheduler crash between
   promoting and queueing, or a retry that became PENDING at once) are queued; the queue id is
   derived from (run_id, retry_count), so an item that exists is left alone.

Cost: steps 1 and 3 are two or three batched port calls each per page of ``batch_size``; step 2
is one query plus one conditional update per expired item (there is no batch port for queue
transitions; expired items are rare). Step 3 checks the oldest ``batch_size`` PENDING runs per
pass (the port has no cursor over them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.scheduler import enqueue_pending, queue_id_for
from pipestate.domain.clock import Clock, ensure_aware
from pipestate.domain.errors import InvalidArgument
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.queue import QueueItem, QueueStatus
from pipestate.domain.run import PipelineRun, RunState, derive_token

log = logging.getLogger("pipestate.recovery")

DEFAULT_BATCH_SIZE: Final = 1_000


@dataclass(frozen=True)
class RecoveredRun:
    """One run taken back from a worker whose lease expired."""

    run_id: str
    tenant_id: str
    config_id: str
    worker_id: str | None
    state: RunState
    """FAILED (no retry left) or SCHEDULED/PENDING (retried)."""
    retry_at: datetime | None


@dataclass
class RecoveryReport:
    now: datetime
    expired_runs: int = 0
    """RUNNING runs whose lease expired and were failed with ``LeaseExpired`` by this pass."""
    retried: int = 0
    released_items: int = 0
    failed_items: int = 0
    requeued_runs: int = 0
    """PENDING runs that had no queue item for their attempt and got one."""
    runs: list[RecoveredRun] = field(default_factory=list)

    @property
    def anything(self) -> bool:
        return bool(self.expired_runs or self.released_items or self.failed_items or self.requeued_runs)


class Recovery:
    """Periodic clean-up after dead workers (run it every lease or so; it is idempotent).

    Args:
        storage: any :class:`~pipestate.domain.ports.Storage`.
        clock: where "now" comes from when :meth:`run_once` is not given one.
        batch_size: runs/items handled per page.
    """

    def __init__(self, storage: Storage, *, clock: Clock | None = None, batch_size: int = DEFAULT_BATCH_SIZE):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidArgument("batch_size", batch_size, "must be an integer >= 1")
        self._storage = storage
        self._clock = clock or SYSTEM_CLOCK
        self._batch = batch_size

    async def run_once(self, now: datetime | None = None) -> RecoveryReport:
        """One recovery pass at ``now`` (default: the clock).

        Raises:
            NaiveDatetime: ``now`` without a time zone.
            StorageError: the store failed (a later pass finishes the job).
        """
        at = ensure_aware(now, "now") if now is not None else self._clock.now()
        report = RecoveryReport(now=at)
        await self._expire_runs(at, report)
        await self._expire_items(at, report)
        await self._requeue_pending(at, report)
        if report.anything:
            log.info(
                "recovery: %d expired runs (%d retried), %d items released, %d failed, %d runs re-queued",
                report.expired_runs,
                report.retried,
                report.released_items,
                report.failed_items,
                report.requeued_runs,
            )
        return report

    async def _expire_runs(self, now: datetime, report: RecoveryReport) -> None:
        expired = RunFilter(states=[RunState.RUNNING], lease_expired_before=now)
        while True:
            runs = await self._storage.find_runs(expired, limit=self._batch)
            if not runs:
                return
            pairs: list[tuple[PipelineRun, int]] = []
            holders: dict[str, str | None] = {}
            for run in runs:
                expected = run.version
                holders[run.run_id] = run.worker_id
                run.expire_lease(now)
                if run.next_retry_at is not None:
                    run.retry(now)
                pairs.append((run, expected))
            applied = await self._storage.update_runs(pairs)
            written: Sequence[PipelineRun] = runs
            if applied < len(runs):
                # Some workers finished (or another recovery won) meanwhile: report what is stored.
                stored = {r.run_id: r for r in await self._storage.get_runs([r.run_id for r in runs])}
                written = [r for r in runs if _same_write(r, stored.get(r.run_id))]
            for run in written:
                report.expired_runs += 1
                report.retried += run.state is not RunState.FAILED
                report.runs.append(
                    RecoveredRun(
                        run_id=run.run_id,
                        tenant_id=run.tenant_id,
                        config_id=run.config_id,
                        worker_id=holders[run.run_id],
                        state=run.state,
                        retry_at=None if run.state is RunState.FAILED else run.scheduled_time,
                    )
                )
            report.requeued_runs += await enqueue_pending(self._storage, written, now)
            if len(runs) < self._batch or applied == 0:
                return

    async def _expire_items(self, now: datetime, report: RecoveryReport) -> None:
        while True:
            items = await self._storage.find_queue_items(
                status=QueueStatus.PROCESSING, lease_expired_before=now, limit=self._batch
            )
            if not items:
                return
            run_ids = {i.run_id for i in items if i.run_id is not None}
            runs = {r.run_id: r for r in await self._storage.get_runs(run_ids)} if run_ids else {}
            changed = 0
            for item in items:
                run = runs.get(item.run_id) if item.run_id is not None else None
                if _should_release(item, run):
                    dest, message = QueueStatus.QUEUED, None
                else:
                    shown = run.state.value if run is not None else "missing"
                    dest, message = QueueStatus.FAILED, f"lease expired; run is {shown}"
                moved = await self._storage.transition_queue_item(
                    item.queue_id,
                    from_status=QueueStatus.PROCESSING,
                    to_status=dest,
                    now=now,
                    claim_token=item.claim_token,
                    error_message=message,
                )
                if moved:
                    changed += 1
                    if dest is QueueStatus.QUEUED:
                        report.released_items += 1
                    else:
                        report.failed_items += 1
            if len(items) < self._batch or changed == 0:
                return

    async def _requeue_pending(self, now: datetime, report: RecoveryReport) -> None:
        pending = await self._storage.find_runs(RunFilter(states=[RunState.PENDING]), limit=self._batch)
        report.requeued_runs += await enqueue_pending(self._storage, pending, now)


def _should_release(item: QueueItem, run: PipelineRun | None) -> bool:
    """Give the item back to the queue only if it still stands for work nobody started."""
    if item.run_id is None:
        return True
    if run is None or run.state is not RunState.PENDING:
        return False
    # An item of an earlier attempt of a run that is PENDING again is superseded by the new one.
    earlier = {derive_token(run.run_id, str(k)) for k in range(run.retry_count)}
    return item.queue_id not in earlier or item.queue_id == queue_id_for(run)


def _same_write(mine: PipelineRun, stored: PipelineRun | None) -> bool:
    return stored is not None and stored.version == mine.version and stored.state is mine.state
