"""A ``bigquery.Client`` stand-in that counts jobs and injects real ``google.api_core`` errors.

The emulator serializes writes and has no quotas, so the retry paths are exercised here: a
:class:`Fault` makes chosen ``query`` calls raise, either *before* the job runs (the request was
rejected) or *after* it ran to completion (the job was applied but its response was lost, the
ambiguous case of DESIGN rule 2).
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery


def job_error(reason: str, message: str) -> gexc.GoogleAPICallError:
    """The exception ``google.cloud.bigquery`` raises for a job that ended with this
    ``errorResult``: built by the client's own code from a DONE job resource (no network)."""
    client = bigquery.Client(project="p", credentials=AnonymousCredentials(), location="US")  # type: ignore[no-untyped-call]
    error = {"reason": reason, "message": message}
    resource = {
        "jobReference": {"projectId": "p", "jobId": "j", "location": "US"},
        "configuration": {"query": {"query": "SELECT 1"}},
        "status": {"state": "DONE", "errorResult": error, "errors": [error]},
    }
    job = bigquery.QueryJob.from_api_repr(resource, client)
    job._set_future_result()  # type: ignore[no-untyped-call]
    found = job.exception(timeout=0)  # type: ignore[no-untyped-call]
    assert isinstance(found, gexc.GoogleAPICallError)
    return found


class DelayedJob:
    """A job BigQuery accepted that outlives the client's wait: it reaches DONE only after
    ``polls`` looks at it (``result`` or ``reload``), then commits (runs on the emulator) or, when
    ``stopped`` and cancelled first, ends as BigQuery ends a cancelled job."""

    def __init__(
        self, owner: ScriptedClient, sql: str, config: Any, kwargs: dict[str, Any], polls: int
    ) -> None:
        self._owner = owner
        self._sql = sql
        self._config = config
        self._kwargs = kwargs
        self.job_id: str = kwargs["job_id"]
        self.polls_left = polls
        self.cancelled = False
        self.cancel_stops = False
        self.poll_error: BaseException | None = None
        self.real: Any = None
        self._stopped: dict[str, str] | None = None

    def _tick(self) -> None:
        self.polls_left -= 1
        if self.real is not None or self._stopped is not None:
            return
        if self.cancelled and self.cancel_stops:
            self._stopped = {"reason": "stopped", "message": "Job execution was cancelled: User requested"}
            return
        if self.polls_left > 0 and not self.cancelled:
            return  # still running (a cancellation that does not stop it lands as it commits)
        self.real = self._owner.real.query(self._sql, job_config=self._config, **self._kwargs)
        self.real.result()
        self._owner.committed.append(self.job_id)

    @property
    def state(self) -> str:
        return "DONE" if self.real is not None or self._stopped is not None else "RUNNING"

    @property
    def error_result(self) -> Any:
        return self._stopped if self.real is None else self.real.error_result

    @property
    def errors(self) -> Any:
        return None if self._stopped is None else [self._stopped]

    @property
    def dml_stats(self) -> Any:
        return None if self.real is None else self.real.dml_stats

    @property
    def num_dml_affected_rows(self) -> Any:
        return None if self.real is None else self.real.num_dml_affected_rows

    def reload(self, **_: Any) -> None:
        self._tick()

    def result(self, **kwargs: Any) -> Any:
        self._tick()
        if self._stopped is not None:
            raise job_error(self._stopped["reason"], self._stopped["message"])
        if self.real is None:
            if self.poll_error is not None:  # polling itself failed (getQueryResults answered 5xx)
                error, self.poll_error = self.poll_error, None
                raise error
            time.sleep(min(float(kwargs.get("timeout") or 0.01), 0.01))  # result(timeout) blocks
            raise concurrent.futures.TimeoutError()
        return self.real.result(**kwargs)


class _Uncounted:
    """A finished job whose statistics carry no DML row count."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.dml_stats = None
        self.num_dml_affected_rows = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@dataclass
class Job:
    """One ``client.query`` call as the adapter made it."""

    sql: str
    config: bigquery.QueryJobConfig
    kwargs: dict[str, Any]

    @property
    def operation(self) -> str:
        return str(self.config.labels.get("operation", ""))

    @property
    def kind(self) -> str:
        return self.sql.lstrip().split(None, 1)[0].upper()


@dataclass
class Fault:
    error: BaseException | None
    operation: str | None = None
    kind: str | None = None
    times: int = 1
    after_commit: bool = False
    raised: int = 0
    delay_polls: int = 0
    """> 0: the job is accepted but runs only after this many polls (a client-side timeout)."""
    cancel_stops: bool = False
    """With ``delay_polls``: a cancellation stops it (nothing committed); otherwise the job was
    already committing and a cancellation lands after the commit. ``error``, if any, is raised by
    the first poll (a failed ``getQueryResults``)."""
    uncounted: bool = False
    """The job runs but its statistics carry no DML row count."""

    def matches(self, job: Job) -> bool:
        return (
            self.raised < self.times
            and (self.operation is None or job.operation == self.operation)
            and (self.kind is None or job.kind == self.kind)
        )


@dataclass
class ScriptedClient:
    """Delegates to a real client; records every job; raises the scripted faults."""

    real: bigquery.Client
    jobs: list[Job] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    delayed: dict[str, DelayedJob] = field(default_factory=dict)
    committed: list[str] = field(default_factory=list)
    """Ids of delayed jobs that ran (committed) on the emulator."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def fail(self, error: BaseException | None, **match: Any) -> Fault:
        fault = Fault(error, **match)
        self.faults.append(fault)
        return fault

    def query(self, sql: str, job_config: bigquery.QueryJobConfig | None = None, **kwargs: Any) -> Any:
        job = Job(sql, job_config or bigquery.QueryJobConfig(), kwargs)
        self.jobs.append(job)
        fault = next((f for f in self.faults if f.matches(job)), None)
        if fault is not None and fault.delay_polls:
            fault.raised += 1
            delayed = DelayedJob(self, sql, job_config, kwargs, fault.delay_polls)
            delayed.cancel_stops = fault.cancel_stops
            delayed.poll_error = fault.error
            self.delayed[delayed.job_id] = delayed
            return delayed
        if fault is not None and fault.uncounted:
            fault.raised += 1
            real_job = self.real.query(sql, job_config=job_config, **kwargs)
            real_job.result()
            return _Uncounted(real_job)
        if fault is not None and not fault.after_commit:
            fault.raised += 1
            assert fault.error is not None
            raise fault.error
        real_job = self.real.query(sql, job_config=job_config, **kwargs)
        if fault is not None:
            real_job.result()  # applied on the server …
            fault.raised += 1
            assert fault.error is not None
            raise fault.error  # … but the client never hears back
        return real_job

    def get_job(self, job_id: str, **kwargs: Any) -> Any:
        if job_id in self.delayed:
            return self.delayed[job_id]
        return self.real.get_job(job_id, **kwargs)

    def cancel_job(self, job_id: str, **kwargs: Any) -> Any:
        if job_id in self.delayed:
            self.delayed[job_id].cancelled = True
            return self.delayed[job_id]
        return self.real.cancel_job(job_id, **kwargs)

    def count(self, operation: str | None = None, kind: str | None = None) -> int:
        return sum(
            1
            for j in self.jobs
            if (operation is None or j.operation == operation) and (kind is None or j.kind == kind)
        )

    def reset(self) -> None:
        self.jobs.clear()
        self.faults.clear()
        self.delayed.clear()
        self.committed.clear()
