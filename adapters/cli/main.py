"""``pipestate``: run schedules, workers and recovery from the command line.

Every command opens the store named by ``--db URL`` (else ``$PIPESTATE_DB``, else
``sqlite:///pipestate.db``) or by
``--bigquery-project P --bigquery-dataset D``. Output is a table for people, or JSON with
``--json``. Errors are one line on stderr: exit 2 for bad input (bad cron, unknown zone, unknown
schedule, bad option), 1 for anything else (store unavailable …). ``--traceback`` shows the
traceback instead, for debugging.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import importlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from pipestate._version import __version__
from pipestate.adapters.cli import logs
from pipestate.adapters.cli import serve as serve_commands
from pipestate.adapters.cli.output import (
    backfill_dict,
    describe_result,
    fmt_time,
    history_text,
    print_json,
    public_json,
    queue_stats_text,
    run_table,
    schedule_table,
    short,
    status_dict,
    status_table,
    table,
)
from pipestate.adapters.cli.store import (
    DB_ENV,
    DEFAULT_DB,
    StoreOptions,
    is_sqlite,
    open_store,
    require_existing_sqlite_file,
)
from pipestate.application.backfill import DEFAULT_MAX_RUNS, Backfill
from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.control import Control
from pipestate.application.recovery import Recovery
from pipestate.application.schedule_manager import ScheduleManager
from pipestate.application.scheduler import DEFAULT_BATCH_SIZE, Scheduler
from pipestate.application.views import run_history, tenant_statuses
from pipestate.application.worker import DEFAULT_LEASE, MAX_CONCURRENCY, Handler, Worker, WorkResult
from pipestate.domain.cron import DstFoldPolicy, DstGapPolicy
from pipestate.domain.errors import InvalidArgument, InvalidInput, NotFound, PipestateError
from pipestate.domain.pipeline_schedule import CatchupPolicy
from pipestate.domain.ports import RunFilter, RunOrder, Storage
from pipestate.domain.queue import QueueStatus
from pipestate.domain.retry import DEFAULT_RETRY_POLICY, MAX_RETRIES, RetryPolicy
from pipestate.domain.run import PipelineRun, RunState
from pipestate.domain.validation import require_id, require_instant, require_int, require_seconds

PROG = "pipestate"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_CLOSED_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a Unix tool whose reader closed the pipe."""


class UsageError(Exception):
    """Bad command-line syntax (reported in one line, exit 2)."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)

    def _format_action(self, action: argparse.Action) -> str:
        shown = action.default not in (None, False, argparse.SUPPRESS)
        if not action.help and action.option_strings and shown:
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Schedules, queue, workers and recovery for pipeline runs.")
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    _add_common(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    common = _Parser(add_help=False)
    _add_common(common, defaults=False)

    def command(name: str, help_text: str, *, into: Any = commands) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = into.add_parser(
            name, help=help_text, description=help_text, parents=[common]
        )
        return sub

    command("init", "create the tables (idempotent)")
    command("version", "print the installed version")

    schedule = command("schedule", "add, list, pause or resume schedules")
    schedule_commands = schedule.add_subparsers(
        dest="schedule_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    add = command("add", "add a schedule for TENANT and CONFIG_ID", into=schedule_commands)
    add.add_argument("tenant")
    add.add_argument("config_id")
    add.add_argument("--cron", required=True, help="five-field cron, in the schedule's time zone")
    add.add_argument("--tz", "--timezone", dest="timezone", default="UTC", help="IANA zone (default UTC)")
    add.add_argument("--priority", type=int, default=5, help="1 (highest) .. 10 (lowest), default 5")
    add.add_argument(
        "--catchup", choices=[c.value for c in CatchupPolicy], default=CatchupPolicy.LATEST.value
    )
    add.add_argument("--max-catchup-runs", type=int, default=10)
    add.add_argument("--misfire-grace", type=int, default=300, help="seconds (catch-up 'none')")
    add.add_argument("--max-retries", type=int, default=3)
    add.add_argument("--retry-delay", type=float, default=60.0, help="first backoff in seconds (default 60)")
    add.add_argument(
        "--retry-max-delay",
        type=float,
        default=None,
        help="backoff cap in seconds (default 3600, or --retry-delay when that is larger)",
    )
    add.add_argument("--retry-on", default=None, help="comma-separated error types to retry (default: all)")
    add.add_argument("--dst-gap", choices=[p.value for p in DstGapPolicy], default=DstGapPolicy.SHIFT.value)
    add.add_argument(
        "--dst-fold", choices=[p.value for p in DstFoldPolicy], default=DstFoldPolicy.FIRST.value
    )
    add.add_argument("--config", default="{}", help="JSON object passed to the handler")
    add.add_argument("--start", default=None, help="first slot considered, ISO time (default now)")
    add.add_argument("--disabled", action="store_true", help="add it paused")
    listing = command("list", "list schedules", into=schedule_commands)
    listing.add_argument("--tenant", default=None)
    for action in ("pause", "resume"):
        sub = command(action, f"{action} the schedule of TENANT and CONFIG_ID", into=schedule_commands)
        sub.add_argument("tenant")
        sub.add_argument("config_id")
    trigger = command(
        "trigger", "run the schedule of TENANT and CONFIG_ID now (queued)", into=schedule_commands
    )
    trigger.add_argument("tenant")
    trigger.add_argument("config_id")

    run = command("run", "show one run, or act on it as an operator (every action is recorded)")
    run_commands = run.add_subparsers(
        dest="run_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    show = command("show", "the run, its attempts and every transition", into=run_commands)
    show.add_argument("run_id")
    for action, text in (
        ("cancel", "cancel a SCHEDULED, PENDING or RUNNING run"),
        ("retry", "retry a FAILED run now (even with no retry left)"),
        ("rerun", "run a finished run's slot again, as a new run"),
    ):
        sub = command(action, text, into=run_commands)
        sub.add_argument("run_id")
        sub.add_argument("--reason", default=f"{action} by an operator", help="recorded in the run's history")
    mark = command(
        "mark", "settle a RUNNING run by hand: failed (not retried) or succeeded", into=run_commands
    )
    mark.add_argument("run_id")
    mark.add_argument("outcome", choices=["failed", "succeeded"])
    mark.add_argument("--reason", default="marked by an operator", help="recorded in the run's history")

    tick = command("tick", "create due runs and queue the runs whose time has come")
    tick.add_argument("--now", default=None, help="simulate this ISO time instead of the clock")
    tick.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)

    worker = command("worker", "claim and run queued runs until SIGTERM/SIGINT")
    worker.add_argument("--handler", required=True, help="module:function called as handler(run, config)")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--lease", type=float, default=DEFAULT_LEASE.total_seconds(), help="seconds")
    worker.add_argument("--heartbeat", type=float, default=None, help="seconds (default lease/3)")
    worker.add_argument("--poll", type=float, default=1.0, help="seconds between polls of an empty queue")
    worker.add_argument("--worker-id", default=None)
    worker.add_argument(
        "--timeout", type=float, default=None, help="execution timeout per run, seconds (default: none)"
    )
    worker.add_argument("--max-items", type=int, default=None, help="exit after this many items")
    worker.add_argument("--exit-when-idle", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--metrics-port", type=int, default=None, help="serve /metrics on 127.0.0.1:PORT")

    backfill = command(
        "backfill", "create the runs of a schedule's past slots in [--from, --to), as the tick makes them"
    )
    backfill.add_argument("tenant")
    backfill.add_argument("config_id")
    backfill.add_argument("--from", dest="start", required=True, help="first instant, ISO time (inclusive)")
    backfill.add_argument("--to", dest="end", required=True, help="end, ISO time (exclusive, not after now)")
    backfill.add_argument("--max-runs", type=int, default=DEFAULT_MAX_RUNS, help="refuse a larger range")
    backfill.add_argument("--dry-run", action="store_true", help="list the slots, write nothing")

    recover = command("recover", "take back runs and queue items whose lease expired")
    recover.add_argument("--now", default=None, help="simulate this ISO time instead of the clock")

    runs = command("runs", "list runs, most recently changed first")
    runs.add_argument("--state", default=None, help="one of " + ", ".join(s.value for s in RunState))
    runs.add_argument("--tenant", default=None)
    runs.add_argument("--limit", type=int, default=50)

    status = command("status", "per-tenant run counts and health")
    status.add_argument("--tenant", default=None)

    queue = command("queue", "queue statistics")
    queue.add_argument("--items", action="store_true", help="also list items")
    queue.add_argument("--status", default=None, help="with --items: only this status")
    queue.add_argument("--limit", type=int, default=50)

    demo = command("demo", "simulate a day of three tenants on a fresh SQLite file")
    demo.add_argument("--file", default="pipestate-demo.db", help="SQLite file to (re)create")
    serve_commands.add_parsers(command)
    return parser


def _add_common(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--db",
        default=default(None),
        help=f"store URL (SQLAlchemy); default: ${DB_ENV}, else {DEFAULT_DB}",
    )
    parser.add_argument("--bigquery-project", default=default(None))
    parser.add_argument("--bigquery-dataset", default=default(None))
    parser.add_argument("--bigquery-location", default=default(None))
    parser.add_argument("--json", action="store_true", default=default(False), help="JSON output")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="log pipestate's own records to stderr: -v info, -vv debug",
    )
    parser.add_argument("--traceback", action="store_true", default=default(False), help=argparse.SUPPRESS)


# --------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    traceback = "--traceback" in (argv if argv is not None else sys.argv[1:])
    try:
        args = parser.parse_args(argv)
        logs.configure(args.verbose)
        if args.command == "version":
            _say(args, {"version": __version__}, f"{PROG} {__version__}")
            return EXIT_OK
        code = asyncio.run(_dispatch(args))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except UsageError as exc:
        return _error(str(exc), EXIT_USAGE)
    except (InvalidInput, NotFound) as exc:
        if traceback:
            raise
        return _error(str(exc), EXIT_USAGE)
    except PipestateError as exc:
        if traceback:
            raise
        return _error(_hint(str(exc)), EXIT_FAILURE)
    except KeyboardInterrupt:
        return _error("interrupted", 130)
    except Exception as exc:
        if traceback:
            raise
        return _error(f"unexpected {type(exc).__name__}: {exc} (rerun with --traceback)", EXIT_FAILURE)


def _closed_pipe() -> int:
    """The reader went away (``pipestate runs | head``): stop quietly, as Unix tools do."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    return EXIT_CLOSED_PIPE


def _error(message: str, code: int) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _hint(message: str) -> str:
    if "no such table" in message:
        return f"{message.splitlines()[0]} (run '{PROG} init' first?)"
    return message


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from pipestate.adapters.cli.demo import run_demo

        return await run_demo(args.file if args.db is None else args.db, sys.stdout)
    options = StoreOptions.from_command_line(
        args.db, args.bigquery_project, args.bigquery_dataset, args.bigquery_location, os.environ
    )
    handler = None
    if args.command == "worker":
        _check_worker_options(args)
        handler = _load_handler(args.handler)
    read_only = (
        args.command in _READ_ONLY
        or (args.command == "schedule" and args.schedule_command in _READ_ONLY)
        or (args.command == "run" and args.run_command in _READ_ONLY)
    )
    if read_only:
        require_existing_sqlite_file(options)
    storage = open_store(options)
    try:
        if args.command == "init" or (is_sqlite(options) and not read_only):
            await storage.create_schema()  # idempotent; cheap on SQLite, explicit elsewhere
        if args.command == "init":
            _say(args, {"initialized": options.describe()}, f"initialized {options.describe()}")
            return EXIT_OK
        if args.command == "worker":
            assert handler is not None
            return await _worker(args, storage, handler)
        if args.command in serve_commands.COMMANDS:
            return await serve_commands.run(args, storage, options.describe(), _instant)
        if args.command == "schedule":
            command = _COMMANDS[f"schedule {args.schedule_command}"]
        elif args.command == "run":
            command = _COMMANDS[f"run {args.run_command}"]
        else:
            command = _COMMANDS[args.command]
        return await command(args, storage)
    finally:
        await storage.close()


def _say(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print_json(data)
    else:
        print(text)


# --------------------------------------------------------------------------- schedules
async def _schedule_add(args: argparse.Namespace, storage: Storage) -> int:
    retry_on = None
    if args.retry_on:
        retry_on = tuple(name.strip() for name in args.retry_on.split(",") if name.strip())
    base_delay = require_seconds("--retry-delay", args.retry_delay, allow_zero=True)
    if args.retry_max_delay is None:
        max_delay = max(DEFAULT_RETRY_POLICY.max_delay, base_delay)
    else:
        max_delay = require_seconds("--retry-max-delay", args.retry_max_delay, allow_zero=True)
        if max_delay < base_delay:
            raise InvalidArgument("--retry-max-delay", args.retry_max_delay, "must be >= --retry-delay")
    policy = RetryPolicy(
        max_retries=require_int("--max-retries", args.max_retries, minimum=0, maximum=MAX_RETRIES),
        base_delay=base_delay,
        max_delay=max_delay,
        retry_on_errors=retry_on,
    )
    schedule = await ScheduleManager(storage).add(
        args.tenant,
        args.config_id,
        args.cron,
        args.timezone,
        priority=args.priority,
        enabled=not args.disabled,
        retry_policy=policy,
        catchup=args.catchup,
        max_catchup_runs=args.max_catchup_runs,
        misfire_grace_seconds=args.misfire_grace,
        dst_gap=args.dst_gap,
        dst_fold=args.dst_fold,
        config=_json_object("--config", args.config),
        start=_instant("--start", args.start),
    )
    _say(
        args,
        schedule,
        f"added schedule {schedule.tenant_id}/{schedule.config_id} ({schedule.cron} {schedule.timezone});"
        f" next run {fmt_time(schedule.next_fire_time)} UTC",
    )
    return EXIT_OK


async def _schedule_list(args: argparse.Namespace, storage: Storage) -> int:
    schedules = await ScheduleManager(storage).list(tenant_id=args.tenant)
    if args.json:
        print_json(schedules)
    else:
        print(schedule_table(schedules))
    return EXIT_OK


async def _schedule_pause(args: argparse.Namespace, storage: Storage) -> int:
    schedule = await ScheduleManager(storage).pause(args.tenant, args.config_id)
    _say(args, schedule, f"paused {schedule.tenant_id}/{schedule.config_id}")
    return EXIT_OK


async def _schedule_resume(args: argparse.Namespace, storage: Storage) -> int:
    schedule = await ScheduleManager(storage).resume(args.tenant, args.config_id)
    _say(
        args,
        schedule,
        f"resumed {schedule.tenant_id}/{schedule.config_id};"
        f" next run {fmt_time(schedule.next_fire_time)} UTC",
    )
    return EXIT_OK


# --------------------------------------------------------------------------- tick, recover
async def _tick(args: argparse.Namespace, storage: Storage) -> int:
    progress = None if args.json else (lambda line: print(line, file=sys.stderr))
    scheduler = Scheduler(storage, batch_size=_positive("--batch-size", args.batch_size), progress=progress)
    report = await scheduler.tick(_instant("--now", args.now))
    _say(
        args,
        report,
        f"tick at {fmt_time(report.now)} UTC: {report.due_schedules} due schedules, "
        f"{report.runs_created} runs created ({report.runs_skipped} skipped slots), "
        f"{report.runs_promoted} runs due, {report.items_enqueued} queued",
    )
    if not args.json:
        for parked in report.parked_schedules:
            print(f"  paused {parked.tenant_id}/{parked.config_id}: cannot be planned: {parked.reason}")
    return EXIT_OK


async def _recover(args: argparse.Namespace, storage: Storage) -> int:
    report = await Recovery(storage).run_once(_instant("--now", args.now))
    if args.json:
        print_json(report)
        return EXIT_OK
    print(
        f"recovery at {fmt_time(report.now)} UTC: {report.expired_runs} expired runs "
        f"({report.retried} retried), {report.released_items} items released, "
        f"{report.failed_items} items failed, {report.requeued_runs} runs re-queued"
    )
    for run in report.runs:
        then = f"retry at {fmt_time(run.retry_at)}" if run.retry_at else "no retry left"
        print(f"  {short(run.run_id)} {run.tenant_id}/{run.config_id} (worker {run.worker_id}): {then}")
    if report.due_retries:
        print(f"  {report.due_retries} failed runs whose retry was due were retried")
    for parked in report.parked:
        print(f"  parked {short(parked.run_id)} ({parked.tenant_id}) FAILED: {parked.reason}")
    return EXIT_OK


async def _backfill(args: argparse.Namespace, storage: Storage) -> int:
    start, end = _instant("--from", args.start), _instant("--to", args.end)
    assert start is not None and end is not None
    report = await Backfill(storage).run(
        args.tenant, args.config_id, start, end, max_runs=args.max_runs, dry_run=args.dry_run
    )
    existing = ", ".join(f"{state.value} {n}" for state, n in sorted(report.existing.items())) or "none"
    verb = "would create" if report.dry_run else "created"
    _say(
        args,
        backfill_dict(report),
        f"backfill {report.tenant_id}/{report.config_id} {fmt_time(report.start)} .. {fmt_time(report.end)}"
        f" UTC: {len(report.slots)} slots, {verb} {report.missing if report.dry_run else report.created}"
        f" runs; slots that already had a run: {existing}",
    )
    return EXIT_OK


# --------------------------------------------------------------------------- worker
def _check_worker_options(args: argparse.Namespace) -> None:
    """Refuse worker options that would loop forever or never poll, before anything is opened.

    Raises:
        InvalidArgument: named after the option.
    """
    require_int("--concurrency", args.concurrency, minimum=1, maximum=MAX_CONCURRENCY)
    lease = require_seconds("--lease", args.lease)
    if args.heartbeat is not None:
        heartbeat = require_seconds("--heartbeat", args.heartbeat)
        if heartbeat >= lease:
            raise InvalidArgument(
                "--heartbeat", args.heartbeat, f"must be shorter than --lease ({lease:g} s)"
            )
    require_seconds("--poll", args.poll)
    if args.timeout is not None:
        require_seconds("--timeout", args.timeout)
    if args.max_items is not None:
        require_int("--max-items", args.max_items, minimum=1)
    if args.worker_id is not None:
        require_id("--worker-id", args.worker_id)


def _load_handler(spec: str) -> Handler:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise InvalidArgument("--handler", spec, "expected module:function")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: handlers next to where you run it
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgument("--handler", spec, f"cannot import {module_name!r}: {exc}") from None
    handler: Any = module
    for part in attribute.split("."):
        handler = getattr(handler, part, None)
        if handler is None:
            raise InvalidArgument("--handler", spec, f"{module_name!r} has no attribute {attribute!r}")
    if not callable(handler):
        raise InvalidArgument("--handler", spec, "is not callable")
    loaded: Handler = handler
    return loaded


async def _worker(args: argparse.Namespace, storage: Storage, handler: Handler) -> int:
    metrics = None
    if args.metrics_port is not None:
        metrics = await serve_commands.start_worker_metrics(storage, args.metrics_port)
        handler, storage = metrics.instrument(handler), metrics.count_errors(storage)

    def report(result: WorkResult) -> None:
        if metrics is not None:
            metrics.observe_result(result)
        if args.json:
            line = {k: v for k, v in public_json(result).items() if v is not None}
            print(json.dumps(line), flush=True)
        else:
            print(describe_result(result), flush=True)

    worker = Worker(
        handler,
        storage,
        worker_id=args.worker_id,
        concurrency=args.concurrency,
        lease=timedelta(seconds=args.lease),
        heartbeat_interval=args.heartbeat,
        poll_interval=args.poll,
        on_result=report,
        timeout=None if args.timeout is None else timedelta(seconds=args.timeout),
    )
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)

    def stop(signum: signal.Signals) -> None:
        if worker.stopping:
            # The second signal acts at once: a handler thread cannot be interrupted, and waiting
            # for it is what the operator refused. The runs in hand are left to their leases
            # and to recovery (nothing half-written: every write is a compare-and-set).
            print(f"{PROG}: {signum.name} again: exiting now", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(128 + signum)
        print(
            f"{PROG}: {signum.name}: finishing the current runs, taking no more"
            " (send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )
        worker.stop()

    for signum in signals:
        loop.add_signal_handler(signum, stop, signum)
    print(
        f"worker {worker.worker_id} started (concurrency {args.concurrency}, lease {args.lease:g}s)",
        file=sys.stderr,
        flush=True,
    )
    try:
        processed = await worker.run(max_items=args.max_items, exit_when_idle=args.exit_when_idle)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
    print(f"worker {worker.worker_id} stopped after {processed} items", file=sys.stderr, flush=True)
    return EXIT_OK


# --------------------------------------------------------------------------- operator actions
async def _schedule_trigger(args: argparse.Namespace, storage: Storage) -> int:
    run = await Control(storage).trigger(
        require_id("tenant", args.tenant), require_id("config_id", args.config_id)
    )
    _say(args, run, f"triggered {args.tenant}/{args.config_id}: run {run.run_id} is {run.state.value}")
    return EXIT_OK


async def _run_show(args: argparse.Namespace, storage: Storage) -> int:
    history = await run_history(storage, require_id("run_id", args.run_id))
    if args.json:
        print_json(history)
    else:
        print(history_text(history))
    return EXIT_OK


async def _run_acted(args: argparse.Namespace, run: PipelineRun, verb: str) -> int:
    _say(args, run, f"{verb} run {run.run_id}: {run.state.value}")
    return EXIT_OK


async def _run_cancel(args: argparse.Namespace, storage: Storage) -> int:
    run = await Control(storage).cancel(require_id("run_id", args.run_id), args.reason)
    return await _run_acted(args, run, "cancelled")


async def _run_retry(args: argparse.Namespace, storage: Storage) -> int:
    run = await Control(storage).retry(require_id("run_id", args.run_id), args.reason)
    return await _run_acted(args, run, "retried")


async def _run_rerun(args: argparse.Namespace, storage: Storage) -> int:
    run = await Control(storage).rerun(require_id("run_id", args.run_id), args.reason)
    return await _run_acted(args, run, f"rerun of {args.run_id} is")


async def _run_mark(args: argparse.Namespace, storage: Storage) -> int:
    outcome = RunState.COMPLETED if args.outcome == "succeeded" else RunState.FAILED
    run = await Control(storage).mark(require_id("run_id", args.run_id), outcome, args.reason)
    return await _run_acted(args, run, f"marked {args.outcome}")


# --------------------------------------------------------------------------- reports
async def _runs(args: argparse.Namespace, storage: Storage) -> int:
    states = [RunState.parse(args.state)] if args.state else None
    runs = await storage.find_runs(
        RunFilter(states=states, tenant_id=args.tenant),
        order=RunOrder.UPDATED_DESC,
        limit=_positive("--limit", args.limit),
    )
    if args.json:
        print_json(runs)
    else:
        print(run_table(runs))
    return EXIT_OK


async def _status(args: argparse.Namespace, storage: Storage) -> int:
    statuses = await tenant_statuses(storage, args.tenant, stats=serve_commands.stats_for(storage))
    if args.json:
        print_json([status_dict(s) for s in statuses])
    else:
        print(status_table(statuses))
    return EXIT_OK


async def _queue(args: argparse.Namespace, storage: Storage) -> int:
    stats = await storage.queue_stats(SYSTEM_CLOCK.now())
    items = []
    if args.items:
        status = QueueStatus.parse(args.status) if args.status else None
        items = await storage.find_queue_items(status=status, limit=_positive("--limit", args.limit))
    if args.json:
        print_json({"stats": stats, "items": items})
        return EXIT_OK
    print(queue_stats_text(stats))
    if args.items:
        rows = [
            (
                short(i.queue_id),
                short(i.run_id),
                i.tenant_id,
                i.priority,
                i.status.value,
                i.attempts,
                i.worker_id,
            )
            for i in items
        ]
        print()
        print(table(("ITEM", "RUN", "TENANT", "PRIO", "STATUS", "CLAIMS", "WORKER"), rows, right=[3, 5]))
    return EXIT_OK


# --------------------------------------------------------------------------- helpers
def _instant(option: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(option, value, "expected an ISO time such as 2026-03-08T06:00:00Z") from None
    at = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return require_instant(option, at)


def _json_object(option: str, value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(option, value, f"not JSON ({exc.msg})") from None
    except RecursionError:
        raise InvalidArgument(option, f"<{len(value)} characters>", "nested too deep") from None
    if not isinstance(parsed, dict):
        raise InvalidArgument(option, value, "must be a JSON object")
    return parsed


def _positive(option: str, value: int) -> int:
    return require_int(option, value, minimum=1)


_READ_ONLY = frozenset({"runs", "status", "queue", "list", "show"})
"""Commands (and ``schedule`` actions) that only read: they never create a database or tables."""

_COMMANDS: dict[str, Callable[[argparse.Namespace, Storage], Awaitable[int]]] = {
    "schedule add": _schedule_add,
    "schedule list": _schedule_list,
    "schedule pause": _schedule_pause,
    "schedule resume": _schedule_resume,
    "schedule trigger": _schedule_trigger,
    "run show": _run_show,
    "run cancel": _run_cancel,
    "run retry": _run_retry,
    "run rerun": _run_rerun,
    "run mark": _run_mark,
    "tick": _tick,
    "recover": _recover,
    "backfill": _backfill,
    "runs": _runs,
    "status": _status,
    "queue": _queue,
}
