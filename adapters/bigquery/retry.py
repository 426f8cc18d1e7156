"""Which BigQuery failures are transient, and the one retry layer (tenacity) that handles them.

Errors are classified by BigQuery's ``errors[].reason`` first (the client keeps the job's
``errorResult`` in ``exception.errors``), the HTTP status only when there is no reason:

* ``bytesBilledLimitExceeded`` is **permanent and loud** (:class:`BytesBilledLimitExceeded`). The
  client maps this reason to a 500, so a status-based rule would retry it.
* Contention is **transient with a long backoff**: "Could not serialize access to table … due to
  concurrent update", "Transaction is aborted due to concurrent update", "Too many DML statements
  outstanding against table …", and ``quotaExceeded`` when its message is about DML jobs pending
  or running against a table (BigQuery's DML queue).
* ``backendError``, ``internalError``, ``jobBackendError``, ``jobInternalError``,
  ``rateLimitExceeded`` (and "Exceeded rate limits") are transient.
* Any other reason (``invalidQuery``, ``notFound``, ``accessDenied``, ``quotaExceeded`` for a
  daily quota …) is permanent.
* Without a reason: HTTP 429/500/502/503/504, network errors, timeouts, ``google.auth``
  transport errors and retryable refresh errors are transient; the rest permanent.

The Google client has retry layers of its own (``retry`` for HTTP requests, ``job_retry`` for
re-running failed queries); the adapter passes ``None`` to both, so this module is the only layer
that retries and its bounds (attempts, elapsed time) are the real ones.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Final, TypeVar

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from tenacity import (
    RetryCallState,
    Retrying,
)

from pipestate.adapters.retry import RetrySettings as RetrySettings
from pipestate.domain.errors import StorageError

T = TypeVar("T")


class ErrorClass(Enum):
    TRANSIENT = "transient"
    """Retry soon (backend hiccup, rate limit, lost connection)."""
    CONTENTION = "contention"
    """Retry after a long backoff: the table's DML queue is full or a concurrent DML won."""
    PERMANENT = "permanent"
    """Surface at once."""
    BYTE_CAP = "byte_cap"
    """``maximum_bytes_billed`` refused the job: permanent, and said so."""


_TRANSIENT_TYPES: Final = (
    gexc.TooManyRequests,  # 429
    gexc.InternalServerError,  # 500
    gexc.BadGateway,  # 502
    gexc.ServiceUnavailable,  # 503
    gexc.GatewayTimeout,  # 504
)

_CONTENTION_MARKERS: Final = (
    "could not serialize access to table",
    "transaction is aborted due to concurrent update",
    "too many dml statements outstanding",
)
"""Message fragments of BigQuery's DML-conflict and DML-queue errors."""

_DML_QUEUE_QUOTA_MARKERS: Final = ("dml", "pending", "running")
"""``quotaExceeded`` about the DML queue ("… total number of dml jobs writing to a table, pending +
running"), not a daily quota."""

_TRANSIENT_REASONS: Final = frozenset(
    {"backendError", "internalError", "jobBackendError", "jobInternalError", "rateLimitExceeded", "stopped"}
)
"""``errors[].reason`` values BigQuery documents as retryable, plus ``stopped``: a job cancelled by
its timeout (the adapter's cancel or ``job_timeout_ms``) is DONE without committing, so running
the statement again is safe."""

BYTES_BILLED_REASON: Final = "bytesBilledLimitExceeded"


def reasons(error: BaseException) -> set[str]:
    """The ``errors[].reason`` values a Google API exception carries."""
    return {str(e.get("reason", "")) for e in (getattr(error, "errors", None) or []) if isinstance(e, dict)}


def _text(error: BaseException) -> str:
    return str(getattr(error, "message", "") or error).lower()


def classify(error: BaseException) -> ErrorClass:
    """How the retry layer treats ``error`` (see the module docstring)."""
    if isinstance(error, StorageError):
        return ErrorClass.PERMANENT  # already decided (and never resubmitted)
    found = reasons(error)
    text = _text(error)
    if BYTES_BILLED_REASON in found or ("bytes billed" in text and "limit" in text):
        return ErrorClass.BYTE_CAP
    if any(marker in text for marker in _CONTENTION_MARKERS):
        return ErrorClass.CONTENTION
    if "quotaExceeded" in found:
        dml_queue = all(marker in text for marker in _DML_QUEUE_QUOTA_MARKERS)
        return ErrorClass.CONTENTION if dml_queue else ErrorClass.PERMANENT
    if found & _TRANSIENT_REASONS or "exceeded rate limits" in text:
        return ErrorClass.TRANSIENT
    if found - {""}:
        return ErrorClass.PERMANENT
    if isinstance(error, _TRANSIENT_TYPES):
        return ErrorClass.TRANSIENT
    if isinstance(error, auth_exc.TransportError):
        return ErrorClass.TRANSIENT
    if isinstance(error, auth_exc.RefreshError):
        return ErrorClass.TRANSIENT if error.retryable else ErrorClass.PERMANENT
    if isinstance(error, gexc.GoogleAPIError | auth_exc.GoogleAuthError):
        return ErrorClass.PERMANENT
    # requests' ConnectionError/Timeout derive from OSError, and so does TimeoutError (the
    # client's result(timeout=…) raises concurrent.futures.TimeoutError, the same class).
    return ErrorClass.TRANSIENT if isinstance(error, OSError) else ErrorClass.PERMANENT


def is_transient(error: BaseException) -> bool:
    """True when ``error`` is worth retrying (see the module docstring)."""
    return classify(error) in (ErrorClass.TRANSIENT, ErrorClass.CONTENTION)


RETRIED_ERRORS: Final = (gexc.GoogleAPIError, auth_exc.GoogleAuthError, OSError)
"""What the adapter translates at its boundary (everything the client and google.auth raise)."""


def retrying_for(
    settings: RetrySettings, on_retry: Callable[[RetryCallState], None] | None = None
) -> Retrying:
    """``settings`` applied to BigQuery: transient per :func:`is_transient`, contention (a full DML
    queue, a lost DML conflict) waits long."""
    return settings.retrying(
        is_transient, contention=lambda error: classify(error) is ErrorClass.CONTENTION, on_retry=on_retry
    )


DEFAULT_RETRY_SETTINGS: Final = RetrySettings()
