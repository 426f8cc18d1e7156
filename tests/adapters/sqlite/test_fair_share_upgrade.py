"""A SQLite file made by schema version 2 (before fair share) is upgraded in place (issue 13)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.adapters.sqlalchemy.tables import SCHEMA_VERSION
from pipestate.domain.limits import AGING_STEP_SECONDS, base_claim_order

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def version_2_file(path: Path) -> None:
    storage = SqlAlchemyStorage.from_url(f"sqlite:///{path}")
    await storage.create_schema()
    await storage.close()
    with sqlite3.connect(path) as conn:  # what schema version 2 created on SQLite
        conn.execute("DROP INDEX ix_queue_claim")
        conn.execute("DROP INDEX ix_queue_tenant_flow")
        conn.execute("ALTER TABLE x_meta_pipeline_queue DROP COLUMN claim_order")
        conn.execute(
            "CREATE INDEX ix_queue_claim ON x_meta_pipeline_queue (status, priority, created_at, queue_id)"
        )
        conn.execute("CREATE INDEX ix_queue_tenant_status ON x_meta_pipeline_queue (tenant_id, status)")
        conn.executemany(
            "INSERT INTO x_meta_pipeline_queue (queue_id, tenant_id, config, priority, created_at, status,"
            " version, attempts) VALUES (?, 't', '{}', ?, ?, 'QUEUED', 1, 0)",
            [
                ("old-p1", 1, "2026-03-01 12:00:00.000000"),
                ("older-p2", 2, "2026-03-01 10:00:00.000000"),  # waited 2 h: past its aging step
            ],
        )
        conn.execute("UPDATE pipestate_schema_version SET version = 2")


async def test_a_version_2_file_gets_claim_orders_and_the_fair_claim_index(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    await version_2_file(path)
    storage = SqlAlchemyStorage.from_url(f"sqlite:///{path}")
    try:
        await storage.create_schema()
        versions = await storage.schema_versions()
        stored = await storage.get_queue_item("older-p2")
        claimed = await storage.claim_queue_items(
            worker_id="w", claim_token="t", now=T0, lease_expires_at=T0 + timedelta(minutes=5), limit=2
        )
    finally:
        await storage.close()

    with sqlite3.connect(path) as conn:
        indexes = {
            r[0]: r[1] for r in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
        }
    assert versions == list(range(2, SCHEMA_VERSION + 1))  # 3: fair share, and every later step
    assert stored is not None
    assert abs((stored.claim_order or 0) - base_claim_order(T0 - timedelta(hours=2), 2)) < 1e-3
    assert AGING_STEP_SECONDS == 3600.0  # the upgrade's fill statement spells the step out
    assert [i.queue_id for i in claimed] == ["older-p2", "old-p1"]  # aged past the newer priority 1
    assert "claim_order" in indexes["ix_queue_claim"]
    assert "ix_queue_tenant_flow" in indexes and "ix_queue_tenant_status" not in indexes
