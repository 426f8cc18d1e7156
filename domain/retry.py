"""Retry policy: capped exponential backoff, optional deterministic jitter, error-type filter."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from pipestate.domain.errors import InvalidArgument, InvalidInput
from pipestate.domain.validation import MAX_DURATION_SECONDS, require_id, require_int, require_seconds

LEASE_EXPIRED: Final = "LeaseExpired"
"""The error type of a run whose worker stopped renewing its lease (a dead or cut-off worker)."""

MAX_RETRIES: Final = 1_000
MAX_BACKOFF_MULTIPLIER: Final = 100.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed run is retried.

    ``max_retries`` counts retries after the first attempt: with ``max_retries=2`` a run executes
    at most three times. The delay before retry ``n`` (1-based) is
    ``min(base_delay * backoff_multiplier ** (n - 1), max_delay)`` seconds, which with the
    defaults gives 1, 2, 4, 8 … minutes capped at 60. ``retry_on_errors=None`` retries every
    error type; a tuple retries only the listed type names. ``jitter`` (0..1) spreads the delay
    by up to that fraction, deterministically per ``(run_id, attempt)``.

    A lease expiry (error type :data:`LEASE_EXPIRED`: the worker died or was cut off) is an
    infrastructure failure, not the pipeline's: it is retried even when ``retry_on_errors`` does
    not list it, unless ``retry_on_lease_expiry=False``.

    Bounds (checked here, so every backend stores the same): ``max_retries`` 0..1000, delays
    finite and at most a year (``base_delay`` may be 0), ``max_delay >= base_delay`` (a smaller
    cap is refused, not raised silently), ``backoff_multiplier`` finite in 1..100, ``jitter``
    in 0..1, error type names valid ids.
    """

    max_retries: int = 3
    base_delay: float = 60.0
    backoff_multiplier: float = 2.0
    max_delay: float = 3600.0
    retry_on_errors: tuple[str, ...] | None = None
    jitter: float = 0.0
    retry_on_lease_expiry: bool = True
    invalid_reason: str | None = field(default=None, compare=False, repr=False)
    """Set only by :meth:`from_stored` on the no-retry stand-in for an unusable stored policy."""
    stored: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    """The unusable stored document itself, written back unchanged by :meth:`to_dict`."""

    def __post_init__(self) -> None:
        require_int("max_retries", self.max_retries, minimum=0, maximum=MAX_RETRIES)
        base = require_seconds("base_delay", self.base_delay, allow_zero=True)
        cap = require_seconds("max_delay", self.max_delay, allow_zero=True)
        if cap < base:
            raise InvalidArgument("max_delay", self.max_delay, f"must be >= base_delay ({self.base_delay:g})")
        multiplier = self.backoff_multiplier
        if (
            isinstance(multiplier, bool)
            or not isinstance(multiplier, int | float)
            or not math.isfinite(multiplier)
            or not 1 <= multiplier <= MAX_BACKOFF_MULTIPLIER
        ):
            rule = f"must be a finite number from 1 to {MAX_BACKOFF_MULTIPLIER:g}"
            raise InvalidArgument("backoff_multiplier", multiplier, rule)
        jitter = self.jitter
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter <= 1:
            raise InvalidArgument("jitter", jitter, "must be a number between 0 and 1")
        if not isinstance(self.retry_on_lease_expiry, bool):
            raise InvalidArgument("retry_on_lease_expiry", self.retry_on_lease_expiry, "must be a bool")
        if self.retry_on_errors is not None:
            names = self.retry_on_errors
            if isinstance(names, str | bytes) or not isinstance(names, Sequence):
                raise InvalidArgument("retry_on_errors", names, "must be a list of error type names")
            for name in names:
                require_id("retry_on_errors", name)
            object.__setattr__(self, "retry_on_errors", tuple(names))

    # ------------------------------------------------------------------ decisions
    def delay(self, attempt: int, *, run_id: str = "") -> timedelta:
        """Backoff before retry number ``attempt`` (1-based).

        Raises:
            InvalidArgument: ``attempt`` is not a positive integer.
        """
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            raise InvalidArgument("attempt", attempt, "must be an integer >= 1")
        # Cap the exponent first so huge attempts don't overflow the float (100.0 ** 64 is finite).
        exponent = min(attempt - 1, 64)
        grown = self.base_delay * self.backoff_multiplier**exponent
        seconds = min(grown, self.max_delay, MAX_DURATION_SECONDS)
        if self.jitter:
            digest = hashlib.sha256(f"{run_id}:{attempt}".encode()).digest()
            fraction = int.from_bytes(digest[:8], "big") / 2**64  # in [0, 1)
            seconds = seconds * (1 - self.jitter * fraction)
        return timedelta(seconds=seconds)

    def retry_at(self, attempt: int, base_time: datetime, *, run_id: str = "") -> datetime:
        """``base_time`` plus the backoff of retry ``attempt``.

        Raises:
            InvalidArgument: ``attempt`` is not a positive integer, or ``base_time`` is so close to
                the end of the calendar (year 9999) that the sum is not representable.
        """
        delay = self.delay(attempt, run_id=run_id)
        try:
            return base_time + delay
        except OverflowError:
            raise InvalidArgument("base_time", base_time, f"plus {delay} is past year 9999") from None

    def retries_error(self, error_type: str | None) -> bool:
        """True when errors of ``error_type`` are retried by this policy."""
        if error_type == LEASE_EXPIRED and self.retry_on_lease_expiry:
            return True
        if self.retry_on_errors is None:
            return True
        return error_type is not None and error_type in self.retry_on_errors

    def allows(self, retry_count: int, error_type: str | None) -> bool:
        """True when a run that already had ``retry_count`` retries may be retried again."""
        return retry_count < self.max_retries and self.retries_error(error_type)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        if self.stored is not None:  # a stand-in: keep the row's policy as it was
            return dict(self.stored)
        return {
            "max_retries": self.max_retries,
            "base_delay": self.base_delay,
            "backoff_multiplier": self.backoff_multiplier,
            "max_delay": self.max_delay,
            "retry_on_errors": list(self.retry_on_errors) if self.retry_on_errors is not None else None,
            "jitter": self.jitter,
            "retry_on_lease_expiry": self.retry_on_lease_expiry,
        }

    @classmethod
    def from_config(cls, config: RetryPolicy | Mapping[str, Any] | None) -> RetryPolicy:
        """Build a policy from a policy, a dict (the SEED's config form) or ``None`` (defaults).

        Raises:
            InvalidArgument: unknown keys or invalid values.
        """
        if config is None:
            return cls()
        if isinstance(config, RetryPolicy):
            return config
        if not isinstance(config, Mapping):
            raise InvalidArgument("retry_config", config, "must be a RetryPolicy or a mapping")
        known = {
            "max_retries",
            "base_delay",
            "backoff_multiplier",
            "max_delay",
            "retry_on_errors",
            "jitter",
            "retry_on_lease_expiry",
        }
        unknown = set(config) - known
        if unknown:
            raise InvalidArgument("retry_config", dict(config), f"unknown keys {sorted(unknown)}")
        values = dict(config)
        errors = values.get("retry_on_errors")
        if errors is not None:
            if isinstance(errors, str) or not isinstance(errors, Sequence):
                raise InvalidArgument("retry_on_errors", errors, "must be a list of error type names")
            values["retry_on_errors"] = tuple(errors)
        return cls(**values)

    @classmethod
    def from_stored(cls, config: Mapping[str, Any] | None) -> RetryPolicy | None:
        """Rebuild a policy read back from a store; never raises.

        A stored policy that no longer validates (written by an older version without these
        bounds, or edited by hand) must not stop the loading of the other rows: it becomes a
        policy that never retries, with :attr:`invalid_reason` saying why, so the run is parked
        (FAILED with that reason) instead of breaking every recovery pass.
        """
        if config is None:
            return None
        try:
            return cls.from_config(config)
        except (InvalidInput, TypeError, ValueError, OverflowError) as exc:
            return cls(
                max_retries=0, invalid_reason=f"stored retry policy is invalid ({exc})", stored=dict(config)
            )


DEFAULT_RETRY_POLICY = RetryPolicy()
