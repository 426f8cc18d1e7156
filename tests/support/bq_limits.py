"""A model of BigQuery's limits, wrapped around the emulator's real client.

``bqemulator`` answers every statement at once, one at a time, with no quotas, no conflicts and no
bill. Real BigQuery does not. :class:`LimitedClient` stands between an adapter and the emulator's
``bigquery.Client`` and adds what the documentation says the service does, so that concurrency and
capacity can be tested and benchmarked before first contact:

- **Latency.** Each job takes modelled seconds (DML statements far longer than reads), scaled by
  ``time_scale`` into real seconds so that a test stays fast (``time_scale=0.001``: a modelled
  2 s statement sleeps 2 ms). :attr:`LimitedClient.clock` tells modelled time.
- **Mutating DML concurrency.** UPDATE, DELETE and MERGE (an insert-only MERGE included) run at
  most 2 at a time per table; up to 20 more wait in a per-table queue; one more fails with
  "Resources exceeded during query execution: Too many DML statements outstanding against table
  PROJECT:DATASET.TABLE, limit is 20." [dml-concurrency]
- **Conflicts.** Two mutating statements that run at the same time and touch the same partition
  conflict: BigQuery reruns the loser up to 3 times, then fails it with "Could not serialize
  access to table … due to concurrent update". [dml-conflicts] An insert-only MERGE neither
  suffers nor causes conflicts [dml-conflicts], which is also why it is no uniqueness guarantee.
  Which partitions a statement touches is a setting (:attr:`Limits.partitions_of`); the default
  puts every row of a table in one hot partition, which is what a table of live rows, nearly all
  created today, looks like to a table partitioned by day.
- **INSERT DML concurrency.** The first 1,500 INSERT statements per table per day run at once;
  after that 10 run and 100 wait. [dml-concurrency]
- **Bytes billed.** Each job bills, per table it references, the table's estimated size, at
  least 10 MB [on-demand-pricing]; a job whose estimate passes ``maximum_bytes_billed`` fails with
  reason ``bytesBilledLimitExceeded`` (HTTP 500 in the client's mapping). Table sizes are rows x
  :attr:`Limits.row_bytes`, counted on the emulator, plus any synthetic history rows
  (:meth:`LimitedClient.add_synthetic_rows`) so that 1M rows of history can be modelled without
  writing them.
- **Job ids.** A second job with the id of an existing one fails with 409 "Already Exists", as
  ``jobs.insert`` does (the emulator accepts the duplicate).
- **DML statistics.** ``dml_stats`` is filled in (the emulator leaves it empty).

Errors are built by the client library's own mapping from an ``errorResult`` to an exception
(``google.cloud.bigquery.job.base._error_result_to_exception``), so an adapter sees the types,
codes and ``errors[].reason`` it would see from the service.

What it does not model: slot contention between reads, streaming buffers, per-project job rate
quotas (100 concurrent interactive queries), the 6-hour queue time-out, snapshot reads of an
insert-only MERGE (two concurrent ones both inserting a key), and time travel.

Sources (BigQuery documentation):
[dml-concurrency] "Transform data with DML" — Concurrent jobs: INSERT DML concurrency; UPDATE,
DELETE, MERGE DML concurrency. [dml-conflicts] same page, "DML statement conflicts".
[on-demand-pricing] "BigQuery pricing" — on-demand compute: "a minimum 10 MB data processed per
table referenced by the query".
"""

from __future__ import annotations

import concurrent.futures
import itertools
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from google.api_core import exceptions as gexc
from google.cloud import bigquery
from google.cloud.bigquery.job.base import _error_result_to_exception

MB: Final = 1024 * 1024
DAY: Final = 86_400.0

_TABLE = r"`([^`]+)`"
_TARGET = {
    "UPDATE": re.compile(r"^\s*UPDATE\s+" + _TABLE, re.I),
    "DELETE": re.compile(r"^\s*DELETE\s+(?:FROM\s+)?" + _TABLE, re.I),
    "MERGE": re.compile(r"^\s*MERGE\s+(?:INTO\s+)?" + _TABLE, re.I),
    "INSERT": re.compile(r"^\s*INSERT\s+(?:INTO\s+)?" + _TABLE, re.I),
}
_REFERENCED = re.compile(_TABLE)
MUTATING: Final = frozenset({"UPDATE", "DELETE", "MERGE"})


@dataclass(frozen=True)
class Statement:
    """What the model needs to know of one SQL text."""

    sql: str
    kind: str
    """SELECT, INSERT, UPDATE, DELETE, MERGE, or another leading keyword (DDL: not limited)."""
    target: str | None
    """The table a DML statement writes, as written (``project.dataset.table``)."""
    referenced: tuple[str, ...]
    """Every table the text names, target included."""

    @property
    def mutating(self) -> bool:
        return self.kind in MUTATING

    @property
    def insert_only_merge(self) -> bool:
        return self.kind == "MERGE" and "WHEN MATCHED" not in " ".join(self.sql.upper().split())

    @property
    def conflicts(self) -> bool:
        """Takes part in partition conflicts (an insert-only MERGE does not)."""
        return self.mutating and not self.insert_only_merge

    @classmethod
    def parse(cls, sql: str) -> Statement:
        words = sql.lstrip().split(None, 1)
        kind = words[0].upper() if words else ""
        if kind == "WITH":
            kind = "SELECT"
        target_match = _TARGET[kind].search(sql) if kind in _TARGET else None
        referenced = tuple(dict.fromkeys(_REFERENCED.findall(sql)))
        return cls(sql, kind, target_match.group(1) if target_match else None, referenced)


def one_hot_partition(statement: Statement) -> frozenset[str]:
    """Every row of a table in one partition: the live rows of a day-partitioned table."""
    return frozenset({"today"})


@dataclass(frozen=True)
class Limits:
    """The model's parameters; the defaults are BigQuery's documented limits.

    Latencies are modelled seconds per attempt; ``time_scale`` turns them into real seconds.
    """

    dml_latency: float = 2.0
    insert_latency: float = 1.0
    query_latency: float = 0.5
    time_scale: float = 0.001
    mutating_running: int = 2
    mutating_queued: int = 20
    conflict_reruns: int = 3
    insert_immediate_per_day: int = 1500
    insert_running: int = 10
    insert_queued: int = 100
    min_bytes_per_table: int = 10 * MB
    row_bytes: int = 600
    """Estimated stored bytes per row (a run row with its JSON columns)."""
    partitions_of: Callable[[Statement], frozenset[str]] = one_hot_partition
    unique_job_ids: bool = True
    estimate_bytes: bool = True
    """Count rows on the emulator to estimate bytes (one extra emulator query per table and write);
    off: every job bills the per-table minimum."""

    def latency(self, statement: Statement) -> float:
        if statement.mutating:
            return self.dml_latency
        if statement.kind == "INSERT":
            return self.insert_latency
        return self.query_latency


class ModelClock:
    """Modelled time: it runs ``1 / time_scale`` times faster than the wall clock."""

    def __init__(self, time_scale: float, origin: datetime | None = None) -> None:
        self._scale = time_scale
        self._origin = origin or datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
        self._t0 = time.monotonic()

    def seconds(self) -> float:
        """Modelled seconds since the model started."""
        return (time.monotonic() - self._t0) / self._scale

    def now(self) -> datetime:
        return self._origin + timedelta(seconds=self.seconds())


def _error(reason: str, message: str) -> gexc.GoogleAPICallError:
    """The exception the client library raises for a job that ended with this ``errorResult``."""
    convert: Any = _error_result_to_exception  # untyped in the client library
    error: gexc.GoogleAPICallError = convert({"reason": reason, "message": message})
    return error


class _Admission:
    """One table's queue for one class of statements: ``running`` at once, ``queued`` waiting."""

    def __init__(self, running: int, queued: int) -> None:
        self.running_limit = running
        self.queued_limit = queued
        self.running = 0
        self.waiting: deque[LimitedJob] = deque()
        self.condition = threading.Condition()
        self.peak_outstanding = 0

    def admit(self, job: LimitedJob) -> bool:
        """Take a place (running or queued) at submission; ``False`` when the queue is full."""
        with self.condition:
            if self.running < self.running_limit and not self.waiting:
                self.running += 1
                job.admitted = "running"
            elif len(self.waiting) < self.queued_limit:
                self.waiting.append(job)
                job.admitted = "queued"
            else:
                return False
            self.peak_outstanding = max(self.peak_outstanding, self.running + len(self.waiting))
            return True

    def wait_turn(self, job: LimitedJob) -> None:
        if job.admitted == "running":
            return
        with self.condition:
            while self.waiting[0] is not job or self.running >= self.running_limit:
                self.condition.wait()
            self.waiting.popleft()
            self.running += 1
            self.condition.notify_all()

    def leave(self) -> None:
        with self.condition:
            self.running -= 1
            self.condition.notify_all()


@dataclass
class JobRecord:
    """What the model saw of one job (for tests and the capacity benchmark)."""

    job_id: str
    operation: str
    kind: str
    target: str | None
    submitted: float
    """Modelled seconds at submission."""
    finished: float | None = None
    attempts: int = 0
    conflicts: int = 0
    bytes_billed: int = 0
    error_reason: str | None = None
    queued_seconds: float = 0.0


@dataclass
class _DmlStats:
    inserted_row_count: int = 0
    updated_row_count: int = 0
    deleted_row_count: int = 0


class LimitedJob:
    """A query job as the client returns it: poll it, wait for it, read its statistics."""

    def __init__(self, model: LimitedClient, statement: Statement, record: JobRecord, config: Any) -> None:
        self._model = model
        self.statement = statement
        self.record = record
        self.job_id = record.job_id
        self.labels: dict[str, str] = dict(getattr(config, "labels", None) or {})
        self.location = model.location
        self.statement_type = statement.kind
        self.num_dml_affected_rows: int | None = None
        self.dml_stats: _DmlStats | None = None
        self.total_bytes_billed: int | None = None
        self.total_bytes_processed: int | None = None
        self.error_result: dict[str, str] | None = None
        self.errors: list[dict[str, str]] | None = None
        self._rows: list[Any] = []
        self._error: gexc.GoogleAPICallError | None = None
        self._done = threading.Event()
        self.cancelled = False
        self.admitted: str | None = None

    @property
    def state(self) -> str:
        return "DONE" if self._done.is_set() else "RUNNING"

    def done(self, *args: Any, **kwargs: Any) -> bool:
        return self._done.is_set()

    def running(self) -> bool:
        return not self._done.is_set()

    def reload(self, *args: Any, **kwargs: Any) -> None:
        return None

    def cancel(self, *args: Any, **kwargs: Any) -> bool:
        """Ask for cancellation; like BigQuery, a statement past its commit point still commits."""
        self.cancelled = True
        return True

    def exception(self, timeout: float | None = None) -> gexc.GoogleAPICallError | None:
        self._wait(timeout)
        return self._error

    def result(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> list[Any]:
        """The rows; raises the job's error, or ``concurrent.futures.TimeoutError`` after
        ``timeout`` real seconds while the job goes on (as the client does)."""
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return list(self._rows)

    def _wait(self, timeout: float | None) -> None:
        if not self._done.wait(timeout):
            raise concurrent.futures.TimeoutError(f"job {self.job_id} is still running")

    def _finish(
        self, rows: list[Any], error: gexc.GoogleAPICallError | None, reason: str | None = None
    ) -> None:
        self._rows = rows
        self._error = error
        if error is not None:
            self.error_result = {"reason": reason or "", "message": error.message}
            self.errors = [self.error_result]
            self.record.error_reason = reason
        self.record.finished = self._model.clock.seconds()
        self._done.set()


class LimitedClient:
    """Wraps a real ``bigquery.Client`` (on the emulator) and applies :class:`Limits`.

    ``query``, ``get_job`` and ``cancel_job`` are intercepted; table and dataset calls pass
    through to the emulator.
    """

    def __init__(self, real: bigquery.Client, limits: Limits | None = None, *, location: str = "US") -> None:
        self.real = real
        self.limits = limits or Limits()
        self.location = location
        self.clock = ModelClock(self.limits.time_scale)
        self.jobs: list[JobRecord] = []
        self._jobs_by_id: dict[str, LimitedJob] = {}
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._mutating: dict[str, _Admission] = {}
        self._inserting: dict[str, _Admission] = {}
        self._inserts_today: Counter[str] = Counter()
        self._partition_commits: Counter[tuple[str, str]] = Counter()
        self._rows: dict[str, int] = {}
        self._synthetic_rows: Counter[str] = Counter()
        self._ids = itertools.count(1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    # ------------------------------------------------------------------ the intercepted API
    def query(
        self, sql: str, job_config: Any = None, *, job_id: str | None = None, **kwargs: Any
    ) -> LimitedJob:
        statement = Statement.parse(sql)
        with self._lock:
            job_id = job_id or f"model_{next(self._ids)}"
            if self.limits.unique_job_ids and job_id in self._jobs_by_id:
                raise gexc.Conflict(f"Already Exists: Job {self.real.project}:{self.location}.{job_id}")
            labels = dict(getattr(job_config, "labels", None) or {})
            record = JobRecord(
                job_id, labels.get("operation", ""), statement.kind, statement.target, self.clock.seconds()
            )
            job = LimitedJob(self, statement, record, job_config)
            self._jobs_by_id[job_id] = job
            self.jobs.append(record)
        admission = self._admission(statement)
        if admission is not None and not admission.admit(job):
            assert statement.target is not None
            job._finish(
                [],
                _error(
                    "resourcesExceeded",
                    "Resources exceeded during query execution: Too many DML statements outstanding "
                    f"against table {self._display(statement.target)}, "
                    f"limit is {self.limits.mutating_queued}.",
                ),
                "resourcesExceeded",
            )
            return job
        thread = threading.Thread(
            target=self._run, args=(job, job_config, admission), name=f"bq-model-{job_id}", daemon=True
        )
        thread.start()
        return job

    def get_job(self, job_id: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            job = self._jobs_by_id.get(job_id)
        if job is None:
            raise gexc.NotFound(f"Not found: Job {self.real.project}:{self.location}.{job_id}")
        return job

    def cancel_job(self, job_id: str, *args: Any, **kwargs: Any) -> Any:
        job = self.get_job(job_id)
        job.cancel()
        return job

    # ------------------------------------------------------------------ history size
    def add_synthetic_rows(self, table: str, rows: int) -> None:
        """Count ``rows`` more rows in ``table`` (dataset.table or project.dataset.table) when
        estimating bytes, without writing them: a large history, modelled."""
        self._synthetic_rows[self._key(table)] += rows

    # ------------------------------------------------------------------ statistics
    def count(self, kind: str | None = None, operation: str | None = None) -> int:
        return sum(
            1
            for j in self.jobs
            if (kind is None or j.kind == kind) and (operation is None or j.operation == operation)
        )

    def errors(self, reason: str | None = None) -> list[JobRecord]:
        return [j for j in self.jobs if j.error_reason and (reason is None or j.error_reason == reason)]

    def peak_outstanding(self, table: str) -> int:
        admission = self._mutating.get(self._key(table))
        return 0 if admission is None else admission.peak_outstanding

    # ------------------------------------------------------------------ execution
    def _admission(self, statement: Statement) -> _Admission | None:
        if statement.target is None:
            return None
        table = self._key(statement.target)
        with self._lock:
            if statement.mutating:
                return self._mutating.setdefault(
                    table, _Admission(self.limits.mutating_running, self.limits.mutating_queued)
                )
            if statement.kind == "INSERT":
                self._inserts_today[table] += 1
                if self._inserts_today[table] > self.limits.insert_immediate_per_day:
                    return self._inserting.setdefault(
                        table, _Admission(self.limits.insert_running, self.limits.insert_queued)
                    )
        return None

    def _run(self, job: LimitedJob, config: Any, admission: _Admission | None) -> None:
        statement = job.statement
        record = job.record
        try:
            if admission is not None:
                queued_from = self.clock.seconds()
                admission.wait_turn(job)
                record.queued_seconds = self.clock.seconds() - queued_from
            try:
                billed = self._bytes_billed(statement)
                record.bytes_billed = billed
                cap = getattr(config, "maximum_bytes_billed", None)
                if cap is not None and billed > int(cap):
                    job._finish(
                        [],
                        _error(
                            "bytesBilledLimitExceeded",
                            f"Query exceeded limit for bytes billed: {int(cap)}. "
                            f"{billed} or higher required.",
                        ),
                        "bytesBilledLimitExceeded",
                    )
                    return
                self._attempts(job, config)
            finally:
                if admission is not None:
                    admission.leave()
        except Exception as error:  # a bug in the model must reach the test, not hang it
            if not job.done():
                job._finish([], _error("internalError", f"model failure: {error!r}"), "internalError")

    def _attempts(self, job: LimitedJob, config: Any) -> None:
        statement = job.statement
        record = job.record
        partitions = (
            {(self._key(statement.target), p) for p in self.limits.partitions_of(statement)}
            if statement.conflicts and statement.target is not None
            else set()
        )
        for _attempt in range(1 + self.limits.conflict_reruns):
            record.attempts += 1
            seen = {key: self._partition_commits[key] for key in partitions}
            self._sleep(self.limits.latency(statement))
            with self._commit_lock:
                if any(self._partition_commits[key] != count for key, count in seen.items()):
                    record.conflicts += 1
                    continue
                rows, error, stats = self._execute(statement, config, job.job_id)
                if error is None:
                    for key in partitions:
                        self._partition_commits[key] += 1
                    if statement.target is not None and statement.kind in (*MUTATING, "INSERT"):
                        self._rows.pop(self._key(statement.target), None)
            job.total_bytes_billed = record.bytes_billed
            job.total_bytes_processed = record.bytes_billed
            if stats is not None:
                job.num_dml_affected_rows = stats[0]
                job.dml_stats = stats[1]
            reason = None
            if error is not None and error.errors:
                reason = str(error.errors[0].get("reason", "")) or None
            job._finish(rows, error, reason)
            return
        assert statement.target is not None
        job._finish(
            [],
            _error(
                "invalidQuery",
                f"Could not serialize access to table {self._display(statement.target)} "
                "due to concurrent update",
            ),
            "invalidQuery",
        )

    def _execute(
        self, statement: Statement, config: Any, job_id: str
    ) -> tuple[list[Any], gexc.GoogleAPICallError | None, tuple[int | None, _DmlStats | None] | None]:
        """Run the statement on the emulator (one at a time, as the emulator does anyway)."""
        try:
            real_job = self.real.query(statement.sql, job_config=config, job_retry=None)
            rows = list(real_job.result())
        except gexc.GoogleAPICallError as error:
            return [], error, None
        affected = real_job.num_dml_affected_rows
        if statement.kind not in (*MUTATING, "INSERT"):
            return rows, None, None
        count = int(affected or 0)
        stats = _DmlStats()
        if statement.kind == "UPDATE":
            stats.updated_row_count = count
        elif statement.kind == "DELETE":
            stats.deleted_row_count = count
        else:  # INSERT, MERGE: the adapter's MERGEs insert (an update-MERGE reports updates here too)
            stats.inserted_row_count = count
        return rows, None, (affected, stats)

    def _sleep(self, modelled_seconds: float) -> None:
        time.sleep(modelled_seconds * self.limits.time_scale)

    # ------------------------------------------------------------------ bytes
    def _bytes_billed(self, statement: Statement) -> int:
        total = 0
        for table in statement.referenced:
            rows = self._table_rows(table) if self.limits.estimate_bytes else 0
            size = rows * self.limits.row_bytes
            total += max(self.limits.min_bytes_per_table, size)
        return total

    def _table_rows(self, table: str) -> int:
        key = self._key(table)
        with self._commit_lock:
            cached = self._rows.get(key)
            if cached is None:
                try:
                    (row,) = list(
                        self.real.query(f"SELECT COUNT(*) AS n FROM `{table}`", job_retry=None).result()
                    )
                    cached = int(row[0])
                except gexc.GoogleAPICallError:
                    cached = 0
                self._rows[key] = cached
        return cached + self._synthetic_rows[key]

    # ------------------------------------------------------------------ names
    def _key(self, table: str) -> str:
        """``dataset.table`` whether or not the text names the project."""
        parts = table.replace(":", ".").split(".")
        return ".".join(parts[-2:])

    def _display(self, table: str) -> str:
        return f"{self.real.project}:{self._key(table)}"


def iter_finished(jobs: list[JobRecord]) -> Iterator[JobRecord]:
    return (j for j in jobs if j.finished is not None)


@dataclass
class CapacityReport:
    """Figures a capacity benchmark prints from a model's job records."""

    jobs: int
    mutating: int
    conflicts: int
    reruns: int
    outstanding_errors: int
    bytes_billed: int
    modelled_seconds: float
    per_table_per_minute: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, client: LimitedClient) -> CapacityReport:
        jobs = list(client.jobs)
        seconds = max(client.clock.seconds(), 1e-9)
        per_table: Counter[str] = Counter(j.target for j in jobs if j.kind in MUTATING and j.target)
        return cls(
            jobs=len(jobs),
            mutating=sum(1 for j in jobs if j.kind in MUTATING),
            conflicts=sum(1 for j in jobs if j.error_reason == "invalidQuery"),
            reruns=sum(j.conflicts for j in jobs),
            outstanding_errors=sum(1 for j in jobs if j.error_reason == "resourcesExceeded"),
            bytes_billed=sum(j.bytes_billed for j in jobs),
            modelled_seconds=seconds,
            per_table_per_minute={t: n * 60.0 / seconds for t, n in per_table.items()},
        )
