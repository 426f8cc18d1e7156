"""The claim-order rule of pipestate.domain.limits (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipestate.domain.limits import (
    AGING_STEP_SECONDS,
    FAIR_SHARE_SLOT_SECONDS,
    base_claim_order,
    next_claim_order,
    priority_offset,
)
from pipestate.domain.queue import QueueItem

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("priority", "hours"), [(1, 0), (2, 1), (5, 4), (10, 9)])
def test_priority_p_starts_p_minus_1_aging_steps_later(priority: int, hours: int) -> None:
    assert priority_offset(priority) == hours * AGING_STEP_SECONDS
    assert base_claim_order(T0, priority) == T0.timestamp() + hours * 3600


def test_an_item_waiting_longer_than_its_bound_goes_before_a_new_priority_1_item() -> None:
    patient = base_claim_order(T0, 10)
    assert base_claim_order(T0 + timedelta(hours=9, seconds=1), 1) > patient
    assert base_claim_order(T0 + timedelta(hours=8, minutes=59), 1) < patient


def test_a_flow_with_a_backlog_puts_its_next_item_one_slot_behind_its_tail() -> None:
    base = base_claim_order(T0, 5)
    assert next_claim_order(base, None) == base
    assert next_claim_order(base, base + 100) == base + 100 + FAIR_SHARE_SLOT_SECONDS
    assert next_claim_order(base, base - 100) == base  # an old tail does not pull an item forward


def test_a_queue_item_gets_its_base_claim_order_unless_given() -> None:
    item = QueueItem(queue_id="q", tenant_id="t", config={}, priority=3, created_at=T0)
    given = QueueItem(queue_id="q", tenant_id="t", config={}, priority=3, created_at=T0, claim_order=1.5)

    assert item.claim_order == base_claim_order(T0, 3)
    assert given.claim_order == 1.5
