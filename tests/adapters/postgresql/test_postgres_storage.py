"""PostgreSQL-only behaviour of ``SqlAlchemyStorage``: statements, plans, schema, error mapping."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.adapters.sqlalchemy.statements import CLAIM_POSTGRES as _CLAIM_POSTGRES
from pipestate.adapters.sqlalchemy.tables import SCHEMA_VERSION
from pipestate.domain.errors import StorageError, StorageUnavailable
from pipestate.domain.limits import base_claim_order
from pipestate.domain.ports import Capability
from pipestate.domain.queue import QueueItem, QueueStatus
from tests.adapters.postgresql.conftest import PgTarget

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
QUEUE = "x_meta_pipeline_queue"


def item(queue_id: str, priority: int, created_at: datetime) -> QueueItem:
    return QueueItem(
        queue_id=queue_id, tenant_id="t", config={"id": queue_id}, priority=priority, created_at=created_at
    )


def plan(admin: sa.Engine, statement: sa.ClauseElement, params: dict[str, object]) -> str:
    dialect = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
    compiled = statement.compile(dialect=dialect)
    with admin.connect() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN {compiled}", {**compiled.params, **params}).scalars()
        return "\n".join(rows)


def test_claim_locks_its_pick_once_with_skip_locked_in_a_cte() -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    sql = " ".join(str(_CLAIM_POSTGRES.compile(dialect=dialect)).split())

    assert sql.startswith("WITH picked AS (SELECT")
    assert "LIMIT %(b_limit)s FOR UPDATE SKIP LOCKED)" in sql
    assert "FROM picked WHERE x_meta_pipeline_queue.queue_id = picked.queue_id" in sql
    assert " IN (" not in sql  # an IN-subquery may be rescanned and claim more than the limit


async def test_batch_claim_takes_exactly_the_limit_by_priority_then_age_then_id(
    pg_storage: SqlAlchemyStorage,
) -> None:
    items = [
        item("c", 2, T0),
        item("a", 2, T0),
        item("late-top", 1, T0 + timedelta(seconds=5)),
        item("top", 1, T0),
        item("b", 2, T0),
        item("low", 9, T0 - timedelta(hours=1)),  # older, but within its aging bound (8 h)
    ]
    await pg_storage.insert_queue_items(items)

    first = await pg_storage.claim_queue_items(
        worker_id="w", claim_token="t1", now=T0, lease_expires_at=T0 + timedelta(minutes=5), limit=4
    )
    rest = await pg_storage.claim_queue_items(
        worker_id="w", claim_token="t2", now=T0, lease_expires_at=T0 + timedelta(minutes=5), limit=4
    )

    assert [i.queue_id for i in first] == ["top", "late-top", "a", "b"]
    assert [i.queue_id for i in rest] == ["c", "low"]
    assert all(i.status is QueueStatus.PROCESSING and i.attempts == 1 for i in first + rest)


async def test_columns_are_native_timestamptz_and_jsonb(
    pg_storage: SqlAlchemyStorage, admin: sa.Engine
) -> None:
    with admin.connect() as conn:
        types: dict[str, str] = dict(
            conn.exec_driver_sql(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %(t)s",
                {"t": QUEUE},
            ).all()
        )

    assert types["created_at"] == "timestamp with time zone"
    assert types["lease_expires_at"] == "timestamp with time zone"
    assert types["config"] == "jsonb"


async def test_timestamps_come_back_as_the_same_utc_instant_whatever_the_session_zone(
    pg: PgTarget,
) -> None:
    url, kwargs = pg
    options = kwargs["connect_args"]["options"] + " -ctimezone=Asia/Kolkata"
    storage = SqlAlchemyStorage.from_url(url, connect_args={"options": options})
    try:
        await storage.create_schema()
        created = datetime(2026, 3, 1, 23, 59, 59, 123456, tzinfo=UTC)
        await storage.insert_queue_items([item("q", 1, created)])
        stored = await storage.get_queue_item("q")
    finally:
        await storage.close()

    assert stored is not None
    assert stored.created_at == created
    assert stored.created_at.tzinfo is UTC


async def test_claim_and_status_queries_use_indexes_on_100k_rows(
    pg_storage: SqlAlchemyStorage, admin: sa.Engine
) -> None:
    with admin.begin() as conn:  # 10% waiting, the rest done: a queue that has run for a while
        conn.exec_driver_sql(
            "INSERT INTO x_meta_pipeline_queue "
            "(queue_id, tenant_id, config, priority, created_at, status, version, attempts, claim_order) "
            "SELECT 'q' || g, 't' || mod(g, 50), '{}'::jsonb, 1 + mod(g, 10), "
            "  timestamptz '2026-01-01' + g * interval '1 second', "
            "  CASE WHEN mod(g, 10) = 0 THEN 'QUEUED' ELSE 'COMPLETED' END, 1, 0, "
            "  1767225600 + g + mod(g, 10) * 3600.0 "
            "FROM generate_series(1, 100000) AS g"
        )
        conn.exec_driver_sql(f"ANALYZE {QUEUE}")
    claim = plan(
        admin,
        _CLAIM_POSTGRES,
        {"b_worker": "w", "b_token": "t", "b_now": T0, "b_lease": T0, "b_limit": 10},
    )
    waiting = plan(
        admin,
        sa.select(sa.func.count()).select_from(sa.table(QUEUE)).where(sa.column("status") == "QUEUED"),
        {},
    )
    print(f"claim plan:\n{claim}\nQUEUED count plan:\n{waiting}")

    assert "Seq Scan" not in claim
    assert "ix_queue_fair" in claim
    assert "Seq Scan" not in waiting


async def test_create_schema_is_idempotent_and_records_the_schema_version(
    pg: PgTarget, pg_storage: SqlAlchemyStorage
) -> None:
    url, kwargs = pg
    others = [SqlAlchemyStorage.from_url(url, **kwargs) for _ in range(4)]
    try:
        await asyncio.gather(*(s.create_schema() for s in others))  # workers starting at once
        await pg_storage.create_schema()
    finally:
        for other in others:
            await other.close()

    assert await pg_storage.schema_versions() == [SCHEMA_VERSION]


async def test_create_schema_refuses_a_database_from_a_newer_pipestate(
    pg_storage: SqlAlchemyStorage, admin: sa.Engine
) -> None:
    with admin.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO pipestate_schema_version (version, applied_at) VALUES (%(v)s, now())",
            {"v": SCHEMA_VERSION + 1},
        )

    with pytest.raises(StorageError, match="newer than this pipestate"):
        await pg_storage.create_schema()


async def test_create_schema_upgrades_an_older_database_step_by_step_once(
    pg_storage: SqlAlchemyStorage, admin: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipestate.adapters.sqlalchemy import storage as module

    monkeypatch.setattr(module, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
    monkeypatch.setattr(
        module,
        "UPGRADES",
        {
            SCHEMA_VERSION + 1: [f"ALTER TABLE {QUEUE} ADD COLUMN note TEXT"],
            SCHEMA_VERSION + 2: [f"CREATE INDEX IF NOT EXISTS ix_queue_note ON {QUEUE} (note)"],
        },
    )

    await pg_storage.create_schema()
    await pg_storage.create_schema()  # nothing left to apply

    assert await pg_storage.schema_versions() == [SCHEMA_VERSION, SCHEMA_VERSION + 1, SCHEMA_VERSION + 2]
    with admin.connect() as conn:
        assert conn.exec_driver_sql("SELECT to_regclass('ix_queue_note') IS NOT NULL").scalar()


async def test_a_genuine_sql_error_is_a_permanent_storage_error(
    pg_storage: SqlAlchemyStorage, admin: sa.Engine
) -> None:
    with admin.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {QUEUE} ADD CONSTRAINT small_priority CHECK (priority < 5)")

    with pytest.raises(StorageError) as raised:
        await pg_storage.insert_queue_items([item("q", 7, T0)])

    assert not isinstance(raised.value, StorageUnavailable)
    assert "23514" in str(raised.value)  # check_violation


async def test_an_unreachable_server_is_storage_unavailable_after_bounded_retries() -> None:
    storage = SqlAlchemyStorage.from_url(
        "postgresql+psycopg://postgres@127.0.0.1:1/test", connect_args={"connect_timeout": 1}
    )
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(StorageUnavailable):
            await storage.get_queue_item("q")
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        await storage.close()

    assert elapsed < 10


def test_from_url_names_the_missing_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    # The one fault not provoked for real: uninstalling psycopg from the test venv.
    monkeypatch.setitem(sys.modules, "psycopg", None)

    with pytest.raises(StorageError, match=r"pipestate\[postgres\]"):
        SqlAlchemyStorage.from_url("postgresql+psycopg://postgres@127.0.0.1:5432/test")


def test_plain_postgresql_url_uses_psycopg_3() -> None:
    storage = SqlAlchemyStorage.from_url("postgresql://postgres@127.0.0.1:5432/test")
    try:
        assert storage.engine.dialect.driver == "psycopg"
        assert storage.engine.pool._pre_ping
    finally:
        asyncio.run(storage.close())


async def test_declares_multi_host_skip_locked_capabilities(pg_storage: SqlAlchemyStorage) -> None:
    assert {Capability.MULTI_HOST, Capability.SKIP_LOCKED} <= pg_storage.capabilities


async def test_item_14_a_newer_schema_version_is_refused_by_every_open(
    pg: PgTarget, pg_storage: SqlAlchemyStorage, admin: sa.Engine
) -> None:
    with admin.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO pipestate_schema_version (version, applied_at) VALUES (%(v)s, now())",
            {"v": SCHEMA_VERSION + 1},
        )
    url, kwargs = pg
    storage = SqlAlchemyStorage.from_url(url, **kwargs)  # an older worker, opened after the upgrade
    try:
        with pytest.raises(StorageError, match="newer than this pipestate"):
            await storage.insert_queue_items([item("q", 1, T0)])
        with pytest.raises(StorageError, match="newer than this pipestate"):
            await storage.claim_queue_items(
                worker_id="w", claim_token="t", now=T0, lease_expires_at=T0 + timedelta(minutes=5), limit=1
            )
    finally:
        await storage.close()

    with admin.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM x_meta_pipeline_queue").scalar() == 0


async def test_claim_on_a_never_analysed_table_with_a_backlog_uses_the_claim_index(
    pg_storage: SqlAlchemyStorage, admin: sa.Engine
) -> None:
    with admin.begin() as conn:  # statistics never collected: autovacuum off, no ANALYZE
        conn.exec_driver_sql(f"ALTER TABLE {QUEUE} SET (autovacuum_enabled = false)")
        conn.exec_driver_sql(
            "INSERT INTO x_meta_pipeline_queue "
            "(queue_id, tenant_id, config, priority, created_at, status, version, attempts, claim_order) "
            "SELECT 'q' || g, 't', '{}'::jsonb, 1 + mod(g, 10), "
            "  timestamptz '2026-01-01' + g * interval '1 second', "
            "  CASE WHEN mod(g, 10) = 0 THEN 'QUEUED' ELSE 'COMPLETED' END, 1, 0, "
            "  1767225600 + g + mod(g, 10) * 3600.0 "
            "FROM generate_series(1, 100000) AS g"
        )
        analysed = conn.exec_driver_sql(
            "SELECT coalesce(last_analyze, last_autoanalyze) FROM pg_stat_user_tables WHERE relname = %(t)s",
            {"t": QUEUE},
        ).scalar()
    assert analysed is None
    claim = plan(
        admin,
        _CLAIM_POSTGRES,
        {"b_worker": "w", "b_token": "t", "b_now": T0, "b_lease": T0, "b_limit": 10},
    )

    assert "Seq Scan" not in claim
    assert "Index Scan using ix_queue_fair" in claim
    assert "x_meta_pipeline_queue_pkey" in claim  # the update finds the picked rows by key


async def test_a_version_1_database_is_upgraded_to_the_version_2_and_3_indexes_and_claim_orders(
    pg_storage: SqlAlchemyStorage, admin: sa.Engine
) -> None:
    with admin.begin() as conn:  # what pipestate's schema version 1 created
        conn.exec_driver_sql("DROP INDEX ix_queue_fair")
        conn.exec_driver_sql("DROP INDEX ix_queue_tenant_flow")
        conn.exec_driver_sql(f"ALTER TABLE {QUEUE} DROP COLUMN claim_order")
        conn.exec_driver_sql(
            f"CREATE INDEX ix_queue_claim ON {QUEUE} (status, priority, created_at, queue_id)"
        )
        conn.exec_driver_sql("DROP INDEX ix_runs_due")
        conn.exec_driver_sql(
            "CREATE INDEX ix_runs_state_scheduled ON x_meta_scheduled_runs (state, scheduled_time)"
        )
        conn.exec_driver_sql(f"CREATE INDEX ix_queue_tenant_status ON {QUEUE} (tenant_id, status)")
        conn.exec_driver_sql(
            "INSERT INTO x_meta_pipeline_queue "
            "(queue_id, tenant_id, config, priority, created_at, status, version, attempts) "
            "VALUES ('old', 't', '{}'::jsonb, 3, timestamptz '2026-03-01 12:00:00+00', 'QUEUED', 1, 0)"
        )
        conn.exec_driver_sql("UPDATE pipestate_schema_version SET version = 1")

    await pg_storage.create_schema()

    assert await pg_storage.schema_versions() == list(range(1, SCHEMA_VERSION + 1))
    with admin.connect() as conn:
        indexes = set(
            conn.exec_driver_sql(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %(t)s",
                {"t": QUEUE},
            ).scalars()
        )
        run_indexes = set(
            conn.exec_driver_sql(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %(t)s",
                {"t": "x_meta_scheduled_runs"},
            ).scalars()
        )
    assert "ix_runs_due" in run_indexes
    assert "ix_runs_state_scheduled" not in run_indexes
    assert {"ix_queue_fair", "ix_queue_tenant_flow"} <= indexes
    assert not {"ix_queue_claim", "ix_queue_waiting", "ix_queue_tenant_status"} & indexes
    old = await pg_storage.get_queue_item("old")
    assert old is not None
    assert old.claim_order == base_claim_order(datetime(2026, 3, 1, 12, tzinfo=UTC), 3)
