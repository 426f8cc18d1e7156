"""The SQLite hot path: the queue's enqueue, claim and finish statements on the raw sqlite3 connection.

These three run once per queue item each, so their cost is the queue's throughput. SQLAlchemy's
per-execute overhead (parameter processing, result set-up, events) is about twice the time SQLite
itself needs for such a statement, so on SQLite they bypass it: each SQLAlchemy Core statement is
compiled once, for the SQLite dialect, to its SQL text and positional parameter order, and then
executed directly on the DBAPI connection that SQLAlchemy's pool already holds. The SQL is the
Core statement's own, so both paths run the same query; only parameter encoding (the same text
format SQLAlchemy's SQLite DATETIME uses) and row decoding are done here.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from pipestate.adapters.sqlalchemy.tables import UtcDateTime

T = TypeVar("T")

_DIALECT: Final = sqlite.dialect()


class CompiledStatement:
    """A Core statement compiled once for SQLite: SQL text plus positional parameter names."""

    def __init__(self, statement: sa.Executable, column_keys: Sequence[str] | None = None) -> None:
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=_DIALECT, column_keys=list(column_keys) if column_keys else None
        )
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        # Values baked into the statement (status = 'QUEUED', version + 1 …): encoded once.
        self._constants: dict[str, Any] = {
            name: _encode(compiled.binds[name].value)
            for name in self.names
            if not compiled.binds[name].required and compiled.binds[name].callable is None
        }

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """Positional parameters: the statement's constants, and ``values`` encoded.

        Raises:
            KeyError: a required parameter is missing from ``values``.
        """
        constants = self._constants
        return tuple(constants[n] if n in constants else _encode(values[n]) for n in self.names)


def _encode(value: Any) -> Any:
    kind = type(value)
    if value is None or kind is str or kind is int or kind is float:
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the storage layer")
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None).isoformat(" ", "microseconds")  # SQLAlchemy's SQLite format
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


class RowDecoder:
    """Turns a raw sqlite3 row of ``table`` into the dict SQLAlchemy would have produced."""

    def __init__(self, table: sa.Table) -> None:
        self._timestamps = frozenset(c.name for c in table.columns if isinstance(c.type, UtcDateTime))
        self._json = frozenset(c.name for c in table.columns if isinstance(c.type, sa.JSON))

    def decode(self, names: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
        result = dict(zip(names, row, strict=True))
        for name in self._timestamps:
            value = result.get(name)
            if value is not None:
                result[name] = datetime.fromisoformat(value).replace(tzinfo=UTC)
        for name in self._json:
            value = result.get(name)
            if isinstance(value, str):
                result[name] = json.loads(value)
        return result


def write_transaction(connection: sqlite3.Connection, fn: Callable[[sqlite3.Cursor], T]) -> T:
    """Run ``fn`` inside ``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any error)."""
    cursor = connection.cursor()
    try:
        cursor.execute("BEGIN IMMEDIATE")
        try:
            result = fn(cursor)
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")
        return result
    finally:
        cursor.close()


class QueueHotPath:
    """Enqueue, claim and finish of queue items, compiled once, run on a raw sqlite3 cursor.

    Args:
        insert: the insert-if-absent statement for queue rows (its RETURNING lists inserted keys).
        claim: the claim statement (UPDATE … RETURNING every column).
        transitions: the status compare-and-set statements by (destination, fenced).
        table: the queue table, to decode returned rows.
    """

    def __init__(
        self,
        *,
        insert: sa.Executable,
        insert_columns: Sequence[str],
        claim: sa.Executable,
        transitions: Mapping[Any, sa.Executable],
        table: sa.Table,
    ) -> None:
        self._insert = CompiledStatement(insert, insert_columns)
        self._claim = CompiledStatement(claim)
        self._transitions = {key: CompiledStatement(stmt) for key, stmt in transitions.items()}
        self._decoder = RowDecoder(table)

    def insert(self, cursor: sqlite3.Cursor, rows: Sequence[Mapping[str, Any]]) -> int:
        inserted = 0
        for row in rows:
            inserted += len(cursor.execute(self._insert.sql, self._insert.parameters(row)).fetchall())
        return inserted

    def claim(self, cursor: sqlite3.Cursor, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        rows = cursor.execute(self._claim.sql, self._claim.parameters(params)).fetchall()
        names = [d[0] for d in cursor.description]
        return [self._decoder.decode(names, row) for row in rows]

    def transition(self, cursor: sqlite3.Cursor, key: Any, params: Mapping[str, Any]) -> bool:
        statement = self._transitions[key]
        return cursor.execute(statement.sql, statement.parameters(params)).rowcount == 1
