"""``BigQueryStorage``: the Storage port on BigQuery, one DML or query job per operation.

BigQuery is a warehouse, not an OLTP store (DESIGN.md, "BigQuery rules"): no row locks, no
``RETURNING``, a handful of concurrent mutating statements per table, no enforced keys, and every
job is billed. So:

* rows are created with ``MERGE … WHEN NOT MATCHED THEN INSERT`` over ``UNNEST(@rows)`` (never
  the streaming API, whose rows cannot be updated for up to 90 minutes), under the table's
  writer lease: an insert-only MERGE does not conflict with a concurrent one, so without it two
  writers could insert one key twice;
* every transition is one conditional ``UPDATE … WHERE id = @id AND version = @v`` checked by its
  affected-row count (``dml_stats``, else ``num_dml_affected_rows``; missing means unknown, and a
  count above one for one key is :class:`~pipestate.adapters.bigquery.errors.DuplicateRows`);
* a claim is two jobs whatever the batch size: one ``UPDATE`` stamps up to N items with the claim
  token, one ``SELECT`` reads them back by that token;
* every job is parameterized, labelled (``app=pipestate``, ``operation=<method>``), capped with
  ``maximum_bytes_billed``, and run with ``retry=None, job_retry=None`` so that the tenacity layer
  in :mod:`pipestate.adapters.bigquery.retry` is the only one that retries;
* the adapter owns each job's lifecycle: ids ``pipestate_<operation>_<call>_<attempt>``; a lost
  ``jobs.insert`` answer is resolved by looking the job up; a client timeout or failed poll
  polls the same job; past ``job_timeout`` the job is cancelled and waited for. No attempt starts
  while an earlier one may still commit.

A retried statement, or one whose count BigQuery did not report, is resolved by reading back
(DESIGN rule 2): a conditional ``UPDATE`` that reports zero rows reads the row back and compares
it with what it wrote; a retried claim cannot claim a second batch, because the ``UPDATE`` only
applies while no row carries this call's (claim_token, claimed_at) stamp.

Job cost of every public method is in its docstring and in ``docs/bigquery.md``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import bigquery
from tenacity import RetryCallState

from pipestate import schemas
from pipestate.adapters.bigquery.errors import BytesBilledLimitExceeded, DuplicateRows, JobOutcomeUnknown
from pipestate.adapters.bigquery.retry import (
    DEFAULT_RETRY_SETTINGS,
    RETRIED_ERRORS,
    ErrorClass,
    RetrySettings,
    classify,
    is_transient,
    reasons,
    retrying_for,
)
from pipestate.adapters.bigquery.schema import parameter_type, schema_differences, to_table
from pipestate.adapters.rows import (
    JSON_COLUMNS,
    QUEUE_COLUMNS,
    RUN_COLUMNS,
    SCHEDULE_COLUMNS,
    event_from_row,
    event_to_row,
    queue_from_row,
    queue_to_row,
    run_from_row,
    run_to_row,
    schedule_from_row,
    schedule_to_row,
    utc,
)
from pipestate.domain.errors import RunNotFound, ScheduleNotFound, StorageError, StorageUnavailable
from pipestate.domain.events import RunEvent
from pipestate.domain.limits import FAIR_SHARE_SLOT_SECONDS
from pipestate.domain.pipeline_schedule import PipelineSchedule
from pipestate.domain.ports import Capability, RunFilter, RunOrder
from pipestate.domain.queue import QueueItem, QueueStats, QueueStatus
from pipestate.domain.run import PipelineRun, RunState

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_MAXIMUM_BYTES_BILLED: Final = 10 * 1024**3
"""10 GiB per job. A DML statement bills at least 10 MB; the metadata tables stay far smaller."""

DML_SLOTS_PER_TABLE: Final = 2
"""Mutating DML statements (UPDATE, DELETE, MERGE) one storage keeps in flight per table: what
BigQuery runs at once per table. More would only wait in BigQuery's queue of 20 (and past it fail
with "Too many DML statements outstanding"); waiting here costs the same latency and no quota.
The budget is per storage (per process): N processes on one dataset have up to 2N in flight per
table, so keep N <= 11 per dataset (2 running + 20 queued), or shard (docs/bigquery.md)."""

HOT_PATH_BYTE_CAPS: Final = {
    operation: 1024**3
    for operation in (
        "claim_queue_items",
        "get_run",
        "get_runs",
        "update_run",
        "update_runs",
        "get_queue_item",
        "transition_queue_item",
        "transition_queue_items",
        "extend_queue_lease",
        "extend_queue_leases",
        "due_schedules",
        "writer_lease",
    )
}
"""Per-operation caps for a dataset whose hot tables hold only live rows (1 GiB: ~1M live rows
of the runs table, a hundred times what 5,000 runs/hour keep live): pass as ``byte_caps`` once
terminal rows are archived or expired (docs/bigquery.md, "Hot tables"). A hot-path job that would
bill more is a loud, permanent :class:`BytesBilledLimitExceeded`, never retried."""

DEFAULT_JOB_TIMEOUT: Final = 300.0
"""Seconds the adapter waits for one job (queued DML included) before cancelling it. Also sent as
the job's ``job_timeout_ms``, so BigQuery stops it at about the same time."""

DEFAULT_REQUEST_TIMEOUT: Final = 60.0
"""Seconds one HTTP request (insert, poll, get, cancel) may take."""

DEFAULT_CANCEL_WAIT: Final = 60.0
"""Seconds to wait for a cancelled job to reach DONE before its outcome counts as unknown."""

POLL_INTERVAL: Final = 10.0
"""Seconds one ``result()`` call waits before the adapter looks at the job again."""

LEASE_QUEUE_GRACE: Final = 5.0
"""Seconds a claim or heartbeat may wait between being sent and running before the wait is added
to the lease it writes (see ``_Statements``)."""

DEFAULT_WRITER_LEASE_WAIT: Final = 120.0
"""Seconds an insert waits for another process's writer lease before giving up (transient)."""

MAX_ROWS_PER_READ: Final = 100_000
"""Rows a listing without a limit may return (``find_runs``, ``find_queue_items``)."""

MAX_ROWS_PER_STATEMENT: Final = 1000
MAX_PARAMETER_BYTES_PER_STATEMENT: Final = 4 * 1024**2
"""Rows per MERGE/UPDATE job: BigQuery caps a request at 10 MB, parameters included."""

_PROJECT_RE: Final = re.compile(r"^(?:[A-Za-z0-9.-]+:)?[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
"""A project id, optionally domain-scoped (``example.com:project``)."""
_DATASET_RE: Final = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
_LABEL_KEY_RE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE_RE: Final = re.compile(r"^[a-z0-9_-]{0,63}$")
"""BigQuery label rules (ASCII subset): a key starts with a lowercase letter; at most 63 of
lowercase letters, digits, ``_`` and ``-``; a value may be empty."""

_RUN_KEY_COLUMNS: Final = ("run_id", "tenant_id", "config_id", "created_at")
_RUN_MUTABLE: Final = tuple(c for c in RUN_COLUMNS if c not in _RUN_KEY_COLUMNS)
_SCHEDULE_MUTABLE: Final = tuple(
    c for c in SCHEDULE_COLUMNS if c not in ("schedule_id", "tenant_id", "config_id", "created_at")
)

_NO_RETRY: Final = cast(Retry, None)
"""``retry=None`` turns off the client's own HTTP retries (its stubs say ``Retry`` but None is
documented): :mod:`pipestate.adapters.bigquery.retry` is the only retry layer."""

_QUEUED: Final = QueueStatus.QUEUED.value
_PROCESSING: Final = QueueStatus.PROCESSING.value


def _q(column: str) -> str:
    """A quoted column name (the emulator's DuckDB knows more keywords than BigQuery does)."""
    return f"`{column}`"


def _cols(columns: Sequence[str], alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + _q(c) for c in columns)


# --------------------------------------------------------------------------- parameters
def _encode(column: str, value: Any) -> Any:
    # JSON documents live in STRING columns: an exact round trip on both BigQuery and the
    # emulator (see docs/bigquery.md, "JSON columns").
    if column in JSON_COLUMNS:
        return None if value is None else json.dumps(value, separators=(",", ":"))
    return value


def _scalar(name: str, type_: str, value: Any) -> bigquery.ScalarQueryParameter:
    return bigquery.ScalarQueryParameter(name, type_, value)


def _row_params(
    spec: schemas.TableSpec, row: Mapping[str, Any], columns: Sequence[str]
) -> list[bigquery.ScalarQueryParameter]:
    return [_scalar(f"p_{c}", parameter_type(spec, c), _encode(c, row[c])) for c in columns]


_Extra = tuple[tuple[str, str], ...]
"""Extra struct fields (name, parameter type) in front of the table columns."""


def _struct_array(
    spec: schemas.TableSpec,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    extra: _Extra = (),
) -> bigquery.ArrayQueryParameter:
    fields = [*extra, *((c, parameter_type(spec, c)) for c in columns)]
    struct_type = bigquery.StructQueryParameterType(  # type: ignore[no-untyped-call]
        *(
            bigquery.ScalarQueryParameterType(type_, name=name)  # type: ignore[no-untyped-call]
            for name, type_ in fields
        )
    )
    values = [
        bigquery.StructQueryParameter(
            None, *(_scalar(name, type_, _encode(name, row[name])) for name, type_ in fields)
        )
        for row in rows
    ]
    return bigquery.ArrayQueryParameter("rows", struct_type, values)


def _chunks(rows: Sequence[dict[str, Any]], max_rows: int, max_bytes: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        row_size = len(json.dumps(row, default=str)) * 2  # names, types and values, roughly
        if chunk and (len(chunk) >= max_rows or size + row_size > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += row_size
    if chunk:
        yield chunk


def _rounds(keys: Sequence[str]) -> list[list[int]]:
    """Split positions into rounds in which every key appears at most once, keeping order per key.

    ``UPDATE … FROM`` must match each target row at most once; a batch that names one row twice
    is applied as consecutive statements, like the sequential updates of the SQL adapters.
    """
    rounds: list[list[int]] = []
    seen: dict[str, int] = {}
    for index, key in enumerate(keys):
        n = seen.get(key, 0)
        seen[key] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(index)
    return rounds


def _newest(rows: Sequence[Any], key: str) -> list[Any]:
    """One row per key, the highest ``version`` (defence in depth: BigQuery enforces no key, so a
    duplicate must never show up as two runs); the order of first appearance is kept."""
    best: dict[Any, Any] = {}
    for row in rows:
        held = best.get(row[key])
        if held is None or row["version"] > held["version"]:
            best[row[key]] = row
    if len(best) == len(rows):
        return list(rows)
    log.error("BigQuery returned %d rows for %d keys (%s): duplicate keys", len(rows), len(best), key)
    seen: set[Any] = set()
    out = []
    for row in rows:
        if row[key] not in seen:
            seen.add(row[key])
            out.append(best[row[key]])
    return out


_MUTATING: Final = frozenset({"UPDATE", "MERGE", "DELETE"})
_MUTATED_RE: Final = re.compile(r"^\s*(?:UPDATE|MERGE|DELETE(?:\s+FROM)?)\s+`?([^`\s]+)`?", re.IGNORECASE)


def _mutated_table(sql: str) -> str | None:
    """The table a mutating statement changes (its last name part), or ``None``."""
    match = _MUTATED_RE.match(sql)
    return match.group(1).rsplit(".", 1)[-1] if match else None


def _label(value: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "_", value.lower())[:63]


@dataclass(frozen=True)
class _Result:
    rows: list[Any]
    affected: int | None
    """Rows the DML statement changed (``dml_stats`` for MERGE); ``None`` when BigQuery did not say."""
    job_id: str
    attempts: int

    @property
    def retried(self) -> bool:
        """True when an earlier attempt failed: it may have been applied anyway (lost response)."""
        return self.attempts > 1

    @property
    def uncertain(self) -> bool:
        """True when the affected-row count cannot be trusted as it is (retried, or unknown)."""
        return self.retried or self.affected is None


class _Attempts:
    """What the retry loop saw: attempts made and the job id of the latest."""

    def __init__(self) -> None:
        self.count = 0
        self.job_id: str | None = None


def _affected(job: Any) -> int | None:
    """Rows a DML job changed: ``dml_stats`` (documented for MERGE, UPDATE, DELETE, INSERT), else
    ``num_dml_affected_rows`` (documented for INSERT, UPDATE, DELETE); ``None`` when neither is
    there: unknown, never 0."""
    stats = getattr(job, "dml_stats", None)
    if stats is not None:
        return (
            int(stats.inserted_row_count or 0)
            + int(stats.updated_row_count or 0)
            + int(stats.deleted_row_count or 0)
        )
    count = getattr(job, "num_dml_affected_rows", None)
    return None if count is None else int(count)


def _job_failed(job: Any) -> bool:
    """The job itself is DONE with an error (as opposed to our polling having failed)."""
    return getattr(job, "state", None) == "DONE" and getattr(job, "error_result", None) is not None


def _ambiguous(error: BaseException) -> bool:
    """A failed ``jobs.insert`` that may have created the job anyway (5xx, timeout, lost connection)."""
    return isinstance(error, gexc.ServerError | OSError)


def _job_error(job: Any) -> gexc.GoogleAPICallError:
    """The exception the client itself raises for a failed job (reason-mapped status)."""
    from google.cloud.bigquery.job.base import _error_result_to_exception

    return cast(
        gexc.GoogleAPICallError,
        _error_result_to_exception(job.error_result, job.errors),  # type: ignore[no-untyped-call]
    )


# --------------------------------------------------------------------------- the storage
class BigQueryStorage:
    """The Storage port on BigQuery.

    Args:
        client: a ready ``google.cloud.bigquery.Client`` (not closed by :meth:`close` unless the
            storage was built with :meth:`from_dataset`).
        dataset: ``"dataset"`` (in the client's project) or ``"project.dataset"``.
        location: BigQuery location of the dataset and its jobs (e.g. ``"EU"``). ``None``: the
            client's location, else the existing dataset's; :meth:`create_schema` refuses to
            create a dataset without an explicit location.
        maximum_bytes_billed: cap on every job; a job that would bill more fails with
            :class:`BytesBilledLimitExceeded` (never retried).
        byte_caps: per-operation caps (``{"get_run": 1 << 30, ...}``) that replace
            ``maximum_bytes_billed`` for those operations (see :data:`HOT_PATH_BYTE_CAPS`).
        dml_slots_per_table: mutating DML statements in flight per table (default
            :data:`DML_SLOTS_PER_TABLE`); the others wait here, not in BigQuery's queue.
        labels: extra labels put on every job (``app`` and ``operation`` are always set).
        retry: bounds of the retry layer.
        job_timeout: seconds the adapter waits for one job (DML queueing included) before it
            cancels the job and waits for it to finish; sent as the job's ``job_timeout_ms``.
        request_timeout: seconds one HTTP request may take.
        cancel_wait: seconds to wait for a cancelled job to reach DONE.
        writer_lease_ttl: seconds a writer lease lasts if its holder dies without releasing it
            (default: long enough for the slowest insert the retry and job budgets allow).
        writer_lease_wait: seconds an insert waits for another holder's lease.
        threads: threads that run the blocking client calls.
        max_rows_per_statement: rows per MERGE/UPDATE job in batch writes.
        max_rows_per_read: most rows a read without a ``limit`` returns; more is an error.

    Raises:
        StorageError: an invalid project or dataset name, label, or budget.
    """

    def __init__(
        self,
        client: bigquery.Client,
        dataset: str,
        *,
        location: str | None = None,
        maximum_bytes_billed: int = DEFAULT_MAXIMUM_BYTES_BILLED,
        byte_caps: Mapping[str, int] | None = None,
        dml_slots_per_table: int = DML_SLOTS_PER_TABLE,
        labels: Mapping[str, str] | None = None,
        retry: RetrySettings = DEFAULT_RETRY_SETTINGS,
        job_timeout: float = DEFAULT_JOB_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        cancel_wait: float = DEFAULT_CANCEL_WAIT,
        writer_lease_ttl: float | None = None,
        writer_lease_wait: float = DEFAULT_WRITER_LEASE_WAIT,
        threads: int = 16,
        max_rows_per_statement: int = MAX_ROWS_PER_STATEMENT,
        max_rows_per_read: int = MAX_ROWS_PER_READ,
    ) -> None:
        project, _, name = dataset.rpartition(".")
        project = project or str(client.project)
        if not _PROJECT_RE.match(project) or not _DATASET_RE.match(name):
            raise StorageError(f"invalid BigQuery dataset {dataset!r} (want [project.]dataset)")
        for key, value in (labels or {}).items():
            if not (isinstance(key, str) and isinstance(value, str)):
                raise StorageError(f"invalid BigQuery job label {key!r}={value!r}")
            if not (_LABEL_KEY_RE.match(key) and _LABEL_VALUE_RE.match(value)):
                raise StorageError(
                    f"invalid BigQuery job label {key!r}={value!r}: a key starts with a lowercase letter; "
                    "keys and values hold at most 63 lowercase letters, digits, '_' or '-'"
                )
        caps = dict(byte_caps or {})
        if maximum_bytes_billed <= 0 or max_rows_per_statement <= 0 or dml_slots_per_table <= 0:
            raise StorageError(
                "maximum_bytes_billed, max_rows_per_statement and dml_slots_per_table must be positive"
            )
        if any(not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0 for cap in caps.values()):
            raise StorageError(f"byte_caps must be positive integers, got {caps!r}")
        if min(job_timeout, request_timeout, cancel_wait, writer_lease_wait) <= 0:
            raise StorageError(
                "job_timeout, request_timeout, cancel_wait and writer_lease_wait must be positive"
            )
        # A lease must outlive every MERGE its holder may still have running: the retry budget,
        # then one more job, then its cancellation.
        floor = retry.max_elapsed + job_timeout + cancel_wait + request_timeout
        lease_ttl = floor if writer_lease_ttl is None else writer_lease_ttl
        if lease_ttl < floor:
            raise StorageError(
                f"writer_lease_ttl={lease_ttl:g}s is shorter than the longest insert the budgets allow "
                f"({floor:g}s = retry.max_elapsed + job_timeout + cancel_wait + request_timeout)"
            )
        self._client = client
        self._owns_client = False
        self._project = project
        self._dataset = name
        self._location = location or getattr(client, "location", None)
        self._maximum_bytes_billed = maximum_bytes_billed
        self._byte_caps = caps
        self._dml_slots = dml_slots_per_table
        self._dml_lock = threading.Lock()
        self._dml_gates: dict[str, threading.BoundedSemaphore] = {}
        self._dml_log: dict[str, collections.deque[float]] = {}
        self._dml_total: collections.Counter[str] = collections.Counter()
        self._labels = {**(labels or {}), "app": "pipestate"}
        self._retry = retry
        self._job_timeout = job_timeout
        self._request_timeout = request_timeout
        self._cancel_wait = cancel_wait
        self._lease_ttl = lease_ttl
        self._lease_wait = writer_lease_wait
        self._max_rows = max_rows_per_statement
        self._max_read = max(int(max_rows_per_read), 1)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pipestate-bq")
        self._closed = False
        self._instance = uuid.uuid4().hex[:12]
        self._wallclock: Callable[[], datetime] = lambda: datetime.now(UTC)
        """When a claim or heartbeat is sent (this machine's clock; leases are extended by the time
        the statement waited in BigQuery beyond ``LEASE_QUEUE_GRACE``)."""
        self._runs_spec = schemas.load(schemas.RUNS)
        self._queue_spec = schemas.load(schemas.QUEUE)
        self._schedules_spec = schemas.load(schemas.SCHEDULES)
        self._leases_spec = schemas.load(schemas.LEASES)
        self._events_spec = schemas.load(schemas.RUN_EVENTS)
        self._sql = _Statements(
            self.table_id(schemas.RUNS),
            self.table_id(schemas.QUEUE),
            self.table_id(schemas.SCHEDULES),
            self.table_id(schemas.LEASES),
        )
        self._sql.add_events(self.table_id(schemas.RUN_EVENTS))

    @classmethod
    def from_dataset(cls, dataset: str, *, location: str | None = None, **kwargs: Any) -> BigQueryStorage:
        """Build a client from Application Default Credentials for ``"project.dataset"`` (or
        ``"dataset"`` in the default project) and own it (:meth:`close` closes it).

        Raises:
            StorageError: no credentials or project, or an invalid name.
        """
        project, _, _ = dataset.rpartition(".")
        try:
            client = bigquery.Client(project=project or None, location=location)
        except Exception as error:  # google.auth raises its own hierarchy, not GoogleAPIError
            raise StorageError(
                f"cannot create a BigQuery client: {error}", operation="from_dataset"
            ) from error
        storage = cls(client, dataset, location=location, **kwargs)
        storage._owns_client = True
        return storage

    # ------------------------------------------------------------------ properties
    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.MULTI_PROCESS, Capability.MULTI_HOST})

    @property
    def client(self) -> bigquery.Client:
        return self._client

    @property
    def dataset_id(self) -> str:
        """``project.dataset``."""
        return f"{self._project}.{self._dataset}"

    def table_id(self, table: str) -> str:
        """``project.dataset.table`` of one of :data:`schemas.TABLES`."""
        return f"{self._project}.{self._dataset}.{table}"

    # ------------------------------------------------------------------ plumbing
    def _with_retries(self, operation: str, kind: str, call: Callable[[_Attempts], T]) -> T:
        """Run ``call`` under the retry layer; translate what escapes into domain errors."""
        attempts = _Attempts()

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            log.warning(
                "BigQuery %s for %s failed transiently (attempt %d, job %s): %s; retrying",
                kind,
                operation,
                state.attempt_number,
                attempts.job_id,
                error,
            )

        try:
            return retrying_for(self._retry, log_retry)(call, attempts)
        except RETRIED_ERRORS as error:
            message = getattr(error, "message", None) or str(error) or type(error).__name__
            after = f" after {attempts.count} attempts" if attempts.count > 1 else ""
            context: dict[str, Any] = {
                "operation": operation,
                "job_id": attempts.job_id,
                "statement": kind,
                "attempts": attempts.count,
                "reasons": sorted(reasons(error)),
            }
            verdict = classify(error)
            if verdict is ErrorClass.BYTE_CAP:
                raise BytesBilledLimitExceeded(
                    f"BigQuery {kind} for {operation} would bill more than {self._cap_name(operation)}="
                    f"{self._cap(operation):,} bytes (a table outgrew the hot-table design: archive or "
                    f"expire terminal rows, or raise the cap): {message}",
                    **context,
                ) from error
            kind_of = StorageUnavailable if verdict is not ErrorClass.PERMANENT else StorageError
            raise kind_of(f"BigQuery {kind}{after} failed: {message}", **context) from error

    def _execute(self, operation: str, kind: str, sql: str, params: Sequence[Any]) -> _Result:
        """One logical statement: jobs ``pipestate_<operation>_<call>_<attempt>``, one per attempt.

        An attempt never starts while an earlier one may still commit: a lost ``jobs.insert``
        response is resolved by looking the job up, and a job that outlives ``job_timeout`` is
        cancelled and waited for (DESIGN rule 5).
        """
        call = uuid.uuid4().hex[:20]

        def attempt(state: _Attempts) -> _Result:
            state.count += 1
            state.job_id = f"pipestate_{_label(operation)}_{call}_{state.count}"
            config = bigquery.QueryJobConfig(
                query_parameters=list(params),
                labels={**self._labels, "operation": _label(operation)},
                maximum_bytes_billed=self._cap(operation),
                use_legacy_sql=False,
                job_timeout_ms=int(self._job_timeout * 1000),
            )
            job = self._submit(sql, config, state.job_id)
            rows = self._wait(job)
            return _Result(rows, _affected(job), state.job_id, state.count)

        table = _mutated_table(sql) if kind in _MUTATING else None
        if table is None:
            return self._with_retries(operation, kind, attempt)
        with self._dml_gate(table):
            return self._with_retries(operation, kind, attempt)

    def _cap_name(self, operation: str) -> str:
        return f"byte_caps[{operation!r}]" if operation in self._byte_caps else "maximum_bytes_billed"

    def _cap(self, operation: str) -> int:
        return self._byte_caps.get(operation, self._maximum_bytes_billed)

    @contextlib.contextmanager
    def _dml_gate(self, table: str) -> Iterator[None]:
        """Hold one of the table's DML slots for the statement (all its attempts)."""
        with self._dml_lock:
            gate = self._dml_gates.get(table)
            if gate is None:
                gate = self._dml_gates[table] = threading.BoundedSemaphore(self._dml_slots)
                self._dml_log[table] = collections.deque()
        with gate:
            with self._dml_lock:
                self._dml_total[table] += 1
                self._dml_log[table].append(time.monotonic())
            yield

    def dml_statements(self) -> dict[str, int]:
        """Mutating DML statements sent so far by this storage, per table name."""
        with self._dml_lock:
            return dict(self._dml_total)

    def dml_per_minute(self) -> dict[str, int]:
        """Mutating DML statements this storage started in the last 60 s, per table name
        (compare with what BigQuery commits per table: about 30/min at 2 s each, 2 at a time)."""
        horizon = time.monotonic() - 60.0
        with self._dml_lock:
            out = {}
            for table, started in self._dml_log.items():
                while started and started[0] < horizon:
                    started.popleft()
                out[table] = len(started)
            return out

    def _submit(self, sql: str, config: bigquery.QueryJobConfig, job_id: str) -> Any:
        """``jobs.insert``; when its answer is lost (5xx, timeout, connection), the job is looked up
        by its id before anything is resubmitted."""
        try:
            return self._client.query(
                sql,
                job_config=config,
                job_id=job_id,
                location=self._location,
                retry=_NO_RETRY,
                job_retry=None,
                timeout=self._request_timeout,
            )
        except gexc.Conflict:
            # The id is this attempt's own: an earlier request of it created the job.
            found = self._lookup(job_id)
            if found is None:
                raise
            return found
        except RETRIED_ERRORS as error:
            if not _ambiguous(error):
                raise
            found = self._lookup(job_id)
            if found is None:
                raise  # never created: the retry layer may submit the next attempt
            log.warning(
                "BigQuery jobs.insert of %s failed (%s) but the job exists; waiting for it", job_id, error
            )
            return found

    def _lookup(self, job_id: str) -> Any | None:
        """The job with this id, or ``None`` if BigQuery never created it.

        Raises:
            JobOutcomeUnknown: BigQuery could not be asked within the wait budget.
        """
        deadline = time.monotonic() + self._cancel_wait
        while True:
            try:
                return self._client.get_job(
                    job_id, location=self._location, retry=_NO_RETRY, timeout=self._request_timeout
                )
            except gexc.NotFound:
                return None
            except RETRIED_ERRORS as error:
                if not is_transient(error) or time.monotonic() >= deadline:
                    raise JobOutcomeUnknown(
                        f"BigQuery job {job_id} may have been created but cannot be looked up: {error}",
                        job_id=job_id,
                    ) from error
                time.sleep(min(1.0, self._cancel_wait / 10))

    def _refresh(self, job: Any) -> bool:
        """Reload the job's state; False when BigQuery could not be asked just now."""
        try:
            job.reload(retry=_NO_RETRY, timeout=self._request_timeout)
        except RETRIED_ERRORS as error:
            if not is_transient(error):
                raise
            return False
        return True

    def _wait(self, job: Any) -> list[Any]:
        """The job's rows once it is DONE. A client-side timeout or a failed poll never abandons
        the job: the adapter polls the same job until ``job_timeout``, then cancels it and waits
        for DONE. A job that committed after all is a success; one that is DONE with an error
        raises that error (the retry layer may then submit the next attempt: nothing committed).

        Raises:
            JobOutcomeUnknown: the job did not reach DONE even after its cancellation.
        """
        deadline = time.monotonic() + self._job_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._cancel_and_settle(job)
            try:
                return list(
                    job.result(retry=_NO_RETRY, job_retry=None, timeout=min(remaining, POLL_INTERVAL))
                )
            except RETRIED_ERRORS as error:
                if _job_failed(job) or not is_transient(error):
                    raise  # the job's own error, or a permanent polling error (no such job, no access)
                log.info("BigQuery job %s not answered yet (%s); polling it again", job.job_id, error)
                self._refresh(job)
                if _job_failed(job):
                    raise _job_error(job) from error

    def _cancel_and_settle(self, job: Any) -> list[Any]:
        log.warning("BigQuery job %s outlived job_timeout=%ss; cancelling it", job.job_id, self._job_timeout)
        try:
            self._client.cancel_job(
                job.job_id, location=self._location, retry=_NO_RETRY, timeout=self._request_timeout
            )
        except RETRIED_ERRORS as error:
            log.warning("cancelling BigQuery job %s failed: %s", job.job_id, error)
        deadline = time.monotonic() + self._cancel_wait
        while not (self._refresh(job) and job.state == "DONE"):
            if time.monotonic() >= deadline:
                raise JobOutcomeUnknown(
                    f"BigQuery job {job.job_id} did not finish within job_timeout={self._job_timeout}s "
                    f"and cancel_wait={self._cancel_wait}s; it may still commit",
                    job_id=job.job_id,
                )
            time.sleep(min(1.0, self._cancel_wait / 10))
        if job.error_result is not None:
            raise _job_error(job)
        # It committed before the cancellation took effect: its result is the answer.
        return list(job.result(retry=_NO_RETRY, job_retry=None, timeout=self._request_timeout))

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StorageError("storage is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn)

    async def _query(self, operation: str, kind: str, sql: str, params: Sequence[Any] = ()) -> _Result:
        return await self._in_thread(lambda: self._execute(operation, kind, sql, params))

    # ------------------------------------------------------------------ set-up
    async def create_schema(self) -> None:
        """Create the dataset (only if it is missing) and the tables from ``schemas/*.json`` (if
        absent), and the writer-lease rows.

        Jobs: 0 once set up (dataset and table API calls, and a free ``tabledata.list`` of the tiny
        lease table); 1 MERGE the first time. Needs only ``dataEditor`` on an existing dataset:
        the dataset is read first and created only when missing, which needs an explicit
        ``location``. Idempotent. An existing table whose columns, types, partitioning or
        clustering differ from the schema is an error (migrations are explicit, not automatic).
        """

        def create(state: _Attempts) -> bool:
            state.count += 1
            self._ensure_dataset()
            for spec in schemas.load_bigquery():
                table = self._client.create_table(
                    to_table(spec, self.table_id(spec.table)),
                    exists_ok=True,
                    retry=_NO_RETRY,
                    timeout=self._request_timeout,
                )
                problems = schema_differences(spec, table)
                if problems:
                    raise StorageError(
                        f"table {self.table_id(spec.table)} does not match schema version {spec.version}: "
                        + "; ".join(problems),
                        operation="create_schema",
                    )
            rows = self._client.list_rows(
                self.table_id(schemas.LEASES),
                selected_fields=[bigquery.SchemaField("name", "STRING")],
                retry=_NO_RETRY,
                timeout=self._request_timeout,
            )
            return not set(schemas.TABLES) <= {row["name"] for row in rows}

        missing_leases = await self._in_thread(lambda: self._with_retries("create_schema", "DDL", create))
        if missing_leases:
            await self._query(
                "create_schema",
                "MERGE",
                self._sql.lease_rows,
                [bigquery.ArrayQueryParameter("names", "STRING", list(schemas.TABLES))],
            )

    def _ensure_dataset(self) -> None:
        try:
            dataset = self._client.get_dataset(
                self.dataset_id, retry=_NO_RETRY, timeout=self._request_timeout
            )
        except gexc.NotFound:
            if self._location is None:
                raise StorageError(
                    f"dataset {self.dataset_id} does not exist and no location was given: pass "
                    "location= (e.g. 'EU', 'US', 'europe-west1'); BigQuery would otherwise pick US",
                    operation="create_schema",
                ) from None
            new = bigquery.Dataset(self.dataset_id)
            new.location = self._location
            self._client.create_dataset(new, exists_ok=True, retry=_NO_RETRY, timeout=self._request_timeout)
            return
        found = getattr(dataset, "location", None)
        if self._location is None:
            self._location = found
        elif found and str(found).lower() != self._location.lower():
            raise StorageError(
                f"dataset {self.dataset_id} is in {found}, not in the configured location {self._location}",
                operation="create_schema",
            )

    async def drop_dataset(self) -> None:
        """Delete the dataset and every table in it (tests and ``demo`` only)."""

        def drop(state: _Attempts) -> None:
            state.count += 1
            self._client.delete_dataset(
                self.dataset_id,
                delete_contents=True,
                not_found_ok=True,
                retry=_NO_RETRY,
                timeout=self._request_timeout,
            )

        await self._in_thread(lambda: self._with_retries("drop_dataset", "DDL", drop))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        if self._owns_client:
            self._client.close()  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------------ shared helpers
    async def _insert_if_absent(
        self, operation: str, spec: schemas.TableSpec, key: str, rows: list[dict[str, Any]]
    ) -> tuple[int, bool]:
        """MERGE the rows whose key is absent, holding the table's writer lease; (rows inserted,
        whether the count is uncertain: a retried job or a missing ``dml_stats``).

        An insert-only MERGE does not conflict with a concurrent one on BigQuery: two of them can
        both insert one key. The lease makes inserts into one table run one at a time.
        """
        unique = list({row[key]: row for row in rows}.values())
        if not unique:
            return 0, False
        sql = self._sql.merge_queue if spec.table == schemas.QUEUE else self._sql.merge(spec, key)
        inserted, uncertain = 0, False
        async with self._writer_lease(operation, spec.table):
            for chunk in _chunks(unique, self._max_rows, MAX_PARAMETER_BYTES_PER_STATEMENT):
                result = await self._query(
                    operation, "MERGE", sql, [_struct_array(spec, chunk, spec.field_names)]
                )
                if result.affected is None:
                    uncertain = True
                else:
                    inserted += result.affected
                uncertain = uncertain or result.retried
        return inserted, uncertain

    @contextlib.asynccontextmanager
    async def _writer_lease(self, operation: str, table: str) -> AsyncIterator[None]:
        """Hold the writer lease of ``table`` (a row of the lease table) for the block.

        Taken with one conditional UPDATE that applies only while no row of that name is held
        (concurrent UPDATEs of one table conflict on BigQuery, so at most one wins); released with
        one UPDATE. Jobs: 2 when free; +1 read and a wait when another process holds it. Not
        released when the block's outcome is unknown (a MERGE may still commit): it expires.

        Raises:
            StorageUnavailable: another holder kept it for ``writer_lease_wait`` seconds.
            DuplicateRows: never; duplicate lease rows are harmless (all are taken together).
        """
        holder = f"{self._instance}:{uuid.uuid4().hex[:12]}"
        name = [_scalar("name", "STRING", table)]
        acquire = [*name, _scalar("holder", "STRING", holder), _scalar("ttl", "INT64", int(self._lease_ttl))]
        deadline = time.monotonic() + self._lease_wait
        wait = 0.05
        while True:
            result = await self._query("writer_lease", "UPDATE", self._sql.lease_acquire, acquire)
            if result.affected and not result.retried:
                break
            held = await self._query("writer_lease", "SELECT", self._sql.lease_read, name)
            holders = {row["holder"] for row in held.rows}
            if holder in holders:
                break  # an unanswered attempt took it
            if not held.rows:
                # The lease table predates this dataset's rows (create_schema not re-run): add them.
                await self._query(
                    "writer_lease",
                    "MERGE",
                    self._sql.lease_rows,
                    [bigquery.ArrayQueryParameter("names", "STRING", list(schemas.TABLES))],
                )
                continue
            if time.monotonic() >= deadline:
                raise StorageUnavailable(
                    f"the writer lease of {table} is held by {sorted(h for h in holders if h)}; "
                    f"waited {self._lease_wait:g}s",
                    operation=operation,
                )
            await asyncio.sleep(wait)
            wait = min(wait * 2, 2.0)
        release = True
        try:
            yield
        except JobOutcomeUnknown:
            release = False  # the MERGE may still commit: let the lease expire instead
            raise
        finally:
            if release:
                try:
                    await self._query(
                        "writer_lease",
                        "UPDATE",
                        self._sql.lease_release,
                        [*name, _scalar("holder", "STRING", holder)],
                    )
                except StorageError as error:  # it expires by itself
                    log.warning("releasing the writer lease of %s failed: %s", table, error)

    def _check_single(self, result: _Result, table: str, key: str, operation: str) -> None:
        """A compare-and-set on one key that changed more than one row: corruption, said loudly."""
        if result.affected is not None and result.affected > 1:
            raise DuplicateRows(table, key, result.affected, operation=operation)

    async def _update_batch(
        self,
        operation: str,
        spec: schemas.TableSpec,
        key: str,
        mutable: tuple[str, ...],
        rows: list[dict[str, Any]],
        expected: list[int],
        reread: Callable[[list[str]], Any],
    ) -> int:
        applied = 0
        sql = self._sql.update_batch(spec, key, mutable)
        extra: _Extra = (("b_id", "STRING"), ("b_expected", "INT64"))
        for positions in _rounds([row[key] for row in rows]):
            batch = [{**rows[i], "b_id": rows[i][key], "b_expected": expected[i]} for i in positions]
            for chunk in _chunks(batch, self._max_rows, MAX_PARAMETER_BYTES_PER_STATEMENT):
                result = await self._query(
                    operation, "UPDATE", sql, [_struct_array(spec, chunk, mutable, extra)]
                )
                if result.affected is not None and result.affected > len(chunk):
                    raise DuplicateRows(
                        spec.table, key, result.affected - len(chunk) + 1, operation=operation
                    )
                if result.uncertain:
                    # An earlier attempt may have applied part of it (or BigQuery gave no count):
                    # count what is stored now.
                    wanted = {
                        r[key]: {c: v for c, v in r.items() if c not in ("b_id", "b_expected")} for r in chunk
                    }
                    stored = await reread(list(wanted))
                    applied += sum(1 for row in stored if wanted.get(row[key]) == row)
                else:
                    applied += result.affected or 0
        return applied

    # ------------------------------------------------------------------ runs
    async def insert_runs(self, runs: Sequence[PipelineRun]) -> int:
        """Jobs: 1 MERGE per 1,000 distinct runs + 2 for the writer lease (0 for an empty batch),
        + 1 INSERT of the runs' events per 1,000 events."""
        inserted, _ = await self._insert_if_absent(
            "insert_runs", self._runs_spec, "run_id", [run_to_row(r) for r in runs]
        )
        await self._append_events("insert_runs", runs)
        return inserted

    async def _append_events(self, operation: str, runs: Sequence[PipelineRun]) -> None:
        """Append the runs' pending events, in one INSERT per 1,000 events, after the runs' write.

        Each event is inserted only if its run holds the version and ``updated_at`` that write
        gave it (a compare-and-set that lost its race stores no event). Not one transaction with
        the runs' write: an event can be missing if this job fails after the runs' job committed
        (it is then logged); a retried job keeps its job id, and reads dedupe by event_id.
        """
        rows = [
            {**event_to_row(event), "b_run_version": run.version, "b_run_updated": run.updated_at}
            for run in runs
            for event in run.pending_events
        ]
        for run in runs:
            run.take_events()
        if not rows:
            return
        spec = self._events_spec
        extra: _Extra = (("b_run_version", "INT64"), ("b_run_updated", "TIMESTAMP"))
        try:
            for chunk in _chunks(rows, self._max_rows, MAX_PARAMETER_BYTES_PER_STATEMENT):
                await self._query(  # its own label: the run write's job stays one job of its operation
                    "append_events",
                    "INSERT",
                    self._sql.insert_events,
                    [_struct_array(spec, chunk, spec.field_names, extra)],
                )
        except StorageError as error:
            log.error("%s: %d run events not stored: %s", operation, len(rows), error)
            raise

    async def get_run_events(self, run_id: str) -> list[RunEvent]:
        """Jobs: 1 (the events table is clustered by run_id)."""
        result = await self._query(
            "get_run_events", "SELECT", self._sql.get_events, [_scalar("id", "STRING", run_id)]
        )
        return [event_from_row(r) for r in _newest(result.rows, "event_id")]

    async def prune_events(self, before: datetime) -> int:
        """Jobs: 1 DELETE (whole partitions before ``before``'s day are cheap to drop)."""
        result = await self._query(
            "prune_events", "DELETE", self._sql.prune_events, [_scalar("before", "TIMESTAMP", before)]
        )
        return result.affected or 0

    async def get_run(self, run_id: str) -> PipelineRun | None:
        """Jobs: 1."""
        return await self._get_run("get_run", run_id)

    async def _get_run(self, operation: str, run_id: str) -> PipelineRun | None:
        result = await self._query(operation, "SELECT", self._sql.get_run, [_scalar("id", "STRING", run_id)])
        rows = _newest(result.rows, "run_id")
        return run_from_row(rows[0]) if rows else None

    async def get_runs(self, run_ids: Collection[str]) -> list[PipelineRun]:
        """Jobs: 1 (0 for no ids)."""
        return [run_from_row(r) for r in await self._get_run_rows("get_runs", sorted(set(run_ids)))]

    async def _get_run_rows(self, operation: str, ids: list[str]) -> list[Any]:
        if not ids:
            return []
        result = await self._query(
            operation, "SELECT", self._sql.get_runs, [bigquery.ArrayQueryParameter("ids", "STRING", ids)]
        )
        return _newest(result.rows, "run_id")

    async def update_run(self, run: PipelineRun, expected_version: int) -> bool:
        """Jobs: 1 when applied; 2 when not (the second tells a stale row from a missing one, or
        resolves a retried UPDATE whose first attempt may have been applied)."""
        row = run_to_row(run)
        params = [
            *_row_params(self._runs_spec, row, _RUN_MUTABLE),
            _scalar("b_id", "STRING", run.run_id),
            _scalar("b_expected", "INT64", expected_version),
        ]
        result = await self._query("update_run", "UPDATE", self._sql.update_run, params)
        self._check_single(result, schemas.RUNS, run.run_id, "update_run")
        if result.affected == 1:
            await self._append_events("update_run", [run])
            return True
        stored = await self._get_run("update_run", run.run_id)
        if stored is None:
            raise RunNotFound(run.run_id)
        if result.uncertain and stored == run:
            await self._append_events("update_run", [run])
            return True
        return False

    async def update_runs(self, runs: Sequence[tuple[PipelineRun, int]]) -> int:
        """Jobs: 1 per 1,000 pairs (0 for none); +1 read-back per retried statement. A batch that
        names one run twice takes one statement per repetition."""
        if not runs:
            return 0

        async def reread(ids: list[str]) -> list[dict[str, Any]]:
            return [run_to_row(run_from_row(r)) for r in await self._get_run_rows("update_runs", ids)]

        applied = await self._update_batch(
            "update_runs",
            self._runs_spec,
            "run_id",
            _RUN_MUTABLE,
            [run_to_row(r) for r, _ in runs],
            [v for _, v in runs],
            reread,
        )
        if applied:
            await self._append_events("update_runs", [r for r, _ in runs])
        else:
            for run, _ in runs:
                run.take_events()
        return applied

    async def find_runs(
        self, criteria: RunFilter, *, order: RunOrder = RunOrder.SCHEDULED_ASC, limit: int | None = None
    ) -> list[PipelineRun]:
        """Jobs: 1. Without ``limit`` at most ``max_rows_per_read`` rows are read; more raise
        :class:`StorageError` instead of downloading a whole table."""
        where, params = _run_conditions(criteria)
        order_by = {
            RunOrder.SCHEDULED_ASC: "`scheduled_time`, `run_id`",
            RunOrder.COMPLETED_DESC: "`completed_at` DESC NULLS LAST, `run_id`",
            RunOrder.UPDATED_DESC: "`updated_at` DESC NULLS LAST, `run_id`",
        }[RunOrder(order)]
        # The table name comes from the validated dataset name; every value is a parameter.
        sql = f"SELECT {_cols(RUN_COLUMNS)} FROM `{self._sql.runs}` {where} ORDER BY {order_by} LIMIT @limit"
        params.append(_scalar("limit", "INT64", self._read_limit(limit)))
        result = await self._query("find_runs", "SELECT", sql, params)
        self._check_bounded("find_runs", result, limit)
        return [run_from_row(r) for r in _newest(result.rows, "run_id")]

    def _read_limit(self, limit: int | None) -> int:
        return self._max_read + 1 if limit is None else max(int(limit), 0)

    def _check_bounded(self, operation: str, result: _Result, limit: int | None) -> None:
        if limit is None and len(result.rows) > self._max_read:
            raise StorageError(
                f"{operation} matched more than max_rows_per_read={self._max_read:,} rows; pass a limit",
                operation=operation,
                job_id=result.job_id,
            )

    async def count_runs_by_state(self, tenant_id: str | None = None) -> dict[RunState, int]:
        """Jobs: 1."""
        where, params = "", []
        if tenant_id is not None:
            where, params = "WHERE `tenant_id` = @tenant", [_scalar("tenant", "STRING", tenant_id)]
        sql = f"SELECT `state`, COUNT(*) AS n FROM `{self._sql.runs}` {where} GROUP BY `state`"
        result = await self._query("count_runs_by_state", "SELECT", sql, params)
        return {RunState(r["state"]): int(r["n"]) for r in result.rows}

    # ------------------------------------------------------------------ queue
    async def insert_queue_items(self, items: Sequence[QueueItem]) -> int:
        """Jobs: 1 MERGE per 1,000 distinct items + 2 for the writer lease (0 for an empty batch)."""
        inserted, _ = await self._insert_if_absent(
            "insert_queue_items", self._queue_spec, "queue_id", [queue_to_row(i) for i in items]
        )
        return inserted

    async def get_queue_item(self, queue_id: str) -> QueueItem | None:
        """Jobs: 1."""
        return await self._get_item("get_queue_item", queue_id)

    async def _get_item(self, operation: str, queue_id: str) -> QueueItem | None:
        result = await self._query(
            operation, "SELECT", self._sql.get_item, [_scalar("id", "STRING", queue_id)]
        )
        rows = _newest(result.rows, "queue_id")
        return queue_from_row(rows[0]) if rows else None

    async def claim_queue_items(
        self, *, worker_id: str, claim_token: str, now: datetime, lease_expires_at: datetime, limit: int
    ) -> list[QueueItem]:
        """Jobs: 2 whatever ``limit`` is (an UPDATE stamping the batch, a SELECT reading it back
        by token); 1 when the queue is empty; 0 when ``limit`` < 1."""
        if limit < 1:
            return []
        stamp = [_scalar("token", "STRING", claim_token), _scalar("now", "TIMESTAMP", now)]
        stamped = await self._query(
            "claim_queue_items",
            "UPDATE",
            self._sql.claim,
            [
                *stamp,
                _scalar("worker", "STRING", worker_id),
                _scalar("lease", "TIMESTAMP", lease_expires_at),
                _scalar("sent", "TIMESTAMP", self._wallclock()),
                _scalar("limit", "INT64", limit),
            ],
        )
        if stamped.affected == 0 and not stamped.uncertain:
            return []  # an empty queue: no read-back (an idle poll costs one job)
        result = await self._query(
            "claim_queue_items", "SELECT", self._sql.claimed, [*stamp, _scalar("worker", "STRING", worker_id)]
        )
        return [queue_from_row(r) for r in _newest(result.rows, "queue_id")]

    async def transition_queue_item(
        self,
        queue_id: str,
        *,
        from_status: QueueStatus,
        to_status: QueueStatus,
        now: datetime,
        claim_token: str | None = None,
        error_message: str | None = None,
    ) -> bool:
        """Jobs: 1 (+1 read-back when a retried UPDATE reports no row)."""
        fenced = claim_token is not None
        params = [
            _scalar("id", "STRING", queue_id),
            _scalar("from", "STRING", from_status.value),
            _scalar("to", "STRING", to_status.value),
            _scalar("now", "TIMESTAMP", now),
        ]
        if fenced:
            params.append(_scalar("token", "STRING", claim_token))
        if to_status is QueueStatus.FAILED:
            params.append(_scalar("error", "STRING", error_message))
        result = await self._query(
            "transition_queue_item", "UPDATE", self._sql.transition(to_status, fenced), params
        )
        self._check_single(result, schemas.QUEUE, queue_id, "transition_queue_item")
        if result.affected == 1:
            return True
        if not result.uncertain:
            return False
        item = await self._get_item("transition_queue_item", queue_id)
        return (
            item is not None
            and item.status is to_status
            and item.updated_at == utc(now)
            and (not fenced or to_status is QueueStatus.QUEUED or item.claim_token == claim_token)
        )

    async def extend_queue_lease(
        self, queue_id: str, *, claim_token: str, lease_expires_at: datetime
    ) -> bool:
        """Jobs: 1 (+1 read-back when a retried UPDATE reports no row)."""
        params = [
            _scalar("id", "STRING", queue_id),
            _scalar("token", "STRING", claim_token),
            _scalar("lease", "TIMESTAMP", lease_expires_at),
            _scalar("sent", "TIMESTAMP", self._wallclock()),
        ]
        result = await self._query("extend_queue_lease", "UPDATE", self._sql.extend_lease, params)
        self._check_single(result, schemas.QUEUE, queue_id, "extend_queue_lease")
        if result.affected == 1:
            return True
        if not result.uncertain:
            return False
        item = await self._get_item("extend_queue_lease", queue_id)
        return (
            item is not None
            and item.status is QueueStatus.PROCESSING
            and item.claim_token == claim_token
            and item.lease_expires_at is not None
            and item.lease_expires_at >= utc(lease_expires_at)  # type: ignore[operator]
        )

    async def extend_queue_leases(
        self, leases: Sequence[tuple[str, str]], *, lease_expires_at: datetime
    ) -> int:
        """Jobs: 1 per 1,000 pairs (0 for none); +1 read-back per item of a retried statement."""
        lease = utc(lease_expires_at)

        def holds(item: QueueItem, token: str) -> bool:
            return (
                item.status is QueueStatus.PROCESSING
                and item.claim_token == token
                and item.lease_expires_at is not None
                and item.lease_expires_at >= lease  # type: ignore[operator]
            )

        return await self._queue_batch(
            "extend_queue_leases",
            self._sql.extend_leases,
            leases,
            [
                ("b_lease", "TIMESTAMP", lease_expires_at),
                ("b_sent", "TIMESTAMP", self._wallclock()),
            ],
            holds,
        )

    async def transition_queue_items(
        self,
        items: Sequence[tuple[str, str]],
        *,
        from_status: QueueStatus,
        to_status: QueueStatus,
        now: datetime,
        error_message: str | None = None,
    ) -> int:
        """Jobs: 1 per 1,000 pairs (0 for none); +1 read-back per item of a retried statement."""
        values: list[tuple[str, str, Any]] = [
            ("b_from", "STRING", from_status.value),
            ("b_to", "STRING", to_status.value),
            ("b_now", "TIMESTAMP", now),
        ]
        if to_status is QueueStatus.FAILED:
            values.append(("b_error", "STRING", error_message))

        def holds(item: QueueItem, token: str) -> bool:
            return item.status is to_status and item.updated_at == utc(now) and item.claim_token == token

        return await self._queue_batch(
            "transition_queue_items", self._sql.transitions_batch(to_status), items, values, holds
        )

    async def _queue_batch(
        self,
        operation: str,
        sql: str,
        pairs: Sequence[tuple[str, str]],
        values: list[tuple[str, str, Any]],
        holds: Callable[[QueueItem, str], bool],
    ) -> int:
        """One fenced UPDATE per chunk of ``(queue_id, claim_token)`` pairs (a repeated id once),
        every row carrying ``values`` too."""
        common = {name: value for name, _, value in values}
        rows = [{"b_id": q, "b_token": t, **common} for q, t in dict(pairs).items()]
        applied = 0
        extra: _Extra = (("b_id", "STRING"), ("b_token", "STRING"), *((n, t) for n, t, _ in values))
        for chunk in _chunks(rows, self._max_rows, MAX_PARAMETER_BYTES_PER_STATEMENT):
            result = await self._query(
                operation, "UPDATE", sql, [_struct_array(self._queue_spec, chunk, (), extra)]
            )
            if result.affected is not None and result.affected > len(chunk):
                raise DuplicateRows(
                    schemas.QUEUE, "queue_id", result.affected - len(chunk) + 1, operation=operation
                )
            if result.uncertain:
                for row in chunk:
                    item = await self._get_item(operation, row["b_id"])
                    applied += item is not None and holds(item, row["b_token"])
            else:
                applied += result.affected or 0
        return applied

    async def find_queue_items(
        self,
        *,
        status: QueueStatus | None = None,
        lease_expired_before: datetime | None = None,
        run_id: str | None = None,
        limit: int | None = None,
    ) -> list[QueueItem]:
        """Jobs: 1."""
        conditions: list[str] = []
        params: list[Any] = []
        if status is not None:
            conditions.append("`status` = @status")
            params.append(_scalar("status", "STRING", QueueStatus(status).value))
        if lease_expired_before is not None:
            conditions.append("`lease_expires_at` <= @lease_before")
            params.append(_scalar("lease_before", "TIMESTAMP", lease_expired_before))
        if run_id is not None:
            conditions.append("`run_id` = @run_id")
            params.append(_scalar("run_id", "STRING", run_id))
        sql = (
            f"SELECT {_cols(QUEUE_COLUMNS)} FROM `{self._sql.queue}` {_where(conditions)} "
            "ORDER BY `priority`, `created_at`, `queue_id` LIMIT @limit"
        )
        params.append(_scalar("limit", "INT64", self._read_limit(limit)))
        result = await self._query("find_queue_items", "SELECT", sql, params)
        self._check_bounded("find_queue_items", result, limit)
        return [queue_from_row(r) for r in _newest(result.rows, "queue_id")]

    async def count_queue_items(self, status: QueueStatus | None = None, tenant_id: str | None = None) -> int:
        """Jobs: 1."""
        conditions: list[str] = []
        params: list[Any] = []
        if status is not None:
            conditions.append("`status` = @status")
            params.append(_scalar("status", "STRING", QueueStatus(status).value))
        if tenant_id is not None:
            conditions.append("`tenant_id` = @tenant")
            params.append(_scalar("tenant", "STRING", tenant_id))
        sql = f"SELECT COUNT(*) AS n FROM `{self._sql.queue}` {_where(conditions)}"
        result = await self._query("count_queue_items", "SELECT", sql, params)
        return int(result.rows[0]["n"])

    async def queue_stats(self, now: datetime) -> QueueStats:
        """Jobs: 1 (every figure comes from one query)."""
        result = await self._query("queue_stats", "SELECT", self._sql.stats)
        by_status: dict[QueueStatus, int] = {}
        by_priority: dict[int, int] = {}
        avg: float | None = None
        p95: float | None = None
        oldest: datetime | None = None
        for row in result.rows:
            kind = row["kind"]
            if kind == "status":
                by_status[QueueStatus(row["key"])] = int(row["n"])
            elif kind == "priority":
                by_priority[int(row["key"])] = int(row["n"])
            elif kind == "wait":
                avg = None if row["value"] is None else float(row["value"])
                oldest = utc(row["ts"])
            elif kind == "p95" and row["value"] is not None:
                p95 = float(row["value"])
        return QueueStats(
            by_status=by_status,
            waiting_by_priority=by_priority,
            avg_wait_seconds=avg,
            p95_wait_seconds=p95,
            oldest_waiting_age_seconds=None
            if oldest is None
            else max((utc(now) - oldest).total_seconds(), 0.0),  # type: ignore[operator]
            total=sum(by_status.values()),
        )

    # ------------------------------------------------------------------ schedules
    async def insert_schedule(self, schedule: PipelineSchedule) -> bool:
        """Jobs: 3 (the MERGE and the writer lease; +1 read-back when its count is uncertain)."""
        inserted, uncertain = await self._insert_if_absent(
            "insert_schedule", self._schedules_spec, "schedule_id", [schedule_to_row(schedule)]
        )
        if inserted == 1 and not uncertain:
            return True
        if not uncertain:
            return False
        return await self._get_schedule("insert_schedule", schedule.schedule_id) == schedule

    async def insert_schedules(self, schedules: Sequence[PipelineSchedule]) -> int:
        """Batch :meth:`insert_schedule` (not in the port yet): insert the absent ones, return how
        many. Jobs: 1 per 1,000 distinct schedules + 2 for the writer lease (0 for none)."""
        inserted, _ = await self._insert_if_absent(
            "insert_schedules", self._schedules_spec, "schedule_id", [schedule_to_row(s) for s in schedules]
        )
        return inserted

    async def get_schedule(self, schedule_id: str) -> PipelineSchedule | None:
        """Jobs: 1."""
        return await self._get_schedule("get_schedule", schedule_id)

    async def _get_schedule(self, operation: str, schedule_id: str) -> PipelineSchedule | None:
        result = await self._query(
            operation, "SELECT", self._sql.get_schedule, [_scalar("id", "STRING", schedule_id)]
        )
        rows = _newest(result.rows, "schedule_id")
        return schedule_from_row(rows[0]) if rows else None

    async def list_schedules(
        self, *, tenant_id: str | None = None, enabled: bool | None = None
    ) -> list[PipelineSchedule]:
        """Jobs: 1."""
        conditions: list[str] = []
        params: list[Any] = []
        if tenant_id is not None:
            conditions.append("`tenant_id` = @tenant")
            params.append(_scalar("tenant", "STRING", tenant_id))
        if enabled is not None:
            conditions.append("`enabled` = @enabled")
            params.append(_scalar("enabled", "BOOL", bool(enabled)))
        sql = (
            f"SELECT {_cols(SCHEDULE_COLUMNS)} FROM `{self._sql.schedules}` {_where(conditions)} "
            "ORDER BY `tenant_id`, `config_id`, `schedule_id`"
        )
        result = await self._query("list_schedules", "SELECT", sql, params)
        return [schedule_from_row(r) for r in _newest(result.rows, "schedule_id")]

    async def update_schedule(self, schedule: PipelineSchedule, expected_version: int) -> bool:
        """Jobs: 1 when applied; 2 when not (see :meth:`update_run`)."""
        row = schedule_to_row(schedule)
        params = [
            *_row_params(self._schedules_spec, row, _SCHEDULE_MUTABLE),
            _scalar("b_id", "STRING", schedule.schedule_id),
            _scalar("b_expected", "INT64", expected_version),
        ]
        result = await self._query("update_schedule", "UPDATE", self._sql.update_schedule, params)
        self._check_single(result, schemas.SCHEDULES, schedule.schedule_id, "update_schedule")
        if result.affected == 1:
            return True
        stored = await self._get_schedule("update_schedule", schedule.schedule_id)
        if stored is None:
            raise ScheduleNotFound(schedule.schedule_id)
        return result.uncertain and stored == schedule

    async def update_schedules(self, schedules: Sequence[tuple[PipelineSchedule, int]]) -> int:
        """Jobs: 1 per 1,000 pairs (0 for none); +1 read-back per retried statement."""
        if not schedules:
            return 0

        async def reread(ids: list[str]) -> list[dict[str, Any]]:
            result = await self._query(
                "update_schedules",
                "SELECT",
                self._sql.get_schedules,
                [bigquery.ArrayQueryParameter("ids", "STRING", ids)],
            )
            return [schedule_to_row(schedule_from_row(r)) for r in _newest(result.rows, "schedule_id")]

        return await self._update_batch(
            "update_schedules",
            self._schedules_spec,
            "schedule_id",
            _SCHEDULE_MUTABLE,
            [schedule_to_row(s) for s, _ in schedules],
            [v for _, v in schedules],
            reread,
        )

    async def due_schedules(self, now: datetime, limit: int) -> list[PipelineSchedule]:
        """Jobs: 1, whatever the number of schedules (clustered on enabled, next_fire_time)."""
        params = [_scalar("now", "TIMESTAMP", now), _scalar("limit", "INT64", max(int(limit), 0))]
        result = await self._query("due_schedules", "SELECT", self._sql.due, params)
        return [schedule_from_row(r) for r in _newest(result.rows, "schedule_id")]


# --------------------------------------------------------------------------- SQL
def _where(conditions: Sequence[str]) -> str:
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""


def _run_conditions(criteria: RunFilter) -> tuple[str, list[Any]]:
    conditions: list[str] = []
    params: list[Any] = []
    if criteria.states is not None:
        conditions.append("`state` IN UNNEST(@states)")
        params.append(
            bigquery.ArrayQueryParameter(
                "states", "STRING", sorted({RunState(s).value for s in criteria.states})
            )
        )
    if criteria.tenant_id is not None:
        conditions.append("`tenant_id` = @tenant")
        params.append(_scalar("tenant", "STRING", criteria.tenant_id))
    if criteria.config_id is not None:
        conditions.append("`config_id` = @config")
        params.append(_scalar("config", "STRING", criteria.config_id))
    if criteria.scheduled_before is not None:
        conditions.append("`scheduled_time` <= @scheduled_before")
        params.append(_scalar("scheduled_before", "TIMESTAMP", criteria.scheduled_before))
    if criteria.lease_expired_before is not None:
        conditions.append("`lease_expires_at` <= @lease_before")
        params.append(_scalar("lease_before", "TIMESTAMP", criteria.lease_expired_before))
    if criteria.retry_due_before is not None:
        conditions.append("`next_retry_at` <= @retry_before")
        params.append(_scalar("retry_before", "TIMESTAMP", criteria.retry_due_before))
    return _where(conditions), params


def _pairs(*fields: str) -> str:
    """The ``@rows`` of a fenced batch write on the queue table: ``(b_id, b_token, *fields)``."""
    names = ", ".join(f"u.`{f}`" for f in ("b_id", "b_token", *fields))
    return f"(SELECT {names} FROM UNNEST(@rows) AS u) AS s"


class _Statements:
    """The fixed statements of one dataset, built once.

    Table names come from the validated dataset name and the constant table names in
    :mod:`schemas`; every value is a query parameter.
    """

    def __init__(self, runs: str, queue: str, schedules: str, leases: str) -> None:
        self.runs = runs
        self.queue = queue
        self.schedules = schedules
        self.leases = leases
        r, q, s, w = f"`{runs}`", f"`{queue}`", f"`{schedules}`", f"`{leases}`"
        # The writer lease (see BigQueryStorage._writer_lease): BigQuery's own clock, so a lease
        # that waits in the DML queue is not spent before it is taken.
        self.lease_acquire = (
            f"UPDATE {w} SET `holder` = @holder, `acquired_at` = CURRENT_TIMESTAMP(), "
            "`expires_at` = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL @ttl SECOND), "
            "`version` = `version` + 1 "
            f"WHERE `name` = @name AND NOT EXISTS (SELECT 1 FROM {w} AS h WHERE h.`name` = @name "
            "AND h.`holder` IS NOT NULL AND h.`expires_at` > CURRENT_TIMESTAMP())"
        )
        self.lease_release = (
            f"UPDATE {w} SET `holder` = NULL, `acquired_at` = NULL, `expires_at` = NULL, "
            "`version` = `version` + 1 WHERE `name` = @name AND `holder` = @holder"
        )
        self.lease_read = (
            f"SELECT `holder`, `expires_at` FROM {w} WHERE `name` = @name "
            "AND (`holder` IS NULL OR `expires_at` > CURRENT_TIMESTAMP())"
        )
        self.lease_rows = (
            f"MERGE {w} AS t USING (SELECT n AS `name` FROM UNNEST(@names) AS n) AS s "
            "ON t.`name` = s.`name` WHEN NOT MATCHED THEN "
            "INSERT (`name`, `holder`, `acquired_at`, `expires_at`, `version`) "
            "VALUES (s.`name`, NULL, NULL, NULL, 1)"
        )
        self.get_run = f"SELECT {_cols(RUN_COLUMNS)} FROM {r} WHERE `run_id` = @id"
        self.get_runs = (
            f"SELECT {_cols(RUN_COLUMNS)} FROM {r} WHERE `run_id` IN UNNEST(@ids) ORDER BY `run_id`"
        )
        self.update_run = self._update_one(r, "run_id", _RUN_MUTABLE)
        self.get_item = f"SELECT {_cols(QUEUE_COLUMNS)} FROM {q} WHERE `queue_id` = @id"
        self.get_schedule = f"SELECT {_cols(SCHEDULE_COLUMNS)} FROM {s} WHERE `schedule_id` = @id"
        self.get_schedules = (
            f"SELECT {_cols(SCHEDULE_COLUMNS)} FROM {s} "
            "WHERE `schedule_id` IN UNNEST(@ids) ORDER BY `schedule_id`"
        )
        self.update_schedule = self._update_one(s, "schedule_id", _SCHEDULE_MUTABLE)
        self.due = (
            f"SELECT {_cols(SCHEDULE_COLUMNS)} FROM {s} "
            "WHERE `enabled` AND `next_fire_time` <= @now "
            "ORDER BY `next_fire_time`, `schedule_id` LIMIT @limit"
        )
        # One UPDATE picks and stamps the batch. The NOT EXISTS makes a retried claim whose first
        # attempt was applied (response lost) a no-op instead of a second batch under one token.
        # A lease is counted from when BigQuery runs the statement, not from when it was sent: the
        # time a claim or heartbeat spent queued (DML queue, retries) beyond a grace is added, by
        # BigQuery's clock (CURRENT_TIMESTAMP() is the statement's start).
        served = (
            "TIMESTAMP_ADD(@lease, INTERVAL GREATEST(TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), @sent, MICROSECOND) "
            f"- {int(LEASE_QUEUE_GRACE * 1_000_000)}, 0) MICROSECOND)"
        )
        self.claim = (
            f"UPDATE {q} SET `status` = '{_PROCESSING}', `worker_id` = @worker, `claim_token` = @token, "
            f"`claimed_at` = @now, `updated_at` = @now, `lease_expires_at` = {served}, "
            "`attempts` = `attempts` + 1, `version` = `version` + 1 "
            f"WHERE `queue_id` IN (SELECT p.`queue_id` FROM {q} AS p WHERE p.`status` = '{_QUEUED}' "
            "ORDER BY p.`claim_order`, p.`queue_id` LIMIT @limit) "
            f"AND `status` = '{_QUEUED}' "
            f"AND NOT EXISTS (SELECT 1 FROM {q} AS g "
            "WHERE g.`claim_token` = @token AND g.`claimed_at` = @now)"
        )
        self.claimed = (
            f"SELECT {_cols(QUEUE_COLUMNS)} FROM {q} "
            "WHERE `claim_token` = @token AND `claimed_at` = @now AND `worker_id` = @worker "
            "ORDER BY `claim_order`, `queue_id`"
        )
        self.extend_lease = (
            # Idempotent, so that a retry of an applied extension does not bump the version again.
            f"UPDATE {q} SET `lease_expires_at` = {served}, "
            "`version` = `version` + IF(`lease_expires_at` >= @lease, 0, 1) "
            f"WHERE `queue_id` = @id AND `status` = '{_PROCESSING}' AND `claim_token` = @token"
        )
        # The emulator binds scalar parameters before an UNNEST wrongly: every value of a batch
        # write on the queue table travels in its rows.
        batch_served = served.replace("@lease", "s.`b_lease`").replace("@sent", "s.`b_sent`")
        self.extend_leases = (
            f"UPDATE {q} AS t SET `lease_expires_at` = {batch_served}, "
            "`version` = t.`version` + IF(t.`lease_expires_at` >= s.`b_lease`, 0, 1) "
            f"FROM {_pairs('b_lease', 'b_sent')} "
            f"WHERE t.`queue_id` = s.`b_id` AND t.`status` = '{_PROCESSING}' "
            "AND t.`claim_token` = s.`b_token`"
        )
        self._batch_transitions = {status: self._transition_batch(q, status) for status in QueueStatus}
        # Every figure in one job, without a window over the whole history: p95 from
        # APPROX_QUANTILES (exact for up to a few thousand values, bounded memory beyond).
        # `ts`, not `at`: AT is a reserved keyword in GoogleSQL (the emulator accepts it).
        self.stats = (
            f"WITH base AS (SELECT `status`, `priority`, `created_at`, "
            f"TIMESTAMP_DIFF(`claimed_at`, `created_at`, MICROSECOND) / 1000000 AS wait FROM {q}) "
            "SELECT 'status' AS kind, `status` AS key, COUNT(*) AS n, "
            "CAST(NULL AS FLOAT64) AS value, CAST(NULL AS TIMESTAMP) AS ts FROM base GROUP BY `status` "
            "UNION ALL SELECT 'priority', CAST(`priority` AS STRING), COUNT(*), NULL, NULL FROM base "
            f"WHERE `status` = '{_QUEUED}' GROUP BY `priority` "
            f"UNION ALL SELECT 'wait', NULL, COUNT(wait), AVG(wait), MIN(IF(`status` = '{_QUEUED}', "
            "`created_at`, NULL)) FROM base "
            "UNION ALL SELECT 'p95', NULL, NULL, APPROX_QUANTILES(wait, 100)[OFFSET(95)], NULL FROM base "
            "WHERE wait IS NOT NULL"
        )
        self._transitions = {
            (status, fenced): self._transition(q, status, fenced)
            for status in QueueStatus
            for fenced in (False, True)
        }

    @staticmethod
    def _update_one(table: str, key: str, mutable: Sequence[str]) -> str:
        sets = ", ".join(f"{_q(c)} = @p_{c}" for c in mutable)
        return f"UPDATE {table} SET {sets} WHERE {_q(key)} = @b_id AND `version` = @b_expected"

    @staticmethod
    def _transition(table: str, to_status: QueueStatus, fenced: bool) -> str:
        sets = ["`status` = @to", "`version` = `version` + 1", "`updated_at` = @now"]
        if to_status in (QueueStatus.COMPLETED, QueueStatus.FAILED):
            sets += ["`completed_at` = @now", "`lease_expires_at` = NULL"]
            if to_status is QueueStatus.FAILED:
                sets.append("`error_message` = @error")
        elif to_status is QueueStatus.QUEUED:
            sets += [
                "`worker_id` = NULL",
                "`claim_token` = NULL",
                "`claimed_at` = NULL",
                "`lease_expires_at` = NULL",
            ]
        where = "`queue_id` = @id AND `status` = @from"
        if fenced:
            where += " AND `claim_token` = @token"
        return f"UPDATE {table} SET {', '.join(sets)} WHERE {where}"

    @classmethod
    def _transition_batch(cls, table: str, to_status: QueueStatus) -> str:
        """The fenced transition for many ``(b_id, b_token, b_from, b_to, b_now[, b_error])`` rows."""
        single = cls._transition(table, to_status, True)
        sets = single.split(" SET ", 1)[1].split(" WHERE ", 1)[0]
        sets = sets.replace("`version` = `version` + 1", "`version` = t.`version` + 1")
        for name in ("to", "now", "error"):
            sets = sets.replace(f"@{name}", f"s.`b_{name}`")
        fields = ("b_from", "b_to", "b_now", *(("b_error",) if to_status is QueueStatus.FAILED else ()))
        return (
            f"UPDATE {table} AS t SET {sets} FROM {_pairs(*fields)} "
            "WHERE t.`queue_id` = s.`b_id` AND t.`status` = s.`b_from` AND t.`claim_token` = s.`b_token`"
        )

    def transitions_batch(self, to_status: QueueStatus) -> str:
        return self._batch_transitions[to_status]

    def add_events(self, events: str) -> None:
        """The run history's statements (the events table, ``schemas/x_meta_run_events.json``)."""
        self.events = events
        columns = schemas.load(schemas.RUN_EVENTS).field_names
        self.insert_events = (
            f"INSERT INTO `{events}` ({_cols(columns)}) "
            f"SELECT {_cols(columns, 'u')} FROM UNNEST(@rows) AS u "
            f"WHERE EXISTS (SELECT 1 FROM `{self.runs}` AS r WHERE r.`run_id` = u.`run_id` "
            "AND r.`version` = u.`b_run_version` AND r.`updated_at` = u.`b_run_updated`)"
        )
        self.get_events = (
            f"SELECT {_cols(columns)} FROM `{events}` WHERE `run_id` = @id ORDER BY `version`, `event_id`"
        )
        self.prune_events = f"DELETE FROM `{events}` WHERE `at` < @before"

    def transition(self, to_status: QueueStatus, fenced: bool) -> str:
        return self._transitions[(to_status, fenced)]

    def _full(self, spec: schemas.TableSpec) -> str:
        return {
            schemas.RUNS: self.runs,
            schemas.QUEUE: self.queue,
            schemas.SCHEDULES: self.schedules,
            schemas.LEASES: self.leases,
        }[spec.table]

    def merge(self, spec: schemas.TableSpec, key: str) -> str:
        columns = spec.field_names
        return (
            f"MERGE `{self._full(spec)}` AS t "
            f"USING (SELECT {_cols(columns, 'u')} FROM UNNEST(@rows) AS u) AS s "
            f"ON t.{_q(key)} = s.{_q(key)} "
            f"WHEN NOT MATCHED THEN INSERT ({_cols(columns)}) VALUES ({_cols(columns, 's')})"
        )

    @property
    def merge_queue(self) -> str:
        """The enqueue MERGE with fair share (pipestate.domain.limits.next_claim_order): each new
        item's claim_order is its base, or one slot after its flow's last waiting item (stored, or
        earlier in the same batch), whichever is later. The writer lease serialises enqueues."""
        columns = [c for c in schemas.load(schemas.QUEUE).field_names if c != "claim_order"]
        flow = "PARTITION BY u.`tenant_id`, u.`priority` ORDER BY u.`claim_order`, u.`queue_id`"
        slot = repr(FAIR_SHARE_SLOT_SECONDS)
        return (
            f"MERGE `{self.queue}` AS t "
            f"USING (SELECT {_cols(columns, 'u')}, "
            f"GREATEST(u.`claim_order`, COALESCE(f.`tail` + {slot}, MIN(u.`claim_order`) OVER ({flow})) "
            f"+ (ROW_NUMBER() OVER ({flow}) - 1) * {slot}) AS `claim_order` "
            "FROM UNNEST(@rows) AS u LEFT JOIN (SELECT `tenant_id`, `priority`, MAX(`claim_order`) AS `tail` "
            f"FROM `{self.queue}` WHERE `status` = '{_QUEUED}' GROUP BY `tenant_id`, `priority`) AS f "
            "ON f.`tenant_id` = u.`tenant_id` AND f.`priority` = u.`priority`) AS s "
            "ON t.`queue_id` = s.`queue_id` "
            f"WHEN NOT MATCHED THEN INSERT ({_cols([*columns, 'claim_order'])}) "
            f"VALUES ({_cols([*columns, 'claim_order'], 's')})"
        )

    def update_batch(self, spec: schemas.TableSpec, key: str, mutable: Sequence[str]) -> str:
        full = self._full(spec)
        sets = ", ".join(f"{_q(c)} = s.{_q(c)}" for c in mutable)
        return (
            f"UPDATE `{full}` AS t SET {sets} "
            f"FROM (SELECT u.`b_id`, u.`b_expected`, {_cols(mutable, 'u')} FROM UNNEST(@rows) AS u) AS s "
            f"WHERE t.{_q(key)} = s.`b_id` AND t.`version` = s.`b_expected`"
        )
