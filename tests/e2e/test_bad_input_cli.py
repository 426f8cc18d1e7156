"""The bad-input catalogue through the command line (issue 9), on a SQLite file and on PostgreSQL:
each bad option is one line on stderr, exit code 2, and nothing written. Also the CLI halves of
items 2 and 14 (worker options, read-only commands, a second Ctrl-C)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from pipestate.adapters.cli.main import main
from pipestate.adapters.sqlalchemy import tables
from tests.e2e.conftest import ROOT, Cli, wait_for
from tests.support.backends import postgres_schema

BAD_OPTIONS: dict[str, list[str]] = {
    "retry delay 1e12": ["schedule", "add", "acme", "c", "--cron", "0 * * * *", "--retry-delay", "1e12"],
    "retry delay and cap 1e12": [
        *["schedule", "add", "acme", "c", "--cron", "0 * * * *"],
        *["--retry-delay", "1e12", "--retry-max-delay", "1e12"],
    ],
    "retry delay nan": ["schedule", "add", "acme", "c", "--cron", "0 * * * *", "--retry-delay", "nan"],
    "retry cap inf": [
        *["schedule", "add", "acme", "c", "--cron", "0 * * * *"],
        *["--retry-max-delay", "inf", "--max-retries", "40"],
    ],
    "retry cap below the delay": [
        *["schedule", "add", "acme", "c", "--cron", "0 * * * *"],
        *["--retry-delay", "120", "--retry-max-delay", "60"],
    ],
    "max retries negative": ["schedule", "add", "acme", "c", "--cron", "0 * * * *", "--max-retries", "-1"],
    "tenant with a newline": ["schedule", "add", "ac\nme", "c", "--cron", "0 * * * *"],
    "tenant of 256 characters": ["schedule", "add", "t" * 256, "c", "--cron", "0 * * * *"],
    "config with NaN": ["schedule", "add", "acme", "c", "--cron", "0 * * * *", "--config", '{"v": NaN}'],
    "config with a NUL": [
        "schedule",
        "add",
        "acme",
        "c",
        "--cron",
        "0 * * * *",
        "--config",
        '{"v": "\\u0000"}',
    ],
    "config nested 5000 deep": [
        *["schedule", "add", "acme", "c", "--cron", "0 * * * *"],
        *["--config", '{"x":' * 5000 + "{}" + "}" * 5000],
    ],
    "catch-up runs a billion": [
        *["schedule", "add", "acme", "c", "--cron", "0 * * * *"],
        *["--max-catchup-runs", "1000000000"],
    ],
    "worker heartbeat 0": ["worker", "--handler", "tests.e2e.handlers:record", "--heartbeat", "0"],
    "worker heartbeat negative": ["worker", "--handler", "tests.e2e.handlers:record", "--heartbeat", "-5"],
    "worker heartbeat past the lease": [
        *["worker", "--handler", "tests.e2e.handlers:record"],
        *["--lease", "10", "--heartbeat", "30"],
    ],
    "worker poll nan": ["worker", "--handler", "tests.e2e.handlers:record", "--poll", "nan"],
    "worker lease inf": ["worker", "--handler", "tests.e2e.handlers:record", "--lease", "inf"],
    "worker timeout zero": ["worker", "--handler", "tests.e2e.handlers:record", "--timeout", "0"],
    "worker max items -3": ["worker", "--handler", "tests.e2e.handlers:record", "--max-items", "-3"],
    "worker concurrency 0": ["worker", "--handler", "tests.e2e.handlers:record", "--concurrency", "0"],
    "tick at year 9999": ["tick", "--now", "9999-12-31T23:59:00"],
    "recover at year 9999": ["recover", "--now", "9999-12-31T23:59:00"],
    "runs limit 0": ["runs", "--limit", "0"],
}


CATALOGUE = [
    pytest.param(backend, case, id=f"{backend}-{case}")
    for backend in ("sqlite-file", "postgresql")
    for case in sorted(BAD_OPTIONS)
]


@pytest.fixture
def backend_cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cli]:
    """A ``Cli`` on an initialised, empty store of the backend named by the test's ``backend``."""
    if request.node.callspec.params["backend"] == "sqlite-file":
        cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'pipestate.db'}")
        assert main(["--db", cli.db, "init"]) == 0
        yield cli
        return
    with postgres_schema() as (url, engine_kwargs):
        options = engine_kwargs["connect_args"]["options"]
        cli = Cli(tmp_path, f"{url}?options={quote(options)}")
        assert main(["--db", cli.db, "init"]) == 0
        yield cli


def row_counts(cli: Cli) -> list[int]:
    engine = sa.create_engine(cli.db, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return [
                conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                for table in (tables.runs, tables.queue, tables.schedules)
            ]
    finally:
        engine.dispose()


@pytest.mark.parametrize(("backend", "case"), CATALOGUE)
def test_bad_cli_input_is_one_line_exit_2_and_nothing_written(
    backend_cli: Cli,
    backend: str,
    case: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(backend_cli.cwd)  # the entry point in-process: a process start per case is slow
    monkeypatch.syspath_prepend(str(ROOT))
    capsys.readouterr()

    code = main(["--db", backend_cli.db, *BAD_OPTIONS[case]])

    stderr = capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pipestate: error: "), stderr
    assert len(lines[0]) < 1_000
    assert row_counts(backend_cli) == [0, 0, 0]


def test_item_14_read_only_commands_never_create_a_database_file(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.db"
    cli = Cli(tmp_path, f"sqlite:///{missing}")
    for command in (["runs"], ["status"], ["queue"], ["schedule", "list"]):
        done = cli(*command, expect=1)
        assert "no database at" in done.stderr and "init" in done.stderr
    assert not missing.exists()


def test_item_14_a_second_sigint_stops_the_worker_at_once(cli: Cli, tmp_path: Path) -> None:
    cli("init")
    log = tmp_path / "log.txt"
    cli("schedule", "add", "acme", "c", "--cron", "* * * * *", "--start", "2026-01-01T00:00:00Z")
    cli("tick")
    # hang_first: the handler sleeps for an hour in its thread; only a second signal may end that.
    payload = f'{{"log": "{log}", "hang_first": true}}'
    engine = sa.create_engine(cli.db, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.update(tables.queue).values(config=json.loads(payload)))
    engine.dispose()
    worker = cli.spawn("worker", "--handler", "tests.e2e.handlers:record", "--poll", "0.1")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(worker.stderr or ()), daemon=True)
    reader.start()
    try:
        wait_for(lambda: log.exists() and "start" in log.read_text(), what="the handler to start")
        worker.send_signal(signal.SIGINT)
        wait_for(lambda: any("finishing the current runs" in line for line in lines), what="the first signal")
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        reader.join(timeout=10)
        if worker.stdout is not None:
            worker.stdout.close()
        if worker.stderr is not None:
            worker.stderr.close()
    assert worker.returncode == 128 + signal.SIGINT, "".join(lines)
    assert any("exiting now" in line for line in lines)
