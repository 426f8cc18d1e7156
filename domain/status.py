"""Read models: what a tenant's runs look like right now."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipestate.domain.run import PipelineRun, RunState


@dataclass(frozen=True)
class TenantStatus:
    """Summary of one tenant's runs (``PipelineStateManager.get_customer_pipeline_status``).

    ``success_rate`` is completed / (completed + failed), ``None`` before any run finished.
    """

    tenant_id: str
    counts: Mapping[RunState, int]
    total: int
    success_rate: float | None
    last_completed: PipelineRun | None
    last_failed: PipelineRun | None
    oldest_pending_age_seconds: float | None

    def count(self, state: RunState) -> int:
        return self.counts.get(state, 0)
