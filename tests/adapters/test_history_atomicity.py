"""A transition and its history event are written together or not at all (SQL backends).

A subprocess makes one transition and is SIGKILLed inside the write: after the run's UPDATE and
before the event's INSERT, or after both and before COMMIT. The store then holds neither the
transition nor its event; without the kill it holds both.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.domain.run import PipelineRun, RunState
from tests.support.backends import postgres_schema

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'history.db'}", {}
    else:
        with postgres_schema() as pg:
            yield pg


async def _stored(url: str, kwargs: dict[str, Any], run_id: str) -> tuple[RunState, int, list[str]]:
    storage = SqlAlchemyStorage.from_url(url, **kwargs)
    try:
        run = await storage.get_run(run_id)
        assert run is not None
        events = await storage.get_run_events(run_id)
        return run.state, run.version, [e.to_state for e in events]
    finally:
        await storage.close()


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        ("before_events", (RunState.SCHEDULED, 1, ["SCHEDULED"])),
        ("before_commit", (RunState.SCHEDULED, 1, ["SCHEDULED"])),
        ("none", (RunState.PENDING, 2, ["SCHEDULED", "PENDING"])),
    ],
)
async def test_a_process_killed_inside_a_transition_leaves_both_or_neither(
    target: tuple[str, dict[str, Any]], point: str, expected: tuple[RunState, int, list[str]]
) -> None:
    url, kwargs = target
    storage = SqlAlchemyStorage.from_url(url, **kwargs)
    run = PipelineRun.new(tenant_id="t", config_id="c", scheduled_time=T0, now=T0)
    try:
        await storage.create_schema()
        assert await storage.insert_runs([run]) == 1
    finally:
        await storage.close()

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.adapters.history_kill",
        url,
        json.dumps(kwargs),
        run.run_id,
        point,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(child.communicate(), timeout=120)

    if point == "none":
        assert child.returncode == 0, stderr.decode()
    else:
        assert child.returncode == -signal.SIGKILL, stderr.decode()
    assert await _stored(url, kwargs, run.run_id) == expected
