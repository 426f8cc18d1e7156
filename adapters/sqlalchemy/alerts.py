"""The monitor's tables on SQLite and PostgreSQL: alerts (deduplicated by key) and monitor settings.

Declared on their own ``MetaData`` (not the core tables'), created by
:meth:`SqlAlertStore.create_alert_schema`. Every method is one statement in one short
transaction on a worker thread. The dedupe is ``INSERT … ON CONFLICT (alert_key) DO NOTHING
RETURNING alert_key``: of several monitors inserting one key at once (threads, processes, hosts
sharing PostgreSQL), exactly one gets the key back and delivers the alert.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from pipestate.domain.alerts import Alert, AlertKind, MonitorSettings
from pipestate.domain.errors import StorageError, StorageUnavailable
from pipestate.domain.run import RunState

_T = TypeVar("_T")


class _UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC in and out (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata: Final = sa.MetaData()

alerts: Final = sa.Table(
    "x_meta_pipeline_alerts",
    metadata,
    sa.Column("alert_key", sa.String(512), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("tenant_id", sa.String(255), nullable=False),
    sa.Column("config_id", sa.String(255)),
    sa.Column("run_id", sa.String(255)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("detected_at", _UtcDateTime, nullable=False),
    sa.Column("delivered_at", _UtcDateTime),
    sa.Column("delivery_error", sa.Text),
    sa.Index("ix_alerts_detected", "detected_at"),
    sa.Index("ix_alerts_tenant_detected", "tenant_id", "detected_at"),
    sa.Index("ix_alerts_run", "run_id"),
)

monitor_settings: Final = sa.Table(
    "x_meta_pipeline_monitor_settings",
    metadata,
    sa.Column("tenant_id", sa.String(255), primary_key=True),
    sa.Column("config_id", sa.String(255), primary_key=True),
    sa.Column("max_delay_seconds", sa.Float),
    sa.Column("sla_seconds", sa.Float),
    sa.Column("run_timeout_seconds", sa.Float),
    sa.Column("max_lease_expiries", sa.Integer),
    sa.Column("consecutive_failures", sa.Integer),
    sa.Column("auto_pause", sa.Boolean, nullable=False),
)

# The core runs table, named as schemas/x_meta_scheduled_runs.json names it: only the two
# columns the grouped count reads (a lightweight clause, independent of the core MetaData).
_runs: Final = sa.table("x_meta_scheduled_runs", sa.column("tenant_id"), sa.column("state"))

_SETTINGS_FIELDS: Final = (
    "max_delay_seconds",
    "sla_seconds",
    "run_timeout_seconds",
    "max_lease_expiries",
    "consecutive_failures",
    "auto_pause",
)


class SqlAlertStore:
    """:class:`~pipestate.domain.alerts.MonitorStore` on a SQLAlchemy engine (SQLite or PostgreSQL).

    Share the core storage's engine (``SqlAlertStore(storage.engine)``) so both see one database.
    """

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise StorageError(f"unsupported SQLAlchemy dialect {engine.dialect.name!r}")
        self._engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    async def create_alert_schema(self) -> None:
        await self._run(lambda conn: metadata.create_all(conn, checkfirst=True))

    async def record_alerts(self, new: Sequence[Alert]) -> list[Alert]:
        if not new:
            return []
        by_key = {a.key: a for a in new}
        statement = (
            self._insert(alerts)
            .values([_alert_row(a) for a in by_key.values()])
            .on_conflict_do_nothing(index_elements=["alert_key"])
            .returning(alerts.c.alert_key)
        )

        def insert(conn: Connection) -> list[str]:
            return [row[0] for row in conn.execute(statement)]

        inserted = set(await self._run(insert))
        return [a for key, a in by_key.items() if key in inserted]

    async def mark_delivered(self, key: str, *, at: datetime, error: str | None = None) -> None:
        statement = (
            alerts.update().where(alerts.c.alert_key == key).values(delivered_at=at, delivery_error=error)
        )
        await self._run(lambda conn: conn.execute(statement))

    async def list_alerts(
        self,
        *,
        tenant_id: str | None = None,
        kind: AlertKind | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        query = sa.select(alerts)
        if tenant_id is not None:
            query = query.where(alerts.c.tenant_id == tenant_id)
        if kind is not None:
            query = query.where(alerts.c.kind == kind.value)
        if run_id is not None:
            query = query.where(alerts.c.run_id == run_id)
        query = query.order_by(alerts.c.detected_at.desc(), alerts.c.alert_key).limit(limit)

        def select(conn: Connection) -> list[Alert]:
            return [_alert_from(row._mapping) for row in conn.execute(query)]

        return await self._run(select)

    async def list_settings(self) -> list[MonitorSettings]:
        query = sa.select(monitor_settings).order_by(
            monitor_settings.c.tenant_id, monitor_settings.c.config_id
        )

        def select(conn: Connection) -> list[MonitorSettings]:
            return [MonitorSettings(**dict(row._mapping)) for row in conn.execute(query)]

        return await self._run(select)

    async def put_settings(self, settings: MonitorSettings) -> None:
        values = {name: getattr(settings, name) for name in ("tenant_id", "config_id", *_SETTINGS_FIELDS)}
        statement = (
            self._insert(monitor_settings)
            .values(values)
            .on_conflict_do_update(
                index_elements=["tenant_id", "config_id"], set_={k: values[k] for k in _SETTINGS_FIELDS}
            )
        )
        await self._run(lambda conn: conn.execute(statement))

    async def delete_settings(self, tenant_id: str, config_id: str) -> bool:
        statement = monitor_settings.delete().where(
            monitor_settings.c.tenant_id == tenant_id, monitor_settings.c.config_id == config_id
        )
        return bool(await self._run(lambda conn: conn.execute(statement).rowcount))

    async def count_runs_by_tenant_and_state(self) -> dict[tuple[str, RunState], int]:
        query = sa.select(_runs.c.tenant_id, _runs.c.state, sa.func.count()).group_by(
            _runs.c.tenant_id, _runs.c.state
        )

        def select(conn: Connection) -> dict[tuple[str, RunState], int]:
            return {(row[0], RunState(row[1])): int(row[2]) for row in conn.execute(query)}

        return await self._run(select)

    async def _run(self, work: Callable[[Connection], _T]) -> _T:
        def transaction() -> _T:
            try:
                with self._engine.begin() as conn:
                    return work(conn)
            except exc.DBAPIError as error:
                kind = StorageUnavailable if _transient(error) else StorageError
                raise kind(f"monitor store: {error.orig}", operation="alerts") from error

        return await asyncio.to_thread(transaction)


def _transient(error: exc.DBAPIError) -> bool:
    if error.connection_invalidated:
        return True
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate:
        return bool(sqlstate.startswith(("08", "40", "57", "53")))
    code = getattr(error.orig, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF in (5, 6))  # SQLITE_BUSY, SQLITE_LOCKED
    return isinstance(error, exc.OperationalError)


def _alert_row(alert: Alert) -> dict[str, Any]:
    return {
        "alert_key": alert.key,
        "kind": alert.kind.value,
        "tenant_id": alert.tenant_id,
        "config_id": alert.config_id,
        "run_id": alert.run_id,
        "reason": alert.reason,
        "details": dict(alert.details),
        "detected_at": alert.detected_at,
        "delivered_at": alert.delivered_at,
        "delivery_error": alert.delivery_error,
    }


def _alert_from(row: Any) -> Alert:
    return Alert(
        key=row["alert_key"],
        kind=AlertKind(row["kind"]),
        tenant_id=row["tenant_id"],
        config_id=row["config_id"],
        run_id=row["run_id"],
        reason=row["reason"],
        detected_at=row["detected_at"],
        details=row["details"] or {},
        delivered_at=row["delivered_at"],
        delivery_error=row["delivery_error"],
    )
