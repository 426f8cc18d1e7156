"""Human tables and machine JSON for the command line."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any, Final, TextIO
from zoneinfo import ZoneInfo

from pipestate.application.backfill import BackfillReport
from pipestate.application.views import RunHistory
from pipestate.application.worker import Outcome, WorkResult
from pipestate.domain.pipeline_schedule import PipelineSchedule
from pipestate.domain.queue import QueueStats, QueueStatus
from pipestate.domain.run import PipelineRun, RunState
from pipestate.domain.status import TenantStatus


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums, datetimes, mappings and sequences as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name not in INTERNAL_FIELDS
        }
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "to_dict"):
        return to_jsonable(value.to_dict())
    return value


INTERNAL_FIELDS: Final = frozenset({"pending_events"})
"""In-memory bookkeeping, not part of any shape (a run's unsaved events)."""

SECRET_FIELDS: Final = frozenset({"claim_token"})
"""Fields never printed: a claim token lets its holder complete or fail someone else's claim."""


def public_json(value: Any) -> Any:
    """:func:`to_jsonable`, without :data:`SECRET_FIELDS` at any depth (the documented shapes)."""
    return _redact(to_jsonable(value))


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items() if k not in SECRET_FIELDS}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def print_json(value: Any, out: TextIO | None = None) -> None:
    """One JSON document, in the shape ``docs/cli-json-schema.json`` documents for the command."""
    json.dump(public_json(value), out or sys.stdout, indent=2, sort_keys=False)
    (out or sys.stdout).write("\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Iterable[int] = ()) -> str:
    """A plain-text table; columns listed in ``right`` are right-aligned (numbers)."""
    cells = [[cell_text(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    align_right = set(right)

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(widths[i]) if i in align_right else v.ljust(widths[i]) for i, v in enumerate(values)]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def cell_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return fmt_time(value)
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.strftime("%Y-%m-%d %H:%M:%S")


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def short(identifier: str | None, length: int = 8) -> str:
    return "-" if identifier is None else identifier[:length]


def clip(text: str | None, length: int = 48) -> str:
    if text is None:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= length else text[: length - 1] + "…"


# --------------------------------------------------------------------------- renderers
def backfill_dict(report: BackfillReport) -> dict[str, Any]:
    return {
        "tenant_id": report.tenant_id,
        "config_id": report.config_id,
        "from": report.start.isoformat(),
        "to": report.end.isoformat(),
        "dry_run": report.dry_run,
        "slots": [slot.isoformat() for slot in report.slots],
        "created": report.created,
        "missing": report.missing,
        "existing": {state.value: n for state, n in report.existing.items()},
    }


def schedule_table(schedules: Sequence[PipelineSchedule]) -> str:
    rows = [
        (
            s.tenant_id,
            s.config_id,
            s.cron,
            s.timezone,
            s.priority,
            "yes" if s.enabled else "paused",
            s.catchup.value,
            _local(s.next_fire_time, s.timezone),
            _local(s.last_scheduled_time, s.timezone),
        )
        for s in schedules
    ]
    headers = (
        "TENANT",
        "CONFIG",
        "CRON",
        "ZONE",
        "PRIO",
        "ENABLED",
        "CATCHUP",
        "NEXT (local)",
        "LAST (local)",
    )
    return table(headers, rows, right=[4]) if rows else "no schedules"


def _local(instant: datetime | None, zone: str) -> str:
    if instant is None:
        return "-"
    return instant.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z")


def describe_result(result: WorkResult) -> str:
    name = f"{result.tenant_id}/{result.config_id}"
    head = f"{result.outcome.value:<15} run {short(result.run_id)} {name} attempt {result.attempt}"
    if result.outcome is Outcome.RETRY_SCHEDULED:
        error = f"{result.error_type}: {clip(result.error_message)}"
        return f"{head}: {error} -> retry at {fmt_time(result.retry_at)}"
    if result.outcome is Outcome.FAILED:
        return f"{head}: {result.error_type}: {clip(result.error_message)} (no retry)"
    return head


def run_table(runs: Sequence[PipelineRun]) -> str:
    rows = [
        (
            short(r.run_id),
            r.tenant_id,
            r.config_id,
            fmt_time(r.scheduled_time),
            r.state.value,
            r.attempt,
            r.retry_count,
            r.worker_id,
            clip(f"{r.error_type}: {r.error_message}" if r.error_type else None, 40),
        )
        for r in runs
    ]
    headers = ("RUN", "TENANT", "CONFIG", "SCHEDULED (UTC)", "STATE", "ATTEMPT", "RETRIES", "WORKER", "ERROR")
    return table(headers, rows, right=[5, 6]) if rows else "no runs"


STATUS_COLUMNS = (
    RunState.SCHEDULED,
    RunState.PENDING,
    RunState.RUNNING,
    RunState.COMPLETED,
    RunState.FAILED,
    RunState.SKIPPED,
    RunState.CANCELLED,
)


def status_dict(status: TenantStatus) -> dict[str, Any]:
    def brief(run: PipelineRun | None) -> dict[str, Any] | None:
        if run is None:
            return None
        return {
            "run_id": run.run_id,
            "config_id": run.config_id,
            "scheduled_time": run.scheduled_time.isoformat(),
            "completed_at": run.completed_at.isoformat() if run.completed_at else None,
            "error_type": run.error_type,
            "error_message": run.error_message,
        }

    return {
        "tenant_id": status.tenant_id,
        "counts": {state.value: status.count(state) for state in RunState},
        "total": status.total,
        "success_rate": status.success_rate,
        "oldest_pending_age_seconds": status.oldest_pending_age_seconds,
        "last_completed": brief(status.last_completed),
        "last_failed": brief(status.last_failed),
    }


def status_table(statuses: Sequence[TenantStatus]) -> str:
    rows = []
    for s in statuses:
        rate = "-" if s.success_rate is None else f"{s.success_rate:.0%}"
        failed = s.last_failed
        last_error = f"{failed.config_id}: {failed.error_type}" if failed is not None else None
        rows.append(
            (
                s.tenant_id,
                *(s.count(state) for state in STATUS_COLUMNS),
                s.total,
                rate,
                fmt_age(s.oldest_pending_age_seconds),
                clip(last_error, 36),
            )
        )
    headers = (
        "TENANT",
        *(st.value for st in STATUS_COLUMNS),
        "TOTAL",
        "SUCCESS",
        "OLDEST PENDING",
        "LAST FAILURE",
    )
    return table(headers, rows, right=range(1, 10)) if rows else "no tenants (add a schedule first)"


def queue_stats_text(stats: QueueStats) -> str:
    by_status = table(
        ("STATUS", "ITEMS"), [(s.value, stats.by_status.get(s, 0)) for s in QueueStatus], right=[1]
    )
    waiting = ", ".join(f"p{p}: {n}" for p, n in sorted(stats.waiting_by_priority.items())) or "none"
    avg = fmt_age(stats.avg_wait_seconds)
    p95 = fmt_age(stats.p95_wait_seconds)
    oldest = fmt_age(stats.oldest_waiting_age_seconds)
    return (
        f"{by_status}\n\nwaiting by priority: {waiting}\n"
        f"wait before claim: avg {avg}, p95 {p95}; oldest waiting item: {oldest}"
    )


def history_text(history: RunHistory) -> str:
    """``pipestate run show``: the run, its attempts (with the last traceback) and its events."""
    run = history.run
    lines = [
        f"run {run.run_id}  {run.tenant_id}/{run.config_id}  {run.state.value}",
        f"slot {fmt_time(run.scheduled_time)}  attempts {run.attempt}  retries {run.retry_count}  "
        f"version {run.version}",
    ]
    if run.error_type or run.error_message:
        lines.append(f"error {run.error_type}: {run.error_message}")
    lines += ["", "ATTEMPTS"]
    attempts = [
        (
            a.number,
            a.worker_id,
            a.started_at,
            a.ended_at,
            a.outcome or "RUNNING",
            a.ended_by,
            clip(a.error_message),
        )
        for a in history.attempts
    ]
    lines.append(table(("#", "WORKER", "STARTED", "ENDED", "OUTCOME", "BY", "ERROR"), attempts, right=[0]))
    lines += ["", "EVENTS"]
    events = [
        (
            e.version,
            e.at,
            e.from_state or "-",
            e.to_state,
            e.actor,
            e.worker_id,
            clip(e.reason or e.error_message),
        )
        for e in history.events
    ]
    lines.append(table(("V", "AT", "FROM", "TO", "ACTOR", "WORKER", "WHY"), events, right=[0]))
    failed = [a for a in history.attempts if a.traceback]
    if failed:
        last = failed[-1]
        lines += ["", f"TRACEBACK of attempt {last.number}", last.traceback or ""]
    return "\n".join(lines)
