"""``SqlAlchemyStorage``: the Storage port on SQLAlchemy Core, for SQLite and PostgreSQL.

Statements are built once (module level) with bound parameters, so SQLAlchemy's compiled cache
serves every call. The blocking driver runs on a small thread pool the storage owns: one thread
and one long-lived connection for SQLite (SQLite serialises writers anyway, and a persistent
connection skips pool checkouts on the hot path), a pool-sized set of threads for PostgreSQL.

SQLite: WAL, ``synchronous=NORMAL``, ``busy_timeout``; write transactions start with
``BEGIN IMMEDIATE`` so that a transaction never has to upgrade a read lock to a write lock (the
upgrade is what fails at once with "database is locked" in WAL mode, whatever the busy timeout).
PostgreSQL: claims lock their rows with ``FOR UPDATE SKIP LOCKED`` in a CTE, so concurrent
claims never wait for each other and never return one item twice.

Errors: driver exceptions become :class:`StorageUnavailable` (transient: lost connection,
serialization failure, deadlock, busy database, server shutting down) or :class:`StorageError`
(everything else). A transient failure is retried with tenacity (bounded attempts and time,
exponential backoff with jitter): every port operation is idempotent or a compare-and-set.
When the connection died while a transaction was committing, its outcome is unknown; the retry
then reads back what the first attempt may have written (see ``_lost_commit``) instead of
reporting a lost race that was in fact won.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import sqlite3
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

import sqlalchemy as sa
import tenacity
from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from pipestate.adapters.rows import (
    QUEUE_COLUMNS,
    RUN_COLUMNS,
    SCHEDULE_COLUMNS,
    queue_from_row,
    queue_to_row,
    run_from_row,
    run_to_row,
    schedule_from_row,
    schedule_to_row,
    utc,
)
from pipestate.adapters.sqlalchemy.sqlite_hotpath import QueueHotPath, write_transaction
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
from pipestate.domain.errors import RunNotFound, ScheduleNotFound, StorageError, StorageUnavailable
from pipestate.domain.pipeline_schedule import PipelineSchedule
from pipestate.domain.ports import Capability, RunFilter, RunOrder
from pipestate.domain.queue import QueueItem, QueueStats, QueueStatus
from pipestate.domain.run import PipelineRun, RunState

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
TRANSIENT_RETRIES: Final = 5
"""Retries after the first attempt of an operation that failed transiently."""
TRANSIENT_RETRY_SECONDS: Final = 20.0
"""No retry starts later than this after the first retry."""

_WRITE_OPTION: Final = "pipestate_write"

# --------------------------------------------------------------------------- statements, built once
_RUN_MUTABLE: Final = tuple(
    c for c in RUN_COLUMNS if c not in ("run_id", "tenant_id", "config_id", "created_at")
)
_SCHEDULE_MUTABLE: Final = tuple(
    c for c in SCHEDULE_COLUMNS if c not in ("schedule_id", "tenant_id", "config_id", "created_at")
)

_GET_RUN: Final = sa.select(runs).where(runs.c.run_id == sa.bindparam("b_id"))
_RUN_EXISTS: Final = sa.select(runs.c.run_id).where(runs.c.run_id == sa.bindparam("b_id"))
_UPDATE_RUN: Final = sa.update(runs).where(
    runs.c.run_id == sa.bindparam("b_id"), runs.c.version == sa.bindparam("b_expected")
)
_GET_ITEM: Final = sa.select(queue).where(queue.c.queue_id == sa.bindparam("b_id"))
_GET_SCHEDULE: Final = sa.select(schedules).where(schedules.c.schedule_id == sa.bindparam("b_id"))
_UPDATE_SCHEDULE: Final = sa.update(schedules).where(
    schedules.c.schedule_id == sa.bindparam("b_id"), schedules.c.version == sa.bindparam("b_expected")
)

_CLAIM_VALUES: Final = {
    "status": QueueStatus.PROCESSING.value,
    "worker_id": sa.bindparam("b_worker"),
    "claim_token": sa.bindparam("b_token"),
    "claimed_at": sa.bindparam("b_now"),
    "updated_at": sa.bindparam("b_now"),
    "lease_expires_at": sa.bindparam("b_lease"),
    "attempts": queue.c.attempts + 1,
    "version": queue.c.version + 1,
}


def _claim_pick() -> sa.Select[tuple[str]]:
    # Served by ix_queue_claim (status, priority, created_at, queue_id).
    return (
        sa.select(queue.c.queue_id)
        .where(queue.c.status == QueueStatus.QUEUED.value)
        .order_by(queue.c.priority, queue.c.created_at, queue.c.queue_id)
        .limit(sa.bindparam("b_limit"))
    )


# SQLite: the transaction is BEGIN IMMEDIATE (one writer at a time), so a plain subquery is atomic.
_CLAIM_SQLITE: Final = (
    sa.update(queue)
    .where(queue.c.queue_id.in_(_claim_pick().scalar_subquery()), queue.c.status == QueueStatus.QUEUED.value)
    .values(**_CLAIM_VALUES)
    .returning(*queue.c)
)
# PostgreSQL: the pick must run exactly once. As ``IN (subquery … LIMIT n FOR UPDATE SKIP LOCKED)``
# the planner may rescan the subquery once per outer row, and each rescan skips the rows this very
# statement already updated, so one claim took more than ``n`` items. A CTE with FOR UPDATE is
# never inlined: it is evaluated once, and its rows stay locked until commit.
_CLAIM_PICKED: Final = _claim_pick().with_for_update(skip_locked=True).cte("picked")
_CLAIM_POSTGRES: Final = (
    sa.update(queue)
    .where(queue.c.queue_id == _CLAIM_PICKED.c.queue_id)
    .values(**_CLAIM_VALUES)
    .returning(*queue.c)
)
# After a lost commit: the items that attempt stamped with this claim token, if it did commit.
_CLAIMED_BY_TOKEN: Final = sa.select(queue).where(
    queue.c.claim_token == sa.bindparam("b_token"), queue.c.status == QueueStatus.PROCESSING.value
)

_EXTEND_LEASE: Final = (
    sa.update(queue)
    .where(
        queue.c.queue_id == sa.bindparam("b_id"),
        queue.c.status == QueueStatus.PROCESSING.value,
        queue.c.claim_token == sa.bindparam("b_token"),
    )
    .values(lease_expires_at=sa.bindparam("b_lease"), version=queue.c.version + 1)
)


def _transition_statement(to_status: QueueStatus, fenced: bool) -> sa.Update:
    conditions = [queue.c.queue_id == sa.bindparam("b_id"), queue.c.status == sa.bindparam("b_from")]
    if fenced:
        conditions.append(queue.c.claim_token == sa.bindparam("b_token"))
    values: dict[str, Any] = {
        "status": to_status.value,
        "version": queue.c.version + 1,
        "updated_at": sa.bindparam("b_now"),
    }
    if to_status in (QueueStatus.COMPLETED, QueueStatus.FAILED):
        values.update(completed_at=sa.bindparam("b_now"), lease_expires_at=None)
        if to_status is QueueStatus.FAILED:
            values["error_message"] = sa.bindparam("b_error")
    elif to_status is QueueStatus.QUEUED:
        values.update(worker_id=None, claim_token=None, claimed_at=None, lease_expires_at=None)
    return sa.update(queue).where(*conditions).values(**values)


_TRANSITIONS: Final = {
    (status, fenced): _transition_statement(status, fenced)
    for status in QueueStatus
    for fenced in (False, True)
}


@dataclass(frozen=True)
class _Dialect:
    name: str
    insert: Callable[..., Any]
    wait_seconds: Callable[[], sa.ColumnElement[float]]
    claim: sa.UpdateBase


def _sqlite_wait() -> sa.ColumnElement[float]:
    return (sa.func.julianday(queue.c.claimed_at) - sa.func.julianday(queue.c.created_at)) * 86400.0


def _postgres_wait() -> sa.ColumnElement[float]:
    return sa.cast(sa.extract("epoch", queue.c.claimed_at - queue.c.created_at), sa.Float)


_DIALECTS: Final = {
    "sqlite": _Dialect("sqlite", sqlite.insert, _sqlite_wait, _CLAIM_SQLITE),
    "postgresql": _Dialect("postgresql", postgresql.insert, _postgres_wait, _CLAIM_POSTGRES),
}


# --------------------------------------------------------------------------- SQLite connection set-up
def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (the pysqlite recipe), so that write
    # transactions can be BEGIN IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _prepare_sqlite_engine(engine: Engine) -> None:
    if getattr(engine, "_pipestate_prepared", False):
        return
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    engine._pipestate_prepared = True  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- errors and retries
_PG_TRANSIENT_SQLSTATES: Final = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "57014",  # query_canceled (statement_timeout)
        "57P01",  # admin_shutdown (pg_terminate_backend, server stopping)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (server starting)
        "53300",  # too_many_connections
        "53400",  # configuration_limit_exceeded
    }
)
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6


def _is_transient(error: exc.DBAPIError) -> bool:
    if error.connection_invalidated:
        return True
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None)  # psycopg
    if sqlstate:
        return bool(sqlstate.startswith("08") or sqlstate in _PG_TRANSIENT_SQLSTATES)
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    if sqlite_code is not None:  # "database is locked" is transient; "no such table" is not
        return sqlite_code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    # No code at all: the driver lost (or never got) its connection.
    return isinstance(error, exc.OperationalError | exc.InterfaceError)


def _retrying() -> tenacity.Retrying:
    """The retry policy for the attempts after a transient failure (the first retry is immediate:
    most transient failures are a dead connection, replaced at once)."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(StorageUnavailable),
        stop=(
            tenacity.stop_after_attempt(TRANSIENT_RETRIES)
            | tenacity.stop_after_delay(TRANSIENT_RETRY_SECONDS)
        ),
        # 20 ms, 40 ms, 80 ms … capped at 1 s, plus up to 50 ms of jitter so retries spread out.
        wait=tenacity.wait_exponential(multiplier=0.02, max=1.0) + tenacity.wait_random(0, 0.05),
        reraise=True,
    )


# --------------------------------------------------------------------------- the storage
class SqlAlchemyStorage:
    """The Storage port on a SQLAlchemy ``Engine`` (SQLite file or memory, PostgreSQL).

    Args:
        engine: a ready engine. SQLite engines get the WAL/busy-timeout/BEGIN IMMEDIATE set-up.
        threads: driver threads (default 1 for SQLite, the pool size for PostgreSQL).
    """

    def __init__(self, engine: Engine, *, threads: int | None = None) -> None:
        name = engine.dialect.name
        self._hot: QueueHotPath | None = None
        self._inline: tuple[Connection, sqlite3.Connection] | None = None
        self._inline_thread: int | None = None
        self._inline_lock = threading.Lock()
        if name not in _DIALECTS:
            raise StorageError(f"unsupported SQLAlchemy dialect {name!r} (use sqlite or postgresql)")
        self._engine = engine
        self._dialect = _DIALECTS[name]
        self._sqlite = name == "sqlite"
        if self._sqlite:
            _prepare_sqlite_engine(engine)
            self._hot = _sqlite_hot_path()
            threads = 1
        elif threads is None:
            threads = max(getattr(engine.pool, "size", lambda: 5)(), 1)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pipestate-db")
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **engine_kwargs: Any) -> SqlAlchemyStorage:
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
        except ImportError as error:
            raise StorageError(
                f"cannot create an engine for {shown}: its driver is not installed ({error}); "
                "for PostgreSQL install pipestate[postgres] (psycopg 3)"
            ) from error
        except (exc.ArgumentError, exc.NoSuchModuleError, TypeError) as error:
            raise StorageError(f"cannot create an engine for {shown}: {error}") from error
        return cls(engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def capabilities(self) -> frozenset[Capability]:
        if self._sqlite:
            memory = self._engine.url.database in (None, "", ":memory:")
            return frozenset() if memory else frozenset({Capability.MULTI_PROCESS})
        return frozenset({Capability.MULTI_PROCESS, Capability.MULTI_HOST, Capability.SKIP_LOCKED})

    # ------------------------------------------------------------------ plumbing
    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self._engine.connect()
            self._local.conn = conn
            self._connections.append(conn)
        return conn

    def _discard(self, conn: Connection) -> None:
        """Drop this thread's connection after a failure that may have broken it."""
        if self._sqlite and not conn.invalidated:
            return  # the one SQLite connection (and an in-memory database with it) stays
        self._local.conn = None
        if conn in self._connections:
            self._connections.remove(conn)
        with contextlib.suppress(exc.SQLAlchemyError):  # it is gone either way
            if not conn.invalidated:
                conn.invalidate()
            conn.close()

    def _transaction(self, write: bool, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one transaction on this thread's connection, retrying transient errors."""
        try:
            return self._attempt(write, fn)
        except StorageUnavailable as failure:
            return self._retry(write, fn, failure)

    def _retry(self, write: bool, fn: Callable[[Connection], T], failure: StorageUnavailable) -> T:
        local = self._local
        local.lost_commit = bool(failure.extra.get("lost_commit"))

        def attempt() -> T:
            try:
                return self._attempt(write, fn)
            except StorageUnavailable as again:
                local.lost_commit = local.lost_commit or bool(again.extra.get("lost_commit"))
                raise

        try:
            return _retrying()(attempt)
        finally:
            local.lost_commit = False

    def _lost_commit(self) -> bool:
        """True while retrying an operation whose earlier attempt died during its commit.

        That attempt may have committed: a compare-and-set then finds its own write (version
        moved on) and must report success, and a claim must return the items it stamped.
        """
        return bool(getattr(self._local, "lost_commit", False))

    def _attempt(self, write: bool, fn: Callable[[Connection], T]) -> T:
        conn: Connection | None = None
        committing = False
        try:
            conn = self._connection()
            if self._sqlite:
                conn.execution_options(**{_WRITE_OPTION: write})
            with conn.begin():
                result = fn(conn)
                committing = True
            return result
        except exc.DBAPIError as error:
            transient = _is_transient(error)
            if conn is not None and (transient or conn.invalidated):
                self._discard(conn)
            message = f"{self._dialect.name}: {_describe(error)}"
            if transient:
                raise StorageUnavailable(message, operation=fn.__name__, lost_commit=committing) from error
            raise StorageError(message, operation=fn.__name__) from error
        except exc.TimeoutError as error:  # no pooled connection free in time
            raise StorageUnavailable(f"{self._dialect.name}: {error}", operation=fn.__name__) from error
        except exc.SQLAlchemyError as error:
            if conn is not None and conn.invalidated:
                self._discard(conn)
            raise StorageError(f"{self._dialect.name}: {error}", operation=fn.__name__) from error

    async def _run(self, write: bool, fn: Callable[[Connection], T]) -> T:
        if self._closed:
            raise StorageError("storage is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transaction, write, fn)

    async def _run_hot(self, name: str, fn: Callable[[sqlite3.Cursor], T]) -> T:
        """Run ``fn`` in a BEGIN IMMEDIATE transaction on a raw SQLite connection (the hot path).

        On a file database the statement first runs inline, on the event loop's own connection
        whose busy timeout is zero: uncontended, that costs one short synchronous statement and no
        thread hand-off (which costs more than the statement itself). If another connection holds
        the write lock, SQLite answers "busy" at once and the work goes to the storage's thread,
        which waits for the lock with the full busy timeout and retries, off the event loop.
        """
        if self._closed:
            raise StorageError("storage is closed")
        inline = self._inline_connection()
        if inline is not None:
            try:
                return write_transaction(inline, fn)
            except sqlite3.Error as error:
                if getattr(error, "sqlite_errorcode", 0) & 0xFF not in (_SQLITE_BUSY, _SQLITE_LOCKED):
                    raise StorageError(f"sqlite: {type(error).__name__}: {error}", operation=name) from error
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._hot_transaction, name, fn)

    def _inline_connection(self) -> sqlite3.Connection | None:
        """The event loop thread's own connection to a SQLite *file* (busy timeout 0), or None.

        It belongs to the first thread that asks; calls from any other thread use the storage's
        thread instead, so the connection is never shared between threads.
        """
        me = threading.get_ident()
        with self._inline_lock:  # claim ownership atomically: two loops may ask at once
            if self._inline_thread is None:
                memory = self._engine.url.database in (None, "", ":memory:")
                # One shared in-memory connection: only the storage's thread may use it.
                self._inline_thread = -1 if memory else me
            if self._inline_thread != me:
                return None
        if self._inline is None:
            conn = self._engine.connect()
            dbapi = conn.connection.driver_connection
            assert isinstance(dbapi, sqlite3.Connection)
            dbapi.execute("PRAGMA busy_timeout = 0")
            self._inline = (conn, dbapi)
        return self._inline[1]

    def _hot_transaction(self, name: str, fn: Callable[[sqlite3.Cursor], T]) -> T:
        def attempt() -> T:
            dbapi = self._connection().connection.driver_connection
            assert isinstance(dbapi, sqlite3.Connection)
            try:
                return write_transaction(dbapi, fn)
            except sqlite3.Error as error:
                code = getattr(error, "sqlite_errorcode", 0) & 0xFF
                message = f"sqlite: {type(error).__name__}: {error}"
                if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
                    raise StorageUnavailable(message, operation=name) from error
                raise StorageError(message, operation=name) from error

        try:
            return attempt()
        except StorageUnavailable:
            return _retrying()(attempt)

    async def create_schema(self) -> None:
        def create(conn: Connection) -> None:
            if not self._sqlite:
                # Serialise concurrent create_schema calls (many workers starting at once):
                # CREATE TABLE IF NOT EXISTS alone races on PostgreSQL's catalog.
                conn.execute(_SCHEMA_LOCK)
            metadata.create_all(conn, checkfirst=True)
            newest = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
            if newest is not None and int(newest) > SCHEMA_VERSION:
                raise StorageError(
                    f"the database has schema version {newest}, newer than this pipestate's "
                    f"{SCHEMA_VERSION}: upgrade pipestate",
                    operation="create_schema",
                )
            record = self._dialect.insert(schema_version).on_conflict_do_nothing()
            if newest is None:  # a new database: create_all just made it at SCHEMA_VERSION
                conn.execute(record, {"version": SCHEMA_VERSION, "applied_at": _utcnow()})
                return
            for version in range(int(newest) + 1, SCHEMA_VERSION + 1):  # an older one, step by step
                for statement in UPGRADES.get(version, ()):
                    conn.exec_driver_sql(statement)
                conn.execute(record, {"version": version, "applied_at": _utcnow()})

        await self._run(True, create)

    async def schema_versions(self) -> list[int]:
        """Schema versions applied to this database, oldest first."""

        def read(conn: Connection) -> list[int]:
            return [
                int(v)
                for v in conn.execute(
                    sa.select(schema_version.c.version).order_by(schema_version.c.version)
                ).scalars()
            ]

        return await self._run(False, read)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._inline is not None:
            conn, dbapi = self._inline
            self._inline = None
            with contextlib.suppress(sqlite3.Error, exc.SQLAlchemyError):
                dbapi.execute(
                    f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"
                )  # back to the pool as it came
                conn.close()

        def close_all() -> None:
            for conn in self._connections:
                with contextlib.suppress(exc.SQLAlchemyError):  # one the server already dropped
                    conn.close()

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, close_all)
        self._executor.shutdown(wait=True)
        self._engine.dispose()

    # ------------------------------------------------------------------ runs
    def _insert_if_absent(
        self, table: sa.Table, key: str, rows: list[dict[str, Any]]
    ) -> Callable[[Connection], int]:
        unique = list({row[key]: row for row in rows}.values())
        stmt = _insert_if_absent_statement(self._dialect.name, table)

        def insert(conn: Connection) -> int:
            if not unique:
                return 0
            inserted = {row[0] for row in conn.execute(stmt, unique)}
            if len(inserted) < len(unique) and self._lost_commit():
                # Rows an attempt whose commit was lost may have written: ours if identical.
                rest = [row for row in unique if row[key] not in inserted]
                return len(inserted) + _count_written(conn, table, key, rest)
            return len(inserted)

        insert.__name__ = f"insert_{table.name}"
        return insert

    async def insert_runs(self, runs_: Sequence[PipelineRun]) -> int:
        return await self._run(True, self._insert_if_absent(runs, "run_id", [run_to_row(r) for r in runs_]))

    async def get_run(self, run_id: str) -> PipelineRun | None:
        def get(conn: Connection) -> PipelineRun | None:
            row = conn.execute(_GET_RUN, {"b_id": run_id}).mappings().first()
            return None if row is None else run_from_row(row)

        return await self._run(False, get)

    async def get_runs(self, run_ids: Collection[str]) -> list[PipelineRun]:
        ids = sorted(set(run_ids))
        stmt = (
            sa.select(runs)
            .where(runs.c.run_id.in_(sa.bindparam("b_ids", expanding=True)))
            .order_by(runs.c.run_id)
        )

        def get(conn: Connection) -> list[PipelineRun]:
            if not ids:
                return []
            return [run_from_row(r) for r in conn.execute(stmt, {"b_ids": ids}).mappings()]

        return await self._run(False, get)

    async def update_run(self, run: PipelineRun, expected_version: int) -> bool:
        params = _cas_params(run_to_row(run), _RUN_MUTABLE, run.run_id, expected_version)

        def update(conn: Connection) -> bool:
            if conn.execute(_UPDATE_RUN, params).rowcount == 1:
                return True
            if self._lost_commit():
                row = conn.execute(_GET_RUN, {"b_id": run.run_id}).mappings().first()
                if row is None:
                    raise RunNotFound(run.run_id)
                return _holds(row, params, _RUN_MUTABLE)
            if conn.execute(_RUN_EXISTS, {"b_id": run.run_id}).first() is None:
                raise RunNotFound(run.run_id)
            return False

        return await self._run(True, update)

    async def update_runs(self, pairs: Sequence[tuple[PipelineRun, int]]) -> int:
        batch = [_cas_params(run_to_row(r), _RUN_MUTABLE, r.run_id, v) for r, v in pairs]
        return (
            await self._run(True, self._batch_cas(_UPDATE_RUN, _GET_RUN, _RUN_MUTABLE, batch)) if batch else 0
        )

    async def find_runs(
        self, criteria: RunFilter, *, order: RunOrder = RunOrder.SCHEDULED_ASC, limit: int | None = None
    ) -> list[PipelineRun]:
        stmt = sa.select(runs).where(*_run_conditions(criteria))
        if order is RunOrder.SCHEDULED_ASC:
            stmt = stmt.order_by(runs.c.scheduled_time, runs.c.run_id)
        elif order is RunOrder.COMPLETED_DESC:
            stmt = stmt.order_by(runs.c.completed_at.desc().nulls_last(), runs.c.run_id)
        else:
            stmt = stmt.order_by(runs.c.updated_at.desc().nulls_last(), runs.c.run_id)
        if limit is not None:
            stmt = stmt.limit(limit)

        def find(conn: Connection) -> list[PipelineRun]:
            return [run_from_row(r) for r in conn.execute(stmt).mappings()]

        return await self._run(False, find)

    async def count_runs_by_state(self, tenant_id: str | None = None) -> dict[RunState, int]:
        stmt = sa.select(runs.c.state, sa.func.count()).group_by(runs.c.state)
        if tenant_id is not None:
            stmt = stmt.where(runs.c.tenant_id == tenant_id)

        def count(conn: Connection) -> dict[RunState, int]:
            return {RunState(state): int(n) for state, n in conn.execute(stmt).all()}

        return await self._run(False, count)

    # ------------------------------------------------------------------ queue
    async def insert_queue_items(self, items: Sequence[QueueItem]) -> int:
        if self._hot is not None:
            hot, rows = self._hot, list({i.queue_id: queue_to_row(i) for i in items}.values())
            return await self._run_hot("insert_queue_items", lambda cursor: hot.insert(cursor, rows))
        return await self._run(
            True, self._insert_if_absent(queue, "queue_id", [queue_to_row(i) for i in items])
        )

    async def get_queue_item(self, queue_id: str) -> QueueItem | None:
        def get(conn: Connection) -> QueueItem | None:
            row = conn.execute(_GET_ITEM, {"b_id": queue_id}).mappings().first()
            return None if row is None else queue_from_row(row)

        return await self._run(False, get)

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

        claim_stmt = self._dialect.claim
        if self._hot is not None:
            hot = self._hot

            def claim_hot(cursor: sqlite3.Cursor) -> list[QueueItem]:
                items = [queue_from_row(r) for r in hot.claim(cursor, params)]
                items.sort(key=lambda i: (i.priority, i.created_at, i.queue_id))
                return items

            return await self._run_hot("claim_queue_items", claim_hot)

        def claim(conn: Connection) -> list[QueueItem]:
            rows = None
            if self._lost_commit():  # did the attempt that lost its commit claim these already?
                rows = conn.execute(_CLAIMED_BY_TOKEN, {"b_token": claim_token}).mappings().all()
            if not rows:
                rows = conn.execute(claim_stmt, params).mappings().all()
            items = [queue_from_row(r) for r in rows]
            items.sort(key=lambda i: (i.priority, i.created_at, i.queue_id))
            return items

        return await self._run(True, claim)

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
        stmt = _TRANSITIONS[(to_status, claim_token is not None)]
        params: dict[str, Any] = {"b_id": queue_id, "b_from": from_status.value, "b_now": now}
        if claim_token is not None:
            params["b_token"] = claim_token
        if to_status is QueueStatus.FAILED:
            params["b_error"] = error_message
        if self._hot is not None:
            hot, key = self._hot, (to_status, claim_token is not None)
            return await self._run_hot(
                "transition_queue_item", lambda cursor: hot.transition(cursor, key, params)
            )

        def transition(conn: Connection) -> bool:
            if conn.execute(stmt, params).rowcount == 1:
                return True
            if not self._lost_commit():
                return False
            row = conn.execute(_GET_ITEM, {"b_id": queue_id}).mappings().first()
            return (
                row is not None
                and row["status"] == to_status.value
                and row["updated_at"] == now
                and (to_status is QueueStatus.QUEUED or claim_token in (None, row["claim_token"]))
            )

        return await self._run(True, transition)

    async def extend_queue_lease(
        self, queue_id: str, *, claim_token: str, lease_expires_at: datetime
    ) -> bool:
        params = {"b_id": queue_id, "b_token": claim_token, "b_lease": lease_expires_at}

        def extend(conn: Connection) -> bool:
            if conn.execute(_EXTEND_LEASE, params).rowcount == 1:
                return True
            if not self._lost_commit():
                return False
            row = conn.execute(_GET_ITEM, {"b_id": queue_id}).mappings().first()
            return (
                row is not None
                and row["status"] == QueueStatus.PROCESSING.value
                and row["claim_token"] == claim_token
                and row["lease_expires_at"] == lease_expires_at
            )

        return await self._run(True, extend)

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

        def find(conn: Connection) -> list[QueueItem]:
            return [queue_from_row(r) for r in conn.execute(stmt).mappings()]

        return await self._run(False, find)

    async def count_queue_items(self, status: QueueStatus | None = None, tenant_id: str | None = None) -> int:
        stmt = sa.select(sa.func.count()).select_from(queue)
        if status is not None:
            stmt = stmt.where(queue.c.status == status.value)
        if tenant_id is not None:
            stmt = stmt.where(queue.c.tenant_id == tenant_id)

        def count(conn: Connection) -> int:
            return int(conn.execute(stmt).scalar_one())

        return await self._run(False, count)

    async def queue_stats(self, now: datetime) -> QueueStats:
        wait = self._dialect.wait_seconds().label("wait")
        queued = queue.c.status == QueueStatus.QUEUED.value
        claimed = queue.c.claimed_at.is_not(None)
        by_status = sa.select(queue.c.status, sa.func.count()).group_by(queue.c.status)
        by_priority = sa.select(queue.c.priority, sa.func.count()).where(queued).group_by(queue.c.priority)
        oldest = sa.select(sa.func.min(queue.c.created_at)).where(queued)
        waits = sa.select(sa.func.avg(wait), sa.func.count()).where(claimed)

        def stats(conn: Connection) -> QueueStats:
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

        return await self._run(False, stats)

    # ------------------------------------------------------------------ schedules
    async def insert_schedule(self, schedule: PipelineSchedule) -> bool:
        insert = self._insert_if_absent(schedules, "schedule_id", [schedule_to_row(schedule)])
        return await self._run(True, insert) == 1

    async def get_schedule(self, schedule_id: str) -> PipelineSchedule | None:
        def get(conn: Connection) -> PipelineSchedule | None:
            row = conn.execute(_GET_SCHEDULE, {"b_id": schedule_id}).mappings().first()
            return None if row is None else schedule_from_row(row)

        return await self._run(False, get)

    async def list_schedules(
        self, *, tenant_id: str | None = None, enabled: bool | None = None
    ) -> list[PipelineSchedule]:
        stmt = sa.select(schedules).order_by(schedules.c.tenant_id, schedules.c.config_id)
        if tenant_id is not None:
            stmt = stmt.where(schedules.c.tenant_id == tenant_id)
        if enabled is not None:
            stmt = stmt.where(schedules.c.enabled == enabled)

        def find(conn: Connection) -> list[PipelineSchedule]:
            return [schedule_from_row(r) for r in conn.execute(stmt).mappings()]

        return await self._run(False, find)

    async def update_schedule(self, schedule: PipelineSchedule, expected_version: int) -> bool:
        params = _cas_params(
            schedule_to_row(schedule), _SCHEDULE_MUTABLE, schedule.schedule_id, expected_version
        )

        def update(conn: Connection) -> bool:
            if conn.execute(_UPDATE_SCHEDULE, params).rowcount == 1:
                return True
            row = conn.execute(_GET_SCHEDULE, {"b_id": schedule.schedule_id}).mappings().first()
            if row is None:
                raise ScheduleNotFound(schedule.schedule_id)
            return self._lost_commit() and _holds(row, params, _SCHEDULE_MUTABLE)

        return await self._run(True, update)

    async def update_schedules(self, pairs: Sequence[tuple[PipelineSchedule, int]]) -> int:
        batch = [_cas_params(schedule_to_row(s), _SCHEDULE_MUTABLE, s.schedule_id, v) for s, v in pairs]
        if not batch:
            return 0
        return await self._run(
            True, self._batch_cas(_UPDATE_SCHEDULE, _GET_SCHEDULE, _SCHEDULE_MUTABLE, batch)
        )

    def _batch_cas(
        self, update: sa.Update, get: sa.Select[Any], mutable: tuple[str, ...], batch: list[dict[str, Any]]
    ) -> Callable[[Connection], int]:
        """One transaction of compare-and-sets, sent as one executemany (the driver batches it).

        While retrying a lost commit the pairs go one by one, so that a row already holding our
        values (written by the attempt whose commit was lost) counts as applied.
        """

        def update_all(conn: Connection) -> int:
            if not self._lost_commit():
                return int(conn.execute(update, batch).rowcount)
            applied = 0
            for params in batch:
                if conn.execute(update, params).rowcount == 1:
                    applied += 1
                elif self._lost_commit():
                    row = conn.execute(get, {"b_id": params["b_id"]}).mappings().first()
                    applied += row is not None and _holds(row, params, mutable)
            return applied

        return update_all

    async def due_schedules(self, now: datetime, limit: int) -> list[PipelineSchedule]:
        stmt = (
            sa.select(schedules)
            .where(schedules.c.enabled == sa.true(), schedules.c.next_fire_time <= now)
            .order_by(schedules.c.next_fire_time, schedules.c.schedule_id)
            .limit(limit)
        )

        def find(conn: Connection) -> list[PipelineSchedule]:
            return [schedule_from_row(r) for r in conn.execute(stmt).mappings()]

        return await self._run(False, find)


# --------------------------------------------------------------------------- helpers
_SCHEMA_LOCK: Final = sa.select(sa.func.pg_advisory_xact_lock(0x70697065))  # "pipe"


@functools.cache
def _sqlite_hot_path() -> QueueHotPath:
    return QueueHotPath(
        insert=_insert_if_absent_statement("sqlite", queue),
        insert_columns=QUEUE_COLUMNS,
        claim=_CLAIM_SQLITE,
        transitions=_TRANSITIONS,
        table=queue,
    )


def _insert_if_absent_statement(dialect: str, table: sa.Table) -> sa.Insert:
    key = table.primary_key.columns.values()[0]
    insert: Any = _DIALECTS[dialect].insert(table)
    stmt: sa.Insert = insert.on_conflict_do_nothing(index_elements=[key]).returning(key)
    return stmt


def _describe(error: exc.DBAPIError) -> str:
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "sqlite_errorname", None)
    text = str(error.orig).strip().splitlines()[0] if str(error.orig).strip() else type(error.orig).__name__
    return f"{type(error.orig).__name__}{f' [{code}]' if code else ''}: {text}"


def _holds(row: Any, params: dict[str, Any], columns: Collection[str]) -> bool:
    """Whether the stored ``row`` holds exactly the values a compare-and-set wrote."""
    return all(row[name] == params[name] for name in columns)


def _count_written(conn: Connection, table: sa.Table, key: str, rows: list[dict[str, Any]]) -> int:
    stmt = sa.select(table).where(table.c[key].in_([row[key] for row in rows]))
    stored = {r[key]: r for r in conn.execute(stmt).mappings()}
    return sum(row[key] in stored and _holds(stored[row[key]], row, row.keys()) for row in rows)


def _cas_params(row: dict[str, Any], mutable: tuple[str, ...], key: str, expected: int) -> dict[str, Any]:
    params = {name: row[name] for name in mutable}
    params["b_id"] = key
    params["b_expected"] = expected
    return params


def _run_conditions(criteria: RunFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if criteria.states is not None:
        conditions.append(runs.c.state.in_([RunState(s).value for s in criteria.states]))
    if criteria.tenant_id is not None:
        conditions.append(runs.c.tenant_id == criteria.tenant_id)
    if criteria.config_id is not None:
        conditions.append(runs.c.config_id == criteria.config_id)
    if criteria.scheduled_before is not None:
        conditions.append(runs.c.scheduled_time <= criteria.scheduled_before)
    if criteria.lease_expired_before is not None:
        conditions.append(runs.c.lease_expires_at <= criteria.lease_expired_before)
    if criteria.retry_due_before is not None:
        conditions.append(runs.c.next_retry_at <= criteria.retry_due_before)
    return conditions


def _as_utc(value: Any) -> datetime:
    # Aggregates (MIN) bypass the column's TypeDecorator on SQLite and come back as text.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    result = utc(value)
    assert result is not None
    return result


def _utcnow() -> datetime:
    return SYSTEM_CLOCK.now()
