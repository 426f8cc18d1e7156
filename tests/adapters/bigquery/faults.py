"""A ``bigquery.Client`` stand-in that counts jobs and injects real ``google.api_core`` errors.

The emulator serializes writes and has no quotas, so the retry paths are exercised here: a
:class:`Fault` makes chosen ``query`` calls raise, either *before* the job runs (the request was
rejected) or *after* it ran to completion (the job was applied but its response was lost, the
ambiguous case of DESIGN rule 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.cloud import bigquery


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
    error: BaseException
    operation: str | None = None
    kind: str | None = None
    times: int = 1
    after_commit: bool = False
    raised: int = 0

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

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def fail(self, error: BaseException, **match: Any) -> Fault:
        fault = Fault(error, **match)
        self.faults.append(fault)
        return fault

    def query(self, sql: str, job_config: bigquery.QueryJobConfig | None = None, **kwargs: Any) -> Any:
        job = Job(sql, job_config or bigquery.QueryJobConfig(), kwargs)
        self.jobs.append(job)
        fault = next((f for f in self.faults if f.matches(job)), None)
        if fault is not None and not fault.after_commit:
            fault.raised += 1
            raise fault.error
        real_job = self.real.query(sql, job_config=job_config, **kwargs)
        if fault is not None:
            real_job.result()  # applied on the server …
            fault.raised += 1
            raise fault.error  # … but the client never hears back
        return real_job

    def count(self, operation: str | None = None, kind: str | None = None) -> int:
        return sum(
            1
            for j in self.jobs
            if (operation is None or j.operation == operation) and (kind is None or j.kind == kind)
        )

    def reset(self) -> None:
        self.jobs.clear()
        self.faults.clear()
