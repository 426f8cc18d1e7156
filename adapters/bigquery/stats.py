"""Run counts grouped by (tenant, state) on BigQuery in one query job (metrics and the status page).

Only public parts of :class:`~pipestate.adapters.bigquery.BigQueryStorage` are used (its client,
table ids and error classification), so this module stands beside the adapter. The job carries the
``app=pipestate`` and ``operation=count_runs_by_tenant_and_state`` labels, a byte cap and a
deterministic id per attempt; transient failures are retried with backoff (tenacity), never by
the client library (``retry=None``, ``job_retry=None``).

The monitor's alert and settings tables are not implemented on BigQuery (see
``docs/observability.md``): BigQuery's insert-only ``MERGE`` gives no uniqueness across concurrent
writers, so cross-host deduplication needs its own design there.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Final, cast

import tenacity
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import bigquery

from pipestate import schemas
from pipestate.adapters.bigquery import BigQueryStorage, is_transient
from pipestate.domain.errors import StorageError, StorageUnavailable
from pipestate.domain.run import RunState

OPERATION: Final = "count_runs_by_tenant_and_state"
DEFAULT_MAXIMUM_BYTES_BILLED: Final = 10 * 1024**3
_NO_RETRY: Final = cast(Retry, None)


class BigQueryRunStats:
    """:class:`~pipestate.domain.alerts.RunStatsRepository` on a :class:`BigQueryStorage`.

    Jobs: 1 per call (a ``GROUP BY`` over the runs table, which is clustered on state, tenant_id).
    """

    def __init__(
        self,
        storage: BigQueryStorage,
        *,
        location: str | None = None,
        maximum_bytes_billed: int = DEFAULT_MAXIMUM_BYTES_BILLED,
        attempts: int = 4,
    ) -> None:
        self._client: bigquery.Client = storage.client
        self._table = storage.table_id(schemas.RUNS)
        self._location = location
        self._maximum_bytes_billed = maximum_bytes_billed
        self._attempts = attempts
        self._calls = 0

    async def count_runs_by_tenant_and_state(self) -> dict[tuple[str, RunState], int]:
        self._calls += 1
        return await asyncio.to_thread(self._count, self._calls)

    def _count(self, call: int) -> dict[tuple[str, RunState], int]:
        sql = f"SELECT `tenant_id`, `state`, COUNT(*) AS n FROM `{self._table}` GROUP BY `tenant_id`, `state`"
        token = hashlib.sha256(f"{id(self)}:{call}".encode()).hexdigest()[:16]
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            stop=tenacity.stop_after_attempt(self._attempts),
            wait=tenacity.wait_exponential(multiplier=0.5, max=8),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number
                    rows = self._run(sql, f"pipestate_{OPERATION}_{token}_{number}")
        except (gexc.GoogleAPIError, OSError) as error:
            kind = StorageUnavailable if is_transient(error) else StorageError
            raise kind(f"BigQuery {OPERATION} failed: {error}", operation=OPERATION) from error
        return {(str(row["tenant_id"]), RunState(row["state"])): int(row["n"]) for row in rows}

    def _run(self, sql: str, job_id: str) -> list[Any]:
        config = bigquery.QueryJobConfig(
            labels={"app": "pipestate", "operation": OPERATION},
            maximum_bytes_billed=self._maximum_bytes_billed,
            use_legacy_sql=False,
        )
        job = self._client.query(
            sql, job_config=config, job_id=job_id, location=self._location, retry=_NO_RETRY, job_retry=None
        )
        return list(job.result(retry=_NO_RETRY, job_retry=None))
