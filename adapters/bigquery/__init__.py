"""The Storage port on BigQuery (``pip install pipestate[bigquery]``); see ``docs/bigquery.md``."""

from __future__ import annotations

from pipestate.adapters.bigquery.errors import BytesBilledLimitExceeded, DuplicateRows, JobOutcomeUnknown
from pipestate.adapters.bigquery.retry import RetrySettings, is_transient
from pipestate.adapters.bigquery.storage import BigQueryStorage

__all__ = [
    "BigQueryStorage",
    "BytesBilledLimitExceeded",
    "DuplicateRows",
    "JobOutcomeUnknown",
    "RetrySettings",
    "is_transient",
]
