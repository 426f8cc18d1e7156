"""The alert rules as pure functions (domain/alerts.py): late, stuck, SLA, failure streaks, settings."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipestate.domain.alerts import (
    Alert,
    AlertKind,
    MonitorSettings,
    SettingsIndex,
    detect_failure_streak,
    detect_late,
    detect_sla_misses,
    detect_stuck,
)
from pipestate.domain.errors import InvalidArgument, InvalidIdentifier
from pipestate.domain.run import LEASE_EXPIRED, PipelineRun, RunState
from tests.observability.conftest import T0, make_run

MINUTE = timedelta(minutes=1)


def test_late_fires_only_past_max_delay_and_names_the_occurrence() -> None:
    rules = SettingsIndex([MonitorSettings("acme", "orders", max_delay_seconds=600)])
    on_time = make_run("acme", "orders", T0 - 9 * MINUTE, RunState.PENDING, T0)
    late = make_run("acme", "orders", T0 - 11 * MINUTE, RunState.PENDING, T0)
    other = make_run("acme", "clicks", T0 - 60 * MINUTE, RunState.PENDING, T0)  # no rule for clicks
    running = make_run("acme", "orders", T0 - 60 * MINUTE, RunState.RUNNING, T0)
    alerts = detect_late([on_time, late, other, running], rules, T0)
    assert [a.run_id for a in alerts] == [late.run_id]
    assert alerts[0].kind is AlertKind.LATE
    assert alerts[0].key == f"late:{late.run_id}:{late.scheduled_time.isoformat()}"
    assert detect_late([late], rules, T0 + MINUTE)[0].key == alerts[0].key  # same occurrence later


def test_defaults_apply_where_no_row_is_more_specific() -> None:
    rules = SettingsIndex(
        [
            MonitorSettings(max_delay_seconds=3600),
            MonitorSettings("acme", max_delay_seconds=60),
            MonitorSettings("acme", "clicks"),  # explicit row: nothing checked
        ]
    )
    orders = make_run("acme", "orders", T0 - 5 * MINUTE, RunState.PENDING, T0)
    clicks = make_run("acme", "clicks", T0 - 500 * MINUTE, RunState.PENDING, T0)
    sync = make_run("globex", "sync", T0 - 5 * MINUTE, RunState.SCHEDULED, T0)
    sync_late = make_run("globex", "sync", T0 - 61 * MINUTE, RunState.SCHEDULED, T0)
    assert [a.run_id for a in detect_late([orders, clicks, sync, sync_late], rules, T0)] == [
        orders.run_id,
        sync_late.run_id,
    ]


def test_stuck_on_timeout_and_on_repeated_lease_expiry() -> None:
    rules = SettingsIndex([MonitorSettings(run_timeout_seconds=3600, max_lease_expiries=2)])
    slow = make_run("acme", "orders", T0 - 120 * MINUTE, RunState.RUNNING, T0)
    quick = make_run("acme", "orders", T0 - 10 * MINUTE, RunState.RUNNING, T0)
    expired = make_run("acme", "clicks", T0 - 10 * MINUTE, RunState.PENDING, T0)
    expired.attempt, expired.error_type = 2, LEASE_EXPIRED
    once = make_run("acme", "sync", T0 - 10 * MINUTE, RunState.PENDING, T0)
    once.attempt, once.error_type = 1, LEASE_EXPIRED
    alerts = detect_stuck([slow, quick, expired, once], rules, T0)
    assert [(a.run_id, a.key) for a in alerts] == [
        (slow.run_id, f"stuck:{slow.run_id}:1"),
        (expired.run_id, f"stuck:{expired.run_id}:2"),
    ]


def test_sla_counts_from_the_slot_and_ignores_finished_runs() -> None:
    rules = SettingsIndex([MonitorSettings(sla_seconds=1800)])
    missed = make_run("acme", "orders", T0 - 31 * MINUTE, RunState.RUNNING, T0)
    fine = make_run("acme", "orders", T0 - 29 * MINUTE, RunState.PENDING, T0)
    done = make_run("acme", "orders", T0 - 90 * MINUTE, RunState.COMPLETED, T0)
    retried = make_run("acme", "clicks", T0 - 40 * MINUTE, RunState.SCHEDULED, T0)
    retried.scheduled_time = T0 - MINUTE  # a retry moved it; the slot is still its creation time
    alerts = detect_sla_misses([missed, fine, done, retried], rules, T0)
    assert [a.run_id for a in alerts] == [missed.run_id, retried.run_id]
    assert all(a.key == f"sla_miss:{a.run_id}" for a in alerts)


def test_a_failure_streak_alerts_once_however_long_it_grows() -> None:
    def failed(minutes: int) -> PipelineRun:
        return make_run("acme", "orders", T0 - minutes * MINUTE, RunState.FAILED, T0)

    ok = make_run("acme", "orders", T0 - 500 * MINUTE, RunState.COMPLETED, T0)
    three = [failed(10), failed(20), failed(30)]
    assert detect_failure_streak("acme", "orders", [*three[:2], ok], 3, T0) is None
    alert = detect_failure_streak("acme", "orders", [*three, ok], 3, T0)
    assert isinstance(alert, Alert) and alert.details["failures"] == 3
    longer = detect_failure_streak("acme", "orders", [failed(5), *three, ok], 3, T0)
    assert longer is not None and longer.key == alert.key and longer.run_id != alert.run_id


@pytest.mark.parametrize(
    "fields",
    [
        {"max_delay_seconds": 0},
        {"sla_seconds": -5},
        {"consecutive_failures": 0},
        {"max_lease_expiries": True},
        {"auto_pause": True},
        {"tenant_id": "*", "config_id": "orders"},
    ],
)
def test_bad_settings_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        MonitorSettings(**fields)  # type: ignore[arg-type]


def test_settings_need_ids() -> None:
    with pytest.raises(InvalidIdentifier):
        MonitorSettings(tenant_id="")


def test_the_webhook_payload_is_slack_compatible() -> None:
    run = make_run("acme", "orders", T0 - 20 * MINUTE, RunState.PENDING, T0)
    (alert,) = detect_late([run], SettingsIndex([MonitorSettings(max_delay_seconds=60)]), T0)
    payload = alert.payload()
    assert payload["text"].startswith("[pipestate] late: acme/orders run ")
    assert payload["kind"] == "late" and payload["run_id"] == run.run_id
