"""Fair share and aging: the order in which waiting queue items are claimed.

Every queue item carries a ``claim_order`` (seconds since the epoch, a float), fixed when it is
enqueued; claims take the waiting items in ``(claim_order, queue_id)`` order, one index scan.

* **Aging by priority offset.** An item enqueued at ``t`` with priority ``p`` starts at
  ``t + (p - 1) * AGING_STEP_SECONDS``. A later priority-1 item enqueued after
  ``t + (p - 1) * AGING_STEP_SECONDS`` therefore always comes after it: nothing starves, and
  priority still decides within that window (priority 1 before 2 … for items up to an hour apart).
* **Fair share by flow (start-time fair queueing).** A flow is a tenant's items of one priority.
  A new item of a flow that still has items waiting starts ``FAIR_SHARE_SLOT_SECONDS`` after the
  flow's last waiting item, not at its own enqueue time: a tenant that enqueues 1,000 items at
  once spreads them over 1,000 slots, and a tenant arriving later with one item goes between them,
  at its own enqueue time. The adapters compute the flow's tail inside the enqueue statement
  (SQLite, PostgreSQL) or the enqueue MERGE (BigQuery).

The guaranteed bound, for an item ``x`` of priority ``p`` enqueued at ``t`` whose flow has no
earlier waiting items: only items with a smaller ``claim_order`` are claimed before it, that is
items whose own (aged) start lies before ``t + (p - 1) * AGING_STEP_SECONDS``. Each other flow
contributes at most one item per slot of that window beyond its own start, so with ``F`` active
flows at most ``F * (1 + window / FAIR_SHARE_SLOT_SECONDS)`` items, whatever their backlog; and
once the clock passes ``t + (p - 1) * AGING_STEP_SECONDS`` every newly enqueued item goes behind
``x``. When workers claim faster than items arrive, ``x`` is claimed within
``(p - 1) * AGING_STEP_SECONDS`` of its enqueue (priority 10: 9 hours).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

FAIR_SHARE_SLOT_SECONDS: Final = 1.0
"""Virtual seconds between consecutive waiting items of one flow (tenant and priority)."""

AGING_STEP_SECONDS: Final = 3600.0
"""Virtual seconds per priority step: a priority-p item starts (p - 1) steps after a priority-1 one."""


def priority_offset(priority: int) -> float:
    """Seconds a priority-``priority`` item starts behind a priority-1 item enqueued at the same time."""
    return (priority - 1) * AGING_STEP_SECONDS


def base_claim_order(created_at: datetime, priority: int) -> float:
    """The claim order of an item whose flow has nothing waiting: its enqueue time, aged by priority."""
    return created_at.timestamp() + priority_offset(priority)


def next_claim_order(base: float, flow_tail: float | None) -> float:
    """The claim order of a new item: its base, or one slot after its flow's last waiting item.

    The SQL adapters compute the same in their enqueue statement; BigQuery in its MERGE.
    """
    if flow_tail is None:
        return base
    return max(base, flow_tail + FAIR_SHARE_SLOT_SECONDS)
