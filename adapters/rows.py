"""Explicit mapping between domain objects and flat rows, shared by every storage adapter.

A row is a ``dict`` keyed by the dataclass field names (the column names of every backend).
Enums become their string values, policies and configs become JSON-compatible dicts, timestamps
stay ``datetime``. Each adapter then adapts the few types its driver wants differently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from pipestate.domain.cron import DstFoldPolicy, DstGapPolicy
from pipestate.domain.events import RunEvent
from pipestate.domain.pipeline_schedule import CatchupPolicy, PipelineSchedule
from pipestate.domain.queue import QueueItem, QueueStatus
from pipestate.domain.retry import RetryPolicy
from pipestate.domain.run import PipelineRun, RunState

RUN_COLUMNS: Final = tuple(f.name for f in fields(PipelineRun) if f.name != "pending_events")
"""The run's stored fields (its pending events go to the events table)."""
EVENT_COLUMNS: Final = tuple(f.name for f in fields(RunEvent))
QUEUE_COLUMNS: Final = tuple(f.name for f in fields(QueueItem))
SCHEDULE_COLUMNS: Final = tuple(f.name for f in fields(PipelineSchedule))

JSON_COLUMNS: Final = frozenset({"config", "retry_policy"})
"""Columns holding a JSON document (dict or null)."""

RUN_KEY_COLUMNS: Final = ("run_id", "tenant_id", "config_id", "created_at")
"""Set once, when the run is created; never written by a compare-and-set."""
RUN_MUTABLE_COLUMNS: Final = tuple(c for c in RUN_COLUMNS if c not in RUN_KEY_COLUMNS)
"""What ``update_run(s)`` writes: every other field of the run."""
SCHEDULE_KEY_COLUMNS: Final = ("schedule_id", "tenant_id", "config_id", "created_at")
SCHEDULE_MUTABLE_COLUMNS: Final = tuple(c for c in SCHEDULE_COLUMNS if c not in SCHEDULE_KEY_COLUMNS)
"""What ``update_schedule(s)`` writes."""


class Effect(StrEnum):
    """What a queue status compare-and-set writes into one column."""

    NOW = "now"
    """The transition's ``now``."""
    CLEAR = "clear"
    """NULL."""
    ERROR = "error"
    """The transition's ``error_message``."""
    INCREMENT = "increment"
    """The stored value + 1."""


QUEUE_TRANSITION_EFFECTS: Final[MappingProxyType[QueueStatus, MappingProxyType[str, Effect]]] = (
    MappingProxyType(
        {
            to_status: MappingProxyType(
                {
                    "version": Effect.INCREMENT,
                    "updated_at": Effect.NOW,
                    **extra,
                }
            )
            for to_status, extra in (
                (
                    QueueStatus.QUEUED,
                    dict.fromkeys(
                        ("worker_id", "claim_token", "claimed_at", "lease_expires_at"), Effect.CLEAR
                    ),
                ),
                (QueueStatus.PROCESSING, {}),
                (QueueStatus.COMPLETED, {"completed_at": Effect.NOW, "lease_expires_at": Effect.CLEAR}),
                (
                    QueueStatus.FAILED,
                    {
                        "completed_at": Effect.NOW,
                        "lease_expires_at": Effect.CLEAR,
                        "error_message": Effect.ERROR,
                    },
                ),
            )
        }
    )
)
"""Besides ``status``, the columns ``transition_queue_item(to_status=…)`` writes, per destination
(the queue port's contract as data: every adapter builds its compare-and-set from this table).
Moving back to QUEUED hands the item back: its holder, token, claim time and lease are cleared."""


def utc(value: datetime | None) -> datetime | None:
    """Aware UTC; a naive value from a driver is taken to be UTC already."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _json(value: Any) -> Any:
    if isinstance(value, str):
        return json.loads(value)
    return value


def _policy(value: Any) -> RetryPolicy | None:
    value = _json(value)
    return RetryPolicy.from_stored(value)


def _policy_dict(policy: RetryPolicy | None) -> dict[str, Any] | None:
    return None if policy is None else policy.to_dict()


# --------------------------------------------------------------------------- runs
def run_to_row(run: PipelineRun) -> dict[str, Any]:
    row = {name: getattr(run, name) for name in RUN_COLUMNS}
    row["state"] = run.state.value
    row["retry_policy"] = _policy_dict(run.retry_policy)
    row["config"] = dict(run.config)
    return row


def run_from_row(row: Mapping[Any, Any]) -> PipelineRun:
    return PipelineRun(
        run_id=row["run_id"],
        tenant_id=row["tenant_id"],
        config_id=row["config_id"],
        scheduled_time=utc(row["scheduled_time"]),  # type: ignore[arg-type]
        state=RunState(row["state"]),
        priority=int(row["priority"]),
        version=int(row["version"]),
        attempt=int(row["attempt"]),
        retry_count=int(row["retry_count"]),
        retryable=bool(row["retryable"]),
        retry_policy=_policy(row["retry_policy"]),
        schedule_id=row["schedule_id"],
        worker_id=row["worker_id"],
        claim_token=row["claim_token"],
        lease_expires_at=utc(row["lease_expires_at"]),
        pipeline_logging_id=row["pipeline_logging_id"],
        started_at=utc(row["started_at"]),
        completed_at=utc(row["completed_at"]),
        duration_seconds=None if row["duration_seconds"] is None else float(row["duration_seconds"]),
        error_type=row["error_type"],
        error_message=row["error_message"],
        next_retry_at=utc(row["next_retry_at"]),
        cancel_reason=row["cancel_reason"],
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
        config=_json(row["config"]) or {},
    )


# --------------------------------------------------------------------------- run events
def event_to_row(event: RunEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in EVENT_COLUMNS}


def event_from_row(row: Mapping[Any, Any]) -> RunEvent:
    values = {name: row[name] for name in EVENT_COLUMNS}
    values["at"] = utc(values["at"])
    values["version"] = int(values["version"])
    values["attempt"] = int(values["attempt"])
    return RunEvent(**values)


# --------------------------------------------------------------------------- queue items
def queue_to_row(item: QueueItem) -> dict[str, Any]:
    row = {name: getattr(item, name) for name in QUEUE_COLUMNS}
    row["status"] = item.status.value
    row["config"] = dict(item.config)
    return row


def queue_from_row(row: Mapping[Any, Any]) -> QueueItem:
    return QueueItem(
        queue_id=row["queue_id"],
        tenant_id=row["tenant_id"],
        config=_json(row["config"]) or {},
        priority=int(row["priority"]),
        created_at=utc(row["created_at"]),  # type: ignore[arg-type]
        status=QueueStatus(row["status"]),
        run_id=row["run_id"],
        version=int(row["version"]),
        attempts=int(row["attempts"]),
        worker_id=row["worker_id"],
        claim_token=row["claim_token"],
        claimed_at=utc(row["claimed_at"]),
        lease_expires_at=utc(row["lease_expires_at"]),
        completed_at=utc(row["completed_at"]),
        error_message=row["error_message"],
        updated_at=utc(row["updated_at"]),
        claim_order=None if row["claim_order"] is None else float(row["claim_order"]),
    )


# --------------------------------------------------------------------------- schedules
def schedule_to_row(schedule: PipelineSchedule) -> dict[str, Any]:
    row = {name: getattr(schedule, name) for name in SCHEDULE_COLUMNS}
    row["retry_policy"] = _policy_dict(schedule.retry_policy)
    row["catchup"] = schedule.catchup.value
    row["dst_gap"] = schedule.dst_gap.value
    row["dst_fold"] = schedule.dst_fold.value
    row["config"] = dict(schedule.config)
    return row


def schedule_from_row(row: Mapping[Any, Any]) -> PipelineSchedule:
    return PipelineSchedule(
        schedule_id=row["schedule_id"],
        tenant_id=row["tenant_id"],
        config_id=row["config_id"],
        cron=row["cron"],
        timezone=row["timezone"],
        next_fire_time=utc(row["next_fire_time"]),  # type: ignore[arg-type]
        priority=int(row["priority"]),
        enabled=bool(row["enabled"]),
        retry_policy=_policy(row["retry_policy"]),
        catchup=CatchupPolicy(row["catchup"]),
        max_catchup_runs=int(row["max_catchup_runs"]),
        misfire_grace_seconds=int(row["misfire_grace_seconds"]),
        dst_gap=DstGapPolicy(row["dst_gap"]),
        dst_fold=DstFoldPolicy(row["dst_fold"]),
        last_scheduled_time=utc(row["last_scheduled_time"]),
        version=int(row["version"]),
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
        config=_json(row["config"]) or {},
    )
