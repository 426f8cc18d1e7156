"""Storage ports: what the application needs from a store, as ``typing.Protocol``s.

Every adapter (SQLAlchemy on SQLite or PostgreSQL, BigQuery) implements :class:`Storage`; the
contract test suite holds them to these docstrings. Common rules:

* Timestamps go in and come out as aware UTC datetimes (microsecond precision).
* Creation is insert-if-absent: inserting an existing id is not an error and changes nothing.
* ``update_*`` is a compare-and-set on ``(id, version)``: ``False`` means the row changed since
  it was read (stale); a missing row raises the matching ``NotFound`` error.
* Transient failures raise :class:`~pipestate.domain.errors.StorageUnavailable`; permanent ones
  :class:`~pipestate.domain.errors.StorageError`. No driver exception escapes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from pipestate.domain.events import RunEvent
from pipestate.domain.pipeline_schedule import PipelineSchedule
from pipestate.domain.queue import QueueItem, QueueStats, QueueStatus
from pipestate.domain.run import PipelineRun, RunState


class RunOrder(StrEnum):
    SCHEDULED_ASC = "scheduled_asc"
    """Oldest scheduled_time first (then run_id)."""
    COMPLETED_DESC = "completed_desc"
    """Newest completed_at first, runs without completed_at last (then run_id)."""
    UPDATED_DESC = "updated_desc"
    """Most recently changed first, runs without updated_at last (then run_id)."""


@dataclass(frozen=True)
class RunFilter:
    """Which runs ``find_runs`` returns. Every criterion given must hold."""

    states: Collection[RunState] | None = None
    tenant_id: str | None = None
    config_id: str | None = None
    scheduled_before: datetime | None = None
    """scheduled_time <= this instant."""
    lease_expired_before: datetime | None = None
    """lease_expires_at <= this instant (runs without a lease never match)."""
    retry_due_before: datetime | None = None
    """next_retry_at <= this instant (runs without a planned retry never match)."""


class Capability(StrEnum):
    """Real differences between backends, declared by each adapter (never sniffed by tests)."""

    MULTI_PROCESS = "multi_process"
    """Several OS processes may share the store safely."""
    MULTI_HOST = "multi_host"
    """Workers on several machines may share the store."""
    SKIP_LOCKED = "skip_locked"
    """Claims do not wait for each other (FOR UPDATE SKIP LOCKED)."""


@runtime_checkable
class RunRepository(Protocol):
    async def insert_runs(self, runs: Sequence[PipelineRun]) -> int:
        """Insert the runs whose run_id is absent, in one statement/transaction.

        Returns the number of rows inserted (0 when all existed). Duplicate ids within the batch
        are inserted once. Rows are never duplicated; after a transient failure whose first
        attempt was applied but unanswered, the count may undercount what that attempt inserted.
        """
        ...

    async def get_run(self, run_id: str) -> PipelineRun | None:
        """The stored run, or ``None``."""
        ...

    async def get_runs(self, run_ids: Collection[str]) -> list[PipelineRun]:
        """The stored runs among ``run_ids`` (missing ids are left out), ordered by run_id."""
        ...

    async def update_run(self, run: PipelineRun, expected_version: int) -> bool:
        """Write every mutable field of ``run`` if the stored version is ``expected_version``.

        Returns ``False`` when the stored version differs (the caller lost a race).

        Raises:
            RunNotFound: no run with that id.
        """
        ...

    async def update_runs(self, runs: Sequence[tuple[PipelineRun, int]]) -> int:
        """Batch compare-and-set of ``(run, expected_version)`` pairs; returns how many applied.

        Pairs whose version no longer matches (or whose row is missing) are left unchanged.
        """
        ...

    async def find_runs(
        self, criteria: RunFilter, *, order: RunOrder = RunOrder.SCHEDULED_ASC, limit: int | None = None
    ) -> list[PipelineRun]:
        """Runs matching ``criteria`` in ``order``, at most ``limit``."""
        ...

    async def count_runs_by_state(self, tenant_id: str | None = None) -> dict[RunState, int]:
        """Number of runs in each state (states with no run are absent)."""
        ...

    async def get_run_events(self, run_id: str) -> list[RunEvent]:
        """The run's history, oldest first (by version): one event per stored transition.

        ``insert_runs``, ``update_run`` and ``update_runs`` store each run's ``pending_events``
        with the run itself (same transaction on SQL backends, same flush on BigQuery), and only
        when the run's row was written: an event is stored exactly when its transition was. They
        empty ``pending_events`` once they return. Empty for an unknown run.
        """
        ...

    async def prune_events(self, before: datetime) -> int:
        """Delete the events made before ``before`` (retention); returns how many (BigQuery may
        report 0 when it drops whole partitions). Runs are untouched."""
        ...


@runtime_checkable
class QueueRepository(Protocol):
    async def insert_queue_items(self, items: Sequence[QueueItem]) -> int:
        """Insert the items whose queue_id is absent; returns the number inserted."""
        ...

    async def get_queue_item(self, queue_id: str) -> QueueItem | None:
        """The stored item, or ``None``."""
        ...

    async def claim_queue_items(
        self, *, worker_id: str, claim_token: str, now: datetime, lease_expires_at: datetime, limit: int
    ) -> list[QueueItem]:
        """Atomically claim up to ``limit`` QUEUED items for ``worker_id``.

        Takes the highest priority first (1 before 10), oldest ``created_at`` first within a
        priority (then queue_id). Each claimed item becomes PROCESSING with worker_id,
        claim_token, claimed_at=now, lease_expires_at, attempts+1 and version+1, and is returned
        in that order. No item is ever returned to two concurrent callers. ``claim_token`` must
        be unique per call (adapters use it to read back, or to recognise a retried claim).
        """
        ...

    async def transition_queue_item(
        self,
        queue_id: str,
        *,
        from_status: QueueStatus,
        to_status: QueueStatus,
        now: datetime,
        claim_token: str | None = None,
        error_message: str | None = None,
    ) -> bool:
        """Compare-and-set the item's status from ``from_status`` to ``to_status``.

        When ``claim_token`` is given the stored token must equal it too (fencing). Moving to
        COMPLETED or FAILED sets completed_at=now (and error_message); moving to QUEUED clears
        worker_id, claim_token, claimed_at and lease_expires_at. Returns ``False`` when the item
        is missing, not in ``from_status``, or held by another token.
        """
        ...

    async def extend_queue_lease(
        self, queue_id: str, *, claim_token: str, lease_expires_at: datetime
    ) -> bool:
        """Move a PROCESSING item's lease to ``lease_expires_at`` if ``claim_token`` still holds it."""
        ...

    async def extend_queue_leases(
        self, leases: Sequence[tuple[str, str]], *, lease_expires_at: datetime
    ) -> int:
        """:meth:`extend_queue_lease` for many ``(queue_id, claim_token)`` pairs in one statement
        (one transaction); returns how many were still held and extended. A repeated queue_id
        is written once (with its last pair)."""
        ...

    async def transition_queue_items(
        self,
        items: Sequence[tuple[str, str]],
        *,
        from_status: QueueStatus,
        to_status: QueueStatus,
        now: datetime,
        error_message: str | None = None,
    ) -> int:
        """:meth:`transition_queue_item`, fenced, for many ``(queue_id, claim_token)`` pairs in one
        statement (one transaction); returns how many moved. A repeated queue_id is written once (with its
        last pair)."""
        ...

    async def find_queue_items(
        self,
        *,
        status: QueueStatus | None = None,
        lease_expired_before: datetime | None = None,
        run_id: str | None = None,
        limit: int | None = None,
    ) -> list[QueueItem]:
        """Items matching every criterion given, by (priority, created_at, queue_id)."""
        ...

    async def count_queue_items(self, status: QueueStatus | None = None, tenant_id: str | None = None) -> int:
        """Number of items with ``status`` (all statuses when ``None``)."""
        ...

    async def queue_stats(self, now: datetime) -> QueueStats:
        """Counts by status, waiting items by priority, average and p95 wait of claimed items
        (claimed_at - created_at, seconds) and the age of the oldest QUEUED item at ``now``."""
        ...


@runtime_checkable
class ScheduleRepository(Protocol):
    async def insert_schedule(self, schedule: PipelineSchedule) -> bool:
        """Insert if the schedule_id is absent; ``False`` if it already existed."""
        ...

    async def get_schedule(self, schedule_id: str) -> PipelineSchedule | None: ...

    async def list_schedules(
        self, *, tenant_id: str | None = None, enabled: bool | None = None
    ) -> list[PipelineSchedule]:
        """Schedules by (tenant_id, config_id)."""
        ...

    async def update_schedule(self, schedule: PipelineSchedule, expected_version: int) -> bool:
        """Compare-and-set like :meth:`RunRepository.update_run`.

        Raises:
            ScheduleNotFound: no schedule with that id.
        """
        ...

    async def update_schedules(self, schedules: Sequence[tuple[PipelineSchedule, int]]) -> int:
        """Batch compare-and-set; returns how many applied."""
        ...

    async def due_schedules(self, now: datetime, limit: int) -> list[PipelineSchedule]:
        """Enabled schedules with ``next_fire_time <= now``, earliest first, at most ``limit``.

        Served by an index on (enabled, next_fire_time): the cost grows with the due schedules,
        not with all schedules.
        """
        ...


@runtime_checkable
class Storage(RunRepository, QueueRepository, ScheduleRepository, Protocol):
    """A whole store: the three repositories plus set-up."""

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    async def create_schema(self) -> None:
        """Create the tables and indexes if absent (idempotent). Never called on a hot path."""
        ...

    async def close(self) -> None:
        """Release connections/clients the store owns."""
        ...
