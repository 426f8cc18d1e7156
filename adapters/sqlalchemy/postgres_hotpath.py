"""The PostgreSQL hot path: Core statements compiled once, run on the raw psycopg connection.

A call through SQLAlchemy's ``Connection.execute`` costs about as much client time as the server
spends on a short statement (parameter processing, result set-up, events), and a transaction
around a single statement adds two round trips (BEGIN, COMMIT). Here each statement is compiled
once, for the psycopg dialect, to its SQL text (named ``%(name)s`` parameters, with the casts
SQLAlchemy renders) and executed on the psycopg connection that SQLAlchemy's pool already holds,
in autocommit mode: a single statement is one round trip. psycopg prepares a statement on the
server after ``prepare_threshold`` (5) executions, so the hot statements run prepared; pass
``connect_args={"prepare_threshold": None}`` behind a transaction-mode PgBouncer.
Batches are one ``executemany`` (psycopg pipelines it: one round trip for N rows) inside one
transaction. The SQL is the Core statement's own, so both paths run the same query.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.dialects import postgresql

if TYPE_CHECKING:
    from psycopg import Connection

_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


class PgStatement:
    """A Core statement compiled once for psycopg: SQL text plus its constant parameters."""

    def __init__(self, statement: sa.Executable, column_keys: Sequence[str] | None = None) -> None:
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=_DIALECT, column_keys=list(column_keys) if column_keys else None
        )
        self.sql: str = compiled.string
        # Values baked into the statement (status = 'QUEUED', version + 1, SET x = NULL …).
        self.constants: dict[str, Any] = {
            name: bind.value
            for name, bind in compiled.binds.items()
            if name in compiled.params and not bind.required and bind.callable is None
        }

    def parameters(self, values: Mapping[str, Any]) -> dict[str, Any]:
        params = dict(self.constants)
        for name, value in values.items():
            params[name] = Jsonb(value) if isinstance(value, dict) else value  # JSON columns hold objects
        return params


class PgHotStatements:
    """Named Core statements compiled once for psycopg.

    Args:
        statements: name -> (statement, the column keys of its values or None).
    """

    def __init__(self, statements: Mapping[str, tuple[sa.Executable, Sequence[str] | None]]) -> None:
        self._compiled = {name: PgStatement(stmt, keys) for name, (stmt, keys) in statements.items()}

    def fetch(self, conn: Connection[Any], name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        statement = self._compiled[name]
        cursor = conn.execute(statement.sql, statement.parameters(params))
        rows = cursor.fetchall()
        if not rows:
            return []
        assert cursor.description is not None
        names = [d.name for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def execute(self, conn: Connection[Any], name: str, params: Mapping[str, Any]) -> int:
        """Run one statement; the number of rows it changed."""
        statement = self._compiled[name]
        return conn.execute(statement.sql, statement.parameters(params)).rowcount

    def execute_many(self, conn: Connection[Any], name: str, batch: Sequence[Mapping[str, Any]]) -> int:
        """One pipelined ``executemany``; the number of rows changed over the batch."""
        statement = self._compiled[name]
        with conn.cursor() as cursor:
            cursor.executemany(statement.sql, [statement.parameters(p) for p in batch])
            return cursor.rowcount

    def insert_many(self, conn: Connection[Any], name: str, rows: Sequence[Mapping[str, Any]]) -> set[Any]:
        """One pipelined ``executemany`` of an ``INSERT … RETURNING key``: the keys inserted."""
        statement = self._compiled[name]
        inserted: set[Any] = set()
        with conn.cursor() as cursor:
            cursor.executemany(
                statement.sql,
                [statement.parameters(r) for r in rows],
                returning=True,
            )
            while True:
                inserted.update(row[0] for row in cursor.fetchall())
                if not cursor.nextset():
                    break
        return inserted
