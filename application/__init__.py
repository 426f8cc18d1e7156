"""pipestate's application services: the public API users import."""

from __future__ import annotations

from application.clock import SYSTEM_CLOCK, SystemClock
from application.queue_manager import QueueManager
from application.retry_manager import RetryManager
from application.schedule_calculator import ScheduleCalculator
from application.state_manager import PipelineStateManager, RunSpec

__all__ = [
    "SYSTEM_CLOCK",
    "PipelineStateManager",
    "QueueManager",
    "RetryManager",
    "RunSpec",
    "ScheduleCalculator",
    "SystemClock",
]
