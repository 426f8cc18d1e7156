"""The monitor's tables on BigQuery: alerts delivered once across hosts, and monitor settings.

BigQuery's insert-only ``MERGE`` does not conflict with concurrent DML, so it cannot make the
alert key unique (DESIGN.md, BigQuery rule 1). The dedupe is therefore a claim, as the queue's is:

1. ``MERGE … WHEN NOT MATCHED THEN INSERT`` the alerts found (two monitors may both insert a key);
2. one conditional ``UPDATE`` stamps this call's token on the rows of those keys, only where no row
   of the key carries a token yet. Mutating statements on one table are serialized (a conflicting
   one is rerun on the new snapshot, or fails and is retried), so one call wins each key;
3. one ``SELECT`` reads back the keys stamped with this call's token (skipped when step 2
   stamped nothing). A retried step 2 finds its own token already there: the read-back still
   returns what it won.

Jobs per ``record_alerts``: 2 (MERGE, UPDATE), + 1 read-back when the UPDATE stamped a row; none
for an empty batch. Reads dedupe by key. Every job is labelled
(``app=pipestate``, ``operation=…``), capped with ``maximum_bytes_billed``, has a deterministic id
per (call, attempt) and is retried on transient errors by tenacity alone (``retry=None``,
``job_retry=None``). The tables come from ``schemas/x_meta_pipeline_alerts.json`` and
``schemas/x_meta_pipeline_monitor_settings.json``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib import resources
from typing import Any, Final, cast

import tenacity
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import bigquery

from pipestate.adapters.bigquery import BigQueryStorage, is_transient
from pipestate.adapters.bigquery.stats import BigQueryRunStats
from pipestate.domain.alerts import Alert, AlertKind, MonitorSettings
from pipestate.domain.errors import StorageError, StorageUnavailable
from pipestate.domain.run import RunState

ALERTS: Final = "x_meta_pipeline_alerts"
SETTINGS: Final = "x_meta_pipeline_monitor_settings"
DEFAULT_MAXIMUM_BYTES_BILLED: Final = 10 * 1024**3
_NO_RETRY: Final = cast(Retry, None)
_ALERT_COLUMNS: Final = (
    ("alert_key", "STRING"),
    ("kind", "STRING"),
    ("tenant_id", "STRING"),
    ("config_id", "STRING"),
    ("run_id", "STRING"),
    ("reason", "STRING"),
    ("details", "STRING"),
    ("detected_at", "TIMESTAMP"),
)
_SETTINGS_COLUMNS: Final = (
    ("tenant_id", "STRING"),
    ("config_id", "STRING"),
    ("max_delay_seconds", "FLOAT64"),
    ("sla_seconds", "FLOAT64"),
    ("run_timeout_seconds", "FLOAT64"),
    ("max_lease_expiries", "INT64"),
    ("consecutive_failures", "INT64"),
    ("auto_pause", "BOOL"),
)


def table_spec(table: str) -> dict[str, Any]:
    """The JSON schema of one of the monitor's tables (``schemas/<table>.json``)."""
    text = resources.files("pipestate.schemas").joinpath(f"{table}.json").read_text(encoding="utf-8")
    spec: dict[str, Any] = json.loads(text)
    return spec


def _struct_array(name: str, columns: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]]) -> Any:
    struct_type = bigquery.StructQueryParameterType(  # type: ignore[no-untyped-call]
        *(bigquery.ScalarQueryParameterType(t, name=c) for c, t in columns)  # type: ignore[no-untyped-call]
    )
    values = [
        bigquery.StructQueryParameter(
            None, *(bigquery.ScalarQueryParameter(c, t, row[c]) for c, t in columns)
        )
        for row in rows
    ]
    return bigquery.ArrayQueryParameter(name, struct_type, values)


def _cols(columns: Sequence[tuple[str, str]], alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(f"{prefix}`{c}`" for c, _ in columns)


class BigQueryAlertStore:
    """:class:`~pipestate.domain.alerts.MonitorStore` beside a :class:`BigQueryStorage` (same dataset)."""

    def __init__(
        self,
        storage: BigQueryStorage,
        *,
        location: str | None = None,
        maximum_bytes_billed: int = DEFAULT_MAXIMUM_BYTES_BILLED,
        attempts: int = 4,
        wait: float = 0.5,
    ) -> None:
        self._client: bigquery.Client = storage.client
        self._dataset = storage.dataset_id
        self._alerts = f"{self._dataset}.{ALERTS}"
        self._settings = f"{self._dataset}.{SETTINGS}"
        self._location = location
        self._maximum_bytes_billed = maximum_bytes_billed
        self._attempts = attempts
        self._wait = wait
        self._stats = BigQueryRunStats(storage, location=location, maximum_bytes_billed=maximum_bytes_billed)

    # ------------------------------------------------------------------ plumbing
    def _retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            stop=tenacity.stop_after_attempt(self._attempts),
            wait=tenacity.wait_exponential(multiplier=self._wait, max=8),
            reraise=True,
        )

    def _job(self, operation: str, sql: str, params: Sequence[Any]) -> tuple[list[Any], int]:
        """One statement under the retry layer: (rows, affected rows)."""
        call = uuid.uuid4().hex[:16]
        try:
            for attempt in self._retrying():
                with attempt:
                    config = bigquery.QueryJobConfig(
                        query_parameters=list(params),
                        labels={"app": "pipestate", "operation": operation},
                        maximum_bytes_billed=self._maximum_bytes_billed,
                        use_legacy_sql=False,
                    )
                    job = self._client.query(
                        sql,
                        job_config=config,
                        job_id=f"pipestate_{operation}_{call}_{attempt.retry_state.attempt_number}",
                        location=self._location,
                        retry=_NO_RETRY,
                        job_retry=None,
                    )
                    rows = list(job.result(retry=_NO_RETRY, job_retry=None))
                    return rows, int(job.num_dml_affected_rows or 0)
        except (gexc.GoogleAPIError, OSError) as error:
            kind = StorageUnavailable if is_transient(error) else StorageError
            raise kind(f"BigQuery {operation} failed: {error}", operation=operation) from error
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, operation: str, sql: str, params: Sequence[Any] = ()) -> tuple[list[Any], int]:
        return await asyncio.to_thread(self._job, operation, sql, params)

    # ------------------------------------------------------------------ schema
    async def create_alert_schema(self) -> None:
        """Create the two tables from their JSON schemas if absent. Jobs: 0 (table API calls)."""

        def create() -> None:
            dataset = bigquery.Dataset(self._dataset)
            if self._location is not None:
                dataset.location = self._location
            self._client.create_dataset(dataset, exists_ok=True, retry=_NO_RETRY)
            for name in (ALERTS, SETTINGS):
                spec = table_spec(name)
                table = bigquery.Table(
                    f"{self._dataset}.{name}",
                    schema=[
                        bigquery.SchemaField.from_api_repr(
                            {k: f[k] for k in ("name", "type", "mode", "description")}
                        )
                        for f in spec["fields"]
                    ],
                )
                table.description = spec["description"]
                table.labels = {"app": "pipestate", "pipestate_schema_version": str(spec["version"])}
                table.clustering_fields = list(spec["clustering"])
                self._client.create_table(table, exists_ok=True, retry=_NO_RETRY)

        try:
            await asyncio.to_thread(create)
        except (gexc.GoogleAPIError, OSError) as error:
            kind = StorageUnavailable if is_transient(error) else StorageError
            raise kind(
                f"BigQuery create_alert_schema failed: {error}", operation="create_alert_schema"
            ) from error

    # ------------------------------------------------------------------ alerts
    async def record_alerts(self, new: Sequence[Alert]) -> list[Alert]:
        """Jobs: 0 for no alerts; else 2 (MERGE, claiming UPDATE) + 1 read-back when it claimed."""
        if not new:
            return []
        by_key = {a.key: a for a in new}
        rows = [
            {
                "alert_key": a.key,
                "kind": a.kind.value,
                "tenant_id": a.tenant_id,
                "config_id": a.config_id,
                "run_id": a.run_id,
                "reason": a.reason,
                "details": json.dumps(dict(a.details), separators=(",", ":"), default=str),
                "detected_at": a.detected_at,
            }
            for a in by_key.values()
        ]
        columns, values = _cols(_ALERT_COLUMNS), _cols(_ALERT_COLUMNS, "s")
        merge = (
            f"MERGE `{self._alerts}` AS t "
            f"USING (SELECT {_cols(_ALERT_COLUMNS, 'u')} FROM UNNEST(@rows) AS u) AS s "
            "ON t.`alert_key` = s.`alert_key` "
            f"WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({values})"
        )
        await self._run("record_alerts", merge, [_struct_array("rows", _ALERT_COLUMNS, rows)])
        keys = bigquery.ArrayQueryParameter("keys", "STRING", list(by_key))
        token = hashlib.sha256(f"{uuid.uuid4().hex}:{sorted(by_key)}".encode()).hexdigest()[:32]
        claim = (
            f"UPDATE `{self._alerts}` SET `claim_token` = @token "
            "WHERE `alert_key` IN UNNEST(@keys) AND `claim_token` IS NULL "
            f"AND `alert_key` NOT IN (SELECT c.`alert_key` FROM `{self._alerts}` AS c "
            "WHERE c.`claim_token` IS NOT NULL AND c.`alert_key` IN UNNEST(@keys))"
        )
        token_param = bigquery.ScalarQueryParameter("token", "STRING", token)
        _, claimed = await self._run("claim_alerts", claim, [token_param, keys])
        if not claimed:
            return []
        won, _ = await self._run(
            "claimed_alerts",
            f"SELECT DISTINCT `alert_key` FROM `{self._alerts}` WHERE `claim_token` = @token",
            [token_param],
        )
        mine = {row["alert_key"] for row in won}
        return [a for key, a in by_key.items() if key in mine]

    async def mark_delivered(self, key: str, *, at: datetime, error: str | None = None) -> None:
        """Jobs: 1."""
        await self._run(
            "mark_delivered",
            f"UPDATE `{self._alerts}` SET `delivered_at` = @at, `delivery_error` = @error "
            "WHERE `alert_key` = @key AND `claim_token` IS NOT NULL",
            [
                bigquery.ScalarQueryParameter("at", "TIMESTAMP", at),
                bigquery.ScalarQueryParameter("error", "STRING", error),
                bigquery.ScalarQueryParameter("key", "STRING", key),
            ],
        )

    async def list_alerts(
        self,
        *,
        tenant_id: str | None = None,
        kind: AlertKind | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        """Jobs: 1 (one row per key: the claimed one)."""
        where = ["TRUE"]
        params: list[Any] = [bigquery.ScalarQueryParameter("limit", "INT64", limit)]
        for column, value in (
            ("tenant_id", tenant_id),
            ("kind", kind.value if kind else None),
            ("run_id", run_id),
        ):
            if value is not None:
                where.append(f"`{column}` = @{column}")
                params.append(bigquery.ScalarQueryParameter(column, "STRING", value))
        sql = (
            "SELECT * EXCEPT (rn) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY `alert_key` "
            "ORDER BY `claim_token` IS NULL, `detected_at`) AS rn "
            f"FROM `{self._alerts}` WHERE {' AND '.join(where)}) WHERE rn = 1 "
            "ORDER BY `detected_at` DESC, `alert_key` LIMIT @limit"
        )
        rows, _ = await self._run("list_alerts", sql, params)
        return [
            Alert(
                key=row["alert_key"],
                kind=AlertKind(row["kind"]),
                tenant_id=row["tenant_id"],
                config_id=row["config_id"],
                run_id=row["run_id"],
                reason=row["reason"],
                detected_at=row["detected_at"],
                details=json.loads(row["details"] or "{}"),
                delivered_at=row["delivered_at"],
                delivery_error=row["delivery_error"],
            )
            for row in rows
        ]

    # ------------------------------------------------------------------ settings
    async def list_settings(self) -> list[MonitorSettings]:
        """Jobs: 1."""
        rows, _ = await self._run(
            "list_settings",
            f"SELECT {_cols(_SETTINGS_COLUMNS)} FROM `{self._settings}` ORDER BY `tenant_id`, `config_id`",
            [],
        )
        seen: dict[tuple[str, str], MonitorSettings] = {}
        for row in rows:
            settings = MonitorSettings(**{c: row[c] for c, _ in _SETTINGS_COLUMNS})
            seen.setdefault((settings.tenant_id, settings.config_id), settings)
        return list(seen.values())

    async def put_settings(self, settings: MonitorSettings) -> None:
        """Jobs: 1 (an upserting MERGE, which does conflict with concurrent DML)."""
        row = {c: getattr(settings, c) for c, _ in _SETTINGS_COLUMNS}
        updates = ", ".join(f"`{c}` = s.`{c}`" for c, _ in _SETTINGS_COLUMNS[2:])
        columns, values = _cols(_SETTINGS_COLUMNS), _cols(_SETTINGS_COLUMNS, "s")
        sql = (
            f"MERGE `{self._settings}` AS t "
            f"USING (SELECT {_cols(_SETTINGS_COLUMNS, 'u')} FROM UNNEST(@rows) AS u) AS s "
            "ON t.`tenant_id` = s.`tenant_id` AND t.`config_id` = s.`config_id` "
            f"WHEN MATCHED THEN UPDATE SET {updates} "
            f"WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({values})"
        )
        await self._run("put_settings", sql, [_struct_array("rows", _SETTINGS_COLUMNS, [row])])

    async def delete_settings(self, tenant_id: str, config_id: str) -> bool:
        """Jobs: 1."""
        _, deleted = await self._run(
            "delete_settings",
            f"DELETE FROM `{self._settings}` WHERE `tenant_id` = @tenant AND `config_id` = @config",
            [
                bigquery.ScalarQueryParameter("tenant", "STRING", tenant_id),
                bigquery.ScalarQueryParameter("config", "STRING", config_id),
            ],
        )
        return deleted > 0

    async def count_runs_by_tenant_and_state(self) -> dict[tuple[str, RunState], int]:
        """Jobs: 1."""
        return await self._stats.count_runs_by_tenant_and_state()
