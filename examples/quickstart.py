"""The library API end to end on a SQLite file: create runs, enqueue, claim, complete, fail and retry.

python examples/quickstart.py [path/to/file.db]
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from pipestate import (
    FrozenClock,
    PipelineStateManager,
    QueueManager,
    RetryManager,
    RetryPolicy,
    RunState,
    ScheduleCalculator,
)
from pipestate.adapters.sqlalchemy import SqlAlchemyStorage


async def main(path: Path) -> None:
    clock = FrozenClock(datetime(2026, 3, 7, 12, 0, tzinfo=UTC))
    storage = SqlAlchemyStorage.from_url(f"sqlite:///{path}")
    await storage.create_schema()
    state = PipelineStateManager(storage, clock=clock)
    queue = QueueManager(storage, clock=clock)
    retries = RetryManager(storage, clock=clock)
    calc = ScheduleCalculator(clock=clock)

    # 1. When do two tenants' nightly pipelines fire next? (02:30 in New York skips into 03:00 on DST day.)
    ny = calc.calculate_next_run("30 2 * * *", "America/New_York")
    kolkata = calc.calculate_next_run("0 9 * * *", "Asia/Kolkata")
    print(f"next acme/nightly   : {ny.isoformat()}  (02:30 local does not exist on 2026-03-08)")
    print(f"next globex/morning : {kolkata.isoformat()}")

    # 2. Create the runs (idempotent per slot) and let time pass until they are due.
    policy = RetryPolicy(max_retries=2, retry_on_errors=("TimeoutError",))
    acme = await state.create_scheduled_run("acme", "nightly", ny, priority=2, retry_policy=policy)
    globex = await state.create_scheduled_run("globex", "morning", kolkata, priority=5)
    assert acme == await state.create_scheduled_run("acme", "nightly", ny, priority=2)
    clock.set(max(ny, kolkata))

    # 3. Due runs go PENDING and into the queue; a worker claims them, priority 1 first.
    for run in await state.get_yet_to_run_pipelines():
        await state.transition_state(run.run_id, RunState.SCHEDULED, RunState.PENDING)
        await queue.enqueue(run.tenant_id, {"config_id": run.config_id}, run.priority, run_id=run.run_id)
    print(f"queue length        : {await queue.get_queue_length()}")

    first = await queue.dequeue("worker-1")
    second = await queue.dequeue("worker-1")
    assert first is not None and second is not None and first.run_id == acme and second.run_id == globex

    # 4. globex succeeds; acme times out and is retried with backoff.
    await state.mark_as_running(globex, "log-globex-1", worker_id="worker-1")
    clock.advance(seconds=95)
    await state.mark_as_completed(globex)
    await queue.mark_completed(second.queue_id, claim_token=second.claim_token)

    await state.mark_as_running(acme, "log-acme-1", worker_id="worker-1")
    clock.advance(seconds=30)
    await state.mark_as_failed(acme, "warehouse timed out", error_type="TimeoutError")
    await queue.mark_failed(first.queue_id, "warehouse timed out", claim_token=first.claim_token)
    if await retries.should_retry(acme):
        retry_at = retries.calculate_retry_time(1)
        await retries.schedule_retry(acme, retry_at)
        print(f"acme retry at       : {retry_at.isoformat()} (+1 min backoff)")

    # 5. Statuses.
    for tenant in ("acme", "globex"):
        status = await state.get_customer_pipeline_status(tenant)
        counts = ", ".join(f"{s.value}={n}" for s, n in sorted(status.counts.items()))
        print(f"{tenant:<20}: {counts}; success rate {status.success_rate}")
    stats = await queue.get_queue_status()
    print(f"queue               : {dict((s.value, n) for s, n in stats.by_status.items())}")
    run = await state.get_run_status(acme)
    print(
        f"acme run            : {run.state.value}, retry {run.retry_count},"
        f" at {run.scheduled_time.isoformat()}"
    )
    await storage.close()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("quickstart.db")
    target.unlink(missing_ok=True)
    asyncio.run(main(target))
