"""Errors only the BigQuery adapter raises; all are :class:`~pipestate.domain.errors.StorageError`s,
so callers that handle storage errors handle these too."""

from __future__ import annotations

from pipestate.domain.errors import StorageError, StorageUnavailable


class BytesBilledLimitExceeded(StorageError):
    """A job would bill more than the storage's ``maximum_bytes_billed``; never retried.

    The table has outgrown the cap (or a statement lost its filter): raise the cap or shrink
    what the statement reads. BigQuery reports it as reason ``bytesBilledLimitExceeded``, which
    the client maps to HTTP 500; the adapter classifies by the reason, so it is not retried.
    """


class JobOutcomeUnknown(StorageUnavailable):
    """A job was submitted but whether it committed could not be learned within the wait budget.

    The adapter does not resubmit (a second job could apply the change twice); ``job_id`` says
    which job to look at. Transient for the caller: reading the state again tells what happened.
    """


class DuplicateRows(StorageError):
    """A compare-and-set or a lease statement matched more than one row for one key.

    Corruption, not a lost race: BigQuery does not enforce keys, and an insert-only MERGE does not
    conflict with a concurrent one, so two writers can each insert the same id. The adapter
    prevents it (a writer lease serialises inserts) and reports it loudly if it still happens.
    """

    def __init__(self, table: str, key: str, rows: int, *, operation: str = "") -> None:
        self.table = table
        self.key = key
        self.rows = rows
        super().__init__(
            f"{rows} rows of {table} have the key {key!r}; a key must be unique (repair by keeping "
            "the newest version)",
            operation=operation,
        )
