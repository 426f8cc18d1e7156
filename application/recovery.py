"""Recovery: take back what dead workers held, so that nothing is lost or run twice.

One pass (:meth:`Recovery.run_once`):

1. RUNNING runs whose lease expired (``lease_expires_at <= now``): ``expire_lease`` (FAILED with
   error_type ``LeaseExpired``) and, when the run's retry policy allows, ``retry`` on the same
   object (SCHEDULED at the backoff time, or PENDING when already due) — one batch
   compare-and-set. A worker that was merely slow loses its claim: its later writes fail their
   compare-and-set (fencing), so the run is never completed twice. A lease expiry is retried
   even when the policy lists error types (``RetryPolicy.retry_on_lease_expiry``).
2. FAILED runs whose planned retry is due (``next_retry_at <= now``) that nobody moved on (e.g.
   ``mark_as_failed(..., should_retry=True)`` without a later ``schedule_retry``): ``retry``,
   one batch compare-and-set, and queued.
3. PROCESSING queue items whose lease expired: an item whose run is still PENDING (the worker
   died between claim and start) goes back to QUEUED; an item without a run goes back only while
   it had fewer than ``max_item_attempts`` claims (default 1: an item without a run is never
   handed out twice, since nothing records whether its work was done); any other item is FAILED
   (its run was failed and, if retried, has a new item for the new attempt). Each change is
   fenced by the item's claim token.
4. PENDING runs without a queue item for their current attempt (a scheduler crash between
   promoting and queueing, or a retry that became PENDING at once) are queued; the queue id is
   derived from (run_id, retry_count), so an item that exists is left alone. Every PENDING run is
   checked, in pages of ``batch_size`` inserts-if-absent.

**One bad run never stops a pass.** A run whose failure or retry cannot be computed (a stored
policy that no longer validates, a time past year 9999 ...) is *parked*: FAILED without a retry,
the reason in its ``error_message``, and listed in :attr:`RecoveryReport.parked`. Every other run
is recovered as usual.

Each pass writes a pass id into the expiry message, so that two passes racing for the same run
both read back the stored row and only the one whose write landed reports it.

Cost: steps 1 and 2 are two or three batched port calls each per page of ``batch_size``; step 3
is one query plus one conditional update per expired item (there is no batch port for queue
transitions; expired items are rare); step 4 reads every PENDING run once (one query) and inserts
missing items in pages.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.ids import new_id
from pipestate.application.scheduler import enqueue_pending, queue_id_for
from pipestate.domain.clock import Clock, ensure_aware
from pipestate.domain.errors import InvalidArgument, PipestateError
from pipestate.domain.events import Actor
from pipestate.domain.ports import RunFilter, Storage
from pipestate.domain.queue import QueueItem, QueueStatus
from pipestate.domain.retry import RetryPolicy
from pipestate.domain.run import PipelineRun, RunState, derive_token
from pipestate.domain.validation import require_instant, require_int

log = logging.getLogger("pipestate.recovery")

DEFAULT_BATCH_SIZE: Final = 1_000
DEFAULT_MAX_ITEM_ATTEMPTS: Final = 1
_NO_RETRY: Final = RetryPolicy(max_retries=0)


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


@dataclass(frozen=True)
class ParkedRun:
    """A run recovery could not move on normally: left FAILED without a retry, with the reason."""

    run_id: str
    tenant_id: str
    reason: str


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
    due_retries: int = 0
    """FAILED runs whose planned retry was due and that this pass moved on."""
    runs: list[RecoveredRun] = field(default_factory=list)
    parked: list[ParkedRun] = field(default_factory=list)
    """Runs that could not be recovered normally and were left FAILED with the reason."""

    @property
    def anything(self) -> bool:
        return bool(
            self.expired_runs
            or self.released_items
            or self.failed_items
            or self.requeued_runs
            or self.due_retries
            or self.parked
        )


class Recovery:
    """Periodic clean-up after dead workers (run it every lease or so; it is idempotent).

    Args:
        storage: any :class:`~pipestate.domain.ports.Storage`.
        clock: where "now" comes from when :meth:`run_once` is not given one.
        batch_size: runs/items handled per page.
        max_item_attempts: claims an item *without a run* may get before an expired lease fails
            it instead of re-queueing it (default 1: at most once).
    """

    def __init__(
        self,
        storage: Storage,
        *,
        clock: Clock | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_item_attempts: int = DEFAULT_MAX_ITEM_ATTEMPTS,
    ):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidArgument("batch_size", batch_size, "must be an integer >= 1")
        self._max_item_attempts = require_int("max_item_attempts", max_item_attempts, minimum=1)
        self._storage = storage
        self._clock = clock or SYSTEM_CLOCK
        self._batch = batch_size

    async def run_once(self, now: datetime | None = None) -> RecoveryReport:
        """One recovery pass at ``now`` (default: the clock).

        Raises:
            NaiveDatetime: ``now`` without a time zone.
            StorageError: the store failed (a later pass finishes the job).
        """
        at = require_instant("now", ensure_aware(now, "now") if now is not None else self._clock.now())
        report = RecoveryReport(now=at)
        pass_id = f"recovery pass {new_id()}"
        await self._expire_runs(at, report, pass_id)
        await self._retry_due(at, report)
        await self._expire_items(at, report)
        await self._requeue_pending(at, report)
        if report.anything:
            log.info(
                "recovery: %d expired runs (%d retried), %d due retries, %d items released, %d failed, "
                "%d runs re-queued, %d parked",
                report.expired_runs,
                report.retried,
                report.due_retries,
                report.released_items,
                report.failed_items,
                report.requeued_runs,
                len(report.parked),
            )
        for parked in report.parked:
            log.error(
                "recovery: run %s (%s) parked FAILED: %s", parked.run_id, parked.tenant_id, parked.reason
            )
        return report

    async def _expire_runs(self, now: datetime, report: RecoveryReport, pass_id: str) -> None:
        expired = RunFilter(states=[RunState.RUNNING], lease_expired_before=now)
        while True:
            runs = await self._storage.find_runs(expired, limit=self._batch)
            if not runs:
                return
            pairs: list[tuple[PipelineRun, int]] = []
            holders: dict[str, str | None] = {}
            parked: dict[str, str] = {}
            for run in runs:
                expected = run.version
                holders[run.run_id] = run.worker_id
                reason = _expire(run, now, pass_id)
                if reason is not None:
                    parked[run.run_id] = reason
                pairs.append((run, expected))
            applied = await self._storage.update_runs(pairs)
            written: Sequence[PipelineRun] = runs
            if applied < len(runs):
                # Some workers finished (or another recovery won) meanwhile: report what is stored.
                stored = {r.run_id: r for r in await self._storage.get_runs([r.run_id for r in runs])}
                written = [r for r in runs if _same_write(r, stored.get(r.run_id))]
            for run in written:
                if run.run_id in parked:
                    report.parked.append(ParkedRun(run.run_id, run.tenant_id, parked[run.run_id]))
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

    async def _retry_due(self, now: datetime, report: RecoveryReport) -> None:
        due = RunFilter(states=[RunState.FAILED], retry_due_before=now)
        while True:
            runs = await self._storage.find_runs(due, limit=self._batch)
            if not runs:
                return
            pairs: list[tuple[PipelineRun, int]] = []
            parked: dict[str, str] = {}
            for run in runs:
                expected = run.version
                try:
                    run.retry(now, actor=Actor.RECOVERY)
                except PipestateError as exc:  # the policy no longer allows it: stop planning it
                    run.next_retry_at = None
                    run.error_message = f"{run.error_message} (not retried: {exc})"
                    run.version += 1
                    run.updated_at = now
                    parked[run.run_id] = str(exc)
                pairs.append((run, expected))
            applied = await self._storage.update_runs(pairs)
            written: Sequence[PipelineRun] = runs
            if applied < len(runs):
                stored = {r.run_id: r for r in await self._storage.get_runs([r.run_id for r in runs])}
                written = [r for r in runs if _same_write(r, stored.get(r.run_id))]
            for run in written:
                if run.run_id in parked:
                    report.parked.append(ParkedRun(run.run_id, run.tenant_id, parked[run.run_id]))
                else:
                    report.due_retries += 1
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
                if item.run_id is None and item.attempts >= self._max_item_attempts:
                    dest = QueueStatus.FAILED
                    message: str | None = (
                        f"lease expired after {item.attempts} claim(s); an item without a run is not "
                        f"handed out more than {self._max_item_attempts} time(s)"
                    )
                elif _should_release(item, run):
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
        # Every PENDING run, not only the oldest page: orphans of a killed tick are the newest.
        pending = await self._storage.find_runs(RunFilter(states=[RunState.PENDING]))
        for start in range(0, len(pending), self._batch):
            report.requeued_runs += await enqueue_pending(
                self._storage, pending[start : start + self._batch], now
            )


def _expire(run: PipelineRun, now: datetime, pass_id: str) -> str | None:
    """Expire ``run``'s lease and retry it per policy, in memory. When that cannot be computed,
    expire it without a retry instead and return the reason (the run is parked)."""
    original = run.copy()
    try:
        run.expire_lease(now, note=pass_id)
        if run.next_retry_at is not None:
            run.retry(now, actor=Actor.RECOVERY)
        return run.effective_retry_policy.invalid_reason
    except (PipestateError, ArithmeticError, TypeError, ValueError) as exc:
        run.__dict__.update(original.copy().__dict__)
        reason = f"could not plan its retry: {exc}"
        run.expire_lease(now, policy=_NO_RETRY, note=f"{pass_id}; not retried, {reason}")
        return reason


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
    """True when the stored row is this pass's write (the expiry message carries the pass id)."""
    return (
        stored is not None
        and stored.version == mine.version
        and stored.state is mine.state
        and stored.error_message == mine.error_message
    )
