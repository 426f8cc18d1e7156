"""pipestate's domain: runs, queue items, schedules and retry policies. Pure: no I/O, no clock."""

from __future__ import annotations

from pipestate.domain import errors
from pipestate.domain.clock import Clock, FrozenClock
from pipestate.domain.cron import DstFoldPolicy, DstGapPolicy
from pipestate.domain.pipeline_schedule import CatchupPolicy, PipelineSchedule
from pipestate.domain.queue import QueueItem, QueueStats, QueueStatus
from pipestate.domain.retry import RetryPolicy
from pipestate.domain.run import LIFECYCLE, TRANSITIONS, PipelineRun, RunState
from pipestate.domain.status import TenantStatus

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
