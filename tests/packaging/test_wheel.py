"""The built wheel installs one top-level package, ``pipestate``, and lives beside a host project
that has its own ``domain/`` and ``application/`` packages.

The wheel is installed (not editable) into a throw-away virtual environment outside the
repository; its dependencies come from the test environment's site-packages through a path file,
so the test needs no package index. The editable install's import hook is not inherited, so the
``pipestate`` imported there is the wheel's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("domain", "application", "adapters", "schemas")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (built,) = out.glob("pipestate-*.whl")
    return built


@pytest.fixture(scope="module")
def host_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("hostenv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # The test environment's own dependencies (sqlalchemy, transitions …), appended after the
    # host venv's site-packages. A plain path line does not run the editable install's hook.
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (env_dir / "bin" / "pipestate").write_text(
        f"#!{python}\nimport sys\nfrom pipestate.adapters.cli.main import main\nsys.exit(main())\n"
    )
    (env_dir / "bin" / "pipestate").chmod(0o755)
    return python


def test_the_wheel_holds_only_the_pipestate_package_and_its_type_marker(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"pipestate", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    assert "pipestate/py.typed" in names
    assert {f"pipestate/{layer}/__init__.py" for layer in LAYERS} <= set(names)
    assert "pipestate/schemas/x_meta_scheduled_runs.json" in names
    assert not any(name.startswith(("tests/", "bench/", "examples/")) for name in names)


def test_the_installed_package_is_the_wheel_and_exposes_the_public_api(
    host_python: Path, tmp_path: Path
) -> None:
    probe = (
        "import json, pipestate\n"
        "from pipestate import PipelineStateManager, QueueManager, RetryManager, ScheduleCalculator\n"
        "from pipestate import ScheduleManager, Scheduler, Worker, Recovery, PipelineRun, QueueItem\n"
        "from pipestate import RunState, QueueStatus, RetryPolicy, errors\n"
        "from pipestate.adapters.sqlalchemy import SqlAlchemyStorage\n"
        "from pipestate.adapters.bigquery import BigQueryStorage\n"
        "import importlib.util as u\n"
        "print(json.dumps({'file': pipestate.__file__, 'version': pipestate.__version__,\n"
        "  'bare': [n for n in ('domain', 'application', 'adapters', 'schemas') if u.find_spec(n)]}))\n"
    )
    done = subprocess.run(
        [str(host_python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert str(ROOT) not in seen["file"] and "site-packages" in seen["file"]
    assert seen["bare"] == []
    assert seen["version"] != "0+unknown"


def test_a_host_project_with_its_own_domain_and_application_runs_its_handler(
    host_python: Path, tmp_path: Path
) -> None:
    host = tmp_path / "hostproj"
    for package, body in {
        "domain": "KIND = 'host-domain'\n",
        "application": "def greet() -> str:\n    return 'host-application'\n",
        "host": "",
    }.items():
        (host / package).mkdir(parents=True)
        (host / package / "__init__.py").write_text(body)
    (host / "host" / "jobs.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path

            from application import greet
            from domain import KIND


            def run(run, config):
                Path(config["marker"]).write_text(f"{KIND} {greet()} {run.tenant_id}/{run.config_id}")
            """
        )
    )
    marker = tmp_path / "ran.txt"
    pipestate = [str(host_python.with_name("pipestate")), "--db", f"sqlite:///{tmp_path / 'host.db'}"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(host)

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*pipestate, *args], cwd=host, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        return done

    call("init")
    call(
        "schedule", "add", "acme", "nightly", "--cron", "0 2 * * *",
        "--start", "2026-03-01T00:00:00Z", "--config", json.dumps({"marker": str(marker)}),
    )  # fmt: skip
    call("tick", "--now", "2026-03-01T02:00:30Z")
    call("worker", "--handler", "host.jobs:run", "--exit-when-idle")

    assert marker.read_text() == "host-domain host-application acme/nightly"
    runs = json.loads(call("runs", "--json").stdout)
    assert [r["state"] for r in runs] == ["COMPLETED"]
