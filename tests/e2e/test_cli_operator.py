"""``pipestate run show|cancel|retry|rerun|mark`` and ``schedule trigger``: history and operator actions."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.test_cli_json import validate
from tests.support.backends import postgres_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def any_cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cli]:
    if request.param == "sqlite":
        yield Cli(tmp_path, f"sqlite:///{tmp_path / 'pipestate.db'}")
        return
    with postgres_schema() as (url, kwargs):
        options = urllib.parse.quote(kwargs["connect_args"]["options"])
        cli = Cli(tmp_path, f"{url}?options={options}")
        cli("init")
        yield cli


def _one_run(cli: Cli) -> str:
    (run,) = cli.json("runs")
    run_id: str = run["run_id"]
    return run_id


def test_run_show_lists_three_attempts_every_transition_and_the_first_two_tracebacks(any_cli: Cli) -> None:
    cli = any_cli
    cli("schedule", "add", "acme", "ingest", "--cron", "0 * * * *", "--start", "2026-03-01T00:00:00Z",
        "--retry-delay", "0")  # fmt: skip
    cli("tick", "--now", "2026-03-01T00:30:00Z")
    cli("worker", "--handler", "tests.e2e.handlers:flaky", "--worker-id", "w-e2e", "--exit-when-idle")

    shown = cli.json("run", "show", _one_run(cli))

    validate("run show", shown)
    assert shown["run"]["state"] == "COMPLETED"
    attempts = shown["attempts"]
    assert [(a["number"], a["worker_id"], a["outcome"]) for a in attempts] == [
        (1, "w-e2e", "FAILED"),
        (2, "w-e2e", "FAILED"),
        (3, "w-e2e", "COMPLETED"),
    ]
    for attempt in attempts[:2]:
        assert "_query_warehouse" in attempt["traceback"]
        assert "WarehouseTimeout: warehouse timed out on attempt" in attempt["traceback"]
    assert attempts[2]["traceback"] is None
    events = shown["events"]
    assert [(e["to_state"], e["actor"]) for e in events] == [
        ("SCHEDULED", "scheduler"),
        ("PENDING", "scheduler"),
        *[("RUNNING", "worker"), ("FAILED", "worker"), ("PENDING", "worker")] * 2,
        ("RUNNING", "worker"),
        ("COMPLETED", "worker"),
    ]
    assert {e["worker_id"] for e in events if e["to_state"] in ("RUNNING", "FAILED", "COMPLETED")} == {
        "w-e2e"
    }
    text = cli("run", "show", shown["run"]["run_id"]).stdout
    assert "TRACEBACK of attempt 2" in text and "w-e2e" in text


def test_operator_actions_are_recorded_with_their_reason(cli: Cli) -> None:
    cli("schedule", "add", "acme", "ingest", "--cron", "0 * * * *", "--start", "2026-03-01T00:00:00Z",
        "--max-retries", "0")  # fmt: skip
    cli("tick", "--now", "2026-03-01T00:30:00Z")
    run_id = _one_run(cli)

    cancelled = cli.json("run", "cancel", run_id, "--reason", "bad input file")
    validate("run cancel", cancelled)
    assert cancelled["state"] == "CANCELLED"
    rerun = cli.json("run", "rerun", run_id, "--reason", "input fixed")
    validate("run rerun", rerun)
    assert rerun["run_id"] != run_id and rerun["state"] == "PENDING"
    assert rerun["scheduled_time"] == cancelled["scheduled_time"]  # the same slot
    assert rerun["config"]["rerun_of"] == run_id
    cli("worker", "--handler", "tests.e2e.handlers:flaky", "--exit-when-idle")  # fails, no retries left
    failed = cli.json("run", "show", rerun["run_id"])["run"]
    assert failed["state"] == "FAILED"
    retried = cli.json("run", "retry", rerun["run_id"], "--reason", "try again")
    validate("run retry", retried)
    assert retried["state"] == "PENDING"
    triggered = cli.json("schedule", "trigger", "acme", "ingest")
    validate("schedule trigger", triggered)
    assert triggered["state"] == "PENDING"

    history = cli.json("run", "show", run_id)["events"]
    assert (history[-1]["to_state"], history[-1]["actor"], history[-1]["reason"]) == (
        "CANCELLED",
        "operator",
        "bad input file",
    )
    rerun_history = cli.json("run", "show", rerun["run_id"])["events"]
    assert [(e["to_state"], e["actor"], e["reason"]) for e in rerun_history if e["actor"] == "operator"] == [
        ("SCHEDULED", "operator", "input fixed"),
        ("PENDING", "operator", "input fixed"),
        ("PENDING", "operator", "try again"),
    ]
    refused = cli("run", "retry", run_id, expect=1)  # a cancelled run is not retried: rerun it
    assert "cannot 'retry' from state CANCELLED" in refused.stderr


def test_mark_settles_a_running_run_and_refuses_other_states(cli: Cli) -> None:
    cli("schedule", "add", "acme", "ingest", "--cron", "0 * * * *", "--start", "2026-03-01T00:00:00Z")
    cli("tick", "--now", "2026-03-01T00:30:00Z")
    run_id = _one_run(cli)

    refused = cli("run", "mark", run_id, "succeeded", expect=None)
    assert refused.returncode != 0 and "PENDING" in refused.stderr
    assert cli.json("run", "show", run_id)["run"]["state"] == "PENDING"
