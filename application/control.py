"""Operator actions (the web API's control endpoints): cancel, retry, trigger, pause, resume.

Each is a use case over the existing services and ports, with one compare-and-set per change;
losing a race or acting on a run in the wrong state raises a typed error, and nothing is written.
"""

from __future__ import annotations

from dataclasses import replace

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.retry_manager import RetryManager
from pipestate.application.schedule_manager import ScheduleManager
from pipestate.application.scheduler import enqueue_pending
from pipestate.application.state_manager import PipelineStateManager
from pipestate.domain.clock import Clock
from pipestate.domain.errors import ConcurrencyConflict, InvalidTransition, RunNotFound
from pipestate.domain.pipeline_schedule import PipelineSchedule
from pipestate.domain.ports import Storage
from pipestate.domain.run import ACTIVE_STATES, PipelineRun, RunState


class Control:
    def __init__(self, storage: Storage, *, clock: Clock | None = None) -> None:
        self._storage = storage
        self._clock = clock or SYSTEM_CLOCK
        self._schedules = ScheduleManager(storage, clock=self._clock)

    async def cancel(self, run_id: str, reason: str = "cancelled by an operator") -> PipelineRun:
        """SCHEDULED | PENDING | RUNNING -> CANCELLED (a RUNNING handler's result is then dropped).

        Raises:
            RunNotFound: no such run.
            InvalidTransition: the run already finished.
            ConcurrencyConflict: it changed while we cancelled it.
        """
        run = await self._load(run_id)
        if run.state not in ACTIVE_STATES:
            raise InvalidTransition(run_id, run.state, "cancel")
        if not await PipelineStateManager(self._storage, clock=self._clock).cancel_run(run_id, reason):
            raise ConcurrencyConflict(run_id, run.version)
        return await self._load(run_id)

    async def retry(self, run_id: str) -> PipelineRun:
        """FAILED -> PENDING now, and queued, even when its policy has no retry left (an operator's
        retry adds one). A run failed as not retryable stays FAILED.

        Raises:
            RunNotFound: no such run.
            InvalidTransition: not FAILED, or failed as not retryable.
            ConcurrencyConflict: it changed meanwhile.
        """
        run = await self._load(run_id)
        if run.state is not RunState.FAILED:
            raise InvalidTransition(run_id, run.state, "retry")
        policy = replace(run.effective_retry_policy, max_retries=run.retry_count + 1, retry_on_errors=None)
        now = self._clock.now()
        if not await RetryManager(self._storage, clock=self._clock).schedule_retry(run_id, now, policy):
            raise ConcurrencyConflict(run_id, run.version)
        run = await self._load(run_id)
        await enqueue_pending(self._storage, [run], now)
        return run

    async def trigger(self, tenant_id: str, config_id: str) -> PipelineRun:
        """A run of the schedule now, outside its cron (PENDING and queued with its priority).

        Raises:
            ScheduleNotFound: no such schedule.
        """
        schedule = await self._schedules.get(tenant_id, config_id)
        now = self._clock.now()
        run = PipelineRun.new(
            tenant_id=tenant_id,
            config_id=config_id,
            scheduled_time=now,
            now=now,
            priority=schedule.priority,
            retry_policy=schedule.retry_policy,
            schedule_id=schedule.schedule_id,
            config={**schedule.config, "triggered_manually": True},
        )
        run.make_pending(now)
        await self._storage.insert_runs([run])
        await enqueue_pending(self._storage, [run], now)
        return run

    async def pause(self, tenant_id: str, config_id: str) -> PipelineSchedule:
        return await self._schedules.pause(tenant_id, config_id)

    async def resume(self, tenant_id: str, config_id: str) -> PipelineSchedule:
        return await self._schedules.resume(tenant_id, config_id)

    async def _load(self, run_id: str) -> PipelineRun:
        run = await self._storage.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run
