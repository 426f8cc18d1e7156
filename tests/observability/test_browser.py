"""The status page in a real browser: Debian's chromium driven by Playwright, against ``pipestate serve``.

The page must show the store's numbers, sign in with a token, cancel a run with a click (and the
store must say CANCELLED), and stay readable on a laptop and a phone (screenshots are saved in the
test's tmp folder). Under CI a missing browser fails the test; locally it skips.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.adapters.sqlalchemy.alerts import SqlAlertStore
from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.monitor import Monitor
from pipestate.domain.alerts import MonitorSettings
from pipestate.domain.run import RunState
from tests.observability.conftest import Population, browser_required, populate

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("PIPESTATE_TEST_CHROMIUM", "/usr/bin/chromium")
TOKEN = "browser-admin-token-0123456789"


def _browser_or_skip() -> Any:
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        problem = f"playwright is not installed ({exc})"
    if problem is None and not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        problem = f"no chromium at {CHROMIUM} (apt-get install chromium)"
    if problem is not None:
        if browser_required():
            pytest.fail(f"the browser test must run in CI: {problem}")
        pytest.skip(problem)
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _prepare(db: str) -> Population:
    storage = SqlAlchemyStorage.from_url(db)
    try:
        await storage.create_schema()
        now = SYSTEM_CLOCK.now()
        population = await populate(storage, now)
        alerts = SqlAlertStore(storage.engine)
        await alerts.create_alert_schema()
        await alerts.put_settings(MonitorSettings("acme", max_delay_seconds=600, run_timeout_seconds=3600))
        await Monitor(storage, alerts, load_entry_points=False).check()
        return population
    finally:
        await storage.close()


async def _state(db: str, run_id: str) -> RunState:
    storage = SqlAlchemyStorage.from_url(db)
    try:
        run = await storage.get_run(run_id)
        assert run is not None
        return run.state
    finally:
        await storage.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, Population]]:
    db = f"sqlite:///{tmp_path / 'pipestate.db'}"
    population = asyncio.run(_prepare(db))
    tokens = tmp_path / "tokens"
    tokens.write_text(f"* {TOKEN}\n")
    port = _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "pipestate", "--db", db, "serve", "--port", str(port)]
    argv += ["--token-file", str(tokens), "--refresh", "0", "--monitor-interval", "0"]
    server = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    out, err = server.communicate(timeout=5)
                    pytest.fail(f"pipestate serve did not start: {out}\n{err}")
                time.sleep(0.1)
        yield base, db, population
    finally:
        server.terminate()
        out, err = server.communicate(timeout=15)
        assert TOKEN not in out + err  # no secrets in its output


def test_the_status_page_in_a_real_browser(served: tuple[str, str, Population], tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    base, db, population = served
    pending = population.first("acme", RunState.PENDING)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base + "/")
            for tenant in ("acme", "globex"):
                assert page.inner_text(f'[data-testid="t-{tenant}-total"]') == str(population.count(tenant))
                for state in RunState:
                    shown = page.inner_text(f'[data-testid="t-{tenant}-{state.value}"]')
                    assert shown == str(population.count(tenant, state)), (tenant, state)
            assert page.inner_text('[data-testid="total-waiting"]') == "3"
            assert page.inner_text('[data-testid="t-acme-late"]') == "1"  # PENDING for 2 h, max_delay 10 min
            assert page.inner_text('[data-testid="t-acme-stuck"]') == "1"  # RUNNING for 2 h, timeout 1 h
            assert page.inner_text('[data-testid="t-globex-late"]') == "0"
            assert page.inner_text('[data-testid="t-acme-success"]') == "75%"  # 3 completed, 1 failed
            assert page.locator(f'[data-testid="cancel-{pending.run_id}"]').count() == 0  # not signed in
            page.screenshot(path=str(tmp_path / "status-anonymous.png"), full_page=True)

            page.fill('input[name="token"]', TOKEN)
            page.click("text=Sign in")
            page.wait_for_selector("text=signed in: all tenants")
            page.on("dialog", lambda dialog: dialog.accept())
            page.click(f'[data-testid="cancel-{pending.run_id}"]')
            page.wait_for_function(
                "id => document.querySelector(`[data-testid='state-${id}']`)?.innerText === 'CANCELLED'",
                arg=pending.run_id,
            )
            with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
                assert pool.submit(asyncio.run, _state(db, pending.run_id)).result() is RunState.CANCELLED
            assert page.inner_text('[data-testid="t-acme-CANCELLED"]') == str(
                population.count("acme", RunState.CANCELLED) + 1
            )
            page.screenshot(path=str(tmp_path / "status-laptop.png"), full_page=True)

            page.click(f'[data-testid="run-{pending.run_id}"] a')
            page.wait_for_selector('[data-testid="run-state"]')
            assert page.inner_text('[data-testid="run-state"]') == "CANCELLED"
            assert "alert late" in page.inner_text("ol.timeline")
            page.screenshot(path=str(tmp_path / "run-laptop.png"), full_page=True)

            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            phone.goto(base + "/")
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390  # wide tables scroll inside their box, not the whole page
            phone.screenshot(path=str(tmp_path / "status-phone.png"), full_page=True)
        finally:
            browser.close()
    shots = os.environ.get("PIPESTATE_SCREENSHOTS")
    if shots:  # for a person to look at
        for png in tmp_path.glob("*.png"):
            shutil.copy(png, Path(shots) / png.name)
