"""pipestate's application services: the public API users import."""

from __future__ import annotations

from application.clock import SYSTEM_CLOCK, SystemClock
from application.queue_manager import QueueManager
from application.recovery import Recovery
from application.retry_manager import RetryManager
from application.schedule_calculator import ScheduleCalculator
from application.schedule_manager import ScheduleManager
from application.scheduler import Scheduler
from application.state_manager import PipelineStateManager, RunSpec
from application.worker import Worker

__all__ = [
    "SYSTEM_CLOCK",
    "PipelineStateManager",
    "QueueManager",
    "Recovery",
    "RetryManager",
    "RunSpec",
    "ScheduleCalculator",
    "ScheduleManager",
    "Scheduler",
    "SystemClock",
    "Worker",
]
