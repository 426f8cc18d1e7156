"""One retry configuration for every store: bounded exponential backoff with full jitter.

Both storage adapters retry transient failures with tenacity, the only retry layer (drivers' and
client libraries' own retries are switched off). They share this one settings type; each decides
which failures are transient, and which are *contention* (another writer holds what we need:
retrying soon only queues again), and passes those predicates to :meth:`RetrySettings.retrying`.
The adapter hands an explicit attempt state to the retried work, never a thread-local flag.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay


@dataclass(frozen=True)
class RetrySettings:
    """Bounds of the retry layer.

    The wait before retry ``n`` is uniform in ``[0, min(initial_wait * 2**n, max_wait)]``, and in
    ``[contention_wait, min(contention_wait * 2**n, max_contention_wait)]`` after a contention
    error. It stops after ``max_attempts`` attempts or once ``max_elapsed`` seconds have passed.

    The defaults suit BigQuery (statements take seconds, a table runs 2 mutating statements at a
    time and queues 20, and BigQuery reruns a conflicting statement up to 3 times itself);
    :data:`pipestate.adapters.sqlalchemy.session.SQL_RETRY_SETTINGS` suits a database whose
    transient failures are a dropped connection or a lock (milliseconds).
    """

    max_attempts: int = 10
    initial_wait: float = 0.5
    max_wait: float = 10.0
    contention_wait: float = 2.0
    max_contention_wait: float = 60.0
    max_elapsed: float = 600.0

    def wait(self, attempt_number: int, *, contention: bool = False) -> float:
        """The wait before the retry that follows attempt ``attempt_number`` (1-based)."""
        n = max(attempt_number - 1, 0)
        if contention:
            high = min(self.contention_wait * 2**n, self.max_contention_wait)
            return random.uniform(min(self.contention_wait, high), high)
        return random.uniform(0, min(self.initial_wait * 2**n, self.max_wait))

    def retrying(
        self,
        retry: Callable[[BaseException], bool],
        *,
        contention: Callable[[BaseException], bool] | None = None,
        on_retry: Callable[[RetryCallState], None] | None = None,
    ) -> Retrying:
        """A tenacity ``Retrying`` that retries the failures ``retry`` accepts."""

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome is not None else None
            crowded = error is not None and contention is not None and contention(error)
            return self.wait(state.attempt_number, contention=crowded)

        kwargs: dict[str, Any] = {}
        if on_retry is not None:
            kwargs["before_sleep"] = on_retry
        return Retrying(
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_elapsed),
            wait=wait,
            retry=retry_if_exception(retry),
            reraise=True,
            **kwargs,
        )
