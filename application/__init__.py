"""pipestate's application services: the public API users import."""

from __future__ import annotations

from pipestate.application.clock import SYSTEM_CLOCK, SystemClock
from pipestate.application.queue_manager import QueueManager
from pipestate.application.recovery import Recovery
from pipestate.application.retry_manager import RetryManager
from pipestate.application.schedule_calculator import ScheduleCalculator
from pipestate.application.schedule_manager import ScheduleManager
from pipestate.application.scheduler import Scheduler
from pipestate.application.state_manager import PipelineStateManager, RunSpec
from pipestate.application.worker import HandlerCancelled, RunContext, Worker

__all__ = [
    "SYSTEM_CLOCK",
    "HandlerCancelled",
    "PipelineStateManager",
    "QueueManager",
    "Recovery",
    "RetryManager",
    "RunContext",
    "RunSpec",
    "ScheduleCalculator",
    "ScheduleManager",
    "Scheduler",
    "SystemClock",
    "Worker",
]
