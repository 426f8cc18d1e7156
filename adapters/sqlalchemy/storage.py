"""``SqlAlchemyStorage``: the Storage port on SQLAlchemy Core, for SQLite and PostgreSQL.

The port methods live here; the statements in :mod:`~pipestate.adapters.sqlalchemy.statements`,
connections, transactions, error translation and retries in
:mod:`~pipestate.adapters.sqlalchemy.session`.

The operations that run once per queue item or per run (enqueue, claim, finish, lease, the
worker's run read and compare-and-sets) and the tick's batches take each backend's hot path:
Core statements compiled once and run on the raw driver connection
(:mod:`~pipestate.adapters.sqlalchemy.sqlite_hotpath`,
:mod:`~pipestate.adapters.sqlalchemy.postgres_hotpath`). Everything else goes through
SQLAlchemy. Both paths run the same SQL.

SQLite: WAL, ``synchronous=NORMAL``, ``busy_timeout``; write transactions start with
``BEGIN IMMEDIATE`` so that a transaction never has to upgrade a read lock to a write lock (the
upgrade is what fails at once with "database is locked" in WAL mode, whatever the busy timeout).
PostgreSQL: claims lock their rows with ``FOR UPDATE SKIP LOCKED`` in a CTE, so concurrent
claims never wait for each other and never return one item twice; single statements run in
autocommit mode (one round trip each), batches in one transaction.

A transient failure is retried (bounded attempts and time, exponential backoff with jitter):
every port operation is idempotent or a compare-and-set. When the connection died while a
statement was committing, its outcome is unknown; the retry's :class:`Attempt` says so and the
operation reads back what the first try may have written instead of reporting a lost race that
was in fact won.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from pipestate.adapters.retry import RetrySettings
from pipestate.adapters.rows import (
    QUEUE_COLUMNS,
    RUN_COLUMNS,
    RUN_MUTABLE_COLUMNS,
    SCHEDULE_MUTABLE_COLUMNS,
    queue_from_row,
    queue_to_row,
    run_from_row,
    run_to_row,
    schedule_from_row,
    schedule_to_row,
    utc,
)
from pipestate.adapters.sqlalchemy import statements as st
from pipestate.adapters.sqlalchemy.session import SQL_RETRY_SETTINGS, Attempt, Sessions, prepare_sqlite_engine
from pipestate.adapters.sqlalchemy.sqlite_hotpath import HotStatements
from pipestate.adapters.sqlalchemy.tables import (
    SCHEMA_VERSION,
    UPGRADES,
    metadata,
    queue,
    runs,
    schedules,
    schema_version,
)
from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.domain.errors import RunNotFound, ScheduleNotFound, StorageError
from pipestate.domain.pipeline_schedule import PipelineSchedule
from pipestate.domain.ports import Capability, RunFilter, RunOrder
from pipestate.domain.queue import QueueItem, QueueStats, QueueStatus
from pipestate.domain.run import PipelineRun, RunState

if TYPE_CHECKING:
    from pipestate.adapters.sqlalchemy.postgres_hotpath import PgHotStatements

T = TypeVar("T")

_BY_KEY: Final = {
    "runs": (runs, "run_id"),
    "queue": (queue, "queue_id"),
}


_QUEUE_INSERT_KEYS: Final = tuple(c for c in QUEUE_COLUMNS if c != "claim_order")
"""The enqueue binds every column but claim_order, which it computes (statements.queue_flow_order)."""


def _queue_insert_row(item: QueueItem) -> dict[str, Any]:
    row = queue_to_row(item)
    row["b_order"], row["b_tenant"], row["b_priority"] = row.pop("claim_order"), item.tenant_id, item.priority
    return row


def _transition_name(to_status: QueueStatus, fenced: bool) -> str:
    return f"transition_{to_status.value}_{'fenced' if fenced else 'open'}"


def _hot_statements(dialect: str) -> dict[str, tuple[sa.Executable, Sequence[str] | None, sa.Table | None]]:
    """The hot path's statements by name: (statement, column keys of its values, returned table)."""
    fair = {"claim_order": st.queue_flow_order(dialect)}
    if dialect == "sqlite":  # executemany refuses RETURNING; inserted rows are counted instead
        insert_queue: sa.Executable = (
            sqlite.insert(queue).values(fair).on_conflict_do_nothing(index_elements=["queue_id"])
        )
        insert_runs: sa.Executable = sqlite.insert(runs).on_conflict_do_nothing(index_elements=["run_id"])
    else:
        insert_queue = st.insert_if_absent(dialect, queue).values(fair)
        insert_runs = st.insert_if_absent(dialect, runs)
    by_ids = {
        name: sa.select(table).where(
            table.c[key] == sa.func.any(sa.bindparam("b_ids", type_=postgresql.ARRAY(sa.String)))
        )
        for name, (table, key) in _BY_KEY.items()
    }
    statements: dict[str, tuple[sa.Executable, Sequence[str] | None, sa.Table | None]] = {
        "insert_queue": (insert_queue, _QUEUE_INSERT_KEYS, None),
        "insert_runs": (insert_runs, RUN_COLUMNS, None),
        "claim": (st.DIALECTS[dialect].claim, None, queue),
        "claimed_by_token": (st.CLAIMED_BY_TOKEN, None, queue),
        "extend_lease": (st.EXTEND_LEASE, None, None),
        "get_item": (st.GET_ITEM, None, queue),
        "get_run": (st.GET_RUN, None, runs),
        "run_exists": (st.RUN_EXISTS, None, runs),
        "update_run": (st.UPDATE_RUN, RUN_MUTABLE_COLUMNS, None),
        "update_schedule": (st.UPDATE_SCHEDULE, SCHEDULE_MUTABLE_COLUMNS, None),
        "get_schedule": (st.GET_SCHEDULE, None, schedules),
        "due_schedules": (st.DUE_SCHEDULES, None, schedules),
    }
    if dialect == "postgresql":
        statements["runs_by_ids"] = (by_ids["runs"], None, runs)
        statements["queue_by_ids"] = (by_ids["queue"], None, queue)
    for (to_status, fenced), statement in st.QUEUE_TRANSITIONS.items():
        statements[_transition_name(to_status, fenced)] = (statement, None, None)
    return statements


_SQLITE_HOT: HotStatements | None = None
_PG_HOT: PgHotStatements | None = None


def _sqlite_hot() -> HotStatements:
    global _SQLITE_HOT
    if _SQLITE_HOT is None:
        _SQLITE_HOT = HotStatements(_hot_statements("sqlite"))
    return _SQLITE_HOT


def _postgres_hot() -> PgHotStatements:
    global _PG_HOT
    if _PG_HOT is None:
        from pipestate.adapters.sqlalchemy.postgres_hotpath import PgHotStatements

        _PG_HOT = PgHotStatements({n: (s, k) for n, (s, k, _) in _hot_statements("postgresql").items()})
    return _PG_HOT


class SqlAlchemyStorage:
    """The Storage port on a SQLAlchemy ``Engine`` (SQLite file or memory, PostgreSQL).

    Args:
        engine: a ready engine. SQLite engines get the WAL/busy-timeout/BEGIN IMMEDIATE set-up.
        threads: driver threads (default 1 for SQLite, the pool size for PostgreSQL).
    """

    def __init__(
        self, engine: Engine, *, threads: int | None = None, retry: RetrySettings = SQL_RETRY_SETTINGS
    ) -> None:
        name = engine.dialect.name
        if name not in st.DIALECTS:
            raise StorageError(f"unsupported SQLAlchemy dialect {name!r} (use sqlite or postgresql)")
        self._engine = engine
        self._dialect = st.DIALECTS[name]
        self._sqlite: HotStatements | None = None
        self._pg: PgHotStatements | None = None
        if name == "sqlite":
            prepare_sqlite_engine(engine)
            self._sqlite = _sqlite_hot()
            threads = 1
        else:
            if engine.dialect.driver != "psycopg":
                raise StorageError(
                    f"unsupported PostgreSQL driver {engine.dialect.driver!r}: use postgresql+psycopg://"
                )
            self._pg = _postgres_hot()
            if threads is None:
                threads = max(getattr(engine.pool, "size", lambda: 5)(), 1)
        self._sessions = Sessions(engine, threads, retry)

    @classmethod
    def from_url(
        cls, url: str, *, retry: RetrySettings = SQL_RETRY_SETTINGS, **engine_kwargs: Any
    ) -> SqlAlchemyStorage:
        """Build the engine for ``url`` (``sqlite:///file.db``, ``sqlite://`` for memory,
        ``postgresql+psycopg://…``) and wrap it."""
        kwargs = dict(engine_kwargs)
        try:
            parsed = sa.engine.make_url(url)
        except exc.ArgumentError as error:
            raise StorageError(f"not a database URL: {error}") from error
        shown = parsed.render_as_string(hide_password=True)
        if parsed.get_backend_name() == "sqlite":
            kwargs.setdefault("connect_args", {"check_same_thread": False})
            if parsed.database in (None, "", ":memory:"):
                kwargs.setdefault("poolclass", StaticPool)
        elif parsed.get_backend_name() == "postgresql":
            if parsed.drivername == "postgresql":  # the driver we ship with, not SQLAlchemy's psycopg2
                parsed = parsed.set(drivername="postgresql+psycopg")
            kwargs.setdefault("pool_pre_ping", True)
            kwargs.setdefault("pool_size", 5)
            kwargs["connect_args"] = {"application_name": "pipestate", **kwargs.get("connect_args", {})}
        try:
            engine = sa.create_engine(parsed, **kwargs)
            return cls(engine, retry=retry)
        except ImportError as error:
            raise StorageError(
                f"cannot create an engine for {shown}: its driver is not installed ({error}); "
                "for PostgreSQL install pipestate[postgres] (psycopg 3)"
            ) from error
        except (exc.ArgumentError, exc.NoSuchModuleError, TypeError) as error:
            raise StorageError(f"cannot create an engine for {shown}: {error}") from error

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def capabilities(self) -> frozenset[Capability]:
        if self._sqlite is not None:
            memory = self._engine.url.database in (None, "", ":memory:")
            return frozenset() if memory else frozenset({Capability.MULTI_PROCESS})
        return frozenset({Capability.MULTI_PROCESS, Capability.MULTI_HOST, Capability.SKIP_LOCKED})

    # ------------------------------------------------------------------ schema
    async def create_schema(self) -> None:
        dialect = self._dialect

        def create(conn: Connection, _attempt: Attempt) -> None:
            if dialect.name == "postgresql":
                # Serialise concurrent create_schema calls (many workers starting at once):
                # CREATE TABLE IF NOT EXISTS alone races on PostgreSQL's catalog.
                conn.execute(st.SCHEMA_LOCK)
            metadata.create_all(conn, checkfirst=True)
            newest = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
            if newest is not None and int(newest) > SCHEMA_VERSION:
                raise StorageError(
                    f"the database has schema version {newest}, newer than this pipestate's "
                    f"{SCHEMA_VERSION}: upgrade pipestate",
                    operation="create_schema",
                )
            record = dialect.insert(schema_version).on_conflict_do_nothing()
            if newest is None:  # a new database: create_all just made it at SCHEMA_VERSION
                conn.execute(record, {"version": SCHEMA_VERSION, "applied_at": _utcnow()})
                return
            for version in range(int(newest) + 1, SCHEMA_VERSION + 1):  # an older one, step by step
                for upgrade in UPGRADES.get(version, ()):
                    only, statement = upgrade if isinstance(upgrade, tuple) else (dialect.name, upgrade)
                    if only == dialect.name:
                        conn.exec_driver_sql(statement)
                conn.execute(record, {"version": version, "applied_at": _utcnow()})

        await self._sessions.run(True, create)

    async def schema_versions(self) -> list[int]:
        """Schema versions applied to this database, oldest first."""

        def read(conn: Connection, _attempt: Attempt) -> list[int]:
            stmt = sa.select(schema_version.c.version).order_by(schema_version.c.version)
            return [int(v) for v in conn.execute(stmt).scalars()]

        return await self._sessions.run(False, read)

    async def close(self) -> None:
        await self._sessions.close()

    # ------------------------------------------------------------------ shared hot-path helpers
    async def _hot_insert(self, name: str, table_key: str, rows: list[dict[str, Any]]) -> int:
        key = _BY_KEY[table_key][1]
        unique = list({row[key]: row for row in rows}.values())
        if not unique:
            return 0
        if self._sqlite is not None:
            hot, statement = self._sqlite, f"insert_{table_key}"
            if len(unique) == 1:  # rowcount is 0 when the row existed
                return await self._sessions.run_sqlite(name, lambda c: hot.execute(c, statement, unique[0]))
            return await self._sessions.run_sqlite(
                name, lambda cursor: hot.execute_many(cursor, statement, unique), rows=len(unique)
            )
        pg = self._pg
        assert pg is not None

        def insert(conn: Any, attempt: Attempt) -> int:
            if len(unique) == 1:
                inserted = {r[key] for r in pg.fetch(conn, f"insert_{table_key}", unique[0])}
            else:
                inserted = pg.insert_many(conn, f"insert_{table_key}", unique)
            if len(inserted) < len(unique) and attempt.lost_commit:
                # Rows a try whose commit was lost may have written: ours if identical.
                rest = [row for row in unique if row[key] not in inserted]
                stored = {
                    r[key]: r
                    for r in pg.fetch(conn, f"{table_key}_by_ids", {"b_ids": [r[key] for r in rest]})
                }
                return len(inserted) + sum(
                    row[key] in stored and _holds(stored[row[key]], row, [k for k in row if k[:2] != "b_"])
                    for row in rest
                )
            return len(inserted)

        return await self._sessions.run_postgres(name, insert, transaction=len(unique) > 1)

    async def _hot_get(self, name: str, statement: str, key: str) -> dict[str, Any] | None:
        params = {"b_id": key}
        if self._sqlite is not None:
            hot = self._sqlite
            rows = await self._sessions.run_sqlite(
                name, lambda cursor: hot.fetch(cursor, statement, params), write=False
            )
        else:
            pg = self._pg
            assert pg is not None
            rows = await self._sessions.run_postgres(name, lambda conn, _a: pg.fetch(conn, statement, params))
        return rows[0] if rows else None

    async def _sqlite_many(self, name: str, statement: str, batch: list[dict[str, Any]]) -> int:
        """One SQLite transaction running ``statement`` for every row of ``batch``."""
        hot = self._sqlite
        assert hot is not None
        return await self._sessions.run_sqlite(
            name, lambda cursor: hot.execute_many(cursor, statement, batch), rows=len(batch)
        )

    async def _hot_cas_many(self, name: str, statement: str, get: str, batch: list[dict[str, Any]]) -> int:
        """One transaction of compare-and-sets, sent as one executemany.

        While retrying a lost commit the pairs go one by one, so that a row already holding our
        values (written by the try whose commit was lost) counts as applied.
        """
        if not batch:
            return 0
        if self._sqlite is not None:
            return await self._sqlite_many(name, statement, batch)
        pg = self._pg
        assert pg is not None
        mutable = tuple(k for k in batch[0] if not k.startswith("b_"))

        def update_all(conn: Any, attempt: Attempt) -> int:
            if not attempt.lost_commit:
                return pg.execute_many(conn, statement, batch)
            applied = 0
            for params in batch:
                if pg.execute(conn, statement, params) == 1:
                    applied += 1
                else:
                    rows = pg.fetch(conn, get, {"b_id": params["b_id"]})
                    applied += bool(rows) and _holds(rows[0], params, mutable)
            return applied

        return await self._sessions.run_postgres(name, update_all, transaction=True)

    # ------------------------------------------------------------------ runs
    async def insert_runs(self, runs_: Sequence[PipelineRun]) -> int:
        return await self._hot_insert("insert_runs", "runs", [run_to_row(r) for r in runs_])

    async def get_run(self, run_id: str) -> PipelineRun | None:
        row = await self._hot_get("get_run", "get_run", run_id)
        return None if row is None else run_from_row(row)

    async def get_runs(self, run_ids: Collection[str]) -> list[PipelineRun]:
        ids = sorted(set(run_ids))
        stmt = (
            sa.select(runs)
            .where(runs.c.run_id.in_(sa.bindparam("b_ids", expanding=True)))
            .order_by(runs.c.run_id)
        )

        def get(conn: Connection, _attempt: Attempt) -> list[PipelineRun]:
            if not ids:
                return []
            return [run_from_row(r) for r in conn.execute(stmt, {"b_ids": ids}).mappings()]

        return await self._sessions.run(False, get)

    async def update_run(self, run: PipelineRun, expected_version: int) -> bool:
        params = _cas_params(run_to_row(run), RUN_MUTABLE_COLUMNS, run.run_id, expected_version)
        exists = {"b_id": run.run_id}
        if self._sqlite is not None:
            hot = self._sqlite

            def update_sqlite(cursor: sqlite3.Cursor) -> bool:
                if hot.execute(cursor, "update_run", params) == 1:
                    return True
                if not hot.fetch(cursor, "run_exists", exists):
                    raise RunNotFound(run.run_id)
                return False

            return await self._sessions.run_sqlite("update_run", update_sqlite)
        pg = self._pg
        assert pg is not None

        def update(conn: Any, attempt: Attempt) -> bool:
            if pg.execute(conn, "update_run", params) == 1:
                return True
            rows = pg.fetch(conn, "get_run", exists)
            if not rows:
                raise RunNotFound(run.run_id)
            return attempt.lost_commit and _holds(rows[0], params, RUN_MUTABLE_COLUMNS)

        return await self._sessions.run_postgres("update_run", update)

    async def update_runs(self, pairs: Sequence[tuple[PipelineRun, int]]) -> int:
        batch = [_cas_params(run_to_row(r), RUN_MUTABLE_COLUMNS, r.run_id, v) for r, v in pairs]
        return await self._hot_cas_many("update_runs", "update_run", "get_run", batch)

    async def find_runs(
        self, criteria: RunFilter, *, order: RunOrder = RunOrder.SCHEDULED_ASC, limit: int | None = None
    ) -> list[PipelineRun]:
        stmt = sa.select(runs).where(*st.run_conditions(criteria))
        if order is RunOrder.SCHEDULED_ASC:
            stmt = stmt.order_by(runs.c.scheduled_time, runs.c.run_id)
        elif order is RunOrder.COMPLETED_DESC:
            stmt = stmt.order_by(runs.c.completed_at.desc().nulls_last(), runs.c.run_id)
        else:
            stmt = stmt.order_by(runs.c.updated_at.desc().nulls_last(), runs.c.run_id)
        if limit is not None:
            stmt = stmt.limit(limit)

        def find(conn: Connection, _attempt: Attempt) -> list[PipelineRun]:
            return [run_from_row(r) for r in conn.execute(stmt).mappings()]

        return await self._sessions.run(False, find)

    async def count_runs_by_state(self, tenant_id: str | None = None) -> dict[RunState, int]:
        stmt = sa.select(runs.c.state, sa.func.count()).group_by(runs.c.state)
        if tenant_id is not None:
            stmt = stmt.where(runs.c.tenant_id == tenant_id)

        def count(conn: Connection, _attempt: Attempt) -> dict[RunState, int]:
            return {RunState(state): int(n) for state, n in conn.execute(stmt).all()}

        return await self._sessions.run(False, count)

    # ------------------------------------------------------------------ queue
    async def insert_queue_items(self, items: Sequence[QueueItem]) -> int:
        # In claim order, as BigQuery's MERGE ranks a batch: each item of a flow goes one slot
        # behind the one before it (statements.queue_flow_order).
        ordered = sorted(items, key=lambda i: (i.claim_order or 0.0, i.queue_id))
        return await self._hot_insert("insert_queue_items", "queue", [_queue_insert_row(i) for i in ordered])

    async def get_queue_item(self, queue_id: str) -> QueueItem | None:
        row = await self._hot_get("get_queue_item", "get_item", queue_id)
        return None if row is None else queue_from_row(row)

    async def claim_queue_items(
        self, *, worker_id: str, claim_token: str, now: datetime, lease_expires_at: datetime, limit: int
    ) -> list[QueueItem]:
        params = {
            "b_worker": worker_id,
            "b_token": claim_token,
            "b_now": now,
            "b_lease": lease_expires_at,
            "b_limit": limit,
        }
        if self._sqlite is not None:
            hot = self._sqlite
            rows = await self._sessions.run_sqlite(
                "claim", lambda cursor: hot.fetch(cursor, "claim", params), rows=limit
            )
        else:
            pg = self._pg
            assert pg is not None

            def claim(conn: Any, attempt: Attempt) -> list[dict[str, Any]]:
                rows = None
                if attempt.lost_commit:  # did the try that lost its commit claim these already?
                    rows = pg.fetch(conn, "claimed_by_token", {"b_token": claim_token})
                return rows or pg.fetch(conn, "claim", params)

            rows = await self._sessions.run_postgres("claim", claim)
        items = [queue_from_row(r) for r in rows]
        items.sort(key=lambda i: (i.claim_order or 0.0, i.queue_id))  # the claim's order
        return items

    async def transition_queue_item(
        self,
        queue_id: str,
        *,
        from_status: QueueStatus,
        to_status: QueueStatus,
        now: datetime,
        claim_token: str | None = None,
        error_message: str | None = None,
    ) -> bool:
        name = _transition_name(to_status, claim_token is not None)
        params: dict[str, Any] = {"b_id": queue_id, "b_from": from_status.value, "b_now": now}
        if claim_token is not None:
            params["b_token"] = claim_token
        if to_status is QueueStatus.FAILED:
            params["b_error"] = error_message
        if self._sqlite is not None:
            hot = self._sqlite
            return await self._sessions.run_sqlite(
                "transition_queue_item", lambda cursor: hot.execute(cursor, name, params) == 1
            )
        pg = self._pg
        assert pg is not None

        def transition(conn: Any, attempt: Attempt) -> bool:
            if pg.execute(conn, name, params) == 1:
                return True
            if not attempt.lost_commit:
                return False
            rows = pg.fetch(conn, "get_item", {"b_id": queue_id})
            return bool(rows) and (
                rows[0]["status"] == to_status.value
                and rows[0]["updated_at"] == now
                and (to_status is QueueStatus.QUEUED or claim_token in (None, rows[0]["claim_token"]))
            )

        return await self._sessions.run_postgres("transition_queue_item", transition)

    async def extend_queue_lease(
        self, queue_id: str, *, claim_token: str, lease_expires_at: datetime
    ) -> bool:
        params = {"b_id": queue_id, "b_token": claim_token, "b_lease": lease_expires_at}
        if self._sqlite is not None:
            hot = self._sqlite
            return await self._sessions.run_sqlite(
                "extend_queue_lease", lambda cursor: hot.execute(cursor, "extend_lease", params) == 1
            )
        pg = self._pg
        assert pg is not None

        def extend(conn: Any, attempt: Attempt) -> bool:
            if pg.execute(conn, "extend_lease", params) == 1:
                return True
            if not attempt.lost_commit:
                return False
            rows = pg.fetch(conn, "get_item", {"b_id": queue_id})
            return bool(rows) and (
                rows[0]["status"] == QueueStatus.PROCESSING.value
                and rows[0]["claim_token"] == claim_token
                and rows[0]["lease_expires_at"] == lease_expires_at
            )

        return await self._sessions.run_postgres("extend_queue_lease", extend)

    async def extend_queue_leases(
        self, leases: Sequence[tuple[str, str]], *, lease_expires_at: datetime
    ) -> int:
        batch = [{"b_id": q, "b_token": t, "b_lease": lease_expires_at} for q, t in dict(leases).items()]
        return await self._queue_many(
            "extend_queue_leases",
            "extend_lease",
            batch,
            lambda row: (
                row["status"] == QueueStatus.PROCESSING.value and row["lease_expires_at"] == lease_expires_at
            ),
        )

    async def transition_queue_items(
        self,
        items: Sequence[tuple[str, str]],
        *,
        from_status: QueueStatus,
        to_status: QueueStatus,
        now: datetime,
        error_message: str | None = None,
    ) -> int:
        batch: list[dict[str, Any]] = []
        for queue_id, token in dict(items).items():
            params: dict[str, Any] = {"b_id": queue_id, "b_from": from_status.value, "b_now": now}
            params["b_token"] = token
            if to_status is QueueStatus.FAILED:
                params["b_error"] = error_message
            batch.append(params)
        return await self._queue_many(
            "transition_queue_items",
            _transition_name(to_status, True),
            batch,
            lambda row: row["status"] == to_status.value and row["updated_at"] == now,
        )

    async def _queue_many(
        self, name: str, statement: str, batch: list[dict[str, Any]], holds: Callable[[dict[str, Any]], bool]
    ) -> int:
        """One transaction of fenced queue writes, sent as one executemany; while retrying a lost
        commit the items go one by one, an item already holding the write counting as applied."""
        if not batch:
            return 0
        if self._sqlite is not None:
            return await self._sqlite_many(name, statement, batch)
        pg = self._pg
        assert pg is not None

        def write_all(conn: Any, attempt: Attempt) -> int:
            if not attempt.lost_commit:
                return pg.execute_many(conn, statement, batch)
            applied = 0
            for params in batch:
                if pg.execute(conn, statement, params) == 1:
                    applied += 1
                else:
                    rows = pg.fetch(conn, "get_item", {"b_id": params["b_id"]})
                    applied += bool(rows) and rows[0]["claim_token"] == params["b_token"] and holds(rows[0])
            return applied

        return await self._sessions.run_postgres(name, write_all, transaction=True)

    async def find_queue_items(
        self,
        *,
        status: QueueStatus | None = None,
        lease_expired_before: datetime | None = None,
        run_id: str | None = None,
        limit: int | None = None,
    ) -> list[QueueItem]:
        stmt = sa.select(queue).order_by(queue.c.priority, queue.c.created_at, queue.c.queue_id)
        if status is not None:
            stmt = stmt.where(queue.c.status == status.value)
        if lease_expired_before is not None:
            stmt = stmt.where(queue.c.lease_expires_at <= lease_expired_before)
        if run_id is not None:
            stmt = stmt.where(queue.c.run_id == run_id)
        if limit is not None:
            stmt = stmt.limit(limit)

        def find(conn: Connection, _attempt: Attempt) -> list[QueueItem]:
            return [queue_from_row(r) for r in conn.execute(stmt).mappings()]

        return await self._sessions.run(False, find)

    async def count_queue_items(self, status: QueueStatus | None = None, tenant_id: str | None = None) -> int:
        stmt = sa.select(sa.func.count()).select_from(queue)
        if status is not None:
            stmt = stmt.where(queue.c.status == status.value)
        if tenant_id is not None:
            stmt = stmt.where(queue.c.tenant_id == tenant_id)

        def count(conn: Connection, _attempt: Attempt) -> int:
            return int(conn.execute(stmt).scalar_one())

        return await self._sessions.run(False, count)

    async def queue_stats(self, now: datetime) -> QueueStats:
        wait = self._dialect.wait_seconds().label("wait")
        queued = queue.c.status == QueueStatus.QUEUED.value
        claimed = queue.c.claimed_at.is_not(None)
        by_status = sa.select(queue.c.status, sa.func.count()).group_by(queue.c.status)
        by_priority = sa.select(queue.c.priority, sa.func.count()).where(queued).group_by(queue.c.priority)
        oldest = sa.select(sa.func.min(queue.c.created_at)).where(queued)
        waits = sa.select(sa.func.avg(wait), sa.func.count()).where(claimed)

        def stats(conn: Connection, _attempt: Attempt) -> QueueStats:
            statuses = {QueueStatus(s): int(n) for s, n in conn.execute(by_status).all()}
            priorities = {int(p): int(n) for p, n in conn.execute(by_priority).all()}
            oldest_row = conn.execute(oldest).first()
            oldest_at = _as_utc(oldest_row[0]) if oldest_row and oldest_row[0] is not None else None
            avg, n = conn.execute(waits).one()
            p95: float | None = None
            if n:
                offset = max(math.ceil(0.95 * int(n)) - 1, 0)  # nearest-rank percentile
                p95_stmt = sa.select(wait).where(claimed).order_by(wait).limit(1).offset(offset)
                p95 = float(conn.execute(p95_stmt).scalar_one())
            return QueueStats(
                by_status=statuses,
                waiting_by_priority=priorities,
                avg_wait_seconds=None if avg is None else float(avg),
                p95_wait_seconds=p95,
                oldest_waiting_age_seconds=None
                if oldest_at is None
                else max((now - oldest_at).total_seconds(), 0.0),
                total=sum(statuses.values()),
            )

        return await self._sessions.run(False, stats)

    # ------------------------------------------------------------------ schedules
    async def insert_schedule(self, schedule: PipelineSchedule) -> bool:
        row = schedule_to_row(schedule)
        stmt = st.insert_if_absent(self._dialect.name, schedules)

        def insert(conn: Connection, attempt: Attempt) -> bool:
            if conn.execute(stmt, row).first() is not None:
                return True
            if not attempt.lost_commit:
                return False
            stored = conn.execute(st.GET_SCHEDULE, {"b_id": schedule.schedule_id}).mappings().first()
            return stored is not None and _holds(stored, row, row.keys())

        return await self._sessions.run(True, insert)

    async def get_schedule(self, schedule_id: str) -> PipelineSchedule | None:
        def get(conn: Connection, _attempt: Attempt) -> PipelineSchedule | None:
            row = conn.execute(st.GET_SCHEDULE, {"b_id": schedule_id}).mappings().first()
            return None if row is None else schedule_from_row(row)

        return await self._sessions.run(False, get)

    async def list_schedules(
        self, *, tenant_id: str | None = None, enabled: bool | None = None
    ) -> list[PipelineSchedule]:
        stmt = sa.select(schedules).order_by(schedules.c.tenant_id, schedules.c.config_id)
        if tenant_id is not None:
            stmt = stmt.where(schedules.c.tenant_id == tenant_id)
        if enabled is not None:
            stmt = stmt.where(schedules.c.enabled == enabled)

        def find(conn: Connection, _attempt: Attempt) -> list[PipelineSchedule]:
            return [schedule_from_row(r) for r in conn.execute(stmt).mappings()]

        return await self._sessions.run(False, find)

    async def update_schedule(self, schedule: PipelineSchedule, expected_version: int) -> bool:
        params = _cas_params(
            schedule_to_row(schedule), SCHEDULE_MUTABLE_COLUMNS, schedule.schedule_id, expected_version
        )

        def update(conn: Connection, attempt: Attempt) -> bool:
            if conn.execute(st.UPDATE_SCHEDULE, params).rowcount == 1:
                return True
            row = conn.execute(st.GET_SCHEDULE, {"b_id": schedule.schedule_id}).mappings().first()
            if row is None:
                raise ScheduleNotFound(schedule.schedule_id)
            return attempt.lost_commit and _holds(row, params, SCHEDULE_MUTABLE_COLUMNS)

        return await self._sessions.run(True, update)

    async def update_schedules(self, pairs: Sequence[tuple[PipelineSchedule, int]]) -> int:
        batch = [
            _cas_params(schedule_to_row(s), SCHEDULE_MUTABLE_COLUMNS, s.schedule_id, v) for s, v in pairs
        ]
        return await self._hot_cas_many("update_schedules", "update_schedule", "get_schedule", batch)

    async def due_schedules(self, now: datetime, limit: int) -> list[PipelineSchedule]:
        params = {"b_now": now, "b_limit": limit}
        if self._sqlite is not None:
            hot = self._sqlite
            rows = await self._sessions.run_sqlite(
                "due_schedules",
                lambda cursor: hot.fetch(cursor, "due_schedules", params),
                write=False,
                rows=limit,
            )
        else:
            pg = self._pg
            assert pg is not None
            rows = await self._sessions.run_postgres(
                "due_schedules", lambda conn, _a: pg.fetch(conn, "due_schedules", params)
            )
        return [schedule_from_row(r) for r in rows]


# --------------------------------------------------------------------------- helpers
def _holds(row: Any, params: dict[str, Any], columns: Collection[str]) -> bool:
    """Whether the stored ``row`` holds exactly the values a write put there."""
    return all(row[name] == params[name] for name in columns)


def _cas_params(row: dict[str, Any], mutable: tuple[str, ...], key: str, expected: int) -> dict[str, Any]:
    params = {name: row[name] for name in mutable}
    params["b_id"] = key
    params["b_expected"] = expected
    return params


def _as_utc(value: Any) -> datetime:
    # Aggregates (MIN) bypass the column's TypeDecorator on SQLite and come back as text.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    result = utc(value)
    assert result is not None
    return result


def _utcnow() -> datetime:
    return SYSTEM_CLOCK.now()
