"""Read models: the questions operators ask of the store, answered beside the services.

Entry points (the command line, the demo) call these; they do not assemble reports themselves.
"""

from __future__ import annotations

from pipestate.application.state_manager import PipelineStateManager
from pipestate.domain.ports import Storage
from pipestate.domain.status import TenantStatus


async def tenant_statuses(storage: Storage, tenant: str | None = None) -> list[TenantStatus]:
    """The status of one tenant, or of every tenant that has a schedule (sorted by tenant id)."""
    manager = PipelineStateManager(storage)
    if tenant is not None:
        tenants = [tenant]
    else:
        tenants = sorted({s.tenant_id for s in await storage.list_schedules()})
    return [await manager.get_customer_pipeline_status(t) for t in tenants]
