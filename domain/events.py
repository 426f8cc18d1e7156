"""Run history: one :class:`RunEvent` per transition of a run, appended, never changed.

A run records the events of the transitions it makes in memory (``PipelineRun.pending_events``);
the storage adapter writes them with the run's compare-and-set — in the same transaction on the
SQL backends, in the same flush on BigQuery — so a stored transition always has its event and an
event never outlives a write that lost its race.

An event's id is derived from ``(run_id, version)``: the run's version after the transition. A
compare-and-set lets only one writer store a given version of a run, so the id is unique, and a
retried write inserts the same event at most once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

__all__ = ["MAX_TRACEBACK_CHARS", "Actor", "RunEvent", "derive_event_id", "truncate_traceback"]

MAX_TRACEBACK_CHARS: Final = 8192
"""A failure event keeps at most this many characters of the handler's traceback (the tail,
where the exception is)."""


class Actor(StrEnum):
    """Who made a transition."""

    WORKER = "worker"
    SCHEDULER = "scheduler"
    RECOVERY = "recovery"
    OPERATOR = "operator"


def derive_event_id(run_id: str, version: int) -> str:
    """The id of the event that took ``run_id`` to ``version``."""
    return hashlib.sha256(f"{run_id}\x1f{version}".encode()).hexdigest()[:32]


def truncate_traceback(text: str | None, limit: int = MAX_TRACEBACK_CHARS) -> str | None:
    """``text`` cut to its last ``limit`` characters (marked), or ``None`` when empty."""
    if not text:
        return None
    if len(text) <= limit:
        return text
    marker = "… (traceback truncated)\n"
    return marker + text[-(limit - len(marker)) :]


@dataclass(frozen=True)
class RunEvent:
    """One transition of one run: what changed, when, by whom and why."""

    event_id: str
    run_id: str
    tenant_id: str
    version: int
    """The run's version after this transition (orders a run's events)."""
    from_state: str | None
    """``None`` for the event that created the run."""
    to_state: str
    at: datetime
    attempt: int
    actor: str
    worker_id: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    reason: str | None = None
