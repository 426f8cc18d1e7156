"""The typed errors of pipestate: one hierarchy under :class:`PipestateError`.

Invalid input is a ``ValueError`` subclass, a missing row is a ``LookupError`` subclass, and
storage failures are split into permanent (:class:`StorageError`) and transient
(:class:`StorageUnavailable`). Adapters translate their driver's exceptions into these at their
boundary, so no driver exception type reaches a caller.
"""

from __future__ import annotations

import reprlib
from typing import Any

_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlevel = 3


def shown(value: object) -> str:
    """A short ``repr`` for messages: bounded length and depth, never fails on huge input."""
    try:
        return _REPR.repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        return f"<{type(value).__name__}>"


class PipestateError(Exception):
    """Root of every error pipestate raises on purpose."""


# --------------------------------------------------------------------------- invalid input
class InvalidInput(PipestateError, ValueError):
    """An argument was rejected before anything was written."""


class InvalidCronExpression(InvalidInput):
    """A cron expression croniter cannot parse."""

    def __init__(self, expression: str, reason: str = "") -> None:
        self.expression = expression
        self.reason = reason
        detail = f": {reason}" if reason else ""
        super().__init__(f"invalid cron expression {expression!r}{detail}")


class InvalidTimezone(InvalidInput):
    """A time-zone name the IANA database does not know."""

    def __init__(self, timezone: str) -> None:
        self.timezone = timezone
        super().__init__(f"unknown time zone {timezone!r}")


class InvalidPriority(InvalidInput):
    """A priority outside 1 (highest) .. 10 (lowest), or not an integer."""

    def __init__(self, priority: object) -> None:
        self.priority = priority
        super().__init__(
            f"priority must be an integer from 1 (highest) to 10 (lowest), got {shown(priority)}"
        )


class InvalidState(InvalidInput):
    """A state name that is not a member of the named enum."""

    def __init__(self, value: object, kind: str = "RunState") -> None:
        self.value = value
        self.kind = kind
        super().__init__(f"unknown {kind} {shown(value)}")


class InvalidIdentifier(InvalidInput):
    """An id (tenant, config, run, worker, queue item …) that is empty, not a string, too long
    or holds control characters."""

    def __init__(self, field: str, value: object, reason: str = "") -> None:
        self.field = field
        self.value = value
        self.reason = reason
        rule = f"a non-empty string ({reason})" if reason else "a non-empty string"
        super().__init__(f"{field} must be {rule}, got {shown(value)}")


class NaiveDatetime(InvalidInput):
    """A datetime without a time zone where an instant was required."""

    def __init__(self, field: str, value: object) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field} must be a timezone-aware datetime, got naive {shown(value)}")


class InvalidArgument(InvalidInput):
    """Any other rejected argument (negative attempt, bad retry policy, bad limit …)."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field} {shown(value)}: {reason}")


# --------------------------------------------------------------------------- lifecycle
class InvalidTransition(PipestateError):
    """A trigger (or a from->to pair) that the lifecycle does not allow from the current state."""

    def __init__(self, entity_id: str, state: object, trigger: str) -> None:
        self.entity_id = entity_id
        self.state = state
        self.trigger = trigger
        name = getattr(state, "value", state)
        super().__init__(f"{entity_id}: cannot {trigger!r} from state {name}")

    @property
    def run_id(self) -> str:
        return self.entity_id


class TransitionRejected(InvalidTransition):
    """The edge exists but its guard refused it (e.g. no retries left, retry not allowed)."""

    def __init__(self, entity_id: str, state: object, trigger: str, reason: str = "") -> None:
        super().__init__(entity_id, state, trigger)
        self.reason = reason
        if reason:
            self.args = (f"{self.args[0]}: {reason}",)


class StaleClaim(PipestateError):
    """A worker acted with a claim token that no longer owns the run or queue item (fencing)."""

    def __init__(self, entity_id: str, claim_token: str | None) -> None:
        self.entity_id = entity_id
        self.claim_token = claim_token
        super().__init__(f"{entity_id}: claim token {claim_token!r} no longer holds this item")


# --------------------------------------------------------------------------- lookups
class NotFound(PipestateError, LookupError):
    """Base for rows that do not exist."""


class RunNotFound(NotFound):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} not found")


class QueueItemNotFound(NotFound):
    def __init__(self, queue_id: str) -> None:
        self.queue_id = queue_id
        super().__init__(f"queue item {queue_id!r} not found")


class ScheduleNotFound(NotFound):
    def __init__(self, schedule_id: str) -> None:
        self.schedule_id = schedule_id
        super().__init__(f"schedule {schedule_id!r} not found")


# --------------------------------------------------------------------------- concurrency, storage
class ConcurrencyConflict(PipestateError):
    """A compare-and-set lost its race: the row changed since it was read."""

    def __init__(self, entity_id: str, expected_version: int | None = None) -> None:
        self.entity_id = entity_id
        self.expected_version = expected_version
        at = f" (expected version {expected_version})" if expected_version is not None else ""
        super().__init__(f"{entity_id} was changed concurrently{at}")


class StorageError(PipestateError):
    """A permanent storage failure: a genuine SQL error, a permission error, a schema mismatch."""

    def __init__(self, message: str, *, operation: str = "", job_id: str | None = None, **extra: Any) -> None:
        self.operation = operation
        self.job_id = job_id
        self.extra = extra
        parts = [message]
        if operation:
            parts.append(f"operation={operation}")
        if job_id:
            parts.append(f"job_id={job_id}")
        super().__init__(" ".join(parts))


class StorageUnavailable(StorageError):
    """A transient storage failure (lost connection, lock contention, 429/500/503): retry later."""
