"""SQLAlchemy Core tables (declared once), shared by SQLite and PostgreSQL.

Column names are the domain dataclass field names; ``tests/unit/test_schema_agreement.py`` holds
these tables, ``schemas/*.json`` and the dataclasses to the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

SCHEMA_VERSION: Final = 4
"""The schema these tables describe; recorded in ``pipestate_schema_version`` by create_schema."""

_WAITING_INDEX: Final = (
    "CREATE INDEX IF NOT EXISTS ix_queue_waiting ON x_meta_pipeline_queue "
    "(priority, created_at, queue_id) WHERE status = 'QUEUED'"
)
_FAIR_WAITING_INDEX: Final = (
    "CREATE INDEX IF NOT EXISTS ix_queue_fair ON x_meta_pipeline_queue "
    "(claim_order, queue_id) WHERE status = 'QUEUED'"
)
_SQLITE_CLAIM_INDEX: Final = (
    "CREATE INDEX IF NOT EXISTS ix_queue_claim ON x_meta_pipeline_queue (status, claim_order, queue_id)"
)
_FLOW_INDEX: Final = (
    "CREATE INDEX IF NOT EXISTS ix_queue_tenant_flow ON x_meta_pipeline_queue "
    "(tenant_id, status, priority, claim_order)"
)
# Items enqueued before version 3 take their base claim order (enqueue time aged by priority,
# see pipestate.domain.limits); 3600 is AGING_STEP_SECONDS.
_FILL_CLAIM_ORDER: Final = {
    "sqlite": "UPDATE x_meta_pipeline_queue SET claim_order = "
    "(julianday(created_at) - 2440587.5) * 86400.0 + (priority - 1) * 3600.0 WHERE claim_order IS NULL",
    "postgresql": "UPDATE x_meta_pipeline_queue SET claim_order = "
    "EXTRACT(EPOCH FROM created_at) + (priority - 1) * 3600.0 WHERE claim_order IS NULL",
}

Upgrade = str | tuple[str, str]
"""A statement for every dialect, or ``(dialect name, statement)`` for one."""

UPGRADES: Final[Mapping[int, Sequence[Upgrade]]] = {
    # 2: on PostgreSQL the claim index holds only the waiting items (see ``queue`` below); the
    # due-runs index gains run_id (see ``runs``).
    2: (
        ("postgresql", "DROP INDEX IF EXISTS ix_queue_claim"),
        ("postgresql", _WAITING_INDEX),
        "DROP INDEX IF EXISTS ix_runs_state_scheduled",
        "CREATE INDEX IF NOT EXISTS ix_runs_due ON x_meta_scheduled_runs (state, scheduled_time, run_id)",
    ),
    # 3: fair share and aging: claims go by claim_order (pipestate.domain.limits).
    3: (
        "ALTER TABLE x_meta_pipeline_queue ADD COLUMN claim_order FLOAT",
        ("sqlite", _FILL_CLAIM_ORDER["sqlite"]),
        ("postgresql", _FILL_CLAIM_ORDER["postgresql"]),
        ("postgresql", "DROP INDEX IF EXISTS ix_queue_waiting"),
        ("postgresql", _FAIR_WAITING_INDEX),
        ("sqlite", "DROP INDEX IF EXISTS ix_queue_claim"),
        ("sqlite", _SQLITE_CLAIM_INDEX),
        "DROP INDEX IF EXISTS ix_queue_tenant_status",
        _FLOW_INDEX,
    ),
    # 4: run history, a new table (``run_events``) that ``create_all`` creates with its indexes.
    4: (),
}
"""version -> the statements that take a database from ``version - 1`` to ``version``.

``create_all`` only creates missing tables (with their indexes); every change to an existing
table is a statement here, written to run on SQLite and PostgreSQL alike (``ALTER TABLE … ADD
COLUMN``, ``CREATE INDEX IF NOT EXISTS``). Version 1 is the first: nothing to upgrade yet.
"""


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC in, aware UTC out, on every dialect.

    SQLite has no time zone type: values are stored as naive UTC text (which sorts correctly);
    PostgreSQL uses ``timestamptz``.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the storage layer")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata: Final = sa.MetaData()


def _ts(name: str, nullable: bool = True) -> sa.Column[Any]:
    return sa.Column(name, UtcDateTime(), nullable=nullable)


runs: Final = sa.Table(
    "x_meta_scheduled_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(255), nullable=False),
    sa.Column("config_id", sa.String(255), nullable=False),
    _ts("scheduled_time", nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("priority", sa.SmallInteger, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("retry_count", sa.Integer, nullable=False),
    sa.Column("retryable", sa.Boolean, nullable=False),
    sa.Column("retry_policy", Json, nullable=True),
    sa.Column("schedule_id", sa.String(64), nullable=True),
    sa.Column("worker_id", sa.String(255), nullable=True),
    sa.Column("claim_token", sa.String(64), nullable=True),
    _ts("lease_expires_at"),
    sa.Column("pipeline_logging_id", sa.String(255), nullable=True),
    _ts("started_at"),
    _ts("completed_at"),
    sa.Column("duration_seconds", sa.Float, nullable=True),
    sa.Column("error_type", sa.String(255), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    _ts("next_retry_at"),
    sa.Column("cancel_reason", sa.Text, nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
    sa.Column("config", Json, nullable=False),
    # Due runs in the tick's page order (scheduled_time, run_id): with run_id in the index a page
    # of runs sharing one slot (every hourly schedule) is read in order, not sorted whole.
    sa.Index("ix_runs_due", "state", "scheduled_time", "run_id"),
    sa.Index("ix_runs_tenant_state", "tenant_id", "state", "scheduled_time"),
    sa.Index("ix_runs_state_lease", "state", "lease_expires_at"),
    sa.Index("ix_runs_state_completed", "state", "completed_at"),
)

queue: Final = sa.Table(
    "x_meta_pipeline_queue",
    metadata,
    sa.Column("queue_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(255), nullable=False),
    sa.Column("config", Json, nullable=False),
    sa.Column("priority", sa.SmallInteger, nullable=False),
    _ts("created_at", nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("worker_id", sa.String(255), nullable=True),
    sa.Column("claim_token", sa.String(64), nullable=True),
    _ts("claimed_at"),
    _ts("lease_expires_at"),
    _ts("completed_at"),
    sa.Column("error_message", sa.Text, nullable=True),
    _ts("updated_at"),
    sa.Column("claim_order", sa.Float, nullable=True),
    # The claim query: WHERE status = 'QUEUED' ORDER BY claim_order, queue_id LIMIT n.
    # On PostgreSQL partial: it holds only the waiting items, so it stays small whatever the history, and
    # both planners take it for the claim even on a table that was never analysed (PostgreSQL
    # otherwise guessed a handful of QUEUED rows and sorted all of them on every claim).
    # SQLite's planner, without statistics, prefers an equality index to a partial one, so
    # SQLite keeps the full (status, priority, created_at, queue_id) index.
    sa.Index(
        "ix_queue_fair",
        "claim_order",
        "queue_id",
        postgresql_where=sa.text("status = 'QUEUED'"),
    ).ddl_if(dialect="postgresql"),
    sa.Index("ix_queue_claim", "status", "claim_order", "queue_id").ddl_if(dialect="sqlite"),
    sa.Index("ix_queue_status_lease", "status", "lease_expires_at"),
    # Counts by tenant and status, and the enqueue's look-up of its flow's last waiting item.
    sa.Index("ix_queue_tenant_flow", "tenant_id", "status", "priority", "claim_order"),
    sa.Index("ix_queue_run", "run_id"),
)

schedules: Final = sa.Table(
    "x_meta_pipeline_schedules",
    metadata,
    sa.Column("schedule_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(255), nullable=False),
    sa.Column("config_id", sa.String(255), nullable=False),
    sa.Column("cron", sa.String(255), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    _ts("next_fire_time", nullable=False),
    sa.Column("priority", sa.SmallInteger, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("retry_policy", Json, nullable=True),
    sa.Column("catchup", sa.String(16), nullable=False),
    sa.Column("max_catchup_runs", sa.Integer, nullable=False),
    sa.Column("misfire_grace_seconds", sa.Integer, nullable=False),
    sa.Column("dst_gap", sa.String(16), nullable=False),
    sa.Column("dst_fold", sa.String(16), nullable=False),
    _ts("last_scheduled_time"),
    sa.Column("version", sa.Integer, nullable=False),
    _ts("created_at"),
    _ts("updated_at"),
    sa.Column("config", Json, nullable=False),
    sa.Index("ix_schedules_due", "enabled", "next_fire_time"),
    sa.Index("ix_schedules_tenant", "tenant_id", "config_id"),
)

schema_version: Final = sa.Table(
    "pipestate_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    _ts("applied_at", nullable=False),
)

run_events: Final = sa.Table(
    "x_meta_run_events",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("tenant_id", sa.String(255), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("from_state", sa.String(16), nullable=True),
    sa.Column("to_state", sa.String(16), nullable=False),
    _ts("at", nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("actor", sa.String(16), nullable=False),
    sa.Column("worker_id", sa.String(255), nullable=True),
    sa.Column("error_type", sa.String(255), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("traceback", sa.Text, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Index("ix_run_events_run", "run_id", "version"),
    sa.Index("ix_run_events_at", "at"),
)
"""Run history (``domain/events.py``): appended in the transaction of the run's write, never updated."""
