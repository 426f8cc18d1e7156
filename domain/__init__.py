"""pipestate's domain: runs, queue items, schedules and retry policies. Pure: no I/O, no clock."""

from __future__ import annotations

from domain import errors
from domain.clock import Clock, FrozenClock
from domain.pipeline_schedule import CatchupPolicy, PipelineSchedule
from domain.queue import QueueItem, QueueStats, QueueStatus
from domain.retry import RetryPolicy
from domain.run import LIFECYCLE, TRANSITIONS, PipelineRun, RunState
from domain.schedule import DstFoldPolicy, DstGapPolicy
from domain.status import TenantStatus

__all__ = [
    "LIFECYCLE",
    "TRANSITIONS",
    "CatchupPolicy",
    "Clock",
    "DstFoldPolicy",
    "DstGapPolicy",
    "FrozenClock",
    "PipelineRun",
    "PipelineSchedule",
    "QueueItem",
    "QueueStats",
    "QueueStatus",
    "RetryPolicy",
    "RunState",
    "TenantStatus",
    "errors",
]
