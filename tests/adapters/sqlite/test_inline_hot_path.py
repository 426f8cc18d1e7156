"""The SQLite hot path's inline connection (issue 9, item 11) and the schema version check.

The hot path runs small writes inline on the event loop's own connection (busy timeout 0) and
hands them to the storage's thread when SQLite answers "busy". These tests hold it to three
rules: a COMMIT that answers "busy" leaves no transaction open behind it; nothing goes inline on
a file that is not in WAL mode (there a COMMIT waits for readers); and big pages never run on the
event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.adapters.sqlalchemy.sqlite_hotpath import write_transaction
from pipestate.adapters.sqlalchemy.tables import SCHEMA_VERSION
from pipestate.domain.errors import StorageError
from pipestate.domain.queue import QueueItem

T = TypeVar("T")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def item(queue_id: str) -> QueueItem:
    return QueueItem(queue_id=queue_id, tenant_id="t", config={}, priority=5, created_at=T0)


async def new_file(path: Path) -> None:
    storage = SqlAlchemyStorage.from_url(f"sqlite:///{path}")
    await storage.create_schema()
    await storage.close()


def test_item_11_commit_busy_does_not_wedge_the_connection(tmp_path: Path) -> None:
    path = tmp_path / "rollback-journal.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode = DELETE")  # a COMMIT here must wait for readers
    writer.execute("PRAGMA busy_timeout = 0")
    writer.execute("CREATE TABLE t (x INTEGER)")
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchall()  # holds a SHARED lock

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        write_transaction(writer, lambda cursor: cursor.execute("INSERT INTO t VALUES (1)"))
    assert not writer.in_transaction  # rolled back, not left open

    reader.execute("COMMIT")
    write_transaction(writer, lambda cursor: cursor.execute("INSERT INTO t VALUES (2)"))
    assert writer.execute("SELECT x FROM t").fetchall() == [(2,)]


class LoopTurns:
    """Counts the event loop's turns taken by other tasks: 0 across an await means the awaited
    call ran synchronously on the loop (inline); >= 1 means it waited on another thread."""

    def __init__(self) -> None:
        self.turns = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopTurns:
        self._task = asyncio.create_task(self._spin())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()

    async def _spin(self) -> None:
        while True:
            self.turns += 1
            await asyncio.sleep(0)

    async def during(self, awaitable: Awaitable[T]) -> tuple[T, int]:
        before = self.turns
        result = await awaitable
        return result, self.turns - before


async def test_item_11_a_file_without_wal_is_never_written_inline(tmp_path: Path) -> None:
    # The unix-dotfile VFS has no shared memory, so SQLite refuses WAL and stays in rollback
    # journal mode, where a COMMIT waits for readers: a zero busy timeout would fail it.
    url = f"sqlite:///file:{tmp_path / 'q.db'}?vfs=unix-dotfile&uri=true"
    storage = SqlAlchemyStorage.from_url(url)
    try:
        await storage.create_schema()
        async with LoopTurns() as loop:
            inserted, turns = await loop.during(storage.insert_queue_items([item("a")]))
            claimed, _ = await loop.during(
                storage.claim_queue_items(
                    worker_id="w",
                    claim_token="t",
                    now=T0,
                    lease_expires_at=T0 + timedelta(minutes=1),
                    limit=5,
                )
            )
    finally:
        await storage.close()

    assert inserted == 1
    assert [i.queue_id for i in claimed] == ["a"]
    assert turns >= 1  # written on the storage's thread, with the full busy timeout


async def test_item_11_a_large_page_is_written_off_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    await new_file(path)
    storage = SqlAlchemyStorage.from_url(f"sqlite:///{path}")
    try:
        async with LoopTurns() as loop:
            _, small = await loop.during(storage.insert_queue_items([item("small")]))
            inserted, large = await loop.during(
                storage.insert_queue_items([item(f"q{n}") for n in range(5_000)])
            )
    finally:
        await storage.close()

    assert small == 0  # a WAL file: one small write runs inline, the loop ran nothing else meanwhile
    assert inserted == 5_000
    assert large >= 1  # the page went to the storage's thread: the loop kept turning


async def test_item_14_a_file_from_a_newer_pipestate_is_refused_by_every_open(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    await new_file(path)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO pipestate_schema_version (version, applied_at) VALUES (?, '2026-01-01 00:00:00')",
            (SCHEMA_VERSION + 1,),
        )
    storage = SqlAlchemyStorage.from_url(f"sqlite:///{path}")
    try:
        with pytest.raises(StorageError, match="newer than this pipestate"):
            await storage.insert_queue_items([item("a")])
        with pytest.raises(StorageError, match="newer than this pipestate"):
            await storage.get_queue_item("a")
    finally:
        await storage.close()

    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM x_meta_pipeline_queue").fetchone() == (0,)
