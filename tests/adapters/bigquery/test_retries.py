"""The retry layer, driven by real ``google.api_core`` exceptions injected at the client boundary.

The emulator never produces these (it serializes writes and has no quotas), so each test scripts
them: rejected before the job ran, or raised after the job was applied (a lost response).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc

from pipestate.adapters.bigquery import BigQueryStorage, RetrySettings, is_transient
from pipestate.adapters.bigquery.errors import BytesBilledLimitExceeded
from pipestate.adapters.bigquery.retry import ErrorClass, classify, retrying_for
from pipestate.domain.errors import StorageError, StorageUnavailable
from pipestate.domain.ports import RunFilter
from pipestate.domain.queue import QueueItem, QueueStatus
from pipestate.domain.run import PipelineRun, RunState
from tests.adapters.bigquery.faults import ScriptedClient, job_error

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SERIALIZE = "Could not serialize access to table p:d.x_meta_scheduled_runs due to concurrent update"
ABORTED = "Transaction is aborted due to concurrent update against table p:d.x_meta_pipeline_queue"
TOO_MANY_DML = "Resources exceeded during query execution: Too many DML statements outstanding against table"
DML_QUEUE_QUOTA = (
    "Quota exceeded: Your table exceeded quota for total number of dml jobs writing to a table, "
    "pending + running"
)
BYTES_CAP = "Query exceeded limit for bytes billed: 1000. 10485760 or higher required."


def _run(n: int = 0) -> PipelineRun:
    return PipelineRun.new(tenant_id="t", config_id=f"c{n}", scheduled_time=T0, now=T0)


def _item(n: int, priority: int = 5) -> QueueItem:
    at = T0 + timedelta(microseconds=n)
    return QueueItem(queue_id=f"q{n:04d}", tenant_id="t", config={"n": n}, priority=priority, created_at=at)


async def _count_runs(storage: BigQueryStorage, run_id: str) -> int:
    rows = storage.client.query(
        f"SELECT COUNT(*) AS n FROM `{storage.table_id('x_meta_scheduled_runs')}` WHERE run_id = '{run_id}'"
    ).result()
    return int(next(iter(rows))["n"])


# --------------------------------------------------------------------------- classification
@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (gexc.TooManyRequests("rate"), True),
        (gexc.InternalServerError("backend"), True),
        (gexc.ServiceUnavailable("down"), True),
        (gexc.BadGateway("gw"), True),
        (gexc.GatewayTimeout("gw"), True),
        (gexc.BadRequest(SERIALIZE), True),
        (gexc.BadRequest(ABORTED), True),
        (gexc.BadRequest(TOO_MANY_DML), True),
        (gexc.Forbidden("Exceeded rate limits: too many table update operations for this table"), True),
        (gexc.BadRequest("boom", errors=[{"reason": "backendError"}]), True),
        (ConnectionError("reset by peer"), True),
        (TimeoutError(), True),
        (gexc.BadRequest("Syntax error: Unexpected identifier at [1:1]"), False),
        (gexc.BadRequest("x", errors=[{"reason": "invalidQuery"}]), False),
        (gexc.Forbidden("Access Denied: Table p:d.t: User does not have permission"), False),
        (gexc.NotFound("Not found: Table p:d.t"), False),
        (
            gexc.Forbidden("Quota exceeded: daily table update limit", errors=[{"reason": "quotaExceeded"}]),
            False,
        ),
        (ValueError("not a storage error"), False),
    ],
)
def test_transient_errors_are_told_from_permanent_ones(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    ("reason", "message", "expected", "status"),
    [
        # The client maps bytesBilledLimitExceeded to a 500: only its reason says "permanent".
        ("bytesBilledLimitExceeded", BYTES_CAP, ErrorClass.BYTE_CAP, 500),
        ("quotaExceeded", DML_QUEUE_QUOTA, ErrorClass.CONTENTION, 403),
        (
            "quotaExceeded",
            "Quota exceeded: Your project exceeded quota for free query bytes scanned",
            ErrorClass.PERMANENT,
            403,
        ),
        ("invalidQuery", SERIALIZE, ErrorClass.CONTENTION, 400),
        ("resourcesExceeded", TOO_MANY_DML, ErrorClass.CONTENTION, 400),
        (
            "rateLimitExceeded",
            "Exceeded rate limits: too many table update operations",
            ErrorClass.TRANSIENT,
            429,
        ),
        ("backendError", "Backend error", ErrorClass.TRANSIENT, 500),
        ("internalError", "An internal error occurred", ErrorClass.TRANSIENT, 500),
        ("stopped", "Job execution was cancelled: Job timed out after 5m", ErrorClass.TRANSIENT, 200),
        ("invalidQuery", "Syntax error: Unexpected keyword AT at [1:9]", ErrorClass.PERMANENT, 400),
        ("notFound", "Not found: Table p:d.t", ErrorClass.PERMANENT, 404),
        ("accessDenied", "Access Denied: Table p:d.t", ErrorClass.PERMANENT, 403),
    ],
)
def test_job_errors_are_classified_by_reason_first(
    reason: str, message: str, expected: ErrorClass, status: int
) -> None:
    error = job_error(reason, message)  # built by google-cloud-bigquery from a DONE job's errorResult

    assert error.code == status
    assert classify(error) is expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (auth_exc.TransportError("connection reset while refreshing"), ErrorClass.TRANSIENT),
        (auth_exc.RefreshError("temporarily unavailable", retryable=True), ErrorClass.TRANSIENT),
        (auth_exc.RefreshError("invalid_grant: account disabled"), ErrorClass.PERMANENT),
        (auth_exc.DefaultCredentialsError("no credentials"), ErrorClass.PERMANENT),
    ],
)
def test_google_auth_errors_are_typed_and_retried_when_transient(
    error: BaseException, expected: ErrorClass
) -> None:
    assert classify(error) is expected


async def test_a_byte_cap_hit_is_permanent_loud_and_not_retried(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    client.fail(job_error("bytesBilledLimitExceeded", BYTES_CAP), operation="find_runs", times=5)

    with pytest.raises(BytesBilledLimitExceeded) as caught:
        await storage.find_runs(RunFilter())

    assert not isinstance(caught.value, StorageUnavailable)
    assert client.count("find_runs") == 1
    assert "maximum_bytes_billed" in str(caught.value)
    assert caught.value.extra["reasons"] == ["bytesBilledLimitExceeded"]


def _first_wait(settings: RetrySettings, error: BaseException) -> float:
    waits: list[float] = []

    def fail() -> None:
        raise error

    retrying = retrying_for(settings, lambda state: waits.append(state.upcoming_sleep))
    retrying.sleep = lambda _seconds: None
    with pytest.raises(type(error)):
        retrying(fail)
    return min(waits)


def test_contention_waits_long_and_other_transient_errors_short() -> None:
    settings = RetrySettings(max_attempts=4, initial_wait=0.5, max_wait=1.0, contention_wait=5.0)

    assert _first_wait(settings, job_error("quotaExceeded", DML_QUEUE_QUOTA)) >= 5.0
    assert _first_wait(settings, gexc.BadRequest(SERIALIZE)) >= 5.0
    assert _first_wait(settings, job_error("backendError", "Backend error")) <= 1.0


async def test_a_full_dml_queue_is_retried_until_the_statement_runs(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    client.fail(job_error("quotaExceeded", DML_QUEUE_QUOTA), operation="insert_runs", times=2)

    assert await storage.insert_runs([_run()]) == 1

    assert client.count("insert_runs", "MERGE") == 3


# --------------------------------------------------------------------------- retried, then success
@pytest.mark.parametrize(
    "error",
    [
        gexc.BadRequest(SERIALIZE),
        gexc.BadRequest(ABORTED),
        gexc.BadRequest(TOO_MANY_DML),
        gexc.TooManyRequests("Exceeded rate limits"),
        gexc.InternalServerError("An internal error occurred"),
        gexc.ServiceUnavailable("Service unavailable"),
    ],
    ids=["serialize", "aborted", "too-many-dml", "429", "500", "503"],
)
async def test_insert_retried_after_transient_errors_creates_each_run_once(
    storage: BigQueryStorage, client: ScriptedClient, error: gexc.GoogleAPICallError
) -> None:
    runs = [_run(i) for i in range(3)]
    client.fail(error, operation="insert_runs", times=2)

    inserted = await storage.insert_runs(runs)

    assert inserted == 3
    assert client.count("insert_runs") == 3  # two rejected attempts, one that ran
    assert [await _count_runs(storage, r.run_id) for r in runs] == [1, 1, 1]


async def test_update_retried_after_serialization_errors_applies_once(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    run = _run()
    await storage.insert_runs([run])
    updated = run.copy()
    updated.make_pending(T0)
    client.fail(gexc.BadRequest(SERIALIZE), operation="update_run", times=2)

    assert await storage.update_run(updated, expected_version=1) is True

    stored = await storage.get_run(run.run_id)
    assert stored == updated and stored is not None and stored.version == 2
    assert client.count("update_run", "UPDATE") == 3


# --------------------------------------------------------------------------- lost responses (ambiguous)
async def test_insert_whose_response_was_lost_does_not_duplicate(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    runs = [_run(i) for i in range(5)]
    client.fail(gexc.InternalServerError("lost"), operation="insert_runs", after_commit=True)

    await storage.insert_runs(runs)

    assert [await _count_runs(storage, r.run_id) for r in runs] == [1] * 5


async def test_update_whose_response_was_lost_reads_back_and_reports_success(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    run = _run()
    await storage.insert_runs([run])
    updated = run.copy()
    updated.make_pending(T0)
    client.fail(gexc.ServiceUnavailable("lost"), operation="update_run", kind="UPDATE", after_commit=True)

    assert await storage.update_run(updated, expected_version=1) is True

    assert await storage.get_run(run.run_id) == updated
    # jobs.insert failed with a 503 after BigQuery created the job: the adapter looked the job
    # up by its deterministic id and took its result; no second job, no read-back.
    assert client.count("update_run", "UPDATE") == 1
    assert client.count("update_run", "SELECT") == 0


async def test_stale_update_after_a_retry_is_still_a_lost_race(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    run = _run()
    await storage.insert_runs([run])
    winner = run.copy()
    winner.cancel(T0, reason="first")
    await storage.update_run(winner, expected_version=1)
    loser = run.copy()
    loser.make_pending(T0)
    client.fail(gexc.BadRequest(SERIALIZE), operation="update_run", kind="UPDATE")

    assert await storage.update_run(loser, expected_version=1) is False
    assert await storage.get_run(run.run_id) == winner


async def test_batch_update_whose_response_was_lost_counts_what_is_stored(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    runs = [_run(i) for i in range(4)]
    await storage.insert_runs(runs)
    pairs = []
    for run in runs:
        moved = run.copy()
        moved.make_pending(T0)
        pairs.append((moved, 1))
    pairs[3] = (pairs[3][0], 7)  # stale: not applied
    client.fail(gexc.ServiceUnavailable("lost"), operation="update_runs", kind="UPDATE", after_commit=True)

    assert await storage.update_runs(pairs) == 3

    stored = {r.run_id: r for r in await storage.get_runs([r.run_id for r in runs])}
    assert [stored[r.run_id].state for r in runs] == [RunState.PENDING] * 3 + [RunState.SCHEDULED]
    assert [stored[r.run_id].version for r in runs] == [2, 2, 2, 1]
    assert client.count("update_runs") == 1  # the job was found by its id, not submitted again


async def test_claim_whose_response_was_lost_does_not_claim_a_second_batch(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    await storage.insert_queue_items([_item(i) for i in range(10)])
    client.fail(
        gexc.ServiceUnavailable("lost"), operation="claim_queue_items", kind="UPDATE", after_commit=True
    )

    claimed = await storage.claim_queue_items(
        worker_id="w", claim_token="tok", now=T0, lease_expires_at=T0 + timedelta(minutes=5), limit=3
    )

    assert [i.queue_id for i in claimed] == ["q0000", "q0001", "q0002"]
    assert all(i.attempts == 1 and i.version == 2 for i in claimed)
    assert await storage.count_queue_items(QueueStatus.PROCESSING) == 3
    assert client.count("claim_queue_items") == 2  # the UPDATE (found by its id), the SELECT


async def test_transition_whose_response_was_lost_reports_success(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    await storage.insert_queue_items([_item(1)])
    lease = T0 + timedelta(minutes=5)
    [item] = await storage.claim_queue_items(
        worker_id="w", claim_token="tok", now=T0, lease_expires_at=lease, limit=1
    )
    client.fail(
        gexc.InternalServerError("lost"), operation="transition_queue_item", kind="UPDATE", after_commit=True
    )
    client.fail(
        gexc.InternalServerError("lost"), operation="extend_queue_lease", kind="UPDATE", after_commit=True
    )

    extended = await storage.extend_queue_lease(
        item.queue_id, claim_token="tok", lease_expires_at=lease + timedelta(minutes=1)
    )
    done = await storage.transition_queue_item(
        item.queue_id,
        from_status=QueueStatus.PROCESSING,
        to_status=QueueStatus.COMPLETED,
        now=T0 + timedelta(seconds=9),
        claim_token="tok",
    )

    assert (extended, done) == (True, True)
    stored = await storage.get_queue_item(item.queue_id)
    assert stored is not None and stored.status is QueueStatus.COMPLETED and stored.version == 4


# --------------------------------------------------------------------------- permanent errors
async def test_syntax_error_surfaces_at_once_with_job_id_and_statement(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    client.fail(
        gexc.BadRequest("Syntax error: Unexpected keyword WHERE at [1:42]"), operation="find_runs", times=5
    )

    with pytest.raises(StorageError) as caught:
        await storage.find_runs(RunFilter())

    error = caught.value
    assert not isinstance(error, StorageUnavailable)
    assert client.count("find_runs") == 1
    assert error.job_id is not None and error.job_id.startswith("pipestate_find_runs_")
    assert error.operation == "find_runs" and error.extra["statement"] == "SELECT"
    assert error.job_id in str(error) and "Syntax error" in str(error)


async def test_permission_error_is_not_retried(storage: BigQueryStorage, client: ScriptedClient) -> None:
    client.fail(
        gexc.Forbidden("Access Denied: Table x: User does not have bigquery.tables.updateData"), times=5
    )

    with pytest.raises(StorageError) as caught:
        await storage.insert_runs([_run()])

    assert not isinstance(caught.value, StorageUnavailable)
    assert client.count() == 1
    assert caught.value.extra["statement"] == "UPDATE"  # taking the writer lease, before the MERGE


async def test_missing_table_is_a_storage_error_from_the_emulator(client: ScriptedClient) -> None:
    storage = BigQueryStorage(client, "pst_never_created")  # type: ignore[arg-type]
    try:
        with pytest.raises(StorageError) as caught:
            await storage.get_run("r")
    finally:
        await storage.close()

    assert not isinstance(caught.value, StorageUnavailable)
    assert isinstance(caught.value.__cause__, gexc.NotFound)
    assert client.count() == 1 and caught.value.job_id == client.jobs[0].kwargs["job_id"]


async def test_exhausted_retries_raise_storage_unavailable(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    client.fail(gexc.ServiceUnavailable("down"), times=100)

    with pytest.raises(StorageUnavailable) as caught:
        await storage.get_run("r")

    assert client.count() == 4  # FAST_RETRY_KW max_attempts
    assert caught.value.extra["attempts"] == 4
    assert caught.value.job_id == client.jobs[-1].kwargs["job_id"]


async def test_only_one_layer_retries(storage: BigQueryStorage, client: ScriptedClient) -> None:
    await storage.get_run("r")

    [job] = client.jobs
    assert job.kwargs["job_retry"] is None and job.kwargs["retry"] is None


async def test_a_token_refresh_that_fails_in_transit_is_retried(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    client.fail(auth_exc.TransportError("connection reset while refreshing the token"), operation="get_run")

    assert await storage.get_run("r") is None

    assert client.count("get_run") == 2


async def test_revoked_credentials_are_a_typed_permanent_error(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    client.fail(auth_exc.RefreshError("invalid_grant: Token has been expired or revoked."), times=5)

    with pytest.raises(StorageError, match="invalid_grant") as caught:
        await storage.get_run("r")

    assert not isinstance(caught.value, StorageUnavailable)
    assert isinstance(caught.value.__cause__, auth_exc.RefreshError)
    assert client.count() == 1
