"""Group commit: the worker's concurrent writes go out as one batch statement per table.

A worker holding N runs would otherwise send N single-row statements for their starts, N for
every heartbeat round and N for their completions. :class:`GroupCommit` puts the calls that
arrive together in a *lane* (one per kind of write); the first caller of an idle lane flushes it
after one turn of the event loop (plus ``max_delay``), and whatever arrives while a flush is in
flight goes out in the next one. A lane of one call uses the single-row port method, so a worker
that holds one run behaves exactly as before.

Per-call outcomes stay exact: a batch compare-and-set returns a count; when it is short of the
batch, the rows are read back (one statement) and each call learns whether *its* write is the
stored one. An error of the batch statement is raised to every caller of the batch (each retries
as it would have retried its own write). Fencing is unchanged: every write still carries its
run's expected version, or its item's claim token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from datetime import datetime
from typing import Any, Final, Generic, TypeVar

from pipestate.domain.ports import Storage
from pipestate.domain.queue import QueueStatus
from pipestate.domain.run import PipelineRun

T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH: Final = 1000
"""Calls per flush (the adapters split bigger batches themselves; this bounds the read-back)."""


class _Lane(Generic[T, R]):
    """Calls of one kind, flushed together: ``flush(calls)`` returns one result per call."""

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[list[R]]],
        key: Callable[[T], Hashable],
        max_delay: float,
        max_batch: int,
    ) -> None:
        self._flush = flush
        self._key = key
        self._max_delay = max_delay
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.flushes = 0
        self.calls = 0

    async def submit(self, call: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((call, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        """The next batch: at most ``max_batch`` calls, one per key (a repeat waits a round)."""
        batch: list[tuple[T, asyncio.Future[R]]] = []
        rest: list[tuple[T, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        for entry in self._pending:
            key = self._key(entry[0])
            if entry[1].done() or key in keys or len(batch) >= self._max_batch:
                if not entry[1].done():
                    rest.append(entry)
                continue
            keys.add(key)
            batch.append(entry)
        self._pending = rest
        return batch

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            await asyncio.sleep(self._max_delay)  # 0: one turn, so that siblings ready now join
            while self._pending:
                batch = self._take()
                if not batch:
                    continue
                self.flushes += 1
                self.calls += len(batch)
                try:
                    results = await self._flush([call for call, _ in batch])
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                else:
                    for (_, future), result in zip(batch, results, strict=True):
                        if not future.done():
                            future.set_result(result)
                batch = []
        finally:
            # Cancelled (the loop is going down): nobody may wait for ever.
            for _, future in [*batch, *self._pending]:
                if not future.done():
                    future.cancel()
            if batch:
                self._pending = []


class GroupCommit:
    """The worker's writes, coalesced. ``enabled=False`` sends every call on its own.

    Args:
        storage: the store.
        enabled: coalesce (``True``) or pass every call straight through.
        max_delay: seconds the first call of a batch waits for others (0: one event-loop turn).
        max_batch: most calls in one flush.
    """

    def __init__(
        self, storage: Storage, *, enabled: bool = True, max_delay: float = 0.0, max_batch: int = MAX_BATCH
    ) -> None:
        self._storage = storage
        self._enabled = enabled
        self._reads: _Lane[str, PipelineRun | None] = _Lane(self._flush_reads, _same, max_delay, max_batch)
        self._runs: _Lane[tuple[PipelineRun, int], bool] = _Lane(
            self._flush_runs, lambda call: call[0].run_id, max_delay, max_batch
        )
        self._extend: _Lane[tuple[str, str, datetime], bool] = _Lane(
            self._flush_extends, lambda call: call[0], max_delay, max_batch
        )
        self._transitions: dict[Hashable, _Lane[tuple[str, str, datetime], bool]] = {}
        self._max_delay = max_delay
        self._max_batch = max_batch

    @property
    def statements(self) -> int:
        """Flushes sent so far (each one statement per table, or one per call when alone)."""
        lanes: list[_Lane[Any, Any]] = [self._reads, self._runs, self._extend, *self._transitions.values()]
        return sum(lane.flushes for lane in lanes)

    # ------------------------------------------------------------------ calls
    async def get_run(self, run_id: str) -> PipelineRun | None:
        if not self._enabled:
            return await self._storage.get_run(run_id)
        return await self._reads.submit(run_id)

    async def update_run(self, run: PipelineRun, expected_version: int) -> bool:
        if not self._enabled:
            return await self._storage.update_run(run, expected_version)
        return await self._runs.submit((run, expected_version))

    async def extend_queue_lease(
        self, queue_id: str, *, claim_token: str, lease_expires_at: datetime
    ) -> bool:
        if not self._enabled:
            return await self._storage.extend_queue_lease(
                queue_id, claim_token=claim_token, lease_expires_at=lease_expires_at
            )
        return await self._extend.submit((queue_id, claim_token, lease_expires_at))

    async def finish_queue_item(
        self,
        queue_id: str,
        *,
        claim_token: str,
        to_status: QueueStatus,
        now: datetime,
        error_message: str | None = None,
    ) -> bool:
        """PROCESSING -> ``to_status``, fenced by ``claim_token``."""
        if not self._enabled:
            return await self._storage.transition_queue_item(
                queue_id,
                from_status=QueueStatus.PROCESSING,
                to_status=to_status,
                now=now,
                claim_token=claim_token,
                error_message=error_message,
            )
        key = (to_status, error_message)
        lane = self._transitions.get(key)
        if lane is None:
            lane = self._transitions[key] = _Lane(
                lambda calls: self._flush_transitions(calls, to_status, error_message),
                lambda call: call[0],
                self._max_delay,
                self._max_batch,
            )
        return await lane.submit((queue_id, claim_token, now))

    # ------------------------------------------------------------------ flushes
    async def _flush_reads(self, ids: list[str]) -> list[PipelineRun | None]:
        if len(ids) == 1:
            return [await self._storage.get_run(ids[0])]
        found = {run.run_id: run for run in await self._storage.get_runs(ids)}
        return [found.get(run_id) for run_id in ids]

    async def _flush_runs(self, calls: list[tuple[PipelineRun, int]]) -> list[bool]:
        if len(calls) == 1:
            ((run, expected),) = calls
            return [await self._storage.update_run(run, expected)]
        applied = await self._storage.update_runs(calls)
        if applied == len(calls):
            return [True] * len(calls)
        stored = {r.run_id: r for r in await self._storage.get_runs([run.run_id for run, _ in calls])}
        return [_holds(stored.get(run.run_id), run) for run, _ in calls]

    async def _flush_extends(self, calls: list[tuple[str, str, datetime]]) -> list[bool]:
        if len(calls) == 1:
            ((queue_id, token, until),) = calls
            return [
                await self._storage.extend_queue_lease(queue_id, claim_token=token, lease_expires_at=until)
            ]
        # One lease for the batch: the latest asked for (a renewal is "at least until").
        until = max(call[2] for call in calls)
        held = await self._storage.extend_queue_leases([(q, t) for q, t, _ in calls], lease_expires_at=until)
        if held == len(calls):
            return [True] * len(calls)
        return await self._read_back(
            calls,
            lambda item, token: (
                item.status is QueueStatus.PROCESSING
                and item.lease_expires_at is not None
                and item.lease_expires_at >= until
            ),
        )

    async def _flush_transitions(
        self, calls: list[tuple[str, str, datetime]], to_status: QueueStatus, error: str | None
    ) -> list[bool]:
        now = max(call[2] for call in calls)
        if len(calls) == 1:
            ((queue_id, token, _),) = calls
            return [
                await self._storage.transition_queue_item(
                    queue_id,
                    from_status=QueueStatus.PROCESSING,
                    to_status=to_status,
                    now=now,
                    claim_token=token,
                    error_message=error,
                )
            ]
        moved = await self._storage.transition_queue_items(
            [(q, t) for q, t, _ in calls],
            from_status=QueueStatus.PROCESSING,
            to_status=to_status,
            now=now,
            error_message=error,
        )
        if moved == len(calls):
            return [True] * len(calls)
        return await self._read_back(
            calls, lambda item, token: item.status is to_status and item.updated_at == now
        )

    async def _read_back(
        self, calls: Sequence[tuple[str, str, datetime]], holds: Callable[[Any, str], bool]
    ) -> list[bool]:
        """Which calls of a short batch hold: the item is still under the caller's token and
        shows the write. One read per item: a short batch is the rare case (a lost claim)."""
        results = []
        for queue_id, token, _ in calls:
            item = await self._storage.get_queue_item(queue_id)
            results.append(item is not None and item.claim_token == token and holds(item, token))
        return results


def _same(run_id: str) -> str:
    return run_id


def _holds(stored: PipelineRun | None, mine: PipelineRun) -> bool:
    """True when ``stored`` is the row ``mine`` wrote (its version, token, state and stamp)."""
    return (
        stored is not None
        and stored.version == mine.version
        and stored.state is mine.state
        and stored.claim_token == mine.claim_token
        and stored.updated_at == mine.updated_at
    )
