"""The catalogue of every SQL text the BigQuery adapter sends, for the GoogleSQL (ZetaSQL) gate.

* :func:`enumerate_statements` drives every adapter method, with every combination of the
  options that change its SQL, against the emulator through a recording client, and returns the
  statements with the exact parameter types the adapter bound.
* ``tests/support/bigquery_statements.json`` is that list, committed. ``test_sql_gate.py`` holds
  it equal to a fresh enumeration and analyses every entry with ZetaSQL.
* Every emulator client of the test suite is a :class:`RecordingClient`: a statement labelled
  ``app=pipestate`` that is not in the catalogue fails the test that sent it
  (:class:`UncataloguedStatement`), so a statement the enumeration missed cannot skip the gate.

Regenerate after changing the adapter's SQL::

    .venv/bin/python -m tests.support.bq_statements
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import product
from pathlib import Path
from typing import Any, Final

from google.cloud import bigquery

CATALOGUE_PATH: Final = Path(__file__).with_name("bigquery_statements.json")
_TABLE_RE: Final = re.compile(r"`[^`]+\.[^`.]+\.(x_meta_\w+)`")


class UncataloguedStatement(AssertionError):
    """The adapter sent a statement the ZetaSQL gate has not analysed."""


def normalize(sql: str) -> str:
    """``project.dataset`` of a table name -> ``{dataset}``."""
    return _TABLE_RE.sub(r"`{dataset}.\1`", sql)


def parameter_types(config: bigquery.QueryJobConfig | None) -> dict[str, Any]:
    """name -> BigQuery REST ``parameterType`` of every query parameter."""
    if config is None:
        return {}
    return {p.name: p.to_api_repr()["parameterType"] for p in config.query_parameters}


def _key(sql: str, parameters: dict[str, Any]) -> str:
    return json.dumps([sql, parameters], sort_keys=True)


@functools.cache
def catalogue() -> dict[str, dict[str, Any]]:
    """The committed catalogue, by key."""
    if not CATALOGUE_PATH.exists():
        return {}
    entries = json.loads(CATALOGUE_PATH.read_text(encoding="utf-8"))
    return {_key(e["sql"], e["parameters"]): e for e in entries}


class _Recorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._collecting: dict[str, dict[str, Any]] | None = None

    def see(self, sql: str, config: bigquery.QueryJobConfig | None) -> None:
        labels = {} if config is None else dict(config.labels or {})
        if labels.get("app") != "pipestate":
            return  # a test's own query, not the adapter's
        text, params = normalize(sql), parameter_types(config)
        key = _key(text, params)
        with self._lock:
            if self._collecting is not None:
                entry = self._collecting.setdefault(
                    key, {"sql": text, "parameters": params, "operations": []}
                )
                if labels.get("operation") not in entry["operations"]:
                    entry["operations"].append(labels.get("operation"))
                    entry["operations"].sort()
                return
        if key not in catalogue():
            raise UncataloguedStatement(
                f"the BigQuery adapter sent a statement the ZetaSQL gate has not analysed: {text!r} with "
                f"parameters {params}; add its case to tests/support/bq_statements.py "
                "enumerate_statements and run `python -m tests.support.bq_statements`"
            )

    @contextlib.contextmanager
    def collecting(self) -> Iterator[dict[str, dict[str, Any]]]:
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            self._collecting = found
        try:
            yield found
        finally:
            with self._lock:
                self._collecting = None


RECORDER: Final = _Recorder()


class RecordingClient(bigquery.Client):
    """A real client that checks (or, while enumerating, collects) every adapter statement."""

    def query(self, query: str, job_config: Any = None, *args: Any, **kwargs: Any) -> Any:
        RECORDER.see(query, job_config)
        return super().query(query, job_config, *args, **kwargs)


# --------------------------------------------------------------------------- enumeration
T0: Final = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def _drive(client: bigquery.Client, dataset: str) -> None:
    """Call every adapter method with every SQL-changing option combination."""
    from pipestate import schemas
    from pipestate.adapters.bigquery import BigQueryStorage
    from pipestate.adapters.bigquery.stats import BigQueryRunStats
    from pipestate.domain.errors import StorageUnavailable
    from pipestate.domain.pipeline_schedule import PipelineSchedule, derive_schedule_id
    from pipestate.domain.ports import RunFilter, RunOrder
    from pipestate.domain.queue import QueueItem, QueueStatus
    from pipestate.domain.run import PipelineRun, RunState

    storage = BigQueryStorage(client, dataset)
    other = BigQueryStorage(client, dataset, writer_lease_wait=0.01)
    try:
        await storage.create_schema()
        runs = [
            PipelineRun.new(tenant_id="t", config_id=f"c{i}", scheduled_time=T0, now=T0) for i in range(2)
        ]
        await storage.insert_runs(runs)
        await storage.get_run(runs[0].run_id)
        await storage.get_runs([r.run_id for r in runs])
        moved = runs[0].copy()
        moved.make_pending(T0)
        await storage.update_run(moved, expected_version=1)
        await storage.update_run(moved, expected_version=1)  # stale: read back
        second = runs[1].copy()
        second.make_pending(T0)
        await storage.update_runs([(second, 1)])
        for flags in product((False, True), repeat=6):
            criteria = RunFilter(
                states=[RunState.PENDING] if flags[0] else None,
                tenant_id="t" if flags[1] else None,
                config_id="c0" if flags[2] else None,
                scheduled_before=T0 if flags[3] else None,
                lease_expired_before=T0 if flags[4] else None,
                retry_due_before=T0 if flags[5] else None,
            )
            for order in RunOrder:
                await storage.find_runs(criteria, order=order)
        await storage.count_runs_by_state()
        await storage.count_runs_by_state("t")
        await storage.get_run_events("r0")
        await BigQueryRunStats(storage).count_runs_by_tenant_and_state()  # the all-tenant status
        await storage.prune_events(T0)

        items = [
            QueueItem(queue_id=f"q{i}", tenant_id="t", config={}, priority=5, created_at=T0, run_id=f"r{i}")
            for i in range(3)
        ]
        await storage.insert_queue_items(items)
        await storage.get_queue_item("q0")
        lease = T0 + timedelta(minutes=5)
        await storage.claim_queue_items(
            worker_id="w", claim_token="tok", now=T0, lease_expires_at=lease, limit=3
        )
        await storage.extend_queue_lease("q0", claim_token="tok", lease_expires_at=lease)
        for to_status, token in product(QueueStatus, (None, "tok")):
            await storage.transition_queue_item(
                "q9",
                from_status=QueueStatus.PROCESSING,
                to_status=to_status,
                now=T0,
                claim_token=token,
                error_message="e" if to_status is QueueStatus.FAILED else None,
            )
        await storage.extend_queue_leases([("q0", "tok"), ("q1", "tok")], lease_expires_at=lease)
        for to_status in QueueStatus:
            await storage.transition_queue_items(
                [("q8", "tok"), ("q9", "tok")],
                from_status=QueueStatus.PROCESSING,
                to_status=to_status,
                now=T0,
                error_message="e" if to_status is QueueStatus.FAILED else None,
            )
        for status, lease_before, run_id in product((None, QueueStatus.QUEUED), (None, T0), (None, "r0")):
            await storage.find_queue_items(status=status, lease_expired_before=lease_before, run_id=run_id)
        for status, tenant in product((None, QueueStatus.QUEUED), (None, "t")):
            await storage.count_queue_items(status, tenant)
        await storage.queue_stats(T0)

        schedule = PipelineSchedule(
            schedule_id=derive_schedule_id("t", "c"),
            tenant_id="t",
            config_id="c",
            cron="* * * * *",
            timezone="UTC",
            next_fire_time=T0,
            created_at=T0,
            updated_at=T0,
        )
        await storage.insert_schedule(schedule)
        await storage.insert_schedules([schedule])
        await storage.get_schedule(schedule.schedule_id)
        for tenant, enabled in product((None, "t"), (None, True)):
            await storage.list_schedules(tenant_id=tenant, enabled=enabled)
        nxt = schedule.copy()
        nxt.version += 1
        await storage.update_schedule(nxt, schedule.version)
        await storage.update_schedule(nxt, schedule.version)  # stale: read back
        await storage.update_schedules([(nxt, schedule.version)])
        await storage.due_schedules(T0, 10)

        # The monitor's statements (pipestate serve / alerts): alerts, settings, grouped counts.
        from pipestate.adapters.bigquery.alerts import BigQueryAlertStore
        from pipestate.adapters.bigquery.stats import BigQueryRunStats
        from pipestate.domain.alerts import Alert, AlertKind, MonitorSettings

        monitor = BigQueryAlertStore(storage)
        await monitor.create_alert_schema()
        alert = Alert("late:r0", AlertKind.LATE, "t", "c", "r0", "late", T0)
        await monitor.record_alerts([alert])
        await monitor.mark_delivered(alert.key, at=T0)
        await monitor.mark_delivered(alert.key, at=T0, error="boom")
        for tenant, kind, run in product((None, "t"), (None, AlertKind.LATE), (None, "r0")):
            await monitor.list_alerts(tenant_id=tenant, kind=kind, run_id=run)
        await monitor.put_settings(MonitorSettings(tenant_id="t", config_id="c", max_delay_seconds=60.0))
        await monitor.list_settings()
        await monitor.delete_settings("t", "c")
        await monitor.count_runs_by_tenant_and_state()
        await BigQueryRunStats(storage).count_runs_by_tenant_and_state()

        # The writer lease's read: only when another holder has it.
        async with storage._writer_lease("enumerate", schemas.RUNS):
            with contextlib.suppress(StorageUnavailable):
                await other.insert_runs(
                    [PipelineRun.new(tenant_id="t", config_id="x", scheduled_time=T0, now=T0)]
                )
    finally:
        await other.close()
        await storage.drop_dataset()
        await storage.close()


def enumerate_statements(client: bigquery.Client) -> list[dict[str, Any]]:
    """Every statement the adapter sends, sorted, with parameter types and operations."""
    with RECORDER.collecting() as found:
        asyncio.run(_drive(client, f"pst_enum_{uuid.uuid4().hex[:12]}"))
    return sorted(found.values(), key=lambda e: (e["sql"], json.dumps(e["parameters"], sort_keys=True)))


def write_catalogue(entries: list[dict[str, Any]]) -> None:
    CATALOGUE_PATH.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    catalogue.cache_clear()


def main() -> None:
    # The emulator's clients use the recorder of the importable module, not of __main__.
    from tests.support import bq_statements
    from tests.support.bq_emulator import start_emulator

    with start_emulator() as emulator:
        entries = bq_statements.enumerate_statements(emulator.client())
    bq_statements.write_catalogue(entries)
    print(f"{len(entries)} statements -> {CATALOGUE_PATH}")


if __name__ == "__main__":
    main()
