"""Handlers for the end-to-end tests' worker processes (``--handler tests.e2e.handlers:record``).

``record`` appends ``start``/``done`` lines (run id, pid, attempt) to ``config["log"]``; with
``config["hang_first"]`` the first attempt never finishes (so the test can kill its worker), and
``config["sleep"]`` makes every attempt take that long.
"""

from __future__ import annotations

import os
import time
from typing import Any

from pipestate.domain.run import PipelineRun


def _log(config: dict[str, Any], event: str, run: PipelineRun | None) -> None:
    path = config.get("log")
    if not path:
        return
    run_id = run.run_id if run is not None else "-"
    attempt = run.attempt if run is not None else 0
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{event} {run_id} {os.getpid()} {attempt}\n")
        f.flush()


def record(run: PipelineRun | None, config: dict[str, Any]) -> None:
    _log(config, "start", run)
    if config.get("hang_first") and run is not None and run.attempt == 1:
        time.sleep(3600)
    time.sleep(float(config.get("sleep", 0)))
    _log(config, "done", run)


class WarehouseTimeout(Exception):
    pass


def _query_warehouse(attempt: int) -> None:
    raise WarehouseTimeout(f"warehouse timed out on attempt {attempt}")


def flaky(run: PipelineRun | None, config: dict[str, Any]) -> None:
    """Fails its first two attempts (raising from a nested call), then succeeds."""
    if run is not None and run.attempt < 3:
        _query_warehouse(run.attempt)
