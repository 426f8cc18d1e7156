"""The SQLite claim keeps to its indexes on a database that was never analysed.

SQLite collects no planner statistics by itself. Without them, the claim's outer ``status``
term used to pick ix_queue_claim, and every claim tested each QUEUED row against the picked ids:
a claim took time linear in the backlog. These tests read the plan on a fresh file with a
backlog, the state every new deployment is in.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.adapters.sqlalchemy.sqlite_hotpath import CompiledStatement
from pipestate.adapters.sqlalchemy.statements import CLAIM_SQLITE, run_conditions
from pipestate.adapters.sqlalchemy.tables import runs
from pipestate.domain.ports import RunFilter
from pipestate.domain.run import RunState

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def fresh_file_with_backlog(path: Path, queued: int, done: int) -> None:
    storage = SqlAlchemyStorage.from_url(f"sqlite:///{path}")
    await storage.create_schema()
    await storage.close()
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO x_meta_pipeline_queue (queue_id, tenant_id, config, priority, created_at, status,"
            " version, attempts, claim_order) VALUES (?, 't', '{}', ?, ?, ?, 1, 0, ?)",
            (
                (
                    f"q{n}",
                    1 + n % 10,
                    f"2026-01-01 00:00:00.{n:06d}",
                    "QUEUED" if n < queued else "COMPLETED",
                    n / 1e6 + (n % 10) * 3600.0,
                )
                for n in range(queued + done)
            ),
        )


def claim_plan(path: Path) -> list[str]:
    statement = CompiledStatement(CLAIM_SQLITE)
    params = statement.parameters(
        {"b_worker": "w", "b_token": "t", "b_now": T0, "b_lease": T0 + timedelta(minutes=5), "b_limit": 10}
    )
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone() == (
            0,
        )
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement.sql}", params)]


async def test_claim_on_a_never_analysed_file_looks_picked_ids_up_by_primary_key(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    await fresh_file_with_backlog(path, queued=5_000, done=5_000)

    plan = claim_plan(path)

    outer, pick = plan[0], plan[-1]
    assert outer.startswith(
        "SEARCH x_meta_pipeline_queue USING INDEX sqlite_autoindex_x_meta_pipeline_queue_1"
    )
    assert "(queue_id=?)" in outer
    assert pick == "SEARCH x_meta_pipeline_queue USING COVERING INDEX ix_queue_claim (status=?)"
    assert not any(step.startswith("SCAN") or "TEMP B-TREE" in step for step in plan)


async def test_claim_on_a_never_analysed_file_takes_the_head_of_a_backlog(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    await fresh_file_with_backlog(path, queued=2_000, done=1_000)
    storage = SqlAlchemyStorage.from_url(f"sqlite:///{path}")
    try:
        claimed = await storage.claim_queue_items(
            worker_id="w", claim_token="t", now=T0, lease_expires_at=T0 + timedelta(minutes=5), limit=3
        )
        waiting = await storage.count_queue_items()
    finally:
        await storage.close()

    assert [i.queue_id for i in claimed] == ["q0", "q10", "q20"]  # priority 1, oldest first
    assert waiting == 3_000


async def test_the_ticks_page_of_due_runs_is_read_in_order_not_sorted(tmp_path: Path) -> None:
    # Every hourly schedule puts its run in the same slot: a page of due runs must not sort
    # the whole slot (it did, once per page, with an index on (state, scheduled_time) only).
    path = tmp_path / "q.db"
    await fresh_file_with_backlog(path, queued=0, done=0)
    page = (
        sa.select(runs)
        .where(*run_conditions(RunFilter(states=[RunState.SCHEDULED], scheduled_before=T0)))
        .order_by(runs.c.scheduled_time, runs.c.run_id)
        .limit(5_000)
    )
    sql = str(page.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    with sqlite3.connect(path) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]

    assert plan == ["SEARCH x_meta_scheduled_runs USING INDEX ix_runs_due (state=? AND scheduled_time<?)"]
