"""Retry policy: capped exponential backoff, optional deterministic jitter, error-type filter."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pipestate.domain.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed run is retried.

    ``max_retries`` counts retries after the first attempt: with ``max_retries=2`` a run executes
    at most three times. The delay before retry ``n`` (1-based) is
    ``min(base_delay * backoff_multiplier ** (n - 1), max_delay)`` seconds, which with the
    defaults gives 1, 2, 4, 8 … minutes capped at 60. ``retry_on_errors=None`` retries every
    error type; a tuple retries only the listed type names. ``jitter`` (0..1) spreads the delay
    by up to that fraction, deterministically per ``(run_id, attempt)``.
    """

    max_retries: int = 3
    base_delay: float = 60.0
    backoff_multiplier: float = 2.0
    max_delay: float = 3600.0
    retry_on_errors: tuple[str, ...] | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_retries, int)
            or isinstance(self.max_retries, bool)
            or self.max_retries < 0
        ):
            raise InvalidArgument("max_retries", self.max_retries, "must be an integer >= 0")
        if self.base_delay < 0:
            raise InvalidArgument("base_delay", self.base_delay, "must be >= 0 seconds")
        if self.backoff_multiplier < 1:
            raise InvalidArgument("backoff_multiplier", self.backoff_multiplier, "must be >= 1")
        if self.max_delay < self.base_delay:
            raise InvalidArgument("max_delay", self.max_delay, "must be >= base_delay")
        if not 0 <= self.jitter <= 1:
            raise InvalidArgument("jitter", self.jitter, "must be between 0 and 1")
        if self.retry_on_errors is not None:
            names = self.retry_on_errors
            if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
                raise InvalidArgument("retry_on_errors", names, "must be a list of error type names")
            object.__setattr__(self, "retry_on_errors", tuple(names))

    # ------------------------------------------------------------------ decisions
    def delay(self, attempt: int, *, run_id: str = "") -> timedelta:
        """Backoff before retry number ``attempt`` (1-based).

        Raises:
            InvalidArgument: ``attempt`` is not a positive integer.
        """
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            raise InvalidArgument("attempt", attempt, "must be an integer >= 1")
        # Cap the exponent first so huge attempts don't overflow the float.
        exponent = min(attempt - 1, 64)
        seconds = min(self.base_delay * self.backoff_multiplier**exponent, self.max_delay)
        if self.jitter:
            digest = hashlib.sha256(f"{run_id}:{attempt}".encode()).digest()
            fraction = int.from_bytes(digest[:8], "big") / 2**64  # in [0, 1)
            seconds = seconds * (1 - self.jitter * fraction)
        return timedelta(seconds=seconds)

    def retry_at(self, attempt: int, base_time: datetime, *, run_id: str = "") -> datetime:
        return base_time + self.delay(attempt, run_id=run_id)

    def retries_error(self, error_type: str | None) -> bool:
        """True when errors of ``error_type`` are retried by this policy."""
        if self.retry_on_errors is None:
            return True
        return error_type is not None and error_type in self.retry_on_errors

    def allows(self, retry_count: int, error_type: str | None) -> bool:
        """True when a run that already had ``retry_count`` retries may be retried again."""
        return retry_count < self.max_retries and self.retries_error(error_type)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "max_retries": self.max_retries,
            "base_delay": self.base_delay,
            "backoff_multiplier": self.backoff_multiplier,
            "max_delay": self.max_delay,
            "retry_on_errors": list(self.retry_on_errors) if self.retry_on_errors is not None else None,
            "jitter": self.jitter,
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
        known = {"max_retries", "base_delay", "backoff_multiplier", "max_delay", "retry_on_errors", "jitter"}
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


DEFAULT_RETRY_POLICY = RetryPolicy()
