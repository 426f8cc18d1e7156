"""Count BigQuery jobs and bytes billed per operation, without touching the adapter.

:class:`ObservedClient` wraps a ``bigquery.Client``: every ``query`` job, once its result is
asked for, is reported to the registered listeners as (operation, bytes billed). The operation is
the ``operation`` label every pipestate job carries; bytes billed is the job's
``total_bytes_billed`` (``None`` when BigQuery, or the emulator, does not say). ``pipestate serve``
and ``pipestate worker --metrics-port`` register the metrics' listener; the CLI builds its
BigQuery client wrapped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

JobListener = Callable[[str, "int | None"], None]
"""Called with (operation label, bytes billed or None) once per finished job."""

_listeners: list[JobListener] = []
_lock = threading.Lock()


def add_job_listener(listener: JobListener) -> Callable[[], None]:
    """Register ``listener``; returns the function that removes it."""
    with _lock:
        _listeners.append(listener)

    def remove() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return remove


def _notify(operation: str, bytes_billed: int | None) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(operation, bytes_billed)
        except Exception:  # a metrics bug must never fail a job
            log.exception("BigQuery job listener failed")


class ObservedClient:
    """A ``bigquery.Client`` stand-in that reports every query job to the listeners."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def query(self, sql: str, job_config: Any = None, **kwargs: Any) -> Any:
        job = self._client.query(sql, job_config=job_config, **kwargs)
        labels = getattr(job_config, "labels", None) or {}
        return _ObservedJob(job, str(labels.get("operation", "unlabelled")))


class _ObservedJob:
    def __init__(self, job: Any, operation: str) -> None:
        self._job = job
        self._operation = operation
        self._reported = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)

    def result(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._job.result(*args, **kwargs)
        finally:
            if not self._reported:
                self._reported = True
                billed = getattr(self._job, "total_bytes_billed", None)
                _notify(self._operation, int(billed) if billed is not None else None)
