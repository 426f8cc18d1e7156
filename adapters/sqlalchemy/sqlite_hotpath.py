"""The SQLite hot path: the statements that run once per queue item or run, on the raw sqlite3 connection.

Enqueue, claim, finish, and the worker's run reads and compare-and-sets run once per item each,
so their cost is the queue's throughput. SQLAlchemy's
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
        return tuple([constants[n] if n in constants else _encode(values[n]) for n in self.names])


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
    """Run ``fn`` inside ``BEGIN IMMEDIATE`` … ``COMMIT``; on any error the connection is left
    outside a transaction (a COMMIT that answered "busy" leaves it open: it is rolled back)."""
    cursor = connection.cursor()
    try:
        cursor.execute("BEGIN IMMEDIATE")
        try:
            result = fn(cursor)
            cursor.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                cursor.execute("ROLLBACK")
            raise
        return result
    finally:
        cursor.close()


class HotStatements:
    """Named Core statements compiled once for SQLite, run on a raw ``sqlite3`` cursor.

    Args:
        statements: name -> (statement, the column keys of its values or None, the table whose
            rows it returns or None).
    """

    def __init__(
        self, statements: Mapping[str, tuple[sa.Executable, Sequence[str] | None, sa.Table | None]]
    ) -> None:
        self._compiled = {name: CompiledStatement(stmt, keys) for name, (stmt, keys, _) in statements.items()}
        self._decoders = {
            name: RowDecoder(table) for name, (_, _, table) in statements.items() if table is not None
        }

    def fetch(self, cursor: sqlite3.Cursor, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        statement = self._compiled[name]
        rows = cursor.execute(statement.sql, statement.parameters(params)).fetchall()
        if not rows:
            return []
        names = [d[0] for d in cursor.description]
        decode = self._decoders[name].decode
        return [decode(names, row) for row in rows]

    def execute(self, cursor: sqlite3.Cursor, name: str, params: Mapping[str, Any]) -> int:
        """Run one statement; the number of rows it changed."""
        statement = self._compiled[name]
        return int(cursor.execute(statement.sql, statement.parameters(params)).rowcount)

    def execute_many(self, cursor: sqlite3.Cursor, name: str, batch: Sequence[Mapping[str, Any]]) -> int:
        """One ``executemany``; the number of rows changed over the whole batch.

        Counted with ``total_changes``, which (unlike a RETURNING clause, refused by
        ``executemany``) also counts an ``INSERT … ON CONFLICT DO NOTHING`` right: rows skipped
        as conflicts change nothing.
        """
        statement = self._compiled[name]
        connection = cursor.connection
        before = connection.total_changes
        cursor.executemany(statement.sql, [statement.parameters(params) for params in batch])
        return connection.total_changes - before
