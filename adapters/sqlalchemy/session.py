"""Connections, transactions, error translation and retries of the SQLAlchemy adapter.

The blocking driver runs on a small thread pool the storage owns: one thread and one long-lived
connection for SQLite (SQLite serialises writers anyway, and a persistent connection skips pool
checkouts on the hot path), a pool-sized set of threads for PostgreSQL, each with its own
long-lived connection.

Three ways to run work, all retried the same way (:func:`with_retries`):

* :meth:`Sessions.run`: a SQLAlchemy transaction (the cold path: schema, reports, rare writes);
* :meth:`Sessions.run_sqlite`: a raw ``sqlite3`` transaction, inline on the event loop when the
  write lock is free, else on the storage's thread (the SQLite hot path);
* :meth:`Sessions.run_postgres`: raw psycopg on the thread's connection in autocommit mode, so a
  single statement is one round trip (no BEGIN/COMMIT pair), or one explicit transaction for a
  batch (the PostgreSQL hot path).

Errors: driver exceptions become :class:`StorageUnavailable` (transient: lost connection,
serialization failure, deadlock, busy database, server shutting down) or :class:`StorageError`
(everything else). When the connection died while a statement or transaction was committing,
its outcome is unknown; the :class:`Attempt` handed to the retry says so, and the operation then
reads back what the earlier try may have written instead of reporting a lost race that was won.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine

from pipestate.adapters.retry import RetrySettings
from pipestate.adapters.sqlalchemy.sqlite_hotpath import write_transaction
from pipestate.adapters.sqlalchemy.tables import SCHEMA_VERSION, schema_version
from pipestate.domain.errors import StorageError, StorageUnavailable

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
TRANSIENT_RETRIES: Final = 5
"""Retries after the first attempt of an operation that failed transiently."""
TRANSIENT_RETRY_SECONDS: Final = 20.0
"""No retry starts later than this after the first retry."""
INLINE_MAX_ROWS: Final = 100
"""Larger SQLite batches go to the storage's thread: a 5,000-row page written inline would hold
the event loop for tens of milliseconds."""

_WRITE_OPTION: Final = "pipestate_write"


# --------------------------------------------------------------------------- attempts and retries
@dataclass
class Attempt:
    """One try of a port operation, handed to the work so that a retry knows its history."""

    number: int = 1
    lost_commit: bool = False
    """An earlier try died while committing and may have applied: a compare-and-set then finds
    its own write (the version moved on) and must report success, and a claim must return the
    items it stamped."""

    def failed(self, failure: StorageUnavailable) -> None:
        self.lost_commit = self.lost_commit or bool(failure.extra.get("lost_commit"))


SQL_RETRY_SETTINGS: Final = RetrySettings(
    max_attempts=TRANSIENT_RETRIES, initial_wait=0.02, max_wait=1.0, max_elapsed=TRANSIENT_RETRY_SECONDS
)
"""Transient failures of a SQL database are a dropped connection or a lock: retry within
milliseconds (20 ms, 40 ms … capped at 1 s, full jitter), 5 attempts, 20 s at most."""


def with_retries(once: Callable[[Attempt], T], settings: RetrySettings = SQL_RETRY_SETTINGS) -> T:
    """Run ``once`` and retry it on :class:`StorageUnavailable` (bounded by ``settings``)."""
    attempt = Attempt()
    try:
        return once(attempt)
    except StorageUnavailable as failure:
        attempt.failed(failure)

    def again() -> T:
        attempt.number += 1
        try:
            return once(attempt)
        except StorageUnavailable as failure:
            attempt.failed(failure)
            raise

    return settings.retrying(lambda error: isinstance(error, StorageUnavailable))(again)


# --------------------------------------------------------------------------- error translation
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
_PG_ROLLED_BACK: Final = frozenset({"40001", "40P01", "55P03", "57014", "57P03", "53300", "53400"})
"""Transient errors the server answered after undoing the statement: it did not apply."""
SQLITE_BUSY: Final = 5
SQLITE_LOCKED: Final = 6


def _sqlite_busy(error: BaseException) -> bool:
    return getattr(error, "sqlite_errorcode", 0) & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)


def _is_transient(error: exc.DBAPIError) -> bool:
    if error.connection_invalidated:
        return True
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None)  # psycopg
    if sqlstate:
        return bool(sqlstate.startswith("08") or sqlstate in _PG_TRANSIENT_SQLSTATES)
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    if sqlite_code is not None:  # "database is locked" is transient; "no such table" is not
        return sqlite_code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)
    # No code at all: the driver lost (or never got) its connection.
    return isinstance(error, exc.OperationalError | exc.InterfaceError)


def _describe(orig: BaseException | None) -> str:
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return f"{type(orig).__name__}{f' [{code}]' if code else ''}: {text}"


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


def prepare_sqlite_engine(engine: Engine) -> None:
    """WAL, ``synchronous=NORMAL``, busy timeout, and BEGIN IMMEDIATE for write transactions."""
    if getattr(engine, "_pipestate_prepared", False):
        return
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    engine._pipestate_prepared = True  # type: ignore[attr-defined]


def refuse_newer_schema(conn: Connection) -> None:
    """Raise :class:`StorageError` when the database was made by a newer pipestate.

    Every storage checks this on its first connection, not only ``create_schema``: an older
    worker must not write rows a newer schema may have changed the meaning of.
    """
    if not sa.inspect(conn).has_table(schema_version.name):
        conn.rollback()
        return
    newest = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
    conn.rollback()
    if newest is not None and int(newest) > SCHEMA_VERSION:
        raise StorageError(
            f"the database has schema version {newest}, newer than this pipestate's "
            f"{SCHEMA_VERSION}: upgrade pipestate",
            operation="open",
        )


# --------------------------------------------------------------------------- sessions
class Sessions:
    """The storage's threads and connections, and the three ways to run work on them."""

    def __init__(self, engine: Engine, threads: int, retry: RetrySettings = SQL_RETRY_SETTINGS) -> None:
        self.engine = engine
        self.retry = retry
        self.dialect = engine.dialect.name
        self._sqlite = self.dialect == "sqlite"
        self._memory = self._sqlite and engine.url.database in (None, "", ":memory:")
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pipestate-db")
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._checked = False
        self._check_lock = threading.Lock()
        self._inline: tuple[Connection, sqlite3.Connection] | None = None
        self._inline_thread: int | None = None
        self._inline_lock = threading.Lock()
        self.closed = False

    # ------------------------------------------------------------------ connections
    def connection(self) -> Connection:
        """This thread's long-lived connection (opened on first use)."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect()
            try:
                self._check(conn)
            except BaseException:
                conn.close()
                raise
            self._local.conn = conn
            self._connections.append(conn)
        return conn

    def _check(self, conn: Connection) -> None:
        if self._checked:
            return
        with self._check_lock:
            if not self._checked:
                refuse_newer_schema(conn)
                self._checked = True

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

    # ------------------------------------------------------------------ SQLAlchemy transactions
    async def run(self, write: bool, fn: Callable[[Connection, Attempt], T]) -> T:
        """Run ``fn`` in one SQLAlchemy transaction on a storage thread, retrying transient errors."""
        if self.closed:
            raise StorageError("storage is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.transaction, write, fn)

    def transaction(self, write: bool, fn: Callable[[Connection, Attempt], T]) -> T:
        return with_retries(lambda attempt: self._transaction_once(write, fn, attempt), self.retry)

    def _transaction_once(self, write: bool, fn: Callable[[Connection, Attempt], T], attempt: Attempt) -> T:
        conn: Connection | None = None
        committing = False
        name = getattr(fn, "__name__", "transaction")
        try:
            conn = self.connection()
            if self._sqlite:
                conn.execution_options(**{_WRITE_OPTION: write})
            else:
                dbapi = conn.connection.driver_connection
                if dbapi is not None and dbapi.autocommit:  # left so by the hot path
                    dbapi.autocommit = False
            with conn.begin():
                result = fn(conn, attempt)
                committing = True
            return result
        except exc.DBAPIError as error:
            transient = _is_transient(error)
            if conn is not None and (transient or conn.invalidated):
                self._discard(conn)
            message = f"{self.dialect}: {_describe(error.orig)}"
            if transient:
                raise StorageUnavailable(message, operation=name, lost_commit=committing) from error
            raise StorageError(message, operation=name) from error
        except exc.TimeoutError as error:  # no pooled connection free in time
            raise StorageUnavailable(f"{self.dialect}: {error}", operation=name) from error
        except exc.SQLAlchemyError as error:
            if conn is not None and conn.invalidated:
                self._discard(conn)
            raise StorageError(f"{self.dialect}: {error}", operation=name) from error

    # ------------------------------------------------------------------ PostgreSQL hot path
    async def run_postgres(
        self, name: str, fn: Callable[[Any, Attempt], T], *, transaction: bool = False
    ) -> T:
        """Run ``fn(psycopg_connection, attempt)`` on a storage thread's connection.

        The connection is in autocommit mode: each statement ``fn`` runs is its own transaction,
        one round trip. With ``transaction`` the statements run in one BEGIN … COMMIT.
        """
        if self.closed:
            raise StorageError("storage is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor,
            with_retries,
            lambda attempt: self._postgres_once(name, fn, attempt, transaction),
            self.retry,
        )

    def _postgres_once(
        self, name: str, fn: Callable[[Any, Attempt], T], attempt: Attempt, transaction: bool
    ) -> T:
        import psycopg  # the driver behind the postgresql dialect; only loaded when one is used

        conn: Connection | None = None
        try:
            conn = self.connection()
            dbapi = conn.connection.driver_connection
            assert dbapi is not None
            if not dbapi.autocommit:
                dbapi.autocommit = True
            if transaction:
                with dbapi.transaction():
                    return fn(dbapi, attempt)
            return fn(dbapi, attempt)
        except psycopg.Error as error:
            sqlstate = getattr(error, "sqlstate", None) or ""
            dbapi = None if conn is None or conn.invalidated else conn.connection.driver_connection
            broken = dbapi is None or dbapi.closed or dbapi.broken
            transient = broken or sqlstate.startswith("08") or sqlstate in _PG_TRANSIENT_SQLSTATES
            if conn is not None and broken:
                self._discard(conn)
            message = f"postgresql: {_describe(error)}"
            if transient:
                # A statement cut off with its connection may have committed (autocommit, or
                # the COMMIT of a batch); one the server answered with a rollback did not.
                lost = sqlstate not in _PG_ROLLED_BACK
                raise StorageUnavailable(message, operation=name, lost_commit=lost) from error
            raise StorageError(message, operation=name) from error
        except exc.DBAPIError as error:  # opening the connection failed
            if _is_transient(error):
                raise StorageUnavailable(f"postgresql: {_describe(error.orig)}", operation=name) from error
            raise StorageError(f"postgresql: {_describe(error.orig)}", operation=name) from error
        except exc.TimeoutError as error:
            raise StorageUnavailable(f"postgresql: {error}", operation=name) from error

    # ------------------------------------------------------------------ SQLite hot path
    async def run_sqlite(
        self, name: str, fn: Callable[[sqlite3.Cursor], T], *, write: bool = True, rows: int = 1
    ) -> T:
        """Run ``fn`` on a raw SQLite connection, in BEGIN IMMEDIATE … COMMIT when ``write``.

        On a WAL file database small work first runs inline, on the event loop's own connection
        whose busy timeout is zero: uncontended, that costs one short synchronous statement and
        no thread hand-off (which costs more than the statement itself). If another connection
        holds the write lock, SQLite answers "busy" at once and the work goes to the storage's
        thread, which waits for the lock with the full busy timeout and retries, off the event
        loop. Batches of more than :data:`INLINE_MAX_ROWS` rows always go to the thread.
        """
        if self.closed:
            raise StorageError("storage is closed")
        inline = self._inline_connection() if rows <= INLINE_MAX_ROWS else None
        if inline is not None:
            try:
                return write_transaction(inline, fn) if write else _read(inline, fn)
            except sqlite3.Error as error:
                if not _sqlite_busy(error):
                    raise StorageError(f"sqlite: {_describe(error)}", operation=name) from error
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._sqlite_threaded, name, fn, write)

    def _inline_connection(self) -> sqlite3.Connection | None:
        """The event loop thread's own connection to a SQLite WAL *file* (busy timeout 0), or None.

        It belongs to the first thread that asks; calls from any other thread use the storage's
        thread instead, so the connection is never shared between threads. Without WAL (a file
        system that refused it) a writer's COMMIT waits for readers, so nothing goes inline.
        """
        me = threading.get_ident()
        with self._inline_lock:  # claim ownership atomically: two loops may ask at once
            if self._inline_thread is None:
                # One shared in-memory connection: only the storage's thread may use it.
                self._inline_thread = -1 if self._memory else me
            if self._inline_thread != me:
                return None
        if self._inline is None:
            conn = self.engine.connect()
            try:
                self._check(conn)
            except BaseException:
                conn.close()
                raise
            dbapi = conn.connection.driver_connection
            assert isinstance(dbapi, sqlite3.Connection)
            mode = dbapi.execute("PRAGMA journal_mode").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                conn.close()
                with self._inline_lock:
                    self._inline_thread = -1
                return None
            dbapi.execute("PRAGMA busy_timeout = 0")
            self._inline = (conn, dbapi)
        return self._inline[1]

    def _sqlite_threaded(self, name: str, fn: Callable[[sqlite3.Cursor], T], write: bool) -> T:
        def once(_attempt: Attempt) -> T:
            dbapi = self.connection().connection.driver_connection
            assert isinstance(dbapi, sqlite3.Connection)
            try:
                return write_transaction(dbapi, fn) if write else _read(dbapi, fn)
            except sqlite3.Error as error:
                message = f"sqlite: {_describe(error)}"
                if _sqlite_busy(error):
                    raise StorageUnavailable(message, operation=name) from error
                raise StorageError(message, operation=name) from error

        return with_retries(once, self.retry)

    # ------------------------------------------------------------------ shutdown
    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
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
                with contextlib.suppress(Exception):  # one the server already dropped
                    dbapi = None if conn.invalidated else conn.connection.driver_connection
                    if dbapi is not None and getattr(dbapi, "autocommit", False):
                        dbapi.autocommit = False  # back to the pool as it came
                    conn.close()

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, close_all)
        self._executor.shutdown(wait=True)
        self.engine.dispose()


def _read(connection: sqlite3.Connection, fn: Callable[[sqlite3.Cursor], T]) -> T:
    cursor = connection.cursor()
    try:
        return fn(cursor)
    finally:
        cursor.close()
