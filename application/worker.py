"""Worker: claims queue items, runs their pipeline runs through a handler, with a fenced lease.

For each claimed item that names a run:

1. load the run and ``start`` it (PENDING -> RUNNING) with the item's claim token as the run's
   claim token and a lease of ``lease``; one compare-and-set. If it fails (the run was cancelled,
   is not PENDING, or another worker won), the item is finished and nothing runs;
2. call the handler ``handler(run, config)`` — or ``handler(run, config, context)`` when it takes
   a third positional parameter (a :class:`RunContext`) — a sync callable in the worker's own
   thread pool (``concurrency`` threads), an async one as a task. Meanwhile two independent
   heartbeat tasks extend the run's lease and the item's lease every ``heartbeat_interval`` (a
   third of the lease by default), so a lock on one table never stops the other's heartbeat;
3. on return: ``complete`` (one CAS) and mark the item COMPLETED; on an exception: ``fail`` with
   the exception's type name and message and, when the run's retry policy allows, ``retry`` on
   the same object (SCHEDULED at the backoff time, or PENDING when that is already due, which is
   queued at once) — one CAS — and mark the item FAILED.

**Losing the lease stops the handler.** When a heartbeat finds the run (or item) taken by
someone else (its compare-and-set fails: recovery reclaimed it, e.g. under clock skew), or when
the worker could not renew the lease before it ran out, the worker cancels an async handler,
sets ``context.cancelled`` for a sync one (a thread cannot be killed: the handler should poll
it), logs the event, and writes nothing: the result is :attr:`Outcome.LOST`.

**A finished result is not dropped while the lease holds.** If the store is unavailable when the
handler returns, the finishing write is retried (with backoff) until the lease runs out, not for
a fixed fraction of a second; only then is the result given up to recovery.

Every write is a compare-and-set on the run's version, and the in-memory run is only ever
advanced by this worker's own successful writes, so a worker whose lease expired and whose run
was reclaimed (recovery bumped the version) can never overwrite it.

An item without a run is handled with ``handler(None, item.config)`` and completed or failed; its
queue lease is heartbeaten like a run's.
Time stamps come from the injected clock; waiting (polling, heartbeats) is real ``asyncio`` time.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import threading
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.group_commit import GroupCommit
from pipestate.application.ids import new_id
from pipestate.application.queue_manager import QueueManager
from pipestate.application.scheduler import enqueue_pending
from pipestate.domain.clock import Clock
from pipestate.domain.errors import (
    InvalidArgument,
    PipestateError,
    StaleClaim,
    StorageUnavailable,
)
from pipestate.domain.events import Actor
from pipestate.domain.ports import Storage
from pipestate.domain.queue import QueueItem, QueueStatus
from pipestate.domain.run import PipelineRun, RunState
from pipestate.domain.validation import (
    clean_text,
    optional_id,
    require_duration,
    require_int,
    require_seconds,
)

log = logging.getLogger("pipestate.worker")

Handler = Callable[..., Any]
"""``handler(run, config)`` or ``handler(run, config, context)``: ``run`` is a copy of the RUNNING
run (``None`` for an item without a run); ``config`` is the queue item's config (the run's config
plus ``config_id``); ``context`` is a :class:`RunContext`, passed only to handlers that take a
third positional parameter. It may be a plain function or a coroutine function. Raising marks the
run FAILED with the exception's type name as ``error_type``; an exception with
``retryable = False`` is never retried."""

DEFAULT_LEASE: Final = timedelta(minutes=5)
MAX_CONCURRENCY: Final = 10_000
_FINISH_BACKOFF: Final = (0.05, 2.0)
"""First and longest pause between attempts of a finishing write while the store is unavailable."""


class Outcome(StrEnum):
    COMPLETED = "completed"
    """The handler returned; the run is COMPLETED."""
    RETRY_SCHEDULED = "retry_scheduled"
    """The handler raised; the run was failed and put back for a retry at ``retry_at``."""
    FAILED = "failed"
    """The handler raised; no retry (policy exhausted, error type not retried, or not retryable)."""
    LOST = "lost"
    """The lease was lost (reclaimed, or not renewed in time): the handler was stopped and its
    result dropped; nothing was overwritten."""
    NOT_RUNNABLE = "not_runnable"
    """The run was not PENDING when the item was claimed (cancelled, done, or taken): not run."""


class HandlerCancelled(Exception):
    """Raised by :meth:`RunContext.raise_if_cancelled` once the worker lost the run's lease."""


class Timeout(Exception):
    """The handler ran longer than the worker's execution ``timeout``: it was cancelled, and the
    run fails with error type ``Timeout`` (retried per its policy)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the handler ran longer than its execution timeout of {seconds:g} s: cancelled")
        self.seconds = seconds


class RunContext:
    """What a handler taking a third parameter gets: the claim, and a cancellation flag.

    A sync handler cannot be interrupted from outside its thread; when the worker loses the
    lease it sets :attr:`cancelled` (and :attr:`cancel_reason`), and the handler should stop at
    its next check (``context.raise_if_cancelled()`` or ``context.cancel_event.wait(...)``).
    Whatever it returns after that is not written. An async handler is cancelled outright.
    """

    def __init__(self, *, worker_id: str, queue_id: str, run_id: str | None, claim_token: str) -> None:
        self.worker_id = worker_id
        self.queue_id = queue_id
        self.run_id = run_id
        self.claim_token = claim_token
        self.cancel_event = threading.Event()
        self.cancel_reason: str | None = None

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raises:
        HandlerCancelled: the worker lost the lease (the result would be dropped anyway)."""
        if self.cancel_event.is_set():
            raise HandlerCancelled(self.cancel_reason or "cancelled")

    def _cancel(self, reason: str) -> None:
        if not self.cancel_event.is_set():
            self.cancel_reason = reason
            self.cancel_event.set()


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
    """The worker's hold on one item (and its run): the latest run version it wrote itself, when
    its lease runs out, and whether it was lost."""

    def __init__(self, run: PipelineRun | None, expires_at: datetime, context: RunContext) -> None:
        self.run = run
        self.expires_at = expires_at
        self.context = context
        self.lost: str | None = None
        self.handler: asyncio.Future[Any] | None = None
        self.stopping = asyncio.Event()

    def lose(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
            self.context._cancel(reason)
            if self.handler is not None and not self.handler.done():
                self.handler.cancel()


class Worker:
    """Runs claimed pipeline runs through ``handler``.

    Args:
        handler: see :data:`Handler`.
        storage: any :class:`~pipestate.domain.ports.Storage`.
        clock: where "now" comes from (time stamps, leases).
        worker_id: defaults to ``host:pid:random``.
        concurrency: items processed at the same time by this worker (and threads for sync
            handlers): 1 .. 10,000.
        lease: how long a claim holds a run/item without a heartbeat (up to a year).
        heartbeat_interval: seconds between heartbeats (default: a third of the lease); must be
            shorter than the lease.
        poll_interval: seconds to wait when the queue is empty (finite, > 0).
        max_poll_interval: idle polling backs off: each empty poll doubles the wait, up to this
            (default: ``poll_interval``, no back-off); the first claim that finds work resets it.
            On BigQuery, 30-60 s keeps an idle worker at one job a poll.
        group_commit: coalesce the writes of the runs this worker holds (starts, heartbeats,
            completions) into one batch statement per table (see
            :mod:`~pipestate.application.group_commit`); ``False``: one statement per write.
            A worker with ``concurrency=1`` never coalesces.
        batch_delay: seconds the first write of a batch waits for others (0: one event-loop turn).
        on_result: called with every :class:`WorkResult` (e.g. to print progress).
        timeout: execution timeout per run or item (``None``: none). A handler still running
            then is cancelled (a sync one sees ``context.cancelled``) and the run fails with
            :class:`Timeout`, retried per its policy.

    Raises:
        InvalidArgument: any option out of its bounds (nothing is started).
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
        max_poll_interval: float | None = None,
        group_commit: bool = True,
        batch_delay: float = 0.0,
        on_result: Callable[[WorkResult], None] | None = None,
        timeout: timedelta | None = None,
    ) -> None:
        if not callable(handler):
            raise InvalidArgument("handler", handler, "must be callable")
        require_int("concurrency", concurrency, minimum=1, maximum=MAX_CONCURRENCY)
        lease = require_duration("lease", lease)
        if heartbeat_interval is None:
            heartbeat = lease.total_seconds() / 3
        else:
            heartbeat = require_seconds("heartbeat_interval", heartbeat_interval)
            if heartbeat >= lease.total_seconds():
                raise InvalidArgument(
                    "heartbeat_interval",
                    heartbeat_interval,
                    f"must be shorter than the lease ({lease.total_seconds():g} s), or the lease runs out "
                    "between heartbeats",
                )
        self._poll_interval = require_seconds("poll_interval", poll_interval)
        self._timeout = None if timeout is None else require_duration("timeout", timeout).total_seconds()
        self._max_poll_interval = self._poll_interval
        if max_poll_interval is not None:
            self._max_poll_interval = require_seconds("max_poll_interval", max_poll_interval)
            if self._max_poll_interval < self._poll_interval:
                raise InvalidArgument(
                    "max_poll_interval", max_poll_interval, "must be at least poll_interval"
                )
        if batch_delay != 0:
            require_seconds("batch_delay", batch_delay)
        optional_id("worker_id", worker_id)
        self._handler = handler
        self._takes_context = _takes_context(handler)
        self._storage = storage
        self._clock = clock or SYSTEM_CLOCK
        self._worker_id = worker_id or default_worker_id()
        self._concurrency = concurrency
        self._lease = lease
        self._heartbeat_interval = heartbeat
        self._on_result = on_result
        self._queue = QueueManager(storage, clock=self._clock, lease=lease)
        # A worker that holds one run at a time has nothing to coalesce.
        self._group_commit = group_commit and concurrency > 1
        self._writes = GroupCommit(storage, enabled=self._group_commit, max_delay=batch_delay)
        self._beat_round: asyncio.Future[None] | None = None
        self._idle_wait = self._poll_interval
        self._stopping = asyncio.Event()
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="pipestate-handler")
        self.processed = 0

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @property
    def idle_wait(self) -> float:
        """Seconds the worker waits before polling again while the queue stays empty (backed off
        from ``poll_interval`` up to ``max_poll_interval``)."""
        return self._idle_wait

    @property
    def write_statements(self) -> int:
        """Batched writes sent so far (see :class:`~pipestate.application.group_commit.GroupCommit`)."""
        return self._writes.statements

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
        ``exit_when_idle``); finish the items in hand; return how many were processed.

        Raises:
            InvalidArgument: ``max_items`` < 1.
            StorageError: a permanent storage failure while claiming (missing tables, bad
                credentials ...); transient ones are logged and retried at the next poll.
        """
        if max_items is not None:
            require_int("max_items", max_items, minimum=1)
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
                    self._idle_wait = (
                        self._poll_interval if items else min(self._idle_wait * 2, self._max_poll_interval)
                    )
                    active.update(asyncio.create_task(self._process(item)) for item in items)
                if max_items is not None and claimed >= max_items:
                    break
                if items and len(active) < self._concurrency:
                    continue  # the queue had work: look for more at once
                if not items and not active and exit_when_idle:
                    break
                done, _ = await asyncio.wait(
                    {*active, stop_waiter},
                    timeout=self._wait_before_poll(free),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                active -= done
            if active:
                await asyncio.wait(active)
        finally:
            stop_waiter.cancel()
        return self.processed

    def _wait_before_poll(self, free: int) -> float:
        """The pause before the next claim: backed off while the queue stays empty; the plain
        interval while the worker is full (a finishing item wakes it anyway)."""
        return self._idle_wait if free > 0 else self._poll_interval

    async def _claim(self, limit: int) -> list[QueueItem]:
        try:
            return await self._queue.dequeue_batch(self._worker_id, limit)
        except StorageUnavailable as exc:
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

    def _context(self, item: QueueItem, token: str) -> RunContext:
        return RunContext(
            worker_id=self._worker_id, queue_id=item.queue_id, run_id=item.run_id, claim_token=token
        )

    async def _process_item(self, item: QueueItem) -> WorkResult:
        assert item.claim_token is not None
        token = item.claim_token
        lease = _Lease(
            None, item.lease_expires_at or self._clock.now() + self._lease, self._context(item, token)
        )
        error = await self._supervised(lease, item, token, None, dict(item.config))
        if lease.lost is not None:
            return self._dropped(item, None, lease.lost)
        if error is not None:
            message = _describe(error)
            await self._finish_write(
                lease, lambda: self._finish_item(item, token, QueueStatus.FAILED, message)
            )
            return self._result(item, None, Outcome.FAILED, error=error)
        await self._finish_write(lease, lambda: self._finish_item(item, token, QueueStatus.COMPLETED))
        return self._result(item, None, Outcome.COMPLETED)

    async def _process_run(self, item: QueueItem) -> WorkResult:
        assert item.run_id is not None and item.claim_token is not None
        token = item.claim_token
        run = await self._writes.get_run(item.run_id)
        if run is None:
            await self._queue.mark_failed(item.queue_id, f"run {item.run_id} not found", claim_token=token)
            return self._result(item, None, Outcome.NOT_RUNNABLE)
        if not await self._start(run, token):
            return await self._not_runnable(item, token)
        assert run.lease_expires_at is not None
        lease = _Lease(run, run.lease_expires_at, self._context(item, token))
        error = await self._supervised(lease, item, token, run.copy(), dict(item.config))
        if lease.lost is not None:
            return await self._lost(item, lease.run or run, token, lease.lost)
        if error is None:
            return await self._complete(item, lease, token)
        return await self._fail(item, lease, token, error)

    async def _supervised(
        self,
        lease: _Lease,
        item: QueueItem,
        token: str,
        run: PipelineRun | None,
        config: dict[str, Any],
    ) -> Exception | None:
        """Run the handler while heartbeats hold the lease; return what it raised (``None`` when it
        returned, or when the lease was lost and the handler stopped)."""
        handler = asyncio.ensure_future(self._invoke(run, config, lease.context))
        lease.handler = handler
        item_beat = asyncio.create_task(self._keep_item(lease, item, token))
        run_beat = asyncio.create_task(self._keep_run(lease, token)) if lease.run is not None else None
        timed_out: Timeout | None = None
        try:
            done, _ = await asyncio.wait({handler}, timeout=self._timeout)
            if not done and self._timeout is not None:
                timed_out = Timeout(self._timeout)
                lease.context._cancel("execution timeout")
                handler.cancel()
                await asyncio.wait({handler})
        except BaseException:
            # Cancelled (or the process is going down): behave like a dead worker. The lease
            # runs out and recovery takes the run back; nothing is written here.
            lease.context._cancel("worker stopped")
            handler.cancel()
            item_beat.cancel()
            if run_beat is not None:
                run_beat.cancel()
            raise
        # The item's heartbeat may stop mid-write (its compare-and-set is on status and token,
        # which a lease extension leaves alone); the run's finishes its write first, so that the
        # version this worker continues from is the stored one.
        lease.stopping.set()
        item_beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await item_beat
        if run_beat is not None:
            await run_beat
        if lease.lost is not None:
            log.warning(
                "worker %s: lost the lease on %s (%s): handler stopped, result not written",
                self._worker_id,
                f"run {item.run_id}" if item.run_id else f"item {item.queue_id}",
                lease.lost,
            )
            return None
        if timed_out is not None:
            return timed_out
        if handler.cancelled():
            raise asyncio.CancelledError
        error = handler.exception()
        if error is not None and not isinstance(error, Exception):
            raise error
        return error

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
        return await self._writes.update_run(run, expected)

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

    async def _invoke(self, run: PipelineRun | None, config: dict[str, Any], context: RunContext) -> None:
        args: tuple[Any, ...] = (run, config, context) if self._takes_context else (run, config)
        if inspect.iscoroutinefunction(self._handler):
            await self._handler(*args)
            return
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._threads, lambda: self._handler(*args))
        if inspect.isawaitable(result):
            await _await(result)

    # ------------------------------------------------------------------ heartbeats
    async def _keep_run(self, lease: _Lease, token: str) -> None:
        """Extend the run's lease every interval; lose it when another writer took the run or
        when the lease ran out before a renewal got through."""
        while lease.lost is None:
            stop = asyncio.ensure_future(lease.stopping.wait())
            beat_due = asyncio.ensure_future(self._next_beat())
            try:
                await asyncio.wait({stop, beat_due}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                beat_due.cancel()
            if lease.stopping.is_set():
                return
            assert lease.run is not None
            now = self._clock.now()
            if now >= lease.expires_at:
                lease.lose(f"lease ran out at {lease.expires_at} before it could be renewed")
                return
            until = now + self._lease
            beat = lease.run.copy()
            expected = beat.version
            try:
                beat.heartbeat(now, claim_token=token, lease_expires_at=until)
                if not await self._writes.update_run(beat, expected):
                    raise StaleClaim(beat.run_id, token)
            except StaleClaim:
                lease.lose("the run was taken back (its lease expired and it was reclaimed)")
                return
            except PipestateError as exc:  # transient: try again at the next beat
                log.warning("worker %s: heartbeat for run %s failed: %s", self._worker_id, beat.run_id, exc)
                continue
            lease.run = beat
            lease.expires_at = until

    async def _next_beat(self) -> None:
        """Wait for the next heartbeat. With group commit the beats of every held run join
        rounds: the first waiter of a round fires it one interval later, and everyone waiting by
        then beats with it, so one statement per table renews them all (a beat may come early,
        never late). Without, every lease waits its own interval."""
        if not self._group_commit:
            await asyncio.sleep(self._heartbeat_interval)
            return
        round_ = self._beat_round
        loop = asyncio.get_running_loop()
        if round_ is None or round_.done() or round_.get_loop() is not loop:
            round_ = self._beat_round = loop.create_future()
            loop.call_later(self._heartbeat_interval, _fire, round_)
        await asyncio.shield(round_)

    async def _keep_item(self, lease: _Lease, item: QueueItem, token: str) -> None:
        """Extend the queue item's lease every interval, independently of the run's heartbeat.

        For an item without a run this is the only lease: losing it stops the handler. For an
        item with a run the run's lease is the one that counts (recovery fails a stale item of a
        running run; the run itself is untouched)."""
        runless = lease.run is None
        while lease.lost is None:
            await self._next_beat()
            now = self._clock.now()
            if runless and now >= lease.expires_at:
                lease.lose(f"item lease ran out at {lease.expires_at} before it could be renewed")
                return
            until = now + self._lease
            try:
                held = await self._writes.extend_queue_lease(
                    item.queue_id, claim_token=token, lease_expires_at=until
                )
            except PipestateError as exc:
                log.warning(
                    "worker %s: heartbeat for item %s failed: %s", self._worker_id, item.queue_id, exc
                )
                continue
            if held:
                if runless:
                    lease.expires_at = until
            elif runless:
                lease.lose("the item was taken back (its lease expired and it was reclaimed)")
                return

    # ------------------------------------------------------------------ finishing
    async def _finish_write(self, lease: _Lease, write: Callable[[], Awaitable[bool]]) -> bool:
        """``write()``, retried while the store is unavailable and the lease still holds.

        The budget is the lease's remaining time (at least one attempt), measured on the event
        loop's monotonic clock so that a frozen test clock cannot make it endless.

        Raises:
            StorageUnavailable: the store stayed unavailable until the lease ran out.
        """
        loop = asyncio.get_running_loop()
        remaining = max((lease.expires_at - self._clock.now()).total_seconds(), 0.0)
        deadline = loop.time() + remaining
        pause, longest = _FINISH_BACKOFF
        while True:
            try:
                return await write()
            except StorageUnavailable as exc:
                left = deadline - loop.time()
                if left <= 0:
                    raise
                log.warning(
                    "worker %s: finishing write failed, retrying for up to %.1f s more (lease): %s",
                    self._worker_id,
                    left,
                    exc,
                )
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, longest)

    async def _write_run(
        self, lease: _Lease, token: str, apply: Callable[[PipelineRun], None]
    ) -> PipelineRun | None:
        """Apply ``apply`` to the run this worker holds and compare-and-set it, within the lease
        (see :meth:`_finish_write`); return the written run, or ``None`` when the claim is gone.

        A lost race is read back: if the stored run is still RUNNING under this worker's token,
        what moved its version was this worker's own heartbeat (or an earlier attempt of this
        write that committed unanswered), so the change is applied again on the stored row."""
        assert lease.run is not None
        written: PipelineRun | None = None

        async def attempt() -> bool:
            nonlocal written
            for _ in range(3):
                assert lease.run is not None
                run = lease.run.copy()
                expected = run.version
                apply(run)
                if await self._writes.update_run(run, expected):
                    written = run
                    return True
                stored = await self._writes.get_run(run.run_id)
                if stored is not None and stored.state is RunState.RUNNING and stored.claim_token == token:
                    lease.run = stored
                    continue
                if stored is not None and _same_write(stored, run):
                    written = run
                    return True
                return False
            return False

        return written if await self._finish_write(lease, attempt) else None

    async def _complete(self, item: QueueItem, lease: _Lease, token: str) -> WorkResult:
        assert lease.run is not None
        now = self._clock.now()
        run = await self._write_run(lease, token, lambda r: r.complete(now, claim_token=token))
        if run is None:
            return await self._lost(item, lease.run, token, "the run changed under its claim")
        await self._finish_write(lease, lambda: self._finish_item(item, token, QueueStatus.COMPLETED))
        return self._result(item, run, Outcome.COMPLETED, finished_at=now)

    async def _fail(self, item: QueueItem, lease: _Lease, token: str, error: Exception) -> WorkResult:
        assert lease.run is not None
        now = self._clock.now()
        stack = "".join(traceback.format_exception(error))
        log.warning(
            "worker %s: run %s attempt %s failed: %s",
            self._worker_id,
            lease.run.run_id,
            lease.run.attempt,
            _describe(error),
            exc_info=error,
            extra={"run_id": lease.run.run_id, "tenant": lease.run.tenant_id, "attempt": lease.run.attempt},
        )

        def fail(run: PipelineRun) -> None:
            _fail_and_retry(
                run,
                now,
                token,
                error_message=str(error) or repr(error),
                error_type=type(error).__name__,
                retryable=bool(getattr(error, "retryable", True)),
                traceback=stack,
            )

        run = await self._write_run(lease, token, fail)
        if run is None:
            return await self._lost(item, lease.run, token, "the run changed under its claim")
        retry_at = run.scheduled_time if run.state is not RunState.FAILED else None
        message = _describe(error)
        await self._finish_write(lease, lambda: self._finish_item(item, token, QueueStatus.FAILED, message))
        if run.state is RunState.PENDING:
            await enqueue_pending(self._storage, [run], now)
        outcome = Outcome.RETRY_SCHEDULED if retry_at is not None else Outcome.FAILED
        return self._result(item, run, outcome, error=error, retry_at=retry_at, finished_at=now)

    async def _finish_item(
        self, item: QueueItem, token: str, to_status: QueueStatus, error: str | None = None
    ) -> bool:
        """PROCESSING -> ``to_status`` under this worker's claim, coalesced with the others."""
        return await self._writes.finish_queue_item(
            item.queue_id,
            claim_token=token,
            to_status=to_status,
            now=self._clock.now(),
            error_message=clean_text(error) if error is not None else None,
        )

    async def _lost(self, item: QueueItem, run: PipelineRun, token: str, reason: str) -> WorkResult:
        log.warning("worker %s: run %s: %s; result dropped", self._worker_id, run.run_id, reason)
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

    def _dropped(self, item: QueueItem, run: PipelineRun | None, reason: str) -> WorkResult:
        log.warning("worker %s: item %s: %s; result dropped", self._worker_id, item.queue_id, reason)
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


def _fail_and_retry(
    run: PipelineRun,
    now: datetime,
    token: str,
    *,
    error_message: str,
    error_type: str | None,
    retryable: bool,
    traceback: str | None = None,
) -> None:
    """``fail`` and, when the policy allows, ``retry`` — in memory, for one compare-and-set.

    A retry that cannot be planned (a policy that cannot be applied) leaves the run FAILED with
    the reason in its message instead of leaving it RUNNING."""
    run.fail(
        now,
        error_message=error_message,
        error_type=error_type,
        retryable=retryable,
        claim_token=token,
        traceback=traceback,
    )
    if run.next_retry_at is None:
        return
    snapshot = run.copy()
    try:
        run.retry(now, actor=Actor.WORKER)
    except PipestateError as exc:
        run.__dict__.update(snapshot.__dict__)
        run.next_retry_at = None
        run.error_message = f"{run.error_message} (not retried: {exc})"


def _fire(round_: asyncio.Future[None]) -> None:
    if not round_.done():
        round_.set_result(None)


def _same_write(stored: PipelineRun, mine: PipelineRun) -> bool:
    """True when ``stored`` is ``mine`` as written (an earlier attempt committed unanswered)."""

    def key(run: PipelineRun) -> tuple[object, ...]:
        return (run.version, run.state, run.attempt, run.completed_at, run.error_type, run.error_message)

    return key(stored) == key(mine)


def _takes_context(handler: Handler) -> bool:
    """True when ``handler`` accepts a third positional argument (the :class:`RunContext`)."""
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: call them the old way
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) >= 3


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


async def _await(value: Awaitable[Any]) -> Any:
    return await value
