"""Real worker processes on one SQLite file: killed with SIGKILL, stopped with SIGTERM."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.e2e.conftest import Cli, log_lines, wait_for

HANDLER = "tests.e2e.handlers:record"


def add_schedule(cli: Cli, config: dict[str, object], *, catchup: str, minutes_ago: int) -> None:
    start = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).replace(second=0, microsecond=0)
    cli(
        "schedule",
        "add",
        "acme",
        "ingest",
        "--cron",
        "* * * * *",
        "--catchup",
        catchup,
        "--start",
        start.isoformat(),
        "--retry-delay",
        "0",
        "--config",
        json.dumps(config),
    )


def test_a_worker_killed_mid_run_is_recovered_and_its_run_completed_once_by_another(
    cli: Cli, tmp_path: Path
) -> None:
    log = tmp_path / "handler.log"
    add_schedule(cli, {"log": str(log), "hang_first": True}, catchup="latest", minutes_ago=2)
    assert cli.json("tick")["items_enqueued"] == 1

    doomed = cli.spawn(
        "worker", "--handler", HANDLER, "--worker-id", "doomed", "--lease", "1.5", "--poll", "0.1"
    )
    try:
        wait_for(
            lambda: any(line[0] == "start" for line in log_lines(log)), what="the first attempt to start"
        )
    finally:
        doomed.kill()  # SIGKILL: no cleanup, no completion, heartbeats stop
        doomed.communicate(timeout=10)
    assert doomed.returncode == -signal.SIGKILL
    (running,) = cli.json("runs", "--state", "running")
    assert running["worker_id"] == "doomed"

    time.sleep(1.6)  # let the lease run out
    report = cli.json("recover")
    assert (report["expired_runs"], report["retried"], report["failed_items"]) == (1, 1, 1)

    cli("worker", "--handler", HANDLER, "--worker-id", "rescuer", "--exit-when-idle", "--poll", "0.1")

    runs = cli.json("runs", "--tenant", "acme", "--state", "completed")
    (run,) = runs
    assert (run["worker_id"], run["attempt"], run["retry_count"]) == ("rescuer", 2, 1)
    events = log_lines(log)
    assert [(e[0], e[1], e[3]) for e in events] == [
        ("start", run["run_id"], "1"),
        ("start", run["run_id"], "2"),
        ("done", run["run_id"], "2"),
    ]
    queue = cli.json("queue")["stats"]
    assert (queue["by_status"].get("COMPLETED"), queue["by_status"].get("FAILED")) == (1, 1)
    assert not cli.json("runs", "--state", "running")


def test_sigterm_finishes_the_current_run_takes_no_more_and_exits_zero(cli: Cli, tmp_path: Path) -> None:
    log = tmp_path / "handler.log"
    add_schedule(cli, {"log": str(log), "sleep": 1.5}, catchup="all", minutes_ago=2)
    assert cli.json("tick")["items_enqueued"] >= 2

    worker = cli.spawn("worker", "--handler", HANDLER, "--concurrency", "1", "--poll", "0.1")
    try:
        wait_for(lambda: any(line[0] == "start" for line in log_lines(log)), what="a run to start")
        worker.send_signal(signal.SIGTERM)
        _out, err = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=10)

    assert worker.returncode == 0, err
    assert "SIGTERM" in err and "Traceback" not in err
    events = log_lines(log)
    assert [e[0] for e in events] == ["start", "done"]
    assert len(cli.json("runs", "--state", "completed")) == 1
    assert len(cli.json("runs", "--state", "pending")) >= 1
    assert not cli.json("runs", "--state", "running")
