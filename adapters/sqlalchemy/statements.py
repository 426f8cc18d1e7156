"""Every SQL statement of the SQLAlchemy adapter, built once at import as SQLAlchemy Core.

Parameters are bound (``b_*`` names, or the column names for row values), so SQLAlchemy's
compiled cache serves the cold path and the hot paths compile each statement once to driver SQL
(``sqlite_hotpath``, ``postgres_hotpath``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from pipestate.adapters.rows import EVENT_COLUMNS, QUEUE_TRANSITION_EFFECTS, Effect
from pipestate.adapters.sqlalchemy.tables import queue, run_events, runs, schedules
from pipestate.domain.limits import FAIR_SHARE_SLOT_SECONDS
from pipestate.domain.ports import RunFilter
from pipestate.domain.queue import QueueStatus
from pipestate.domain.run import RunState

GET_RUN: Final = sa.select(runs).where(runs.c.run_id == sa.bindparam("b_id"))
RUN_EXISTS: Final = sa.select(runs.c.run_id).where(runs.c.run_id == sa.bindparam("b_id"))
UPDATE_RUN: Final = sa.update(runs).where(
    runs.c.run_id == sa.bindparam("b_id"), runs.c.version == sa.bindparam("b_expected")
)
GET_ITEM: Final = sa.select(queue).where(queue.c.queue_id == sa.bindparam("b_id"))
GET_SCHEDULE: Final = sa.select(schedules).where(schedules.c.schedule_id == sa.bindparam("b_id"))
UPDATE_SCHEDULE: Final = sa.update(schedules).where(
    schedules.c.schedule_id == sa.bindparam("b_id"), schedules.c.version == sa.bindparam("b_expected")
)
DUE_SCHEDULES: Final = (
    sa.select(schedules)
    .where(schedules.c.enabled == sa.true(), schedules.c.next_fire_time <= sa.bindparam("b_now"))
    .order_by(schedules.c.next_fire_time, schedules.c.schedule_id)
    .limit(sa.bindparam("b_limit"))
)
"""Served by ix_schedules_due (enabled, next_fire_time)."""
RUN_EVENTS: Final = (
    sa.select(run_events)
    .where(run_events.c.run_id == sa.bindparam("b_id"))
    .order_by(run_events.c.version, run_events.c.event_id)
)
"""A run's history, oldest first (served by ix_run_events_run)."""
PRUNE_EVENTS: Final = sa.delete(run_events).where(run_events.c.at < sa.bindparam("b_before"))


def insert_events(dialect: str) -> sa.Insert:
    """Insert one event if the run holds the version and ``updated_at`` its write gave it.

    Runs in the transaction of the run's write, after it: the event is stored exactly when that
    write was (a compare-and-set that lost its race leaves the run at another version or time),
    and a retried write inserts it once (``ON CONFLICT (event_id) DO NOTHING``).
    """
    values = sa.select(
        *[sa.bindparam(name, type_=run_events.c[name].type).label(name) for name in EVENT_COLUMNS]
    ).where(
        sa.exists().where(
            runs.c.run_id == sa.bindparam("run_id"),
            runs.c.version == sa.bindparam("b_run_version"),
            runs.c.updated_at == sa.bindparam("b_run_updated", type_=runs.c.updated_at.type),
        )
    )
    insert: Any = DIALECTS[dialect].insert(run_events)
    stmt: sa.Insert = insert.from_select(list(EVENT_COLUMNS), values).on_conflict_do_nothing(
        index_elements=["event_id"]
    )
    return stmt


SCHEMA_LOCK: Final = sa.select(sa.func.pg_advisory_xact_lock(0x70697065))  # "pipe"

# --------------------------------------------------------------------------- claims
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
    # Fair share and aging (pipestate.domain.limits): the enqueue fixed each item's claim_order.
    # Served by ix_queue_claim (status, claim_order, queue_id) on SQLite, the partial
    # ix_queue_fair (claim_order, queue_id) WHERE status = 'QUEUED' on PostgreSQL.
    return (
        sa.select(queue.c.queue_id)
        .where(queue.c.status == QueueStatus.QUEUED.value)
        .order_by(queue.c.claim_order, queue.c.queue_id)
        .limit(sa.bindparam("b_limit"))
    )


# SQLite: the transaction is BEGIN IMMEDIATE (one writer at a time), so a plain subquery is atomic.
# The outer status term is written ``+status``: SQLite never collects planner statistics on its
# own, and on a database that was never analysed it would otherwise serve that term from
# ix_queue_claim and test every QUEUED row against the picked ids (a claim slowing linearly with
# the backlog: 3 ms at 10k QUEUED, 30 ms at 100k). The unary plus keeps the term off index
# choice, so the outer UPDATE looks the picked ids up by primary key (flat, ~0.1 ms).
_UNINDEXED_STATUS: Final[sa.ColumnElement[str]] = sa.sql.elements.UnaryExpression(
    queue.c.status, operator=sa.sql.operators.custom_op("+"), type_=queue.c.status.type
)
CLAIM_SQLITE: Final = (
    sa.update(queue)
    .where(
        queue.c.queue_id.in_(_claim_pick().scalar_subquery()),
        _UNINDEXED_STATUS.op("=")(QueueStatus.QUEUED.value),
    )
    .values(**_CLAIM_VALUES)
    .returning(*queue.c)
)
# PostgreSQL: the pick must run exactly once. As ``IN (subquery … LIMIT n FOR UPDATE SKIP LOCKED)``
# the planner may rescan the subquery once per outer row, and each rescan skips the rows this very
# statement already updated, so one claim took more than ``n`` items. A CTE with FOR UPDATE is
# never inlined: it is evaluated once, and its rows stay locked until commit.
_CLAIM_PICKED: Final = _claim_pick().with_for_update(skip_locked=True).cte("picked")
CLAIM_POSTGRES: Final = (
    sa.update(queue)
    .where(queue.c.queue_id == _CLAIM_PICKED.c.queue_id)
    .values(**_CLAIM_VALUES)
    .returning(*queue.c)
)
CLAIMED_BY_TOKEN: Final = sa.select(queue).where(
    queue.c.claim_token == sa.bindparam("b_token"), queue.c.status == QueueStatus.PROCESSING.value
)
"""After a lost commit: the items that attempt stamped with this claim token, if it did commit."""

EXTEND_LEASE: Final = (
    sa.update(queue)
    .where(
        queue.c.queue_id == sa.bindparam("b_id"),
        queue.c.status == QueueStatus.PROCESSING.value,
        queue.c.claim_token == sa.bindparam("b_token"),
    )
    .values(lease_expires_at=sa.bindparam("b_lease"), version=queue.c.version + 1)
)


# --------------------------------------------------------------------------- queue transitions
_EFFECT_VALUES: Final[dict[Effect, Callable[[str], Any]]] = {
    Effect.NOW: lambda _column: sa.bindparam("b_now"),
    Effect.CLEAR: lambda _column: None,
    Effect.ERROR: lambda _column: sa.bindparam("b_error"),
    Effect.INCREMENT: lambda column: queue.c[column] + 1,
}


def _transition_statement(to_status: QueueStatus, fenced: bool) -> sa.Update:
    conditions = [queue.c.queue_id == sa.bindparam("b_id"), queue.c.status == sa.bindparam("b_from")]
    if fenced:
        conditions.append(queue.c.claim_token == sa.bindparam("b_token"))
    values: dict[str, Any] = {"status": to_status.value}
    for column, effect in QUEUE_TRANSITION_EFFECTS[to_status].items():
        values[column] = _EFFECT_VALUES[effect](column)
    return sa.update(queue).where(*conditions).values(**values)


QUEUE_TRANSITIONS: Final = {
    (status, fenced): _transition_statement(status, fenced)
    for status in QueueStatus
    for fenced in (False, True)
}
"""The status compare-and-set by (destination, fenced by a claim token)."""


# --------------------------------------------------------------------------- per dialect
@dataclass(frozen=True)
class Dialect:
    name: str
    insert: Callable[..., Any]
    wait_seconds: Callable[[], sa.ColumnElement[float]]
    claim: sa.UpdateBase


def _sqlite_wait() -> sa.ColumnElement[float]:
    return (sa.func.julianday(queue.c.claimed_at) - sa.func.julianday(queue.c.created_at)) * 86400.0


def _postgres_wait() -> sa.ColumnElement[float]:
    return sa.cast(sa.extract("epoch", queue.c.claimed_at - queue.c.created_at), sa.Float)


DIALECTS: Final = {
    "sqlite": Dialect("sqlite", sqlite.insert, _sqlite_wait, CLAIM_SQLITE),
    "postgresql": Dialect("postgresql", postgresql.insert, _postgres_wait, CLAIM_POSTGRES),
}


def queue_flow_order(dialect: str) -> sa.ColumnElement[float]:
    """The enqueued item's claim order: its base (``b_order``), or one fair-share slot after the
    last waiting item of its flow (tenant ``b_tenant``, priority ``b_priority``), whichever is later.

    Served by ix_queue_tenant_flow (tenant_id, status, priority, claim_order). The same rule as
    :func:`pipestate.domain.limits.next_claim_order`.
    """
    tail = (
        sa.select(sa.func.max(queue.c.claim_order))
        .where(
            queue.c.tenant_id == sa.bindparam("b_tenant"),
            queue.c.status == QueueStatus.QUEUED.value,
            queue.c.priority == sa.bindparam("b_priority"),
        )
        .scalar_subquery()
    )
    base = sa.bindparam("b_order", type_=sa.Float)
    after_tail = sa.func.coalesce(tail + FAIR_SHARE_SLOT_SECONDS, base)
    # SQLite's two-argument max() is its GREATEST.
    greatest = sa.func.max if dialect == "sqlite" else sa.func.greatest
    return greatest(base, after_tail, type_=sa.Float)


def insert_if_absent(dialect: str, table: sa.Table) -> sa.Insert:
    """``INSERT … ON CONFLICT (key) DO NOTHING RETURNING key`` for ``table``."""
    key = table.primary_key.columns.values()[0]
    insert: Any = DIALECTS[dialect].insert(table)
    stmt: sa.Insert = insert.on_conflict_do_nothing(index_elements=[key]).returning(key)
    return stmt


def run_conditions(criteria: RunFilter) -> list[sa.ColumnElement[bool]]:
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
