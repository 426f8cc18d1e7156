"""The monitor on real SQL stores: each alert once across monitors, hooks, webhooks, auto-pause."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from pipestate.adapters.webhook import WebhookError, WebhookNotifier
from pipestate.application.monitor import Monitor
from pipestate.application.schedule_manager import ScheduleManager
from pipestate.domain.alerts import Alert, AlertKind, MonitorSettings
from pipestate.domain.clock import FrozenClock
from pipestate.domain.run import RunState
from tests.observability.conftest import T0, Population, SqlTarget, make_run, populate
from tests.observability.webhook_server import webhook_server

ROOT = Path(__file__).resolve().parents[2]


async def test_a_late_run_raises_exactly_one_alert_with_two_monitors_checking_at_once(
    sql_target: SqlTarget, clock: FrozenClock
) -> None:
    storage, alerts = await sql_target.open()
    population = await populate(storage, clock.now())
    await alerts.put_settings(MonitorSettings("acme", "orders", max_delay_seconds=600))
    late = population.first("acme", RunState.PENDING)
    seen: list[Alert] = []

    async def async_hook(alert: Alert) -> None:
        seen.append(alert)

    with webhook_server() as receiver:
        monitors = []
        for _ in range(2):  # two processes' worth: separate stores (engines) on one database
            other_storage, other_alerts = await sql_target.open()
            monitors.append(
                Monitor(
                    other_storage,
                    other_alerts,
                    clock=clock,
                    hooks=[async_hook],
                    notifiers=[WebhookNotifier(receiver.url)],
                    load_entry_points=False,
                )
            )
        reports = await asyncio.gather(*(m.check() for m in monitors), *(m.check() for m in monitors))
        clock.advance(timedelta(minutes=5))
        again = await monitors[0].check()

    assert all(len(r.detected) == 1 for r in reports)
    assert sum(len(r.new) for r in reports) == 1 and again.new == []
    assert [a.run_id for a in seen] == [late.run_id] and seen[0].kind is AlertKind.LATE
    assert [b["run_id"] for b in receiver.bodies] == [late.run_id]
    assert receiver.bodies[0]["text"].startswith("[pipestate] late: acme/orders")
    (stored,) = await alerts.list_alerts()
    assert stored.key == seen[0].key and stored.delivered_at is not None and stored.delivery_error is None


async def test_webhook_retries_with_backoff_then_gives_up_and_the_failure_is_noted(
    sql_target: SqlTarget, clock: FrozenClock
) -> None:
    storage, alerts = await sql_target.open()
    await populate(storage, clock.now())
    await alerts.put_settings(MonitorSettings(max_delay_seconds=600))
    with webhook_server(fail_first=2) as flaky:
        monitor = Monitor(
            storage,
            alerts,
            clock=clock,
            notifiers=[WebhookNotifier(flaky.url, attempts=3, backoff=0.01)],
            load_entry_points=False,
        )
        report = await monitor.check()
    assert len(report.new) == 1 and flaky.attempts == 3 and len(flaky.bodies) == 1
    with webhook_server(fail_first=100) as down:
        notifier = WebhookNotifier(down.url, attempts=2, backoff=0.01)
        with pytest.raises(WebhookError) as caught:
            await notifier.send(report.new[0])
        assert down.attempts == 2
        assert "secret-part" not in str(caught.value) and "secret-part" not in repr(notifier)
    with webhook_server(fail_first=100, status=404) as refusing:
        with pytest.raises(WebhookError):
            await WebhookNotifier(refusing.url, attempts=5, backoff=0.01).send(report.new[0])
        assert refusing.attempts == 1  # a 4xx other than 429 is not retried


async def test_a_failing_hook_does_not_stop_delivery_and_is_recorded(
    sql_target: SqlTarget, clock: FrozenClock
) -> None:
    storage, alerts = await sql_target.open()
    await populate(storage, clock.now())
    await alerts.put_settings(MonitorSettings("acme", max_delay_seconds=600))
    got: list[str] = []

    def broken(alert: Alert) -> None:
        raise RuntimeError("hook is down")

    monitor = Monitor(
        storage, alerts, clock=clock, hooks=[broken, lambda a: got.append(a.key)], load_entry_points=False
    )
    report = await monitor.check()
    assert len(got) == 1 and report.delivery_errors
    (stored,) = await alerts.list_alerts(kind=AlertKind.LATE)
    assert stored.delivery_error is not None and "hook is down" in stored.delivery_error


async def test_stuck_sla_and_failure_streak_with_auto_pause(
    sql_target: SqlTarget, clock: FrozenClock
) -> None:
    storage, alerts = await sql_target.open()
    now = clock.now()
    population = await populate(storage, now)
    streak = [
        make_run("globex", "sync", now - timedelta(minutes=m), RunState.FAILED, now) for m in (100, 150)
    ]  # with the FAILED run at -2 h: three final failures after the COMPLETED one at -3 h
    await storage.insert_runs(streak)
    await alerts.put_settings(MonitorSettings("acme", run_timeout_seconds=3600, sla_seconds=5400))
    await alerts.put_settings(MonitorSettings("globex", consecutive_failures=2, auto_pause=True))
    report = await Monitor(storage, alerts, clock=clock, load_entry_points=False).check()
    kinds = sorted((a.kind.value, a.tenant_id) for a in report.new)
    assert kinds == [
        ("consecutive_failures", "globex"),
        ("sla_miss", "acme"),
        ("sla_miss", "acme"),
        ("stuck", "acme"),
    ]
    stuck = next(a for a in report.new if a.kind is AlertKind.STUCK)
    assert stuck.run_id == population.first("acme", RunState.RUNNING).run_id
    assert report.paused == ["globex/sync"]
    assert not (await ScheduleManager(storage).get("globex", "sync")).enabled
    assert (await Monitor(storage, alerts, clock=clock, load_entry_points=False).check()).new == []


async def test_nothing_is_read_beyond_the_settings_when_no_rule_is_set(
    sql_target: SqlTarget, clock: FrozenClock
) -> None:
    storage, alerts = await sql_target.open()
    await populate(storage, clock.now())
    report = await Monitor(storage, alerts, clock=clock, load_entry_points=False).check()
    assert report.detected == [] and await alerts.list_alerts() == []


def _cli(db: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipestate", "--db", db, *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


async def _populated(db: str) -> Population:
    target = SqlTarget(db, {})
    try:
        storage, _ = await target.open()
        return await populate(storage, T0)
    finally:
        for opened in target.opened:
            await opened.close()


def test_pipestate_alerts_two_concurrent_checks_deliver_once_and_list_it(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    population = asyncio.run(_populated(db))
    env = _env()
    done = subprocess.run(
        _cli(db, "alerts", "set", "acme", "orders", "--max-delay", "600"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    now = (T0 + timedelta(minutes=1)).isoformat()
    with webhook_server() as receiver:
        checks = [
            subprocess.Popen(
                _cli(db, "alerts", "check", "--now", now, "--webhook", receiver.url, "--json"),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [c.communicate(timeout=60) for c in checks]
    assert [c.returncode for c in checks] == [0, 0], outputs
    results = [json.loads(out) for out, _ in outputs]
    assert sorted(len(r["new"]) for r in results) == [0, 1]
    late = population.first("acme", RunState.PENDING)
    assert [b["run_id"] for b in receiver.bodies] == [late.run_id]
    listing = subprocess.run(_cli(db, "alerts"), env=env, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:3] == ["DETECTED", "(UTC)", "KIND"] and len(lines) == 3  # header, rule, one row
    assert "late" in lines[2] and "acme/orders" in lines[2] and late.run_id[:8] in lines[2]
    assert "secret-part" not in listing.stdout + "".join(o + e for o, e in outputs)
    listed = json.loads(subprocess.run(_cli(db, "alerts", "--json"), env=env, capture_output=True).stdout)
    assert [a["run_id"] for a in listed] == [late.run_id]
