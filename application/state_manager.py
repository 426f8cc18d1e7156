"""PipelineStateManager: create runs, move them through their lifecycle, report their state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.ids import new_token
from pipestate.domain.clock import Clock
from pipestate.domain.errors import RunNotFound
from pipestate.domain.ports import RunFilter, RunOrder, Storage
from pipestate.domain.retry import RetryPolicy
from pipestate.domain.run import (
    ACTIVE_STATES,
    PipelineRun,
    RunState,
    require_duration_seconds,
    require_id,
    trigger_for,
)
from pipestate.domain.status import TenantStatus
from pipestate.domain.validation import optional_id, require_duration

DEFAULT_MANUAL_LEASE = timedelta(minutes=30)


@dataclass(frozen=True)
class RunSpec:
    """One run to create in a batch (:meth:`PipelineStateManager.create_scheduled_runs`)."""

    tenant_id: str
    config_id: str
    scheduled_time: datetime
    priority: int = 5
    retry_policy: RetryPolicy | None = None
    config: Mapping[str, Any] | None = None


class PipelineStateManager:
    """Use cases on runs. Every method reads the clock once and stores with one compare-and-set.

    Args:
        storage: any :class:`~pipestate.domain.ports.Storage`.
        clock: where "now" comes from (a ``FrozenClock`` in tests).
        lease: how long ``mark_as_running`` holds a run before recovery may reclaim it.
    """

    def __init__(
        self, storage: Storage, *, clock: Clock | None = None, lease: timedelta = DEFAULT_MANUAL_LEASE
    ):
        self._storage = storage
        self._clock = clock or SYSTEM_CLOCK
        self._lease = require_duration("lease", lease)

    # ------------------------------------------------------------------ creation
    async def create_scheduled_run(
        self,
        tenant_id: str,
        config_id: str,
        scheduled_time: datetime,
        *,
        priority: int = 5,
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> str:
        """Create the SCHEDULED run for one (tenant, config, scheduled_time) slot; return its id.

        Idempotent: the same slot always gives the same run_id and one row.

        Raises:
            InvalidIdentifier: empty tenant_id or config_id.
            InvalidPriority: priority outside 1..10.
            NaiveDatetime: scheduled_time without a time zone.
        """
        spec = RunSpec(tenant_id, config_id, scheduled_time, priority, _policy(retry_policy), config)
        (run_id,) = await self.create_scheduled_runs([spec])
        return run_id

    async def create_scheduled_runs(self, specs: list[RunSpec]) -> list[str]:
        """Create many runs in one insert-if-absent batch; return their ids in input order.

        Raises:
            InvalidInput: any spec is invalid (then nothing is written).
        """
        now = self._clock.now()
        runs = [
            PipelineRun.new(
                tenant_id=s.tenant_id,
                config_id=s.config_id,
                scheduled_time=s.scheduled_time,
                now=now,
                priority=s.priority,
                retry_policy=s.retry_policy,
                config=s.config,
            )
            for s in specs
        ]
        if runs:
            await self._storage.insert_runs(runs)
        return [r.run_id for r in runs]

    # ------------------------------------------------------------------ transitions
    async def transition_state(
        self, run_id: str, from_state: RunState | str, to_state: RunState | str
    ) -> bool:
        """Compare-and-set a run from ``from_state`` to ``to_state`` along a lifecycle edge.

        Returns ``True`` if applied, ``False`` if the run is no longer in ``from_state`` (or
        changed concurrently). Edges with effects use defaults: RUNNING gets a fresh claim token
        and the manager's lease, FAILED records ``error_type="ManualTransition"``.

        Raises:
            InvalidState: an unknown state name.
            InvalidTransition: ``from_state -> to_state`` is not an edge of the lifecycle.
            TransitionRejected: the edge's guard refused (not due, no retry allowed …).
            RunNotFound: no such run.
        """
        require_id("run_id", run_id)
        source, dest = RunState.parse(from_state), RunState.parse(to_state)
        trigger = trigger_for(run_id, source, dest)
        now = self._clock.now()
        run = await self._load(run_id)
        if run.state is not source:
            return False
        expected = run.version
        if trigger == "start":
            run.start(now, worker_id="manual", claim_token=new_token(), lease_expires_at=now + self._lease)
        elif trigger == "fail":
            run.fail(now, error_message="failed by transition_state", error_type="ManualTransition")
        elif trigger == "retry":
            # The edge names the destination: PENDING retries now, SCHEDULED at the backoff time.
            policy = run.effective_retry_policy
            retry_at = (
                now
                if dest is RunState.PENDING
                else (run.next_retry_at or policy.retry_at(run.retry_count + 1, now))
            )
            if dest is RunState.SCHEDULED and retry_at <= now:
                retry_at = now + policy.delay(run.retry_count + 1, run_id=run_id)
            run.retry(now, retry_at=retry_at)
        else:
            run.apply(trigger, now)
        return await self._storage.update_run(run, expected)

    async def mark_as_running(
        self, run_id: str, pipeline_logging_id: str, worker_id: str | None = None
    ) -> bool:
        """PENDING -> RUNNING with a new claim token and a lease; ``False`` if not PENDING.

        Raises:
            RunNotFound: no such run.
        """
        require_id("run_id", run_id)
        optional_id("pipeline_logging_id", pipeline_logging_id)
        optional_id("worker_id", worker_id)
        now = self._clock.now()
        run = await self._load(run_id)
        if run.state is not RunState.PENDING:
            return False
        expected = run.version
        run.start(
            now,
            worker_id=worker_id or "manual",
            claim_token=new_token(),
            lease_expires_at=now + self._lease,
            pipeline_logging_id=pipeline_logging_id,
        )
        return await self._storage.update_run(run, expected)

    async def mark_as_completed(self, run_id: str, duration_seconds: float | None = None) -> bool:
        """RUNNING -> COMPLETED; the duration defaults to now - started_at. ``False`` if not RUNNING.

        Raises:
            RunNotFound: no such run.
            InvalidArgument: negative duration.
        """
        require_id("run_id", run_id)
        duration_seconds = require_duration_seconds(duration_seconds)
        now = self._clock.now()
        run = await self._load(run_id)
        if run.state is not RunState.RUNNING:
            return False
        expected = run.version
        run.complete(now, duration_seconds=duration_seconds)
        return await self._storage.update_run(run, expected)

    async def mark_as_failed(
        self, run_id: str, error_message: str, should_retry: bool = True, error_type: str | None = None
    ) -> bool:
        """RUNNING -> FAILED, recording the error and, if the run's policy allows, ``next_retry_at``.

        The run stays FAILED; :class:`~pipestate.application.retry_manager.RetryManager` (or the worker and
        the scheduler tick) move it on. ``False`` if not RUNNING.

        Raises:
            RunNotFound: no such run.
        """
        require_id("run_id", run_id)
        now = self._clock.now()
        run = await self._load(run_id)
        if run.state is not RunState.RUNNING:
            return False
        expected = run.version
        run.fail(now, error_message=str(error_message), error_type=error_type, retryable=bool(should_retry))
        return await self._storage.update_run(run, expected)

    async def cancel_run(self, run_id: str, reason: str = "") -> bool:
        """SCHEDULED | PENDING | RUNNING -> CANCELLED; ``False`` if the run already finished.

        Raises:
            RunNotFound: no such run.
        """
        require_id("run_id", run_id)
        now = self._clock.now()
        run = await self._load(run_id)
        if run.state not in ACTIVE_STATES:
            return False
        expected = run.version
        run.cancel(now, reason=reason)
        return await self._storage.update_run(run, expected)

    # ------------------------------------------------------------------ queries
    async def get_run_status(self, run_id: str) -> PipelineRun:
        """The stored run.

        Raises:
            RunNotFound: no such run.
        """
        require_id("run_id", run_id)
        return await self._load(run_id)

    async def get_pipelines_by_state(
        self, state: RunState | str, tenant_id: str | None = None
    ) -> list[PipelineRun]:
        """Runs in ``state`` (optionally of one tenant), oldest scheduled_time first."""
        wanted = RunState.parse(state)
        if tenant_id is not None:
            require_id("tenant_id", tenant_id)
        return await self._storage.find_runs(RunFilter(states=[wanted], tenant_id=tenant_id))

    async def get_yet_to_run_pipelines(self, tenant_id: str | None = None) -> list[PipelineRun]:
        """SCHEDULED or PENDING runs whose scheduled_time <= now, oldest first."""
        if tenant_id is not None:
            require_id("tenant_id", tenant_id)
        criteria = RunFilter(
            states=[RunState.SCHEDULED, RunState.PENDING],
            tenant_id=tenant_id,
            scheduled_before=self._clock.now(),
        )
        return await self._storage.find_runs(criteria)

    async def get_customer_pipeline_status(self, tenant_id: str) -> TenantStatus:
        """Counts by state, success rate, last completed and failed run, oldest pending age."""
        require_id("tenant_id", tenant_id)
        now = self._clock.now()
        counts = await self._storage.count_runs_by_state(tenant_id)
        last_completed = await self._storage.find_runs(
            RunFilter(states=[RunState.COMPLETED], tenant_id=tenant_id),
            order=RunOrder.COMPLETED_DESC,
            limit=1,
        )
        last_failed = await self._storage.find_runs(
            RunFilter(states=[RunState.FAILED], tenant_id=tenant_id), order=RunOrder.COMPLETED_DESC, limit=1
        )
        oldest_pending = await self._storage.find_runs(
            RunFilter(states=[RunState.PENDING], tenant_id=tenant_id), order=RunOrder.SCHEDULED_ASC, limit=1
        )
        finished = counts.get(RunState.COMPLETED, 0) + counts.get(RunState.FAILED, 0)
        return TenantStatus(
            tenant_id=tenant_id,
            counts=counts,
            total=sum(counts.values()),
            success_rate=counts.get(RunState.COMPLETED, 0) / finished if finished else None,
            last_completed=last_completed[0] if last_completed else None,
            last_failed=last_failed[0] if last_failed else None,
            oldest_pending_age_seconds=(
                max((now - oldest_pending[0].scheduled_time).total_seconds(), 0.0) if oldest_pending else None
            ),
        )

    async def _load(self, run_id: str) -> PipelineRun:
        run = await self._storage.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run


def _policy(value: RetryPolicy | Mapping[str, Any] | None) -> RetryPolicy | None:
    return None if value is None else RetryPolicy.from_config(value)
