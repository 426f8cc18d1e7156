"""BigQuery jobs per public service operation: the numbers the README's table promises."""

from __future__ import annotations

from datetime import timedelta

from pipestate.adapters.bigquery import BigQueryStorage
from pipestate.application import (
    PipelineStateManager,
    QueueManager,
    Recovery,
    RetryManager,
    ScheduleManager,
    Scheduler,
)
from pipestate.domain.clock import FrozenClock
from tests.adapters.bigquery.faults import ScriptedClient


async def test_run_operations_cost_a_read_and_one_conditional_update(
    storage: BigQueryStorage, client: ScriptedClient, clock: FrozenClock
) -> None:
    state = PipelineStateManager(storage, clock=clock)
    retries = RetryManager(storage, clock=clock)
    costs: dict[str, int] = {}

    client.reset()
    run_id = await state.create_scheduled_run("acme", "c1", clock.now())
    costs["create_scheduled_run"] = client.count()
    for name, call in (
        ("transition_state", lambda: state.transition_state(run_id, "SCHEDULED", "PENDING")),
        ("mark_as_running", lambda: state.mark_as_running(run_id, "log")),
        ("mark_as_failed", lambda: state.mark_as_failed(run_id, "boom", error_type="E")),
        ("should_retry", lambda: retries.should_retry(run_id)),
        ("schedule_retry", lambda: retries.schedule_retry(run_id, clock.now())),
        ("get_run_status", lambda: state.get_run_status(run_id)),
        ("get_pipelines_by_state", lambda: state.get_pipelines_by_state("PENDING")),
        ("get_customer_pipeline_status", lambda: state.get_customer_pipeline_status("acme")),
    ):
        client.reset()
        await call()
        costs[name] = client.count()

    # Every write of a transition is followed by one INSERT of its event (run history).
    assert costs == {
        "create_scheduled_run": 4,  # the MERGE between the writer lease's take and release
        "transition_state": 3,
        "mark_as_running": 3,
        "mark_as_failed": 3,
        "should_retry": 1,
        "schedule_retry": 3,
        "get_run_status": 1,
        "get_pipelines_by_state": 1,
        "get_customer_pipeline_status": 4,
    }


async def test_queue_operations_cost_one_job_and_a_claim_two(
    storage: BigQueryStorage, client: ScriptedClient, clock: FrozenClock
) -> None:
    queue = QueueManager(storage, clock=clock)
    costs: dict[str, int] = {}

    client.reset()
    queue_id = await queue.enqueue("t", {"a": 1})
    costs["enqueue"] = client.count()
    client.reset()
    item = await queue.dequeue("w")
    costs["dequeue"] = client.count()
    assert item is not None and item.claim_token
    token = item.claim_token
    for name, call in (
        ("heartbeat", lambda: queue.heartbeat(queue_id, token)),
        ("mark_completed", lambda: queue.mark_completed(queue_id, claim_token=token)),
        ("get_queue_length", lambda: queue.get_queue_length()),
        ("get_queue_status", lambda: queue.get_queue_status()),
    ):
        client.reset()
        await call()
        costs[name] = client.count()

    assert costs == {
        "enqueue": 3,
        "dequeue": 2,
        "heartbeat": 1,
        "mark_completed": 1,
        "get_queue_length": 1,
        "get_queue_status": 1,
    }


async def test_schedules_tick_and_recovery_have_fixed_costs(
    storage: BigQueryStorage, client: ScriptedClient, clock: FrozenClock
) -> None:
    schedules = ScheduleManager(storage, clock=clock)
    scheduler = Scheduler(storage, clock=clock)
    recovery = Recovery(storage, clock=clock)
    costs: dict[str, int] = {}

    client.reset()
    await scheduler.tick(clock.now())
    costs["idle tick"] = client.count()
    client.reset()
    for i in range(50):
        await schedules.add("acme", f"c{i}", "*/5 * * * *", "Europe/London")
    costs["add x50"] = client.count()
    client.reset()
    await schedules.pause("acme", "c0")
    costs["pause"] = client.count()
    clock.advance(minutes=5)
    client.reset()
    report = await scheduler.tick(clock.now())
    costs["tick of 49 due schedules"] = client.count()
    # Two slots each (12:00 and 12:05): the catch-up policy `latest` runs 12:05 and skips 12:00.
    assert (report.runs_created, report.runs_promoted) == (98, 49)
    client.reset()
    await recovery.run_once(clock.now() + timedelta(minutes=1))
    costs["idle recovery"] = client.count()

    assert costs == {
        "idle tick": 2,
        "add x50": 150,
        "pause": 2,
        "tick of 49 due schedules": 12,  # 6 + the writer lease around the two inserts + 2 of run events
        "idle recovery": 7,  # 4 reads + the insert-if-absent of PENDING runs' items under the writer lease
    }
