"""``pipestate demo`` points at the status page and ``pipestate serve`` serves the demo's database;
entry-point alert hooks; a store without the monitor table still gets a page."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.adapters.sqlalchemy.alerts import SqlAlertStore
from pipestate.adapters.web.app import WebConfig, create_app
from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.monitor import ENTRY_POINT_GROUP, Monitor, entry_point_hooks
from pipestate.application.scheduler import enqueue_pending
from pipestate.domain.alerts import MonitorSettings
from pipestate.domain.clock import FrozenClock
from pipestate.domain.run import PipelineRun, RunState
from tests.observability.conftest import SqlTarget, populate
from tests.observability.webhook_server import webhook_server

ROOT = Path(__file__).resolve().parents[2]
WORKER = (sys.executable, "-m", "pipestate")
HANDLER = ("--handler", "tests.e2e.handlers:record")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        exc.close()
        return exc.code, body


def test_the_demo_ends_with_the_serve_command_and_serve_serves_its_database(tmp_path: Path) -> None:
    pipestate = [sys.executable, "-m", "pipestate"]
    demo = subprocess.run(
        [*pipestate, "demo", "--file", "demo.db"], cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert demo.returncode == 0, demo.stderr
    last = demo.stdout.strip().splitlines()[-1]
    assert last.startswith("status page: pipestate serve --db sqlite:///") and "demo.db" in last
    db = last.split("--db ", 1)[1].split()[0]
    port = _free_port()
    server = subprocess.Popen(
        [*pipestate, "serve", "--db", db, "--port", str(port)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/api/tenants")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.communicate()
                time.sleep(0.1)
        assert status == 200
        assert [t["tenant_id"] for t in json.loads(body)["tenants"]] == ["acme", "globex", "initech"]
        page_status, page = _get(f"http://127.0.0.1:{port}/")
        assert page_status == 200 and 'data-testid="t-initech-total"' in page
        denied, _ = _get_post(f"http://127.0.0.1:{port}/api/schedules/acme/orders-ingest/pause")
        assert denied == 401  # no tokens configured: control is off
    finally:
        server.terminate()
        _, err = server.communicate(timeout=15)
    assert f"on http://127.0.0.1:{port}/ (read-only (no tokens))" in err


def _get_post(url: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        exc.close()
        return exc.code, body


def test_serve_refuses_auth_all_without_tokens(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipestate", "--db", f"sqlite:///{tmp_path / 'x.db'}", "serve", "--auth-all"],
        env={k: v for k, v in _env().items() if k != "PIPESTATE_WEB_TOKENS"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--auth-all" in done.stderr


async def test_hooks_published_as_entry_points_receive_alerts(
    sql_target: SqlTarget, clock: FrozenClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ps_test_hooks.py").write_text("SEEN = []\n\ndef hook(alert):\n    SEEN.append(alert.key)\n")
    dist = tmp_path / "ps_test_hooks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ps-test-hooks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nrecord = ps_test_hooks:hook\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ps_test_hooks", raising=False)  # a fresh module per backend
    assert [h.__name__ for h in entry_point_hooks()] == ["hook"]
    storage, alerts = await sql_target.open()
    await populate(storage, clock.now())
    await alerts.put_settings(MonitorSettings("acme", "orders", max_delay_seconds=60))
    report = await Monitor(storage, alerts, clock=clock).check()
    import ps_test_hooks  # type: ignore[import-not-found]

    assert [a.key for a in report.new] == ps_test_hooks.SEEN and len(report.new) == 1


async def test_a_store_without_the_monitor_table_still_gets_the_page(
    sql_target: SqlTarget, clock: FrozenClock
) -> None:
    storage, _ = await sql_target.open()
    await populate(storage, clock.now())
    app = create_app(WebConfig(storage, None, clock=clock))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        body = (await client.get("/api/tenants")).json()
        assert body["monitored"] is False and [t["total"] for t in body["tenants"]] == [8, 4]
        assert (await client.get("/api/alerts")).json() == {"alerts": [], "monitored": False}
        assert "late/stuck need the monitor table" in (await client.get("/")).text
        assert (await client.get("/metrics")).status_code == 404  # no metrics configured


async def _late_run_store(db: str) -> str:
    storage = SqlAlchemyStorage.from_url(db)
    try:
        await storage.create_schema()
        population = await populate(storage, SYSTEM_CLOCK.now())
        alerts = SqlAlertStore(storage.engine)
        await alerts.create_alert_schema()
        await alerts.put_settings(MonitorSettings("acme", "orders", max_delay_seconds=600))
        return population.first("acme", RunState.PENDING).run_id
    finally:
        await storage.close()


def test_two_serve_processes_monitoring_one_store_deliver_the_late_alert_once(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    late_run = asyncio.run(_late_run_store(db))
    with webhook_server() as receiver:
        serve = [sys.executable, "-m", "pipestate", "--db", db, "serve", "--monitor-interval", "0.2"]
        servers = [
            subprocess.Popen(
                [*serve, "--port", str(_free_port()), "--webhook", receiver.url],
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not receiver.bodies:
                time.sleep(0.1)
            rounds = time.monotonic() + 2.0  # about ten more checks by each server
            while time.monotonic() < rounds:
                assert all(s.poll() is None for s in servers)
                time.sleep(0.1)
        finally:
            for server in servers:
                server.terminate()
            errors = [s.communicate(timeout=15)[1] for s in servers]
    assert [b["run_id"] for b in receiver.bodies] == [late_run], errors
    assert all("secret-part" not in e for e in errors)


async def _queued_runs(db: str, n: int, sleep: float) -> None:
    storage = SqlAlchemyStorage.from_url(db)
    try:
        await storage.create_schema()
        now = SYSTEM_CLOCK.now()
        runs = []
        for i in range(n):
            run = PipelineRun.new(
                tenant_id="acme", config_id=f"c{i}", scheduled_time=now, now=now, config={"sleep": sleep}
            )
            run.make_pending(now)
            runs.append(run)
        await storage.insert_runs(runs)
        await enqueue_pending(storage, runs, now)
    finally:
        await storage.close()


def test_worker_metrics_port_is_scraped_while_it_works(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'w.db'}"
    asyncio.run(_queued_runs(db, 6, 0.4))
    port = _free_port()
    worker = subprocess.Popen(
        [
            *WORKER,
            "--db",
            db,
            "worker",
            "--metrics-port",
            str(port),
            *HANDLER,
            "--exit-when-idle",
            "--poll",
            "0.1",
        ],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    scraped = None
    try:
        deadline = time.monotonic() + 60
        while scraped is None and worker.poll() is None and time.monotonic() < deadline:
            try:
                status, scraped = _get(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                time.sleep(0.05)
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, err
    assert scraped is not None and status == 200, err
    assert f"metrics on http://127.0.0.1:{port}/metrics" in err
    runs = {
        sample.labels["state"]: sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "pipestate_runs"
    }
    assert sum(runs.values()) == 6  # a consistent snapshot mid-run: every run in exactly one state
    assert out.count("completed") == 6
