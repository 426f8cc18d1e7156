"""Command-line conventions operators expect: version, $PIPESTATE_DB, defaults in --help, no
abbreviations, a quiet exit on a closed pipe, and -v that shows only pipestate's own records."""

from __future__ import annotations

import io
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipestate import __version__
from pipestate.adapters.cli import logs
from pipestate.adapters.cli.main import EXIT_CLOSED_PIPE, main
from tests.e2e.conftest import Cli, command


def test_version_flag_and_command_print_the_installed_version(cli: Cli) -> None:
    assert cli("--version").stdout.strip() == f"pipestate {__version__}"
    assert cli("-V").stdout.strip() == f"pipestate {__version__}"
    assert cli.json("version") == {"version": __version__}
    assert __version__ != "0+unknown"


def test_pipestate_db_names_the_store_when_db_is_not_given(cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "from-env.db"
    env = {**cli.env, "PIPESTATE_DB": f"sqlite:///{target}"}
    done = subprocess.run(
        [*command(), "init", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert target.exists()
    assert not (tmp_path / "pipestate.db").exists()


def test_db_option_wins_over_the_environment(cli: Cli, tmp_path: Path) -> None:
    env = {**cli.env, "PIPESTATE_DB": f"sqlite:///{tmp_path / 'ignored.db'}"}
    done = subprocess.run([*cli.argv("init")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "ignored.db").exists()


def test_help_shows_defaults(cli: Cli) -> None:
    text = cli("worker", "--help").stdout
    assert "(default: 300.0)" in text  # --lease
    assert "default: 1" in text  # --concurrency, which has no help text of its own
    assert "$PIPESTATE_DB" in text


def test_options_are_never_abbreviated(cli: Cli) -> None:
    done = cli("worker", "--handler", "tests.e2e.handlers:record", "--concur", "2", expect=2)
    assert "unrecognized arguments: --concur" in done.stderr


def test_a_closed_pipe_ends_the_command_quietly(cli: Cli) -> None:
    cli("schedule", "add", "acme", "hourly", "--cron", "* * * * *", "--start", "2026-03-01T00:00:00Z")
    cli("tick", "--now", "2026-03-01T00:30:00Z")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes its first line
    try:
        done = subprocess.run(
            cli.argv("runs", "--limit", "1000"),
            cwd=cli.cwd,
            env=cli.env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert done.returncode == EXIT_CLOSED_PIPE, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr
    assert done.stderr == ""


def test_closed_pipe_exit_code_is_128_plus_sigpipe() -> None:
    assert EXIT_CLOSED_PIPE == 141


@pytest.fixture
def pipestate_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(logs.ROOT_LOGGER)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_verbose_logs_pipestate_records_with_context_and_leaves_other_loggers_alone(
    pipestate_logger: logging.Logger,
) -> None:
    stream = io.StringIO()
    root_handlers = list(logging.getLogger().handlers)

    logs.configure(1, stream)
    logging.getLogger("pipestate.worker").info("run finished", extra={"run_id": "r-1", "attempt": 2})
    logging.getLogger("pipestate.worker").debug("not at -v")
    logging.getLogger("transitions.core").info("library chatter")

    text = stream.getvalue()
    assert "pipestate.worker INFO run finished run_id=r-1 attempt=2" in text
    assert "not at -v" not in text and "library chatter" not in text
    assert logging.getLogger().handlers == root_handlers


def test_double_verbose_turns_on_debug_and_configuring_twice_keeps_one_handler(
    pipestate_logger: logging.Logger,
) -> None:
    stream = io.StringIO()
    logs.configure(2, stream)
    logs.configure(2, stream)
    logging.getLogger("pipestate.scheduler").debug("planning")
    assert stream.getvalue().count("planning") == 1


def test_verbose_tick_shows_no_transitions_library_chatter(cli: Cli) -> None:
    cli("schedule", "add", "acme", "hourly", "--cron", "0 * * * *", "--start", "2026-03-01T00:00:00Z")
    done = cli("-vv", "tick", "--now", "2026-03-01T03:30:00Z")
    assert "transitions" not in done.stderr


def test_main_returns_usage_code_for_an_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err
