"""The command line end to end: every command in a subprocess on one SQLite file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tests.e2e.conftest import Cli


def hours_ago(hours: int) -> datetime:
    """The top of the hour ``hours`` before now, read when the test runs (not when it is collected)."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours)


def assert_one_line_error(stderr: str, fragment: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("pipestate: error: ") and fragment in lines[0], stderr
    assert "Traceback" not in stderr


def test_schedule_tick_work_and_report_through_the_cli(cli: Cli) -> None:
    start = hours_ago(3)
    now = (start + timedelta(hours=3, seconds=10)).isoformat()  # the tick's clock: no hour can turn
    assert "initialized" in cli("init").stdout
    added = cli(
        "schedule",
        "add",
        "acme",
        "ingest",
        "--cron",
        "0 * * * *",
        "--priority",
        "2",
        "--start",
        start.isoformat(),
        "--config",
        '{"table": "orders"}',
    )
    assert "added schedule acme/ingest" in added.stdout
    cli("schedule", "add", "globex", "report", "--cron", "30 6 * * *", "--tz", "America/New_York")

    listed = cli.json("schedule", "list")
    assert [(s["tenant_id"], s["config_id"], s["enabled"]) for s in listed] == [
        ("acme", "ingest", True),
        ("globex", "report", True),
    ]
    assert "paused" in cli("schedule", "pause", "globex", "report").stdout
    assert "paused" in cli("schedule", "list").stdout
    assert [s["enabled"] for s in cli.json("schedule", "list", "--tenant", "globex")] == [False]
    assert "resumed" in cli("schedule", "resume", "globex", "report").stdout

    tick = cli.json("tick", "--now", now)
    again = cli.json("tick", "--now", now)
    assert (tick["runs_created"], tick["runs_skipped"], tick["items_enqueued"]) == (4, 3, 1)
    assert (again["runs_created"], again["items_enqueued"]) == (0, 0)

    pending = cli.json("runs", "--state", "pending")
    assert len(pending) == 1 and pending[0]["config"] == {"table": "orders"}
    assert "PENDING" in cli("runs", "--tenant", "acme").stdout
    queue = cli.json("queue")["stats"]
    assert queue["by_status"]["QUEUED"] == 1 and queue["waiting_by_priority"] == {"2": 1}

    worked = cli("worker", "--handler", "tests.e2e.handlers:record", "--exit-when-idle", "--poll", "0.1")
    assert "completed" in worked.stdout

    (status,) = cli.json("status", "--tenant", "acme")
    assert status["counts"]["COMPLETED"] == 1 and status["counts"]["SKIPPED"] == 3
    assert status["success_rate"] == 1.0
    table = cli("status").stdout
    assert "acme" in table and "globex" in table and "SUCCESS" in table
    assert "COMPLETED" in cli("queue", "--items").stdout
    assert "recovery" in cli("recover").stdout


def test_bad_input_is_a_one_line_error_and_a_non_zero_exit(cli: Cli) -> None:
    cli("init")
    cli("schedule", "add", "acme", "ingest", "--cron", "0 * * * *")
    cases = [
        (("schedule", "add", "acme", "x", "--cron", "61 * * * *"), 2, "invalid cron expression"),
        (
            ("schedule", "add", "acme", "x", "--cron", "0 * * * *", "--tz", "Mars/Base"),
            2,
            "unknown time zone",
        ),
        (("schedule", "add", "acme", "ingest", "--cron", "0 * * * *"), 2, "already has a schedule"),
        (("schedule", "add", "acme", "x", "--cron", "0 * * * *", "--config", "{nope"), 2, "not JSON"),
        (("schedule", "pause", "acme", "missing"), 2, "not found"),
        (("runs", "--state", "sleeping"), 2, "unknown RunState"),
        (("worker", "--handler", "no_such_module:run"), 2, "cannot import"),
        (("tick", "--now", "yesterday"), 2, "ISO time"),
        (("frobnicate",), 2, "invalid choice"),
        (("schedule", "add", "acme"), 2, "required"),
    ]
    for args, code, fragment in cases:
        done = cli(*args, expect=code)
        assert_one_line_error(done.stderr, fragment)
    assert json.loads(cli("schedule", "list", "--json").stdout)[0]["config_id"] == "ingest"

    bad_db = cli("--db", "nosuchdialect://x", "runs", expect=None)
    assert bad_db.returncode != 0
    assert_one_line_error(bad_db.stderr, "")


def test_demo_tells_the_whole_story(cli: Cli) -> None:
    done = cli("demo", "--file", str(cli.cwd / "demo.db"))

    out = done.stdout
    assert "(+1 min)" in out and "(+2 min)" in out and "(+4 min)" in out
    assert "KILLED mid-run" in out and "LeaseExpired" in out
    assert "Per-tenant status:" in out and "Queue:" in out
    for tenant in ("acme", "globex", "initech"):
        assert tenant in out
