"""Every command's ``--json`` output has one documented shape (``docs/cli-json-schema.json``),
the same with and without optional flags, and never contains a claim token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.e2e.conftest import ROOT, Cli

SCHEMA: dict[str, Any] = json.loads((ROOT / "docs" / "cli-json-schema.json").read_text())


def validate(command: str, document: Any) -> None:
    schema = {"$defs": SCHEMA["$defs"], **SCHEMA["commands"][command]}
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(document)
    assert "claim_token" not in json.dumps(document)


@pytest.fixture
def populated(cli: Cli, tmp_path: Path) -> Cli:
    log = tmp_path / "log.txt"
    config = json.dumps({"log": str(log)})
    cli("schedule", "add", "acme", "ingest", "--cron", "0 * * * *", "--start", "2026-03-01T00:00:00Z",
        "--config", config)  # fmt: skip
    cli("schedule", "add", "globex", "report", "--cron", "30 * * * *", "--start", "2026-03-01T00:00:00Z")
    cli("tick", "--now", "2026-03-01T02:45:00Z")
    cli("worker", "--handler", "tests.e2e.handlers:record", "--max-items", "1", "--exit-when-idle")
    return cli


def test_every_command_prints_its_documented_shape(populated: Cli) -> None:
    cli = populated
    validate("version", cli.json("version"))
    validate("init", cli.json("init"))
    validate("schedule list", cli.json("schedule", "list"))
    validate("schedule pause", cli.json("schedule", "pause", "globex", "report"))
    validate("schedule resume", cli.json("schedule", "resume", "globex", "report"))
    validate("schedule add", cli.json("schedule", "add", "initech", "x", "--cron", "0 0 * * *"))
    validate("tick", cli.json("tick", "--now", "2026-03-01T03:45:00Z"))
    validate("recover", cli.json("recover", "--now", "2026-03-01T03:46:00Z"))
    runs = cli.json("runs")
    assert {r["state"] for r in runs} >= {"COMPLETED", "PENDING"}
    validate("runs", runs)
    validate("status", cli.json("status"))
    validate("status", cli.json("status", "--tenant", "acme"))
    validate("alerts set", cli.json("alerts", "set", "acme", "ingest", "--max-delay", "60"))
    validate("alerts settings", cli.json("alerts", "settings"))
    check = cli.json("alerts", "check", "--now", "2026-03-01T05:00:00Z")
    validate("alerts check", check)
    alerts = cli.json("alerts")
    assert alerts, "the PENDING acme runs are late by then"
    validate("alerts", alerts)
    validate("alerts unset", cli.json("alerts", "unset", "acme", "ingest"))


def test_queue_has_one_shape_with_and_without_items(populated: Cli) -> None:
    plain = populated.json("queue")
    with_items = populated.json("queue", "--items")
    validate("queue", plain)
    validate("queue", with_items)
    assert plain["items"] == [] and len(with_items["items"]) >= 1
    assert plain.keys() == with_items.keys()


def test_worker_prints_one_documented_object_per_finished_item(populated: Cli) -> None:
    populated("tick", "--now", "2026-03-01T04:45:00Z")
    done = populated("worker", "--handler", "tests.e2e.handlers:record", "--exit-when-idle", "--json")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert lines, done.stdout
    for line in lines:
        validate("worker", line)


def test_the_schema_rejects_a_leaked_claim_token() -> None:
    leaked = {"queue_id": "q", "tenant_id": "t", "outcome": "completed", "worker_id": "w", "attempt": 1,
              "claim_token": "secret"}  # fmt: skip
    with pytest.raises(jsonschema.ValidationError):
        schema = {"$defs": SCHEMA["$defs"], **SCHEMA["commands"]["worker"]}
        jsonschema.Draft202012Validator(schema).validate(leaked)


def test_every_command_has_a_documented_schema() -> None:
    import argparse

    from pipestate.adapters.cli.main import build_parser

    (subparsers,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = set(subparsers.choices)
    documented = {name.split()[0] for name in SCHEMA["commands"]}
    assert commands - {"demo", "serve"} <= documented


def test_backfill_from_the_command_line_is_idempotent_and_its_dry_run_writes_nothing(cli: Cli) -> None:
    cli("schedule", "add", "acme", "hourly", "--cron", "0 * * * *")
    window = ("--from", "2026-01-01T00:00:00Z", "--to", "2026-01-31T00:00:00Z", "--max-runs", "720")

    dry = cli.json("backfill", "acme", "hourly", *window, "--dry-run")
    assert cli.json("runs", "--limit", "1000") == []
    first = cli.json("backfill", "acme", "hourly", *window)
    again = cli.json("backfill", "acme", "hourly", *window)

    for document in (dry, first, again):
        validate("backfill", document)
    assert (len(dry["slots"]), dry["created"], dry["missing"]) == (720, 0, 720)
    assert (first["created"], again["created"], again["existing"]) == (720, 0, {"SCHEDULED": 720})
    assert len(cli.json("runs", "--limit", "1000")) == 720
    too_many = cli("backfill", "acme", "hourly", *window[:4], "--max-runs", "10", expect=2)
    assert "max_runs" in too_many.stderr
