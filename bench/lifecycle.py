"""Queue lifecycle throughput on a SQLite file: pipestate's public async API against raw sqlite3.

One lifecycle = enqueue -> dequeue (atomic claim) -> mark_completed: three write transactions.
The baseline is a plain ``sqlite3`` loop doing the same three transactions (the same SQL, on the
same table and indexes, created by pipestate's ``create_schema``; WAL, synchronous=NORMAL,
BEGIN IMMEDIATE, UPDATE … RETURNING claims), measured in the same run, so the printed ratio does
not depend on the machine. Target: ours >= 0.5x raw.

The "strict" column is the queue before fair share (issue 13): raw sqlite3 with the earlier
claim (``ORDER BY priority, created_at``) and its indexes, and an enqueue that computes no claim
order; "fair cost" is raw fair / raw strict, the throughput the fair claim keeps (target >= 0.85).

A second table prints claim latency with a backlog: 0, 10k and 100k items QUEUED and
``--history`` finished items, on a file that was never analysed (as every new file is).

A third prints the cost of run history: a run's lifecycle (create, make_pending, start,
complete: four writes) through the Storage port with its events, against the same writes with
the events dropped before they reach the adapter, in the same run. Target: history costs at most
20% of the throughput (ratio >= 0.80).

    python bench/lifecycle.py [--items 3000] [--processes 1 4] [--backlogs 0 10000 100000]
                              [--history-runs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.application import QueueManager
from pipestate.domain.run import PipelineRun


# --------------------------------------------------------------------------- raw sqlite3 baseline
def _raw_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


FAIR_INSERT = (
    "INSERT INTO x_meta_pipeline_queue (queue_id, tenant_id, config, priority, created_at, status,"
    " run_id, version, attempts, worker_id, claim_token, claimed_at, lease_expires_at, completed_at,"
    " error_message, updated_at, claim_order) VALUES (?1, ?2, ?3, ?4, ?5, 'QUEUED', NULL, 1, 0, NULL, NULL,"
    " NULL, NULL, NULL, NULL, ?6, max(?7, coalesce((SELECT max(claim_order) FROM x_meta_pipeline_queue"
    " WHERE tenant_id = ?2 AND status = 'QUEUED' AND priority = ?4) + 1.0, ?7)))"
    " ON CONFLICT (queue_id) DO NOTHING"
)
STRICT_INSERT = (
    "INSERT INTO x_meta_pipeline_queue (queue_id, tenant_id, config, priority, created_at, status,"
    " run_id, version, attempts, worker_id, claim_token, claimed_at, lease_expires_at, completed_at,"
    " error_message, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, 'QUEUED', NULL, 1, 0, NULL, NULL, NULL, NULL,"
    " NULL, NULL, ?6) ON CONFLICT (queue_id) DO NOTHING"
)
_CLAIM = (
    "UPDATE x_meta_pipeline_queue SET status = 'PROCESSING', worker_id = ?, claim_token = ?,"
    " claimed_at = ?, lease_expires_at = ?, updated_at = ?, attempts = attempts + 1,"
    " version = version + 1 WHERE queue_id IN (SELECT queue_id FROM x_meta_pipeline_queue"
    " WHERE status = 'QUEUED' ORDER BY {} LIMIT 1)"
    " AND +status = 'QUEUED' RETURNING *"
)
FAIR_CLAIM = _CLAIM.format("claim_order, queue_id")
STRICT_CLAIM = _CLAIM.format("priority, created_at, queue_id")


def strict_setup(path: str) -> None:
    """The indexes the queue had before fair share (schema version 2 on SQLite)."""
    ours_setup(path)
    conn = _raw_connect(path)
    conn.execute("DROP INDEX ix_queue_claim")
    conn.execute("DROP INDEX ix_queue_tenant_flow")
    conn.execute(
        "CREATE INDEX ix_queue_claim ON x_meta_pipeline_queue (status, priority, created_at, queue_id)"
    )
    conn.execute("CREATE INDEX ix_queue_tenant_status ON x_meta_pipeline_queue (tenant_id, status)")
    conn.close()


def strict_worker(path: str, items: int, worker: str) -> float:
    return raw_worker(path, items, worker, fair=False)


def raw_worker(path: str, items: int, worker: str, fair: bool = True) -> float:
    conn = _raw_connect(path)
    insert, claim = (FAIR_INSERT, FAIR_CLAIM) if fair else (STRICT_INSERT, STRICT_CLAIM)
    started = time.perf_counter()
    for i in range(items):
        now = datetime.now(UTC).replace(tzinfo=None)
        stamp = now.isoformat(" ", "microseconds")
        lease = (now + timedelta(minutes=5)).isoformat(" ", "microseconds")
        conn.execute("BEGIN IMMEDIATE")
        order_value = datetime.now(UTC).timestamp() + 4 * 3600.0
        params = (f"{worker}-{i}-{secrets.token_hex(4)}", "tenant", json.dumps({"i": i}), 5, stamp, stamp)
        conn.execute(insert, (*params, order_value) if fair else params)
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(claim, (worker, secrets.token_hex(16), stamp, lease, stamp)).fetchone()
        conn.execute("COMMIT")
        if row is None:
            continue
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE x_meta_pipeline_queue SET status = 'COMPLETED', completed_at = ?, updated_at = ?,"
            " lease_expires_at = NULL, version = version + 1"
            " WHERE queue_id = ? AND status = 'PROCESSING' AND claim_token = ?",
            (stamp, stamp, row[0], row[10]),
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


# --------------------------------------------------------------------------- pipestate
def ours_worker(path: str, items: int, worker: str) -> float:
    async def main() -> float:
        storage = SqlAlchemyStorage.from_url(f"sqlite:///{path}")
        queue = QueueManager(storage)
        await queue.get_queue_length()  # open the connection before timing
        started = time.perf_counter()
        for i in range(items):
            await queue.enqueue("tenant", {"i": i}, 5)
            item = await queue.dequeue(worker)
            if item is not None:
                await queue.mark_completed(item.queue_id, claim_token=item.claim_token)
        elapsed = time.perf_counter() - started
        await storage.close()
        return elapsed

    return asyncio.run(main())


def ours_setup(path: str) -> None:
    async def main() -> None:
        storage = SqlAlchemyStorage.from_url(f"sqlite:///{path}")
        await storage.create_schema()
        await storage.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- claim latency with a backlog
RAW_CLAIM = (
    "UPDATE x_meta_pipeline_queue SET status = 'PROCESSING', worker_id = ?, claim_token = ?,"
    " claimed_at = ?, lease_expires_at = ?, updated_at = ?, attempts = attempts + 1,"
    " version = version + 1 WHERE queue_id IN (SELECT queue_id FROM x_meta_pipeline_queue"
    " WHERE status = 'QUEUED' ORDER BY claim_order, queue_id LIMIT 1)"
    " AND +status = 'QUEUED' RETURNING *"
)


def claim_latency(workdir: Path, queued: int, history: int, claims: int) -> tuple[float, float]:
    """Median claim + complete latency (ms): pipestate, then raw sqlite3 (the same SQL)."""
    path = str(workdir / f"backlog-{queued}-{secrets.token_hex(3)}.db")
    ours_setup(path)
    conn = _raw_connect(path)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO x_meta_pipeline_queue (queue_id, tenant_id, config, priority, created_at, status,"
        " version, attempts, claimed_at, claim_order) VALUES (?, 't', '{}', ?, ?, ?, 1, 0, ?, ?)",
        (
            (
                f"q{n}",
                1 + n % 10,
                f"2026-01-01 00:00:00.{n % 1_000_000:06d}",
                "QUEUED" if n < queued + 2 * claims else "COMPLETED",
                None if n < queued + 2 * claims else "2026-01-01 00:00:01.000000",
                1767225600.0 + (n % 1_000_000) / 1e6 + (n % 10) * 3600.0,
            )
            for n in range(queued + 2 * claims + history)
        ),
    )
    conn.execute("COMMIT")

    async def pipestate() -> list[float]:
        storage = SqlAlchemyStorage.from_url(f"sqlite:///{path}")
        queue = QueueManager(storage)
        await queue.get_queue_length()
        times = []
        for _ in range(claims):
            started = time.perf_counter()
            item = await queue.dequeue("w")
            assert item is not None
            await queue.mark_completed(item.queue_id, claim_token=item.claim_token)
            times.append(time.perf_counter() - started)
        await storage.close()
        return times

    ours_ms = statistics.median(asyncio.run(pipestate())) * 1000
    raw_times = []
    for _ in range(claims):
        started = time.perf_counter()
        stamp = datetime.now(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(RAW_CLAIM, ("w", secrets.token_hex(16), stamp, stamp, stamp)).fetchone()
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE x_meta_pipeline_queue SET status = 'COMPLETED', completed_at = ?, updated_at = ?,"
            " lease_expires_at = NULL, version = version + 1"
            " WHERE queue_id = ? AND status = 'PROCESSING' AND claim_token = ?",
            (stamp, stamp, row[0], row[10]),
        )
        conn.execute("COMMIT")
        raw_times.append(time.perf_counter() - started)
    conn.close()
    return ours_ms, statistics.median(raw_times) * 1000


# --------------------------------------------------------------------------- driver
def measure(kind: str, processes: int, items: int, workdir: Path) -> float:
    """Lifecycles per second over all processes."""
    path = str(workdir / f"{kind}-{processes}-{secrets.token_hex(3)}.db")
    # raw and ours run on the same schema: pipestate's table and indexes
    (strict_setup if kind == "strict" else ours_setup)(path)
    worker = {"raw": raw_worker, "strict": strict_worker, "ours": ours_worker}[kind]
    per_process = items // processes
    started = time.perf_counter()
    if processes == 1:
        worker(path, per_process, "w0")
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes) as pool:
            pool.starmap(worker, [(path, per_process, f"w{n}") for n in range(processes)])
    wall = time.perf_counter() - started
    return per_process * processes / wall


# --------------------------------------------------------------------------- run history cost
def run_lifecycles(path: str, runs: int, history: bool) -> float:
    """Run lifecycles per second (4 writes each), with or without their history events."""

    async def main() -> float:
        storage = SqlAlchemyStorage.from_url(f"sqlite:///{path}")
        await storage.create_schema()
        start = datetime(2026, 1, 1, tzinfo=UTC)

        def strip(run: PipelineRun) -> PipelineRun:
            if not history:
                run.pending_events.clear()
            return run

        try:
            began = time.perf_counter()
            for i in range(runs):
                now = start + timedelta(seconds=i)
                token = f"tok{i}"
                run = PipelineRun.new(tenant_id="t", config_id="c", scheduled_time=now, now=now)
                await storage.insert_runs([strip(run)])
                run.make_pending(now)
                await storage.update_run(strip(run), 1)
                run.start(now, worker_id="w", claim_token=token, lease_expires_at=now + timedelta(minutes=5))
                await storage.update_run(strip(run), 2)
                run.complete(now, claim_token=token)
                await storage.update_run(strip(run), 3)
            return runs / (time.perf_counter() - began)
        finally:
            await storage.close()

    return asyncio.run(main())


def history_cost(workdir: Path, runs: int, repeat: int) -> tuple[float, float]:
    without, with_ = [], []
    for n in range(repeat):  # interleaved, each on a fresh file
        without.append(run_lifecycles(str(workdir / f"plain-{n}.db"), runs, history=False))
        with_.append(run_lifecycles(str(workdir / f"history-{n}.db"), runs, history=True))
    return statistics.median(without), statistics.median(with_)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=3000, help="lifecycles per measurement (all processes)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeat", type=int, default=3, help="measurements per cell; the median is shown")
    parser.add_argument("--backlogs", type=int, nargs="*", default=[0, 10_000, 100_000])
    parser.add_argument("--history", type=int, default=300_000, help="finished items beside the backlog")
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument(
        "--history-runs", type=int, default=1000, help="run lifecycles per history measurement"
    )
    args = parser.parse_args()

    print(
        f"queue lifecycle (enqueue -> dequeue -> mark_completed), {args.items} per run,"
        f" median of {args.repeat}"
    )
    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, cpus {os.cpu_count()}")
    print(
        f"{'processes':>9} | {'strict raw /s':>13} | {'raw sqlite3 /s':>14} | {'pipestate /s':>12} | "
        f"{'ratio':>6} | target >= 0.50 | {'fair cost':>9} (raw / strict, target >= 0.85)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for processes in args.processes:
            raw, ours, strict = [], [], []
            for _ in range(args.repeat):  # interleave so drift hits every side alike
                strict.append(measure("strict", processes, args.items, workdir))
                raw.append(measure("raw", processes, args.items, workdir))
                ours.append(measure("ours", processes, args.items, workdir))
            raw_rate, our_rate = statistics.median(raw), statistics.median(ours)
            strict_rate = statistics.median(strict)
            ratio, fair = our_rate / raw_rate, raw_rate / strict_rate
            verdict = "ok" if ratio >= 0.5 else "BELOW TARGET"
            fair_verdict = "ok" if fair >= 0.85 else "BELOW TARGET"
            print(
                f"{processes:>9} | {strict_rate:>13,.0f} | {raw_rate:>14,.0f} | {our_rate:>12,.0f} | "
                f"{ratio:>5.2f}x | {verdict:<14} | {fair:>8.2f}x {fair_verdict}"
            )
        if args.backlogs:
            print(f"\nclaim + complete latency with a backlog ({args.history:,} finished items), median ms")
            print(f"{'QUEUED':>8} | {'pipestate ms':>12} | {'raw ms':>7}")
            for queued in args.backlogs:
                ours_ms, raw_ms = claim_latency(workdir, queued, args.history, args.claims)
                print(f"{queued:>8,} | {ours_ms:>12.3f} | {raw_ms:>7.3f}")
        if args.history_runs:
            plain, kept = history_cost(workdir, args.history_runs, args.repeat)
            ratio = kept / plain
            verdict = "ok" if ratio >= 0.8 else "BELOW TARGET"
            print(f"\nrun lifecycle (create, pending, start, complete), {args.history_runs} runs")
            print(f"{'no history /s':>13} | {'history /s':>10} | {'ratio':>6} | target >= 0.80")
            print(f"{plain:>13,.0f} | {kept:>10,.0f} | {ratio:>5.2f}x | {verdict}")


if __name__ == "__main__":
    main()
