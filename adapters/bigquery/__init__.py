"""The Storage port on BigQuery (``pip install pipestate[bigquery]``); see ``docs/bigquery.md``."""

from __future__ import annotations

from pipestate.adapters.bigquery.retry import RetrySettings, is_transient
from pipestate.adapters.bigquery.storage import BigQueryStorage

__all__ = ["BigQueryStorage", "RetrySettings", "is_transient"]
