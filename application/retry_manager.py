"""RetryManager: backoff times, retry eligibility, and moving failed runs back into the schedule."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.domain.clock import Clock, ensure_aware
from pipestate.domain.errors import RunNotFound
from pipestate.domain.ports import Storage
from pipestate.domain.retry import RetryPolicy
from pipestate.domain.run import PipelineRun, RunState, require_id

RetryConfig = RetryPolicy | Mapping[str, Any] | None


class RetryManager:
    """Retry decisions for failed runs.

    Args:
        storage: any :class:`~pipestate.domain.ports.Storage`.
        clock: where "now" comes from.
        policy: the default policy for runs that carry none.
    """

    def __init__(self, storage: Storage, *, clock: Clock | None = None, policy: RetryConfig = None):
        self._storage = storage
        self._clock = clock or SYSTEM_CLOCK
        self._policy = RetryPolicy.from_config(policy)

    def calculate_retry_time(
        self, attempt: int, *, policy: RetryConfig = None, base_time: datetime | None = None
    ) -> datetime:
        """``base_time`` (default now) plus the backoff for retry ``attempt``: 1, 2, 4, 8 … 60 min.

        Raises:
            InvalidArgument: attempt < 1 or an invalid policy.
            NaiveDatetime: base_time without a time zone.
        """
        effective = RetryPolicy.from_config(policy) if policy is not None else self._policy
        base = ensure_aware(base_time, "base_time") if base_time is not None else self._clock.now()
        return effective.retry_at(attempt, base)

    async def should_retry(
        self, run_id: str, retry_config: RetryConfig = None, client: object = None
    ) -> bool:
        """True when the run is FAILED, marked retryable, has retries left and its error type is retried.

        ``retry_config`` overrides the run's own policy (a ``RetryPolicy`` or its dict form).
        ``client`` is accepted and ignored: the seed's calls pass a BigQuery client there
        (``should_retry(run_id, retry_config, bq_client)``); the manager uses its storage.

        Raises:
            RunNotFound: no such run.
            InvalidArgument: an invalid retry_config.
        """
        if retry_config is None and isinstance(client, RetryPolicy | Mapping):
            retry_config = client
        override = RetryPolicy.from_config(retry_config) if retry_config is not None else None
        run = await self._load(run_id)
        policy = self._policy_for(run, override)
        return (
            run.state is RunState.FAILED and run.retryable and policy.allows(run.retry_count, run.error_type)
        )

    async def schedule_retry(
        self, run_id: str, retry_time: datetime, client: object = None, *, retry_config: RetryConfig = None
    ) -> bool:
        """FAILED -> SCHEDULED at ``retry_time`` (PENDING if ``retry_time <= now``); retry_count + 1.

        Returns ``False`` if the run is no longer FAILED (or changed concurrently, e.g. recovery
        already retried it when its ``next_retry_at`` fell due). ``client`` is accepted and
        ignored, like the seed's ``schedule_retry(run_id, retry_time, bq_client)`` passes it; a
        ``RetryPolicy`` or dict there is taken as ``retry_config`` (the earlier signature).

        Raises:
            RunNotFound: no such run.
            NaiveDatetime: retry_time without a time zone.
            TransitionRejected: the policy does not allow another retry.
        """
        if retry_config is None and isinstance(client, RetryPolicy | Mapping):
            retry_config = client
        at = ensure_aware(retry_time, "retry_time")
        override = RetryPolicy.from_config(retry_config) if retry_config is not None else None
        run = await self._load(run_id)
        if run.state is not RunState.FAILED:
            return False
        expected = run.version
        run.retry(self._clock.now(), retry_at=at, policy=self._policy_for(run, override))
        return await self._storage.update_run(run, expected)

    def _policy_for(self, run: PipelineRun, override: RetryPolicy | None) -> RetryPolicy:
        if override is not None:
            return override
        return run.retry_policy or self._policy

    async def _load(self, run_id: str) -> PipelineRun:
        require_id("run_id", run_id)
        run = await self._storage.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run
