"""pipestate: state, queue, schedules and retries of scheduled data-pipeline runs for many tenants.

This module is the one page users import from::

    from pipestate import PipelineStateManager, QueueManager, RetryPolicy, errors
    from pipestate.adapters.sqlalchemy import SqlAlchemyStorage

The packages below it keep the architecture's layers: :mod:`pipestate.domain` (pure model),
:mod:`pipestate.application` (services and runtime) and :mod:`pipestate.adapters` (storage
backends and the command line). Storage adapters are imported from their own modules so that a
user of one backend never needs another backend's driver.
"""

from __future__ import annotations

from pipestate._version import __version__
from pipestate.application import (
    SYSTEM_CLOCK,
    HandlerCancelled,
    PipelineStateManager,
    QueueManager,
    Recovery,
    RetryManager,
    RunContext,
    RunSpec,
    ScheduleCalculator,
    ScheduleManager,
    Scheduler,
    SystemClock,
    Worker,
)
from pipestate.domain import (
    CatchupPolicy,
    Clock,
    DstFoldPolicy,
    DstGapPolicy,
    FrozenClock,
    PipelineRun,
    PipelineSchedule,
    QueueItem,
    QueueStats,
    QueueStatus,
    RetryPolicy,
    RunState,
    TenantStatus,
    errors,
)

__all__ = [
    "SYSTEM_CLOCK",
    "CatchupPolicy",
    "Clock",
    "DstFoldPolicy",
    "DstGapPolicy",
    "FrozenClock",
    "HandlerCancelled",
    "PipelineRun",
    "PipelineSchedule",
    "PipelineStateManager",
    "QueueItem",
    "QueueManager",
    "QueueStats",
    "QueueStatus",
    "Recovery",
    "RetryManager",
    "RetryPolicy",
    "RunContext",
    "RunSpec",
    "RunState",
    "ScheduleCalculator",
    "ScheduleManager",
    "Scheduler",
    "SystemClock",
    "TenantStatus",
    "Worker",
    "__version__",
    "errors",
]
