"""Build a store from command-line options: a SQLAlchemy URL, or a BigQuery project and dataset.

Nothing is imported or connected until :func:`open_store` is called (the BigQuery client library
is an optional extra and is imported lazily).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

from sqlalchemy.engine import make_url

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.domain.errors import InvalidArgument, StorageError
from pipestate.domain.ports import Storage

DEFAULT_DB: Final = "sqlite:///pipestate.db"
DB_ENV: Final = "PIPESTATE_DB"
"""The environment variable that names the store when ``--db`` is not given."""
PROG: Final = "pipestate"


@dataclass(frozen=True)
class StoreOptions:
    db: str | None = None
    bigquery_project: str | None = None
    bigquery_dataset: str | None = None
    bigquery_location: str | None = None

    @classmethod
    def from_command_line(
        cls,
        db: str | None,
        bigquery_project: str | None,
        bigquery_dataset: str | None,
        bigquery_location: str | None,
        environ: Mapping[str, str],
    ) -> StoreOptions:
        """``--db`` wins; without it and without BigQuery options, ``$PIPESTATE_DB`` names the store."""
        if db is None and bigquery_project is None and bigquery_dataset is None:
            db = environ.get(DB_ENV) or None
        return cls(db, bigquery_project, bigquery_dataset, bigquery_location)

    @property
    def uses_bigquery(self) -> bool:
        return self.bigquery_project is not None or self.bigquery_dataset is not None

    def describe(self) -> str:
        if self.uses_bigquery:
            return f"bigquery://{self.bigquery_project}/{self.bigquery_dataset}"
        return self.db or DEFAULT_DB


def open_store(options: StoreOptions) -> Storage:
    """The store the options name (not yet schema-checked).

    Raises:
        InvalidArgument: contradictory or incomplete options.
        StorageError: the backend cannot be set up (missing driver or extra, bad URL).
    """
    if options.uses_bigquery:
        if options.db is not None:
            raise InvalidArgument(
                "--db", options.db, "give either --db or --bigquery-project/--bigquery-dataset"
            )
        if not options.bigquery_project or not options.bigquery_dataset:
            raise InvalidArgument(
                "--bigquery-dataset" if options.bigquery_project else "--bigquery-project",
                None,
                "BigQuery needs both --bigquery-project and --bigquery-dataset",
            )
        return _bigquery(options.bigquery_project, options.bigquery_dataset, options.bigquery_location)
    url = options.db or DEFAULT_DB
    if "://" not in url:
        raise InvalidArgument("--db", url, "expected a URL such as sqlite:///pipestate.db")
    return SqlAlchemyStorage.from_url(url)


def require_existing_sqlite_file(options: StoreOptions) -> None:
    """For commands that only read: refuse a SQLite file that does not exist, instead of creating
    an empty database by opening it.

    Raises:
        StorageError: the file named by the URL does not exist.
    """
    if not is_sqlite(options):
        return
    try:
        database = make_url(options.db or DEFAULT_DB).database
    except Exception:  # a malformed URL: open_store reports it
        return
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    if not Path(database).exists():
        raise StorageError(f"no database at {database} (run '{PROG} init' first, or check --db)")


def is_sqlite(options: StoreOptions) -> bool:
    return not options.uses_bigquery and (options.db or DEFAULT_DB).startswith("sqlite")


def _bigquery(project: str, dataset: str, location: str | None) -> Storage:
    try:
        adapter = importlib.import_module("pipestate.adapters.bigquery")
        bigquery = importlib.import_module("google.cloud.bigquery")
    except ImportError as exc:
        raise StorageError(
            f"BigQuery support is not installed ({exc.name or exc}): pip install 'pipestate[bigquery]'"
        ) from exc
    storage_class: Any = getattr(adapter, "BigQueryStorage", None)
    if storage_class is None:
        raise StorageError("this pipestate build has no BigQuery adapter (adapters.bigquery.BigQueryStorage)")
    try:
        observed = importlib.import_module("pipestate.adapters.bigquery.observed")
        client = observed.ObservedClient(bigquery.Client(project=project))  # jobs and bytes for metrics
    except Exception as exc:  # google.auth errors, bad project: a one-line message for the CLI
        raise StorageError(f"cannot create a BigQuery client for project {project!r}: {exc}") from exc
    return cast(Storage, storage_class(client, dataset, location=location))
