"""Job counts (DESIGN rule 7) and what every job carries (labels, byte cap)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipestate.adapters.bigquery import BigQueryStorage
from pipestate.adapters.bigquery.storage import DEFAULT_MAXIMUM_BYTES_BILLED
from pipestate.domain.pipeline_schedule import PipelineSchedule, derive_schedule_id
from pipestate.domain.ports import RunFilter
from pipestate.domain.queue import QueueItem, QueueStatus
from pipestate.domain.run import PipelineRun, RunState
from tests.adapters.bigquery.faults import ScriptedClient

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _runs(n: int) -> list[PipelineRun]:
    return [
        PipelineRun.new(tenant_id=f"t{i % 7}", config_id=f"c{i}", scheduled_time=T0, now=T0, config={"i": i})
        for i in range(n)
    ]


def _items(n: int) -> list[QueueItem]:
    return [
        QueueItem(
            queue_id=f"q{i:05d}",
            tenant_id="t",
            config={"i": i},
            priority=i % 10 + 1,
            created_at=T0 + timedelta(microseconds=i),
        )
        for i in range(n)
    ]


def _schedules(n: int) -> list[PipelineSchedule]:
    return [
        PipelineSchedule(
            schedule_id=derive_schedule_id("t", f"c{i}"),
            tenant_id="t",
            config_id=f"c{i}",
            cron="*/5 * * * *",
            timezone="Europe/London",
            next_fire_time=T0 - timedelta(seconds=i),
            created_at=T0,
            updated_at=T0,
        )
        for i in range(n)
    ]


async def test_creating_1000_runs_in_one_batch_costs_one_merge_under_the_writer_lease(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    assert await storage.insert_runs(_runs(1000)) == 1000

    assert [(j.operation, j.kind) for j in client.jobs] == [
        ("writer_lease", "UPDATE"),
        ("insert_runs", "MERGE"),
        ("writer_lease", "UPDATE"),
        ("append_events", "INSERT"),  # the 1,000 creation events, after the lease
    ]
    assert await storage.count_runs_by_state() == {RunState.SCHEDULED: 1000}


async def test_claiming_100_items_costs_two_jobs(storage: BigQueryStorage, client: ScriptedClient) -> None:
    await storage.insert_queue_items(_items(300))
    client.reset()

    claimed = await storage.claim_queue_items(
        worker_id="w", claim_token="tok", now=T0, lease_expires_at=T0 + timedelta(minutes=5), limit=100
    )

    assert len(claimed) == 100 and len({i.queue_id for i in claimed}) == 100
    assert (
        [i.priority for i in claimed]
        == sorted(i.priority for i in claimed)
        == [1] * 30 + [2] * 30 + [3] * 30 + [4] * 10
    )
    assert (client.count(kind="UPDATE"), client.count(kind="SELECT"), client.count()) == (1, 1, 2)


async def test_a_single_transition_costs_one_job(storage: BigQueryStorage, client: ScriptedClient) -> None:
    [run] = _runs(1)
    await storage.insert_runs([run])
    await storage.insert_queue_items(_items(1))
    [item] = await storage.claim_queue_items(
        worker_id="w", claim_token="tok", now=T0, lease_expires_at=T0 + timedelta(minutes=5), limit=1
    )
    client.reset()

    moved = run.copy()
    moved.make_pending(T0)
    assert await storage.update_run(moved, expected_version=1)
    assert client.count(operation="update_run") == 1
    assert client.count() == 2  # + its event's INSERT (a heartbeat has none)
    client.reset()

    assert await storage.extend_queue_lease(
        item.queue_id, claim_token="tok", lease_expires_at=T0 + timedelta(hours=1)
    )
    assert client.count() == 1

    assert await storage.transition_queue_item(
        item.queue_id,
        from_status=QueueStatus.PROCESSING,
        to_status=QueueStatus.COMPLETED,
        now=T0,
        claim_token="tok",
    )
    assert client.count() == 2


async def test_a_lost_race_costs_one_extra_read(storage: BigQueryStorage, client: ScriptedClient) -> None:
    [run] = _runs(1)
    await storage.insert_runs([run])
    client.reset()

    moved = run.copy()
    moved.make_pending(T0)
    assert await storage.update_run(moved, expected_version=5) is False

    assert (client.count(kind="UPDATE"), client.count(kind="SELECT")) == (1, 1)


async def test_a_tick_over_1000_due_schedules_costs_a_constant_number_of_jobs(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    assert await storage.insert_schedules(_schedules(1000)) == 1000
    assert client.count() == 3  # the MERGE and the writer lease's take and release
    client.reset()

    due = await storage.due_schedules(T0, limit=5000)
    runs = _runs(1000)
    await storage.insert_runs(runs)
    advanced = []
    for schedule in due:
        nxt = schedule.copy()
        nxt.next_fire_time = T0 + timedelta(minutes=5)
        nxt.last_scheduled_time = T0
        nxt.version += 1
        advanced.append((nxt, schedule.version))
    applied = await storage.update_schedules(advanced)
    updated = [r.copy() for r in runs]
    for r in updated:
        r.make_pending(T0)
    moved = await storage.update_runs([(r, 1) for r in updated])

    assert (len(due), applied, moved) == (1000, 1000, 1000)
    # due_schedules, insert_runs (lease, MERGE, release), update_schedules, update_runs,
    # and one INSERT of run events after each run batch
    assert client.count() == 8
    assert await storage.due_schedules(T0, limit=10) == []


async def test_every_job_is_labelled_capped_and_parameterized(
    storage: BigQueryStorage, client: ScriptedClient
) -> None:
    runs = _runs(3)
    await storage.insert_runs(runs)
    await storage.get_runs([r.run_id for r in runs])
    await storage.find_runs(RunFilter(states=[RunState.SCHEDULED], tenant_id="tenant-marker-42"), limit=5)
    await storage.count_runs_by_state("tenant-marker-42")
    await storage.insert_queue_items(_items(3))
    await storage.claim_queue_items(
        worker_id="w", claim_token="token-marker-99", now=T0, lease_expires_at=T0, limit=2
    )
    await storage.queue_stats(T0)
    await storage.insert_schedule(_schedules(1)[0])
    await storage.list_schedules(tenant_id="t", enabled=True)

    assert client.count() == 17  # 10 + 2 writer-lease jobs around each of the 3 inserts + 1 of run events
    for job in client.jobs:
        assert job.config.labels["app"] == "pipestate"
        # pipestate_<operation>_<call>_<attempt>
        assert job.config.labels["operation"] == job.kwargs["job_id"].split("_", 1)[1].rsplit("_", 2)[0]
        assert job.config.maximum_bytes_billed == DEFAULT_MAXIMUM_BYTES_BILLED
        assert job.config.use_legacy_sql is False
        assert "marker" not in job.sql  # values travel as parameters
    assert {j.operation for j in client.jobs} == {
        "insert_runs",
        "append_events",
        "get_runs",
        "find_runs",
        "count_runs_by_state",
        "insert_queue_items",
        "claim_queue_items",
        "queue_stats",
        "insert_schedule",
        "list_schedules",
        "writer_lease",
    }


async def test_labels_and_byte_cap_are_configurable(client: ScriptedClient, dataset: str) -> None:
    storage = BigQueryStorage(client, dataset, maximum_bytes_billed=123_456_789, labels={"env": "test"})  # type: ignore[arg-type]
    await storage.create_schema()
    try:
        client.reset()
        await storage.get_run("r")
        [job] = client.jobs
        assert job.config.labels == {"env": "test", "app": "pipestate", "operation": "get_run"}
        assert job.config.maximum_bytes_billed == 123_456_789
    finally:
        await storage.drop_dataset()
        await storage.close()
