"""The job lifecycle (DESIGN rule 5): one job per attempt with a deterministic id; a job that
outlives the client's wait is polled, or cancelled and waited for, never run a second time.

The faults sit at the client boundary (``ScriptedClient``): a job BigQuery accepted that finishes
only after several polls (the client-side ``result(timeout)`` raises meanwhile), a lost
``jobs.insert`` answer, a job without DML statistics. Everything else is the emulator.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.api_core import exceptions as gexc

from pipestate.adapters.bigquery import BigQueryStorage, RetrySettings
from pipestate.domain.queue import QueueItem, QueueStatus
from pipestate.domain.run import PipelineRun
from tests.adapters.bigquery.conftest import FAST_RETRY_KW
from tests.adapters.bigquery.faults import ScriptedClient

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _run(n: int = 0) -> PipelineRun:
    return PipelineRun.new(tenant_id="t", config_id=f"c{n}", scheduled_time=T0, now=T0)


async def _stored_rows(storage: BigQueryStorage, run_id: str) -> int:
    rows = storage.client.query(
        f"SELECT COUNT(*) AS n FROM `{storage.table_id('x_meta_scheduled_runs')}` WHERE run_id = '{run_id}'"
    ).result()
    return int(next(iter(rows))["n"])


async def test_a_job_that_outlives_the_client_timeout_is_polled_until_it_commits(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    run = _run()
    await storage.insert_runs([run])
    moved = run.copy()
    moved.make_pending(T0)
    client.reset()
    # result(timeout) raises concurrent.futures.TimeoutError four times; the job then commits.
    client.fail(None, operation="update_run", kind="UPDATE", delay_polls=5)

    assert await storage.update_run(moved, expected_version=1) is True

    submitted = [j.kwargs["job_id"] for j in client.jobs if j.operation == "update_run"]
    assert len(submitted) == 1  # no second job while the first could still commit
    assert client.committed == submitted  # and that one job is the one that applied the change
    assert await storage.get_run(run.run_id) == moved
    assert submitted[0].startswith("pipestate_update_run_") and submitted[0].endswith("_1")


async def test_a_job_past_its_budget_is_cancelled_and_only_then_resubmitted(
    client: ScriptedClient, dataset: str
) -> None:
    storage = BigQueryStorage(
        client,  # type: ignore[arg-type]
        dataset,
        retry=RetrySettings(**FAST_RETRY_KW),
        job_timeout=0.05,
        cancel_wait=5.0,
    )
    await storage.create_schema()
    try:
        runs = [_run(i) for i in range(3)]
        client.reset()
        # The first MERGE never finishes within job_timeout; cancelled, it stops without committing.
        client.fail(None, operation="insert_runs", kind="MERGE", delay_polls=10_000, cancel_stops=True)

        assert await storage.insert_runs(runs) == 3

        merges = [j.kwargs["job_id"] for j in client.jobs if j.operation == "insert_runs"]
        first = client.delayed[merges[0]]
        assert first.cancelled and first.state == "DONE" and first.real is None
        assert [m.rsplit("_", 1)[1] for m in merges] == ["1", "2"]  # same call, next attempt
        assert [await _stored_rows(storage, r.run_id) for r in runs] == [1, 1, 1]
    finally:
        await storage.drop_dataset()
        await storage.close()


async def test_a_cancelled_job_that_committed_anyway_counts_as_done(
    client: ScriptedClient, dataset: str
) -> None:
    storage = BigQueryStorage(
        client,  # type: ignore[arg-type]
        dataset,
        retry=RetrySettings(**FAST_RETRY_KW),
        job_timeout=0.05,
        cancel_wait=5.0,
    )
    await storage.create_schema()
    try:
        run = _run()
        client.reset()
        client.fail(None, operation="insert_runs", kind="MERGE", delay_polls=10_000, cancel_stops=False)

        assert await storage.insert_runs([run]) == 1

        assert client.count("insert_runs") == 1
        assert await _stored_rows(storage, run.run_id) == 1
    finally:
        await storage.drop_dataset()
        await storage.close()


async def test_a_5xx_on_jobs_insert_looks_the_job_up_before_any_resubmission(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    runs = [_run(i) for i in range(4)]
    client.fail(gexc.InternalServerError("backend error"), operation="insert_runs", after_commit=True)

    assert await storage.insert_runs(runs) == 4  # the count of the job that ran

    assert client.count("insert_runs") == 1
    assert [await _stored_rows(storage, r.run_id) for r in runs] == [1] * 4


async def test_a_5xx_on_jobs_insert_of_a_job_never_created_is_resubmitted(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    client.fail(gexc.ServiceUnavailable("unavailable"), operation="insert_runs")

    assert await storage.insert_runs([_run()]) == 1

    ids = [j.kwargs["job_id"] for j in client.jobs if j.operation == "insert_runs"]
    assert [i.rsplit("_", 1)[1] for i in ids] == ["1", "2"]
    assert len({i.rsplit("_", 1)[0] for i in ids}) == 1  # one logical call


async def test_a_missing_dml_count_is_unknown_not_zero(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    run = _run()
    await storage.insert_runs([run])
    moved = run.copy()
    moved.make_pending(T0)
    client.fail(None, operation="update_run", kind="UPDATE", uncounted=True)

    assert await storage.update_run(moved, expected_version=1) is True  # read back, not "stale"

    assert client.count("update_run", "SELECT") == 1
    client.fail(None, operation="insert_queue_items", kind="MERGE", uncounted=True)
    item = QueueItem(queue_id="q1", tenant_id="t", config={}, priority=5, created_at=T0)
    await storage.insert_queue_items([item])
    stored = await storage.get_queue_item("q1")
    assert stored is not None and stored.status is QueueStatus.QUEUED


async def test_a_claim_that_waited_in_the_dml_queue_gets_its_whole_lease(storage: BigQueryStorage) -> None:
    from datetime import timedelta

    await storage.insert_queue_items(
        [QueueItem(queue_id=f"q{i}", tenant_id="t", config={}, priority=5, created_at=T0) for i in range(2)]
    )
    lease = T0 + timedelta(minutes=5)
    sent = datetime.now(UTC) - timedelta(seconds=65)
    storage._wallclock = lambda: sent  # BigQuery ran the statement ~65 s after it was sent

    [item] = await storage.claim_queue_items(
        worker_id="w", claim_token="tok", now=T0, lease_expires_at=lease, limit=1
    )
    assert item.lease_expires_at is not None
    assert timedelta(seconds=59) <= item.lease_expires_at - lease <= timedelta(seconds=90)  # 65 s - 5 s grace

    assert await storage.extend_queue_lease(item.queue_id, claim_token="tok", lease_expires_at=lease)
    stored = await storage.get_queue_item(item.queue_id)
    assert stored is not None and stored.lease_expires_at is not None
    assert stored.lease_expires_at - lease >= timedelta(seconds=59)

    storage._wallclock = lambda: datetime.now(UTC)  # sent and run at once: the lease as given
    [other] = await storage.claim_queue_items(
        worker_id="w", claim_token="tok2", now=T0, lease_expires_at=lease, limit=1
    )
    assert other.lease_expires_at == lease


async def test_a_failed_poll_keeps_polling_the_same_job(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    run = _run()
    await storage.insert_runs([run])
    moved = run.copy()
    moved.make_pending(T0)
    client.reset()
    client.fail(
        gexc.ServiceUnavailable("getQueryResults: backend unavailable"),
        operation="update_run",
        kind="UPDATE",
        delay_polls=3,
    )

    assert await storage.update_run(moved, expected_version=1) is True

    submitted = [j.kwargs["job_id"] for j in client.jobs if j.operation == "update_run"]
    assert len(submitted) == 1 and client.committed == submitted
