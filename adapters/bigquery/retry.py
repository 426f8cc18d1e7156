"""Which BigQuery failures are transient, and the one retry layer (tenacity) that handles them.

Transient: HTTP 429/500/502/503/504, network errors and timeouts, and the concurrency errors that
BigQuery reports as 400/403 ("Could not serialize access to table … due to concurrent update",
"Transaction is aborted due to concurrent update", "Too many DML statements outstanding against
table …", "Exceeded rate limits"). Everything else (a syntax error, a missing table, a permission
error, an exhausted daily quota) is permanent and surfaces at once.

The Google client has retry layers of its own (``retry`` for HTTP requests, ``job_retry`` for
re-running failed queries); the adapter passes ``None`` to both, so this module is the only layer
that retries and its bounds (attempts, elapsed time) are the real ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from google.api_core import exceptions as gexc
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

T = TypeVar("T")

_TRANSIENT_TYPES: Final = (
    gexc.TooManyRequests,  # 429
    gexc.InternalServerError,  # 500
    gexc.BadGateway,  # 502
    gexc.ServiceUnavailable,  # 503
    gexc.GatewayTimeout,  # 504
)

_CONCURRENCY_MARKERS: Final = (
    "could not serialize access to table",
    "transaction is aborted due to concurrent update",
    "too many dml statements outstanding",
    "exceeded rate limits",
)
"""Message fragments of the 400/403 errors that mean "try again", not "your SQL is wrong"."""

_TRANSIENT_REASONS: Final = frozenset(
    {"backendError", "internalError", "jobBackendError", "jobInternalError", "rateLimitExceeded"}
)
"""``errors[].reason`` values BigQuery documents as retryable."""


def is_transient(error: BaseException) -> bool:
    """True when ``error`` is worth retrying (see the module docstring)."""
    if isinstance(error, _TRANSIENT_TYPES):
        return True
    if isinstance(error, gexc.BadRequest | gexc.Forbidden):
        text = str(getattr(error, "message", "") or error).lower()
        if any(marker in text for marker in _CONCURRENCY_MARKERS):
            return True
        reasons = {
            str(e.get("reason", "")) for e in (getattr(error, "errors", None) or []) if isinstance(e, dict)
        }
        return bool(reasons & _TRANSIENT_REASONS)
    if isinstance(error, gexc.GoogleAPIError):
        return False
    # requests' ConnectionError/Timeout derive from OSError, and so does TimeoutError (the
    # client's result(timeout=…) raises concurrent.futures.TimeoutError, the same class).
    return isinstance(error, OSError)


@dataclass(frozen=True)
class RetrySettings:
    """Bounds of the retry layer: exponential backoff with full jitter.

    The wait before retry ``n`` is uniform in ``[0, min(initial_wait * 2**n, max_wait)]``; it stops
    after ``max_attempts`` attempts or once ``max_elapsed`` seconds have passed, whichever comes
    first. The defaults suit BigQuery's per-table DML limits (about one mutating statement per
    second, two running and twenty queued).
    """

    max_attempts: int = 8
    initial_wait: float = 0.5
    max_wait: float = 10.0
    max_elapsed: float = 90.0

    def retrying(self, on_retry: Callable[[RetryCallState], None] | None = None) -> Retrying:
        kwargs: dict[str, Any] = {}
        if on_retry is not None:
            kwargs["before_sleep"] = on_retry
        return Retrying(
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_elapsed),
            wait=wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait),
            retry=retry_if_exception(is_transient),
            reraise=True,
            **kwargs,
        )


DEFAULT_RETRY_SETTINGS: Final = RetrySettings()
