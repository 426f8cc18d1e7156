"""Operator actions (the web API's control endpoints and ``pipestate run|schedule …``): cancel,
retry, rerun, mark, trigger, pause, resume.

Each is a use case over the existing services and ports, with one compare-and-set per change;
losing a race or acting on a run in the wrong state raises a typed error, and nothing is written.
Every change to a run records an event with actor ``operator`` and the reason given.

``rerun`` of a finished run (COMPLETED, FAILED, CANCELLED, SKIPPED) makes a **new run** for the
same slot: its id is derived from (tenant, config, slot, rerun number), it starts PENDING and is
queued, and its config names the run it reruns (``rerun_of``). The finished run is left as it
was: the lifecycle keeps its terminal states terminal, and each run's history stays its own.

``mark`` settles a RUNNING run by hand (its worker died or hangs): ``succeeded`` completes it,
``failed`` fails it without retry. A worker still holding it then loses its claim.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.schedule_manager import ScheduleManager
from pipestate.application.scheduler import enqueue_pending
from pipestate.application.state_manager import PipelineStateManager
from pipestate.domain.clock import Clock
from pipestate.domain.errors import ConcurrencyConflict, InvalidArgument, InvalidTransition, RunNotFound
from pipestate.domain.events import Actor
from pipestate.domain.pipeline_schedule import PipelineSchedule
from pipestate.domain.ports import Storage
from pipestate.domain.run import ACTIVE_STATES, PipelineRun, RunState, derive_run_id

MAX_RERUNS: Final = 100
"""A slot is rerun at most this many times (each rerun is a run of its own)."""
RERUNNABLE: Final = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.SKIPPED})


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

    async def retry(self, run_id: str, reason: str = "retried by an operator") -> PipelineRun:
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
        expected = run.version
        run.retry(now, retry_at=now, policy=policy, actor=Actor.OPERATOR, reason=reason)
        if not await self._storage.update_run(run, expected):
            raise ConcurrencyConflict(run_id, expected)
        await enqueue_pending(self._storage, [run], now)
        return run

    async def mark(
        self, run_id: str, outcome: RunState, reason: str = "marked by an operator"
    ) -> PipelineRun:
        """Settle a RUNNING run by hand: COMPLETED, or FAILED (not retried).

        Raises:
            RunNotFound: no such run.
            InvalidArgument: ``outcome`` is neither COMPLETED nor FAILED.
            InvalidTransition: the run is not RUNNING.
            ConcurrencyConflict: it changed meanwhile.
        """
        if outcome not in (RunState.COMPLETED, RunState.FAILED):
            raise InvalidArgument("outcome", outcome, "mark a run COMPLETED (succeeded) or FAILED")
        run = await self._load(run_id)
        now = self._clock.now()
        expected = run.version
        if outcome is RunState.COMPLETED:
            run.complete(now, actor=Actor.OPERATOR, reason=reason)
        else:
            run.fail(
                now,
                error_message=reason,
                error_type="MarkedFailed",
                retryable=False,
                actor=Actor.OPERATOR,
                reason=reason,
            )
        if not await self._storage.update_run(run, expected):
            raise ConcurrencyConflict(run_id, expected)
        return run

    async def rerun(self, run_id: str, reason: str = "rerun by an operator") -> PipelineRun:
        """A new PENDING run (queued) for the slot of a finished run; returns it.

        Raises:
            RunNotFound: no such run.
            InvalidTransition: the run has not finished (cancel or wait for it first).
            InvalidArgument: the slot was rerun :data:`MAX_RERUNS` times already.
        """
        original = await self._load(run_id)
        if original.state not in RERUNNABLE:
            raise InvalidTransition(run_id, original.state, "rerun")
        now = self._clock.now()
        slot = original.scheduled_time
        for n in range(1, MAX_RERUNS + 1):
            candidate = derive_run_id(original.tenant_id, original.config_id, slot, rerun=n)
            if await self._storage.get_run(candidate) is not None:
                continue
            run = PipelineRun.new(
                tenant_id=original.tenant_id,
                config_id=original.config_id,
                scheduled_time=slot,
                now=now,
                priority=original.priority,
                retry_policy=original.retry_policy,
                schedule_id=original.schedule_id,
                config={**original.config, "rerun_of": original.run_id, "rerun": n},
                actor=Actor.OPERATOR,
                reason=reason,
                rerun=n,
            )
            if slot <= now:  # else the tick promotes it when its slot comes
                run.make_pending(now, actor=Actor.OPERATOR, reason=reason)
            if await self._storage.insert_runs([run]) == 1:
                await enqueue_pending(self._storage, [run], now)
                return run
        raise InvalidArgument("run_id", run_id, f"its slot was rerun {MAX_RERUNS} times already")

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
            actor=Actor.OPERATOR,
            reason="triggered by an operator",
        )
        run.make_pending(now, actor=Actor.OPERATOR, reason="triggered by an operator")
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
