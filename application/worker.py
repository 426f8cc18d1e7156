"""Worker: claims queue items, runs their pipeline runs through a handler, with a fenced lease.

For each claimed item that names a run:

1. load the run and ``start`` it (PENDING -> RUNNING) with the item's claim token as the run's
   claim token and a lease of ``lease``; one compare-and-set. If it fails (the run was cancelled,
   is not PENDING, or another worker won), the item is finished and nothing runs;
2. call the handler ``handler(run, config)`` (a sync callable runs in a thread, an async one is
   awaited) while a heartbeat task extends the run's and the item's lease every
   ``heartbeat_interval`` (a third of the lease by default);
3. on return: ``complete`` (one CAS) and mark the item COMPLETED; on an exception: ``fail`` with
   the exception's type name and message and, when the run's retry policy allows, ``retry`` on
   the same object (SCHEDULED at the backoff time, or PENDING when that is already due, which is
   queued at once) — one CAS — and mark the item FAILED.

Every write is a compare-and-set on the run's version, and the in-memory run is only ever
advanced by this worker's own successful writes, so a worker whose lease expired and whose run
was reclaimed (recovery bumped the version) can never overwrite it: its CAS fails, it logs, and
drops the result (:attr:`Outcome.LOST`).

An item without a run is handled with ``handler(None, item.config)`` and completed or failed.
Time stamps come from the injected clock; waiting (polling, heartbeats) is real ``asyncio`` time.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.ids import new_id
from pipestate.application.queue_manager import QueueManager
from pipestate.application.scheduler import enqueue_pending
from pipestate.domain.clock import Clock
from pipestate.domain.errors import InvalidArgument, PipestateError, StaleClaim
from pipestate.domain.ports import Storage
from pipestate.domain.queue import QueueItem, QueueStatus
from pipestate.domain.run import PipelineRun, RunState

log = logging.getLogger("pipestate.worker")

Handler = Callable[[PipelineRun | None, dict[str, Any]], Any]
"""``handler(run, config)``: ``run`` is a copy of the RUNNING run (``None`` for an item without a
run); ``config`` is the queue item's config (the run's config plus ``config_id``). It may be a
plain function or a coroutine function. Raising marks the run FAILED with the exception's type
name as ``error_type``; an exception with ``retryable = False`` is never retried."""

DEFAULT_LEASE: Final = timedelta(minutes=5)


class Outcome(StrEnum):
    COMPLETED = "completed"
    """The handler returned; the run is COMPLETED."""
    RETRY_SCHEDULED = "retry_scheduled"
    """The handler raised; the run was failed and put back for a retry at ``retry_at``."""
    FAILED = "failed"
    """The handler raised; no retry (policy exhausted, error type not retried, or not retryable)."""
    LOST = "lost"
    """The lease was lost (expired and reclaimed): the result was dropped, nothing overwritten."""
    NOT_RUNNABLE = "not_runnable"
    """The run was not PENDING when the item was claimed (cancelled, done, or taken): not run."""


@dataclass(frozen=True)
class WorkResult:
    """What happened to one claimed queue item."""

    queue_id: str
    run_id: str | None
    tenant_id: str
    config_id: str | None
    outcome: Outcome
    worker_id: str
    attempt: int = 0
    retry_count: int = 0
    error_type: str | None = None
    error_message: str | None = None
    retry_at: datetime | None = None
    finished_at: datetime | None = None


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{new_id()[-6:]}"


class _Lease:
    """The worker's view of a run it holds: the latest version it wrote itself."""

    def __init__(self, run: PipelineRun) -> None:
        self.run = run
        self.lost = False


class Worker:
    """Runs claimed pipeline runs through ``handler``.

    Args:
        handler: see :data:`Handler`.
        storage: any :class:`~pipestate.domain.ports.Storage`.
        clock: where "now" comes from (time stamps, leases).
        worker_id: defaults to ``host:pid:random``.
        concurrency: items processed at the same time by this worker.
        lease: how long a claim holds a run/item without a heartbeat.
        heartbeat_interval: seconds between heartbeats (default: a third of the lease).
        poll_interval: seconds to wait when the queue is empty.
        on_result: called with every :class:`WorkResult` (e.g. to print progress).
    """

    def __init__(
        self,
        handler: Handler,
        storage: Storage,
        *,
        clock: Clock | None = None,
        worker_id: str | None = None,
        concurrency: int = 1,
        lease: timedelta = DEFAULT_LEASE,
        heartbeat_interval: float | None = None,
        poll_interval: float = 1.0,
        on_result: Callable[[WorkResult], None] | None = None,
    ) -> None:
        if not callable(handler):
            raise InvalidArgument("handler", handler, "must be callable")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise InvalidArgument("concurrency", concurrency, "must be an integer >= 1")
        if lease <= timedelta(0):
            raise InvalidArgument("lease", lease, "must be positive")
        if poll_interval <= 0:
            raise InvalidArgument("poll_interval", poll_interval, "must be > 0 seconds")
        self._handler = handler
        self._storage = storage
        self._clock = clock or SYSTEM_CLOCK
        self._worker_id = worker_id or default_worker_id()
        self._concurrency = concurrency
        self._lease = lease
        self._heartbeat_interval = (
            heartbeat_interval if heartbeat_interval is not None else lease.total_seconds() / 3
        )
        self._poll_interval = poll_interval
        self._on_result = on_result
        self._queue = QueueManager(storage, clock=self._clock, lease=lease)
        self._stopping = asyncio.Event()
        self.processed = 0

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Take no more items; :meth:`run` returns once the items in hand are finished."""
        self._stopping.set()

    # ------------------------------------------------------------------ loops
    async def run_once(self) -> list[WorkResult]:
        """Claim up to ``concurrency`` items, process them concurrently, return their results."""
        items = await self._queue.dequeue_batch(self._worker_id, self._concurrency)
        if not items:
            return []
        return list(await asyncio.gather(*(self._process(item) for item in items)))

    async def run(self, *, max_items: int | None = None, exit_when_idle: bool = False) -> int:
        """Process items until :meth:`stop` (or ``max_items`` claimed, or the queue is empty with
        ``exit_when_idle``); finish the items in hand; return how many were processed."""
        active: set[asyncio.Task[WorkResult]] = set()
        claimed = 0
        stop_waiter = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                free = self._concurrency - len(active)
                if max_items is not None:
                    free = min(free, max_items - claimed)
                items: list[QueueItem] = []
                if free > 0:
                    items = await self._claim(free)
                    claimed += len(items)
                    active.update(asyncio.create_task(self._process(item)) for item in items)
                if max_items is not None and claimed >= max_items:
                    break
                if items and len(active) < self._concurrency:
                    continue  # the queue had work: look for more at once
                if not items and not active and exit_when_idle:
                    break
                done, _ = await asyncio.wait(
                    {*active, stop_waiter}, timeout=self._poll_interval, return_when=asyncio.FIRST_COMPLETED
                )
                active -= done
            if active:
                await asyncio.wait(active)
        finally:
            stop_waiter.cancel()
        return self.processed

    async def _claim(self, limit: int) -> list[QueueItem]:
        try:
            return await self._queue.dequeue_batch(self._worker_id, limit)
        except PipestateError as exc:
            log.warning("worker %s: claim failed, will retry: %s", self._worker_id, exc)
            return []

    # ------------------------------------------------------------------ one item
    async def _process(self, item: QueueItem) -> WorkResult:
        try:
            result = await (self._process_run(item) if item.run_id else self._process_item(item))
        except PipestateError as exc:
            # A storage failure while finishing: leave the item to lease expiry and recovery.
            log.error("worker %s: item %s: %s", self._worker_id, item.queue_id, exc)
            result = self._result(item, None, Outcome.LOST, error=exc)
        except Exception as exc:  # a bug must not kill the worker loop; recovery cleans up
            log.exception("worker %s: item %s: unexpected error", self._worker_id, item.queue_id)
            result = self._result(item, None, Outcome.LOST, error=exc)
        self.processed += 1
        if self._on_result is not None:
            self._on_result(result)
        return result

    async def _process_item(self, item: QueueItem) -> WorkResult:
        token = item.claim_token
        try:
            await self._invoke(None, dict(item.config))
        except Exception as exc:
            message = _describe(exc)
            await self._queue.mark_failed(item.queue_id, message, claim_token=token)
            return self._result(item, None, Outcome.FAILED, error=exc)
        await self._queue.mark_completed(item.queue_id, claim_token=token)
        return self._result(item, None, Outcome.COMPLETED)

    async def _process_run(self, item: QueueItem) -> WorkResult:
        assert item.run_id is not None and item.claim_token is not None
        token = item.claim_token
        run = await self._storage.get_run(item.run_id)
        if run is None:
            await self._queue.mark_failed(item.queue_id, f"run {item.run_id} not found", claim_token=token)
            return self._result(item, None, Outcome.NOT_RUNNABLE)
        if not await self._start(run, token):
            return await self._not_runnable(item, token)

        lease = _Lease(run)
        stop_heartbeat = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(lease, item, token, stop_heartbeat))
        error: Exception | None = None
        try:
            await self._invoke(run.copy(), dict(item.config))
        except Exception as exc:
            error = exc
        except BaseException:
            # Cancelled (or the process is going down): behave like a dead worker. The lease
            # runs out and recovery takes the run back; nothing is written here.
            heartbeat.cancel()
            raise
        stop_heartbeat.set()
        await heartbeat
        if error is None:
            return await self._complete(item, lease, token)
        return await self._fail(item, lease, token, error)

    async def _start(self, run: PipelineRun, token: str) -> bool:
        if run.state is not RunState.PENDING:
            return False
        now = self._clock.now()
        expected = run.version
        run.start(
            now,
            worker_id=self._worker_id,
            claim_token=token,
            lease_expires_at=now + self._lease,
            pipeline_logging_id=new_id(),
        )
        return await self._storage.update_run(run, expected)

    async def _not_runnable(self, item: QueueItem, token: str) -> WorkResult:
        assert item.run_id is not None
        current = await self._storage.get_run(item.run_id)
        state = current.state if current is not None else None
        if state in (RunState.COMPLETED, RunState.RUNNING):
            # Done, or being done, under another claim: this item's work is covered.
            await self._queue.mark_completed(item.queue_id, claim_token=token)
        else:
            shown = state.value if state is not None else "missing"
            await self._queue.mark_failed(
                item.queue_id, f"run {item.run_id} is {shown}, not PENDING", claim_token=token
            )
        log.info("worker %s: run %s is %s, not started", self._worker_id, item.run_id, state)
        return self._result(item, current, Outcome.NOT_RUNNABLE)

    async def _invoke(self, run: PipelineRun | None, config: dict[str, Any]) -> None:
        if inspect.iscoroutinefunction(self._handler):
            await self._handler(run, config)
            return
        result = await asyncio.to_thread(self._handler, run, config)
        if inspect.isawaitable(result):
            await _await(result)

    async def _heartbeat(self, lease: _Lease, item: QueueItem, token: str, stop: asyncio.Event) -> None:
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self._heartbeat_interval)
                return
            except TimeoutError:
                pass
            now = self._clock.now()
            until = now + self._lease
            beat = lease.run.copy()
            expected = beat.version
            try:
                beat.heartbeat(now, claim_token=token, lease_expires_at=until)
                if not await self._storage.update_run(beat, expected):
                    raise StaleClaim(beat.run_id, token)
                lease.run = beat
                await self._storage.extend_queue_lease(
                    item.queue_id, claim_token=token, lease_expires_at=until
                )
            except StaleClaim:
                lease.lost = True
                log.warning(
                    "worker %s: lost the lease on run %s; its result will be dropped",
                    self._worker_id,
                    beat.run_id,
                )
                return
            except PipestateError as exc:  # transient: try again at the next beat
                log.warning("worker %s: heartbeat for run %s failed: %s", self._worker_id, beat.run_id, exc)

    async def _complete(self, item: QueueItem, lease: _Lease, token: str) -> WorkResult:
        run = lease.run
        now = self._clock.now()
        expected = run.version
        run.complete(now, claim_token=token)
        if not await self._storage.update_run(run, expected):
            return await self._lost(item, run, token)
        await self._queue.mark_completed(item.queue_id, claim_token=token)
        return self._result(item, run, Outcome.COMPLETED, finished_at=now)

    async def _fail(self, item: QueueItem, lease: _Lease, token: str, error: Exception) -> WorkResult:
        run = lease.run
        now = self._clock.now()
        expected = run.version
        run.fail(
            now,
            error_message=str(error) or repr(error),
            error_type=type(error).__name__,
            retryable=bool(getattr(error, "retryable", True)),
            claim_token=token,
        )
        retry_at = None
        if run.next_retry_at is not None:
            run.retry(now)
            retry_at = run.scheduled_time
        if not await self._storage.update_run(run, expected):
            return await self._lost(item, run, token)
        await self._queue.mark_failed(item.queue_id, _describe(error), claim_token=token)
        if run.state is RunState.PENDING:
            await enqueue_pending(self._storage, [run], now)
        outcome = Outcome.RETRY_SCHEDULED if retry_at is not None else Outcome.FAILED
        return self._result(item, run, outcome, error=error, retry_at=retry_at, finished_at=now)

    async def _lost(self, item: QueueItem, run: PipelineRun, token: str) -> WorkResult:
        log.warning(
            "worker %s: run %s changed under its claim (lease expired and reclaimed?); result dropped",
            self._worker_id,
            run.run_id,
        )
        # Fenced by the token: a no-op when recovery already took the item back.
        await self._storage.transition_queue_item(
            item.queue_id,
            from_status=QueueStatus.PROCESSING,
            to_status=QueueStatus.FAILED,
            now=self._clock.now(),
            claim_token=token,
            error_message="lease lost; result dropped",
        )
        return self._result(item, run, Outcome.LOST)

    def _result(
        self,
        item: QueueItem,
        run: PipelineRun | None,
        outcome: Outcome,
        *,
        error: BaseException | None = None,
        retry_at: datetime | None = None,
        finished_at: datetime | None = None,
    ) -> WorkResult:
        return WorkResult(
            queue_id=item.queue_id,
            run_id=item.run_id,
            tenant_id=item.tenant_id,
            config_id=run.config_id if run is not None else item.config.get("config_id"),
            outcome=outcome,
            worker_id=self._worker_id,
            attempt=run.attempt if run is not None else item.attempts,
            retry_count=run.retry_count if run is not None else 0,
            error_type=type(error).__name__ if error is not None else None,
            error_message=(str(error) or repr(error)) if error is not None else None,
            retry_at=retry_at,
            finished_at=finished_at,
        )


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


async def _await(value: Awaitable[Any]) -> Any:
    return await value
