"""Prometheus metrics (``pipestate[metrics]``; ``prometheus-client`` is imported only when used).

Two kinds of metric:

* **Store gauges**, computed from the store when scraped, at most once per ``min_interval``
  (default 15 s; a scrape inside the interval is served from the cache, so scrapes cannot run up
  a BigQuery bill). One refresh costs three port calls whatever the number of tenants or runs:
  ``count_runs_by_tenant_and_state`` (1 statement / 1 job), ``queue_stats`` (1 transaction of
  5 statements on SQL, 1 job on BigQuery) and ``due_schedules`` (1 statement / 1 job). A store
  without the grouped count falls back to one ``count_runs_by_state`` per tenant, plus one
  ``list_schedules``.
* **Process counters and histograms**, observed where things happen in this process: handler
  duration and start delay (a wrapped handler), worker outcomes, retries and leases lost (the
  worker's result callback), storage errors by kind (a counting storage proxy), scheduler ticks
  and recoveries (``observe_tick`` / ``observe_recovery``), alerts delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, cast

from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.domain.alerts import Alert, RunStatsRepository
from pipestate.domain.clock import Clock
from pipestate.domain.errors import PipestateError
from pipestate.domain.ports import Storage
from pipestate.domain.queue import QueueStats, QueueStatus
from pipestate.domain.run import PipelineRun, RunState

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from pipestate.application.recovery import RecoveryReport
    from pipestate.application.scheduler import TickReport
    from pipestate.application.worker import WorkResult

DEFAULT_MIN_INTERVAL: Final = 15.0
DUE_SCHEDULES_CAP: Final = 10_000
"""``pipestate_schedules_due`` counts at most this many (one bounded read)."""
_DURATION_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def prometheus() -> Any:
    """The ``prometheus_client`` module.

    Raises:
        ImportError: the ``metrics`` extra is not installed (with the pip command to fix it).
    """
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - exercised without the extra only
        raise ImportError("metrics need prometheus-client: pip install 'pipestate[metrics]'") from exc
    return prometheus_client


@dataclass(frozen=True)
class StoreSnapshot:
    """What the store gauges show, read at ``taken_at``."""

    taken_at: datetime
    runs: dict[tuple[str, RunState], int]
    queue: QueueStats
    due_schedules: int
    port_calls: int
    refresh_seconds: float

    def runs_in(self, state: RunState) -> int:
        return sum(n for (_, s), n in self.runs.items() if s is state)


@dataclass
class _Cache:
    snapshot: StoreSnapshot | None = None
    monotonic: float = float("-inf")
    lock: asyncio.Lock | None = None
    errors: dict[str, int] = field(default_factory=dict)


class PipestateMetrics:
    """The metrics of one process, on their own registry.

    Args:
        storage: the store the gauges read.
        stats: a store with the one-statement grouped count (``SqlAlertStore``); optional.
        min_interval: seconds a store snapshot is reused for.
        registry: a ``prometheus_client.CollectorRegistry`` (a new one by default).
    """

    def __init__(
        self,
        storage: Storage,
        stats: RunStatsRepository | None = None,
        *,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        prom = prometheus()
        self._storage = storage
        self._stats = stats
        self._clock = clock or SYSTEM_CLOCK
        self.min_interval = min_interval
        self.registry: CollectorRegistry = registry if registry is not None else prom.CollectorRegistry()
        self._cache = _Cache()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: Any = None
        r = self.registry
        self.handler_seconds = prom.Histogram(
            "pipestate_handler_duration_seconds",
            "Time spent in the pipeline handler, by outcome (ok or error).",
            ["outcome"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.start_delay_seconds = prom.Histogram(
            "pipestate_start_delay_seconds",
            "From a run's due time (scheduled_time) to its handler starting.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.results = prom.Counter(
            "pipestate_worker_results", "Claimed queue items by outcome.", ["outcome"], registry=r
        )
        self.retries = prom.Counter("pipestate_retries", "Failed runs put back for a retry.", registry=r)
        self.leases_lost = prom.Counter(
            "pipestate_lease_expiries",
            "Leases that expired: runs recovery took back (recovery), and results a worker dropped"
            " because its run changed under its claim (worker: an expired lease, or a cancel).",
            ["observed_by"],
            registry=r,
        )
        self.tick_seconds = prom.Histogram(
            "pipestate_tick_duration_seconds",
            "Scheduler tick duration.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.tick_due = prom.Gauge(
            "pipestate_tick_due_schedules", "Due schedules handled by the last tick.", registry=r
        )
        self.storage_errors = prom.Counter(
            "pipestate_storage_errors",
            "Storage errors raised to the application, by kind.",
            ["kind"],
            registry=r,
        )
        self.bigquery_jobs = prom.Counter(
            "pipestate_bigquery_jobs",
            "BigQuery jobs this process ran, by operation.",
            ["operation"],
            registry=r,
        )
        self.bigquery_bytes = prom.Counter(
            "pipestate_bigquery_bytes_billed",
            "Bytes BigQuery billed for this process's jobs, by operation (0 when not reported).",
            ["operation"],
            registry=r,
        )
        self.alerts = prom.Counter(
            "pipestate_alerts", "Alerts delivered by this process.", ["kind"], registry=r
        )
        r.register(_StoreCollector(self))

    # ------------------------------------------------------------------ store gauges
    async def refresh(self, *, force: bool = False) -> StoreSnapshot:
        """The store snapshot, read again only when older than ``min_interval`` (or ``force``)."""
        cache = self._cache
        if cache.lock is None:
            cache.lock = asyncio.Lock()
            self._loop = asyncio.get_running_loop()
        async with cache.lock:
            fresh = time.monotonic() - cache.monotonic < self.min_interval
            if cache.snapshot is not None and fresh and not force:
                return cache.snapshot
            started = time.monotonic()
            now = self._clock.now()
            try:
                runs, calls = await self._run_counts()
                queue = await self._storage.queue_stats(now)
                due = len(await self._storage.due_schedules(now, DUE_SCHEDULES_CAP))
            except PipestateError as exc:
                self.storage_errors.labels(type(exc).__name__).inc()
                raise
            cache.snapshot = StoreSnapshot(
                taken_at=now,
                runs=runs,
                queue=queue,
                due_schedules=due,
                port_calls=calls + 2,
                refresh_seconds=time.monotonic() - started,
            )
            cache.monotonic = time.monotonic()
            return cache.snapshot

    async def _run_counts(self) -> tuple[dict[tuple[str, RunState], int], int]:
        if self._stats is not None:
            return await self._stats.count_runs_by_tenant_and_state(), 1
        tenants = sorted({s.tenant_id for s in await self._storage.list_schedules()})
        counts: dict[tuple[str, RunState], int] = {}
        for tenant in tenants:
            for state, n in (await self._storage.count_runs_by_state(tenant)).items():
                counts[(tenant, state)] = n
        return counts, 1 + len(tenants)

    def refresh_from_thread(self, timeout: float = 30.0) -> StoreSnapshot | None:
        """Refresh on the event loop that first refreshed (for a scrape served by another thread)."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return self._cache.snapshot  # nobody to ask: serve what was last read
        future = asyncio.run_coroutine_threadsafe(self.refresh(), loop)
        try:
            return future.result(timeout)
        except Exception:
            return self._cache.snapshot

    @property
    def snapshot(self) -> StoreSnapshot | None:
        return self._cache.snapshot

    async def exposition(self) -> tuple[bytes, str]:
        """Refresh (within the interval) and render the registry: body and content type."""
        prom = prometheus()
        with contextlib.suppress(PipestateError):  # serve the last snapshot; the error counter says why
            await self.refresh()
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST

    def serve_http(self, port: int, addr: str = "127.0.0.1") -> Any:
        """Serve ``/metrics`` on a background thread (``prometheus_client.start_http_server``).

        Call :meth:`refresh` once on the event loop first: scrapes refresh on that loop.
        """
        self._http = prometheus().start_http_server(port, addr=addr, registry=self.registry)
        return self._http

    def close(self) -> None:
        """Stop the HTTP server :meth:`serve_http` started, if any."""
        http, self._http = self._http, None
        if isinstance(http, tuple):  # prometheus-client >= 0.17 returns (server, thread)
            server, thread = http
            server.shutdown()
            server.server_close()
            thread.join()

    # ------------------------------------------------------------------ observations
    def instrument(self, handler: Callable[..., Any]) -> Callable[[PipelineRun | None, dict[str, Any]], Any]:
        """Wrap a worker handler: time it (ok / error) and observe its start delay."""

        @functools.wraps(handler)
        async def timed(run: PipelineRun | None, config: dict[str, Any]) -> Any:
            if run is not None:
                delay = (self._clock.now() - run.scheduled_time).total_seconds()
                self.start_delay_seconds.observe(max(delay, 0.0))
            started = time.perf_counter()
            outcome = "error"
            try:
                result = handler(run, config)
                if inspect.isawaitable(result):
                    result = await result
                outcome = "ok"
                return result
            finally:
                self.handler_seconds.labels(outcome).observe(time.perf_counter() - started)

        return timed

    def observe_result(self, result: WorkResult) -> None:
        """Count a worker result (pass as, or call from, the worker's ``on_result``)."""
        outcome = str(getattr(result.outcome, "value", result.outcome))
        self.results.labels(outcome).inc()
        if outcome == "retry_scheduled":
            self.retries.inc()
        elif outcome == "lost":
            self.leases_lost.labels("worker").inc()

    def observe_tick(self, report: TickReport, seconds: float) -> None:
        self.tick_seconds.observe(seconds)
        self.tick_due.set(report.due_schedules)

    def observe_recovery(self, report: RecoveryReport) -> None:
        self.leases_lost.labels("recovery").inc(report.expired_runs)
        self.retries.inc(report.retried)

    def observe_bigquery_job(self, operation: str, bytes_billed: int | None) -> None:
        """One finished BigQuery job (the listener of ``adapters/bigquery/observed.py``)."""
        self.bigquery_jobs.labels(operation).inc()
        self.bigquery_bytes.labels(operation).inc(bytes_billed or 0)

    def observe_alert(self, alert: Alert) -> None:
        self.alerts.labels(alert.kind.value).inc()

    def count_errors(self, storage: Storage) -> Storage:
        """A proxy of ``storage`` that counts the ``PipestateError`` kinds its calls raise."""
        return cast(Storage, _ErrorCountingStorage(storage, self.storage_errors))


class _ErrorCountingStorage:
    def __init__(self, inner: Storage, counter: Any) -> None:
        self._inner = inner
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(value):
            return value
        counter = self._counter

        @functools.wraps(value)
        async def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return await cast(Callable[..., Awaitable[Any]], value)(*args, **kwargs)
            except PipestateError as exc:
                counter.labels(type(exc).__name__).inc()
                raise

        return counted


class _StoreCollector:
    """Yields the store gauges from the cached snapshot (refreshing it first when stale)."""

    def __init__(self, metrics: PipestateMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Any]:
        return iter(())  # computed at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        metrics = self._metrics
        snapshot = metrics.snapshot
        try:
            running_loop = asyncio.get_running_loop()
        except RuntimeError:
            running_loop = None
        if running_loop is None:  # a scrape on the HTTP server's thread
            snapshot = metrics.refresh_from_thread() or snapshot
        if snapshot is None:
            return
        core = importlib.import_module("prometheus_client.core")
        runs = core.GaugeMetricFamily(
            "pipestate_runs", "Runs by tenant and state.", labels=["tenant", "state"]
        )
        for (tenant, state), n in sorted(snapshot.runs.items()):
            runs.add_metric([tenant, state.value], n)
        yield runs
        queue = snapshot.queue
        items = core.GaugeMetricFamily("pipestate_queue_items", "Queue items by status.", labels=["status"])
        for status in QueueStatus:
            items.add_metric([status.value], queue.by_status.get(status, 0))
        yield items
        waiting = core.GaugeMetricFamily(
            "pipestate_queue_waiting", "QUEUED items by priority (1 = highest).", labels=["priority"]
        )
        for priority, n in sorted(queue.waiting_by_priority.items()):
            waiting.add_metric([str(priority)], n)
        yield waiting
        yield core.GaugeMetricFamily(
            "pipestate_queue_oldest_waiting_seconds",
            "Age of the oldest QUEUED item (0 when none waits).",
            value=queue.oldest_waiting_age_seconds or 0.0,
        )
        wait = core.GaugeMetricFamily(
            "pipestate_queue_wait_seconds", "Enqueue-to-claim wait of claimed items.", labels=["stat"]
        )
        wait.add_metric(["avg"], queue.avg_wait_seconds or 0.0)
        wait.add_metric(["p95"], queue.p95_wait_seconds or 0.0)
        yield wait
        yield core.GaugeMetricFamily(
            "pipestate_schedules_due",
            "Enabled schedules whose next fire time has passed.",
            value=snapshot.due_schedules,
        )
        yield core.GaugeMetricFamily(
            "pipestate_store_snapshot_timestamp_seconds",
            "When the store gauges were read (they are cached for min_interval).",
            value=snapshot.taken_at.timestamp(),
        )
        yield core.GaugeMetricFamily(
            "pipestate_store_snapshot_port_calls",
            "Store calls the last refresh made.",
            value=snapshot.port_calls,
        )
