"""A pipeline run and its lifecycle.

The lifecycle is one module-level ``transitions.Machine`` (:data:`LIFECYCLE`) shared by every
run; the run itself stays a plain dataclass that the machine only reads and writes through its
``state`` attribute. Every domain method takes the current instant (and any ids) as arguments,
fires its trigger through :meth:`PipelineRun._fire`, then does bookkeeping that cannot fail, and
increments ``version`` so that adapters can store the result with a compare-and-set.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, cast

from transitions import EventData, Machine, MachineError

from pipestate.domain.clock import ensure_aware
from pipestate.domain.errors import (
    InvalidArgument,
    InvalidInput,
    InvalidPriority,
    InvalidState,
    InvalidTransition,
    StaleClaim,
    TransitionRejected,
)
from pipestate.domain.events import Actor, RunEvent, derive_event_id, truncate_traceback
from pipestate.domain.retry import DEFAULT_RETRY_POLICY, LEASE_EXPIRED, RetryPolicy
from pipestate.domain.validation import (
    MAX_ID_LENGTH,
    clean_text,
    optional_id,
    require_config,
    require_id,
)

__all__ = ["LEASE_EXPIRED", "PipelineRun", "RunState", "require_id", "require_priority"]


class RunState(StrEnum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"

    @classmethod
    def parse(cls, value: RunState | str) -> RunState:
        """Accept a member or its name (case-insensitive).

        Raises:
            InvalidState: not a state of the lifecycle.
        """
        if isinstance(value, RunState):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().upper())
            except ValueError:
                pass
        raise InvalidState(value, "RunState")

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES: Final = frozenset({RunState.COMPLETED, RunState.CANCELLED, RunState.SKIPPED})
"""States a run never leaves. FAILED is not terminal: ``retry`` leaves it."""

ACTIVE_STATES: Final = frozenset({RunState.SCHEDULED, RunState.PENDING, RunState.RUNNING})
"""States ``cancel`` leaves from."""


# --------------------------------------------------------------------------- guards
def _is_due(event: EventData) -> bool:
    run = cast(PipelineRun, event.model)
    now: datetime = event.kwargs["now"]
    return run.scheduled_time <= now


def _lease_expired(event: EventData) -> bool:
    run = cast(PipelineRun, event.model)
    now: datetime = event.kwargs["now"]
    return run.lease_expires_at is None or run.lease_expires_at <= now


def _retry_allowed(event: EventData) -> bool:
    run = cast(PipelineRun, event.model)
    policy: RetryPolicy = event.kwargs["policy"]
    return run.retryable and policy.allows(run.retry_count, run.error_type)


def _retry_in_future(event: EventData) -> bool:
    retry_at: datetime = event.kwargs["retry_at"]
    now: datetime = event.kwargs["now"]
    return retry_at > now


S = RunState
TRANSITIONS: Final[list[dict[str, Any]]] = [
    {"trigger": "make_pending", "source": S.SCHEDULED, "dest": S.PENDING, "conditions": [_is_due]},
    {"trigger": "start", "source": S.PENDING, "dest": S.RUNNING},
    {"trigger": "complete", "source": S.RUNNING, "dest": S.COMPLETED},
    {"trigger": "fail", "source": S.RUNNING, "dest": S.FAILED},
    {
        "trigger": "retry",
        "source": S.FAILED,
        "dest": S.SCHEDULED,
        "conditions": [_retry_allowed, _retry_in_future],
    },
    {
        "trigger": "retry",
        "source": S.FAILED,
        "dest": S.PENDING,
        "conditions": [_retry_allowed],
        "unless": [_retry_in_future],
    },
    {"trigger": "cancel", "source": [S.SCHEDULED, S.PENDING, S.RUNNING], "dest": S.CANCELLED},
    {"trigger": "expire_lease", "source": S.RUNNING, "dest": S.FAILED, "conditions": [_lease_expired]},
    {"trigger": "skip", "source": S.SCHEDULED, "dest": S.SKIPPED},
]
"""The lifecycle as data (DESIGN.md, "Run lifecycle")."""

LIFECYCLE: Final = Machine(
    model=None,
    states=RunState,
    transitions=TRANSITIONS,
    initial=None,
    auto_transitions=False,
    send_event=True,
)


def _edges() -> dict[tuple[RunState, RunState], str]:
    edges: dict[tuple[RunState, RunState], str] = {}
    for spec in TRANSITIONS:
        sources = spec["source"] if isinstance(spec["source"], list) else [spec["source"]]
        for source in sources:
            edges.setdefault((source, spec["dest"]), spec["trigger"])
    return edges


EDGES: Final[Mapping[tuple[RunState, RunState], str]] = _edges()
"""(from, to) -> trigger, derived from :data:`TRANSITIONS`."""


def trigger_for(run_id: str, source: RunState, dest: RunState) -> str:
    """The trigger that moves a run from ``source`` to ``dest``.

    Raises:
        InvalidTransition: ``source -> dest`` is not an edge of the lifecycle.
    """
    try:
        return EDGES[(source, dest)]
    except KeyError:
        raise InvalidTransition(run_id, source, f"{source.value}->{dest.value}") from None


# --------------------------------------------------------------------------- validation helpers
def require_priority(priority: object) -> int:
    """Return ``priority`` if it is an int in 1..10.

    Raises:
        InvalidPriority: anything else (bools included).
    """
    if not isinstance(priority, int) or isinstance(priority, bool) or not 1 <= priority <= 10:
        raise InvalidPriority(priority)
    return priority


def require_duration_seconds(value: object) -> float | None:
    """``None`` or a finite number of seconds >= 0.

    Raises:
        InvalidArgument: negative, NaN, infinite, or not a number.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InvalidArgument("duration_seconds", value, "must be a finite number of seconds >= 0")
    return float(value)


RUN_NAMESPACE: Final = uuid.UUID("6f1c2b1e-8f5d-4a7e-9a51-7f0d3c2e9b10")


def derive_run_id(tenant_id: str, config_id: str, scheduled_time: datetime, *, rerun: int = 0) -> str:
    """The id of the run for one schedule slot: the same inputs always give the same id.

    This is what makes run creation idempotent across retries, ticks and schedulers. ``rerun``
    n > 0 names an operator's n-th rerun of that slot (a run of its own).
    """
    slot = ensure_aware(scheduled_time, "scheduled_time").isoformat(timespec="microseconds")
    key = "\x1f".join((tenant_id, config_id, slot))
    if rerun:
        key = f"{key}\x1frerun {rerun}"
    return str(uuid.uuid5(RUN_NAMESPACE, key))


def derive_token(*parts: str) -> str:
    """A short deterministic token (used for queue ids derived from a run and its retry count)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- the run
@dataclass(eq=True)
class PipelineRun:
    """One execution slot of a tenant's pipeline configuration, with its whole history."""

    run_id: str
    tenant_id: str
    config_id: str
    scheduled_time: datetime
    state: RunState = RunState.SCHEDULED
    priority: int = 5
    version: int = 1
    attempt: int = 0
    retry_count: int = 0
    retryable: bool = True
    retry_policy: RetryPolicy | None = None
    schedule_id: str | None = None
    worker_id: str | None = None
    claim_token: str | None = None
    lease_expires_at: datetime | None = None
    pipeline_logging_id: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_seconds: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    next_retry_at: datetime | None = None
    cancel_reason: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    config: dict[str, Any] = field(default_factory=dict)
    pending_events: list[RunEvent] = field(default_factory=list, compare=False, repr=False)
    """Events of the transitions made since the run was loaded, not yet stored. Not a column: the
    storage adapter writes them with the run's compare-and-set (or insert) and then empties it."""

    # ------------------------------------------------------------------ creation
    @classmethod
    def new(
        cls,
        *,
        tenant_id: str,
        config_id: str,
        scheduled_time: datetime,
        now: datetime,
        priority: int = 5,
        retry_policy: RetryPolicy | None = None,
        schedule_id: str | None = None,
        config: Mapping[str, Any] | None = None,
        state: RunState = RunState.SCHEDULED,
        actor: Actor = Actor.SCHEDULER,
        reason: str = "",
        rerun: int = 0,
    ) -> PipelineRun:
        """A new SCHEDULED run whose id is derived from (tenant_id, config_id, scheduled_time).

        Raises:
            InvalidIdentifier: empty, too long or control characters in tenant_id or config_id.
            InvalidPriority: priority outside 1..10.
            InvalidArgument: config is not a bounded JSON object (see
                :func:`pipestate.domain.validation.require_config`).
            NaiveDatetime: scheduled_time or now without a time zone.
        """
        require_id("tenant_id", tenant_id)
        require_id("config_id", config_id)
        optional_id("schedule_id", schedule_id)
        require_priority(priority)
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise InvalidArgument("retry_policy", retry_policy, "must be a RetryPolicy")
        checked_config = require_config("config", config if config is not None else {})
        slot = ensure_aware(scheduled_time, "scheduled_time")
        at = ensure_aware(now, "now")
        if state not in (RunState.SCHEDULED, RunState.SKIPPED):
            raise InvalidArgument(
                "state", state, "a new run starts SCHEDULED (or SKIPPED for a dropped slot)"
            )
        run = cls(
            run_id=derive_run_id(tenant_id, config_id, slot, rerun=rerun),
            tenant_id=tenant_id,
            config_id=config_id,
            scheduled_time=slot,
            state=state,
            priority=priority,
            retry_policy=retry_policy,
            schedule_id=schedule_id,
            created_at=at,
            updated_at=at,
            config=checked_config,
        )
        run._record(None, at, actor, reason)
        return run

    def copy(self) -> PipelineRun:
        return replace(self, config=dict(self.config), pending_events=list(self.pending_events))

    def take_events(self) -> list[RunEvent]:
        """The pending events, oldest first; the run keeps none afterwards (for adapters)."""
        events, self.pending_events = self.pending_events, []
        return events

    def _record(
        self,
        source: RunState | None,
        now: datetime,
        actor: Actor,
        reason: str = "",
        traceback: str | None = None,
    ) -> None:
        """Append the event of the transition just made (after ``_touch``: version is the new one)."""
        failed = self.state is RunState.FAILED
        self.pending_events.append(
            RunEvent(
                event_id=derive_event_id(self.run_id, self.version),
                run_id=self.run_id,
                tenant_id=self.tenant_id,
                version=self.version,
                from_state=None if source is None else source.value,
                to_state=self.state.value,
                at=now,
                attempt=self.attempt,
                actor=Actor(actor).value,
                worker_id=self.worker_id,
                error_type=self.error_type if failed else None,
                error_message=self.error_message if failed else None,
                traceback=truncate_traceback(traceback) if failed else None,
                reason=clean_text(reason) if reason else None,
            )
        )

    @property
    def effective_retry_policy(self) -> RetryPolicy:
        return self.retry_policy if self.retry_policy is not None else DEFAULT_RETRY_POLICY

    # ------------------------------------------------------------------ the choke point
    def _fire(self, trigger: str, *, reason: str = "", **kwargs: Any) -> None:
        source = self.state
        try:
            moved = LIFECYCLE.events[trigger].trigger(self, **kwargs)
        except MachineError as exc:
            raise InvalidTransition(self.run_id, source, trigger) from exc
        if not moved:
            raise TransitionRejected(self.run_id, source, trigger, reason)

    def _touch(self, now: datetime) -> None:
        self.version += 1
        self.updated_at = now

    def _check_token(self, claim_token: str | None) -> None:
        if claim_token is not None and claim_token != self.claim_token:
            raise StaleClaim(self.run_id, claim_token)

    def _release_claim(self) -> None:
        self.claim_token = None
        self.lease_expires_at = None

    # ------------------------------------------------------------------ triggers
    def make_pending(self, now: datetime, *, actor: Actor = Actor.SCHEDULER, reason: str = "") -> None:
        """SCHEDULED -> PENDING once ``scheduled_time <= now``.

        Raises:
            InvalidTransition: not SCHEDULED.
            TransitionRejected: not due yet.
        """
        self._fire("make_pending", now=now, reason="not due yet")
        self._touch(now)
        self._record(RunState.SCHEDULED, now, actor, reason)

    def start(
        self,
        now: datetime,
        *,
        worker_id: str,
        claim_token: str,
        lease_expires_at: datetime,
        pipeline_logging_id: str | None = None,
        actor: Actor = Actor.WORKER,
        reason: str = "",
    ) -> None:
        """PENDING -> RUNNING: a worker claimed the run and holds a lease until ``lease_expires_at``.

        Raises:
            InvalidIdentifier: empty worker_id or claim_token.
            InvalidTransition: not PENDING.
        """
        require_id("worker_id", worker_id)
        require_id("claim_token", claim_token)
        self._fire("start")
        self.attempt += 1
        self.worker_id = worker_id
        self.claim_token = claim_token
        self.lease_expires_at = lease_expires_at
        self.pipeline_logging_id = pipeline_logging_id
        self.started_at = now
        self.completed_at = None
        self.duration_seconds = None
        self._touch(now)
        self._record(RunState.PENDING, now, actor, reason)

    def heartbeat(self, now: datetime, *, claim_token: str, lease_expires_at: datetime) -> None:
        """Extend the lease of a RUNNING run held with ``claim_token``.

        Raises:
            InvalidTransition: not RUNNING.
            StaleClaim: the token no longer holds the run.
        """
        if self.state is not RunState.RUNNING:
            raise InvalidTransition(self.run_id, self.state, "heartbeat")
        self._check_token(claim_token)
        self.lease_expires_at = lease_expires_at
        self._touch(now)

    def complete(
        self,
        now: datetime,
        *,
        duration_seconds: float | None = None,
        claim_token: str | None = None,
        actor: Actor = Actor.WORKER,
        reason: str = "",
    ) -> None:
        """RUNNING -> COMPLETED. The duration defaults to ``now - started_at``.

        Raises:
            InvalidTransition: not RUNNING.
            StaleClaim: ``claim_token`` given and no longer holds the run.
            InvalidArgument: negative duration.
        """
        require_duration_seconds(duration_seconds)
        if self.state is RunState.RUNNING:
            self._check_token(claim_token)
        self._fire("complete")
        if duration_seconds is None and self.started_at is not None:
            duration_seconds = max((now - self.started_at).total_seconds(), 0.0)
        self.completed_at = now
        self.duration_seconds = duration_seconds
        self.error_type = None
        self.error_message = None
        self.next_retry_at = None
        self._release_claim()
        self._touch(now)
        self._record(RunState.RUNNING, now, actor, reason)

    def fail(
        self,
        now: datetime,
        *,
        error_message: str,
        error_type: str | None = None,
        retryable: bool = True,
        claim_token: str | None = None,
        policy: RetryPolicy | None = None,
        traceback: str | None = None,
        actor: Actor = Actor.WORKER,
        reason: str = "",
    ) -> None:
        """RUNNING -> FAILED, recording the error and the retry decision.

        ``next_retry_at`` is set when the run's policy (or ``policy``) would retry it. The message
        and type are stored cleaned (:func:`pipestate.domain.validation.clean_text`): whatever a
        handler raised, the failure is recorded. ``traceback`` (the handler's, truncated) goes to
        the failure's event only.

        Raises:
            InvalidTransition: not RUNNING.
            StaleClaim: ``claim_token`` given and no longer holds the run.
        """
        if self.state is RunState.RUNNING:
            self._check_token(claim_token)
        self._fire("fail")
        self._record_failure(now, error_type, error_message, retryable, policy)
        self._record(RunState.RUNNING, now, actor, reason, traceback)

    def expire_lease(
        self,
        now: datetime,
        *,
        policy: RetryPolicy | None = None,
        note: str = "",
        actor: Actor = Actor.RECOVERY,
        reason: str = "",
    ) -> None:
        """RUNNING -> FAILED with error_type ``LeaseExpired`` once the lease has run out.

        ``note`` is appended to the message (recovery names its pass there, so that two passes
        racing for the same run can tell whose write was stored).

        Raises:
            InvalidTransition: not RUNNING.
            TransitionRejected: the lease is still valid.
        """
        holder = self.worker_id
        self._fire("expire_lease", now=now, reason="lease still valid")
        message = f"lease of worker {holder!r} expired at {self.lease_expires_at}"
        if note:
            message = f"{message} ({note})"
        self._record_failure(now, LEASE_EXPIRED, message, True, policy)
        self._record(RunState.RUNNING, now, actor, reason)

    def _record_failure(
        self,
        now: datetime,
        error_type: str | None,
        error_message: str,
        retryable: bool,
        policy: RetryPolicy | None,
    ) -> None:
        effective = policy or self.effective_retry_policy
        kind = None if error_type is None else clean_text(error_type, MAX_ID_LENGTH)
        message = clean_text(error_message)
        next_retry_at = None
        if retryable and effective.allows(self.retry_count, kind):
            try:
                next_retry_at = effective.retry_at(self.retry_count + 1, now, run_id=self.run_id)
            except InvalidInput as exc:  # never lose the failure itself over its retry time
                message = clean_text(f"{message} (not retried: {exc})")
        if effective.invalid_reason is not None:
            message = clean_text(f"{message} (not retried: {effective.invalid_reason})")
        self.error_type = kind
        self.error_message = message
        self.retryable = bool(retryable)
        self.completed_at = now
        if self.started_at is not None:
            self.duration_seconds = max((now - self.started_at).total_seconds(), 0.0)
        self.next_retry_at = next_retry_at
        self._release_claim()
        self._touch(now)

    def retry(
        self,
        now: datetime,
        *,
        retry_at: datetime | None = None,
        policy: RetryPolicy | None = None,
        actor: Actor = Actor.SCHEDULER,
        reason: str = "",
    ) -> None:
        """FAILED -> SCHEDULED (``retry_at > now``) or PENDING (``retry_at <= now``).

        ``retry_at`` defaults to the stored ``next_retry_at``, else to ``now`` plus the policy's
        backoff for the next retry. The run's ``scheduled_time`` becomes ``retry_at`` and
        ``retry_count`` grows by one.

        Raises:
            InvalidTransition: not FAILED.
            TransitionRejected: not retryable, no retries left, or error type not retried.
        """
        effective = policy or self.effective_retry_policy
        if retry_at is None:
            retry_at = self.next_retry_at or effective.retry_at(self.retry_count + 1, now, run_id=self.run_id)
        rejection = (
            f"no retry allowed (retry {self.retry_count} of {effective.max_retries}, error {self.error_type})"
        )
        self._fire("retry", now=now, retry_at=retry_at, policy=effective, reason=rejection)
        self.retry_count += 1
        self.scheduled_time = retry_at
        self.next_retry_at = None
        self.worker_id = None
        self._touch(now)
        self._record(RunState.FAILED, now, actor, reason)

    def cancel(self, now: datetime, *, reason: str = "", actor: Actor = Actor.OPERATOR) -> None:
        """SCHEDULED | PENDING | RUNNING -> CANCELLED.

        Raises:
            InvalidTransition: any other state.
        """
        source = self.state
        self._fire("cancel")
        self.cancel_reason = clean_text(reason) if reason else None
        self.completed_at = now
        self._release_claim()
        self._touch(now)
        self._record(source, now, actor, reason)

    def skip(self, now: datetime, *, reason: str = "", actor: Actor = Actor.SCHEDULER) -> None:
        """SCHEDULED -> SKIPPED: a misfire policy dropped this slot; the row stays for audit.

        Raises:
            InvalidTransition: not SCHEDULED.
        """
        self._fire("skip")
        self.cancel_reason = clean_text(reason) if reason else None
        self.completed_at = now
        self._touch(now)
        self._record(RunState.SCHEDULED, now, actor, reason)

    # ------------------------------------------------------------------ generic
    def apply(self, trigger: str, now: datetime, **kwargs: Any) -> None:
        """Fire ``trigger`` by name with the keyword arguments its method takes.

        Raises:
            InvalidTransition: unknown trigger or not allowed from the current state.
        """
        method = _TRIGGER_METHODS.get(trigger)
        if method is None:
            raise InvalidTransition(self.run_id, self.state, trigger)
        method(self, now, **kwargs)


_TRIGGER_METHODS: Final[dict[str, Any]] = {
    "make_pending": PipelineRun.make_pending,
    "start": PipelineRun.start,
    "complete": PipelineRun.complete,
    "fail": PipelineRun.fail,
    "retry": PipelineRun.retry,
    "cancel": PipelineRun.cancel,
    "expire_lease": PipelineRun.expire_lease,
    "skip": PipelineRun.skip,
}
