"""``pipestate serve``, ``pipestate alerts`` and the worker's ``--metrics-port``.

The web and metrics packages are optional extras, imported only when these commands run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any, Final

import sqlalchemy as sa

from pipestate.adapters.cli.output import fmt_time, print_json, short, table
from pipestate.adapters.sqlalchemy.alerts import SqlAlertStore
from pipestate.adapters.webhook import WebhookNotifier
from pipestate.application.metrics import PipestateMetrics
from pipestate.application.monitor import Monitor
from pipestate.domain.alerts import ANY, AlertKind, MonitorSettings, MonitorStore, RunStatsRepository
from pipestate.domain.errors import InvalidArgument, StorageError
from pipestate.domain.ports import Storage

COMMANDS: Final = frozenset({"serve", "alerts"})
LOCAL_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
TOKENS_ENV: Final = "PIPESTATE_WEB_TOKENS"


def add_parsers(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``serve`` and ``alerts`` through the main parser's ``command(name, help, into=…)``."""
    serve = command("serve", "serve the status page, the JSON API and /metrics; run the monitor")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--token-file", default=None, help=f"lines of 'TENANT TOKEN' or '* TOKEN' (or set {TOKENS_ENV})"
    )
    serve.add_argument("--auth-all", action="store_true", help="every endpoint needs a token")
    serve.add_argument(
        "--monitor-interval", type=float, default=30.0, help="seconds between alert checks (0: no monitor)"
    )
    serve.add_argument("--webhook", action="append", default=[], help="POST alerts here (repeatable)")
    serve.add_argument("--metrics-interval", type=float, default=15.0, help="seconds store gauges are cached")
    serve.add_argument("--refresh", type=int, default=10, help="page auto-refresh in seconds (0: off)")

    alerts = command("alerts", "list alerts; check now; set what counts as late, stuck, an SLA miss")
    alerts.add_argument("--tenant", default=None)
    alerts.add_argument("--kind", default=None, help="one of " + ", ".join(k.value for k in AlertKind))
    alerts.add_argument("--limit", type=int, default=50)
    actions = alerts.add_subparsers(dest="alerts_command", metavar="ACTION", parser_class=type(alerts))
    check = command("check", "detect now, record and deliver new alerts, then list them", into=actions)
    check.add_argument("--webhook", action="append", default=[], help="POST new alerts here (repeatable)")
    check.add_argument("--now", default=None, help="check as of this ISO time")
    settings = command("set", "set monitor settings of TENANT [CONFIG_ID] ('*' for defaults)", into=actions)
    settings.add_argument("tenant_id")
    settings.add_argument("config_id", nargs="?", default=ANY)
    settings.add_argument("--max-delay", type=float, default=None, help="seconds a due run may wait (late)")
    settings.add_argument("--sla", type=float, default=None, help="seconds from slot to COMPLETED")
    settings.add_argument("--run-timeout", type=float, default=None, help="seconds a run may stay RUNNING")
    settings.add_argument("--max-lease-expiries", type=int, default=None, help="starts ending expired")
    settings.add_argument("--consecutive-failures", type=int, default=None)
    settings.add_argument("--auto-pause", action="store_true", help="pause the schedule on a failure streak")
    unset = command("unset", "remove the monitor settings of TENANT [CONFIG_ID]", into=actions)
    unset.add_argument("tenant_id")
    unset.add_argument("config_id", nargs="?", default=ANY)
    command("settings", "list monitor settings", into=actions)


def monitor_store_for(storage: Storage) -> MonitorStore | None:
    """The alert/settings store beside ``storage``: its SQL engine, or its BigQuery dataset."""
    engine = getattr(storage, "engine", None)
    if isinstance(engine, sa.engine.Engine):
        return SqlAlertStore(engine)
    try:
        from pipestate.adapters.bigquery import BigQueryStorage
        from pipestate.adapters.bigquery.alerts import BigQueryAlertStore
    except ImportError:
        return None
    return BigQueryAlertStore(storage) if isinstance(storage, BigQueryStorage) else None


def stats_for(storage: Storage) -> RunStatsRepository | None:
    """The one-statement/one-job grouped run count for ``storage`` (SQL or BigQuery), if any."""
    store = monitor_store_for(storage)
    if store is not None:
        return store
    try:
        from pipestate.adapters.bigquery import BigQueryStorage
        from pipestate.adapters.bigquery.stats import BigQueryRunStats
    except ImportError:
        return None
    return BigQueryRunStats(storage) if isinstance(storage, BigQueryStorage) else None


def _observe_bigquery_jobs(metrics: PipestateMetrics) -> None:
    """Count this process's BigQuery jobs and bytes (a no-op without the bigquery extra)."""
    try:
        from pipestate.adapters.bigquery.observed import add_job_listener
    except ImportError:
        return
    add_job_listener(metrics.observe_bigquery_job)


def _require_store(storage: Storage) -> MonitorStore:
    store = monitor_store_for(storage)
    if store is None:
        raise StorageError("this store has no monitor tables (SQLite, PostgreSQL and BigQuery do)")
    return store


async def run(args: argparse.Namespace, storage: Storage, describe: str, instant: Any) -> int:
    if args.command == "serve":
        return await _serve(args, storage, describe)
    return await _alerts(args, storage, instant)


# --------------------------------------------------------------------------- serve
def _tokens(args: argparse.Namespace) -> Any:
    from pipestate.adapters.web.auth import TokenSet

    if args.token_file:
        return TokenSet.from_file(args.token_file)
    return TokenSet.parse(os.environ.get(TOKENS_ENV, "").replace(",", "\n"))


async def _serve(args: argparse.Namespace, storage: Storage, describe: str) -> int:
    try:
        import uvicorn

        from pipestate.adapters.web.app import WebConfig, create_app
    except ImportError as exc:
        raise StorageError(f"serve needs the web extra ({exc.name}): pip install 'pipestate[web]'") from exc
    if not 0 <= args.port <= 65535:
        raise InvalidArgument("--port", args.port, "must be 0..65535")
    tokens = _tokens(args)
    if args.auth_all and not tokens:
        raise InvalidArgument("--auth-all", True, f"needs tokens (--token-file or {TOKENS_ENV})")
    store = monitor_store_for(storage)
    if store is not None:
        await store.create_alert_schema()
    stats = stats_for(storage)
    metrics = PipestateMetrics(storage, stats, min_interval=args.metrics_interval)
    _observe_bigquery_jobs(metrics)
    app = create_app(
        WebConfig(
            storage,
            store,
            tokens=tokens,
            auth_all=args.auth_all,
            metrics=metrics,
            stats=stats,
            refresh_seconds=max(args.refresh, 0),
            label=describe,
        )
    )
    stop = asyncio.Event()
    monitor_task = None
    if store is not None and args.monitor_interval > 0:
        notifiers = [WebhookNotifier(url) for url in args.webhook]
        monitor = Monitor(storage, store, notifiers=notifiers, hooks=[metrics.observe_alert])
        monitor_task = asyncio.create_task(monitor.run(args.monitor_interval, stop))
    if args.host not in LOCAL_HOSTS:
        print(
            f"warning: serving on {args.host}, reachable from other machines;"
            + (" reads need no token (use --auth-all)" if not args.auth_all else ""),
            file=sys.stderr,
        )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="info" if args.verbose else "warning",
        access_log=bool(args.verbose),
        server_header=False,
    )
    server = uvicorn.Server(config)
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    control = f"{len(tokens)} tokens" if tokens else "read-only (no tokens)"
    url = f"http://{shown_host}:{args.port}/"
    print(f"serving {describe} on {url} ({control}); Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        await server.serve()
    finally:
        stop.set()
        if monitor_task is not None:
            await monitor_task
    return 0


# --------------------------------------------------------------------------- alerts
async def _alerts(args: argparse.Namespace, storage: Storage, instant: Any) -> int:
    store = _require_store(storage)
    await store.create_alert_schema()
    action = args.alerts_command
    if action == "set":
        settings = MonitorSettings(
            tenant_id=args.tenant_id,
            config_id=args.config_id,
            max_delay_seconds=args.max_delay,
            sla_seconds=args.sla,
            run_timeout_seconds=args.run_timeout,
            max_lease_expiries=args.max_lease_expiries,
            consecutive_failures=args.consecutive_failures,
            auto_pause=args.auto_pause,
        )
        await store.put_settings(settings)
        _say(args, settings, f"monitor settings of {args.tenant_id}/{args.config_id} saved")
        return 0
    if action == "unset":
        removed = await store.delete_settings(args.tenant_id, args.config_id)
        what = f"{args.tenant_id}/{args.config_id}"
        _say(args, {"removed": removed}, f"{'removed' if removed else 'no'} settings of {what}")
        return 0
    if action == "settings":
        saved = await store.list_settings()
        if args.json:
            print_json(saved)
        else:
            print(_settings_table(saved))
        return 0
    if action == "check":
        monitor = Monitor(storage, store, notifiers=[WebhookNotifier(url) for url in args.webhook])
        report = await monitor.check(instant("--now", args.now))
        if args.json:
            print_json({"detected": len(report.detected), "new": report.new, "paused": report.paused})
            return 0
        print(
            f"check at {fmt_time(report.now)} UTC: {len(report.detected)} conditions hold,"
            f" {len(report.new)} new alerts delivered"
            + (f", paused {', '.join(report.paused)}" if report.paused else "")
        )
        for key, error in report.delivery_errors.items():
            print(f"  delivery failed for {key}: {error}", file=sys.stderr)
    if args.limit <= 0:
        raise InvalidArgument("--limit", args.limit, "must be > 0")
    alerts = await store.list_alerts(
        tenant_id=args.tenant, kind=AlertKind.parse(args.kind) if args.kind else None, limit=args.limit
    )
    if args.json and action is None:
        print_json(alerts)
        return 0
    if action == "check":
        print()
    rows = [
        (
            fmt_time(a.detected_at),
            a.kind.value,
            f"{a.tenant_id}/{a.config_id or ''}",
            short(a.run_id),
            "yes" if a.delivered_at and not a.delivery_error else ("failed" if a.delivery_error else "no"),
            a.reason,
        )
        for a in alerts
    ]
    print(table(("DETECTED (UTC)", "KIND", "PIPELINE", "RUN", "DELIVERED", "REASON"), rows))
    return 0


def _settings_table(rows: list[MonitorSettings]) -> str:
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    return table(
        ("TENANT", "CONFIG", "MAX_DELAY", "SLA", "RUN_TIMEOUT", "LEASE_EXPIRIES", "FAILURES", "AUTO_PAUSE"),
        [
            (
                s.tenant_id,
                s.config_id,
                num(s.max_delay_seconds),
                num(s.sla_seconds),
                num(s.run_timeout_seconds),
                num(s.max_lease_expiries),
                num(s.consecutive_failures),
                "yes" if s.auto_pause else "no",
            )
            for s in rows
        ],
    )


def _say(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print_json(data)
    else:
        print(text)


# --------------------------------------------------------------------------- worker metrics
async def start_worker_metrics(storage: Storage, port: int) -> PipestateMetrics:
    """Serve the worker's /metrics on 127.0.0.1:``port`` (scrapes refresh on this event loop)."""
    if not 0 < port <= 65535:
        raise InvalidArgument("--metrics-port", port, "must be 1..65535")
    try:
        metrics = PipestateMetrics(storage, stats_for(storage))
    except ImportError as exc:
        raise StorageError(str(exc)) from exc  # the metrics extra is missing: say how to add it
    _observe_bigquery_jobs(metrics)
    await metrics.refresh()
    metrics.serve_http(port)
    print(f"metrics on http://127.0.0.1:{port}/metrics", file=sys.stderr, flush=True)
    return metrics
