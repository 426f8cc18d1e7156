"""A process that moves one run SCHEDULED -> PENDING and is SIGKILLed inside that write.

``python -m tests.adapters.history_kill URL ENGINE_KWARGS_JSON RUN_ID POINT`` where POINT is
``before_events`` (after the run's UPDATE, before its event's INSERT), ``before_commit`` (after
both, before COMMIT) or ``none`` (no kill).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.adapters.sqlalchemy.postgres_hotpath import PgHotStatements
from pipestate.adapters.sqlalchemy.sqlite_hotpath import HotStatements


def _die_at(point: str) -> None:
    def wrap(original: Any) -> Any:
        def execute_many(self: Any, conn: Any, name: str, batch: Any) -> int:
            if name == "insert_events" and point == "before_events":
                os.kill(os.getpid(), signal.SIGKILL)
            count: int = original(self, conn, name, batch)
            if name == "insert_events" and point == "before_commit":
                os.kill(os.getpid(), signal.SIGKILL)
            return count

        return execute_many

    for cls in (HotStatements, PgHotStatements):
        cls.execute_many = wrap(cls.execute_many)  # type: ignore[method-assign]


async def main(url: str, engine_kwargs: dict[str, Any], run_id: str, point: str) -> None:
    _die_at(point)
    storage = SqlAlchemyStorage.from_url(url, **engine_kwargs)
    try:
        run = await storage.get_run(run_id)
        assert run is not None
        run.make_pending(run.scheduled_time)
        assert await storage.update_run(run, 1)
    finally:
        await storage.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]))
