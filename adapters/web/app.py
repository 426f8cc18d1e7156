"""The ASGI app of ``pipestate serve``: a JSON API, a status page and ``/metrics`` (FastAPI).

Security: control endpoints (POST) always need a token; with ``auth_all`` every endpoint does.
A token is presented as ``Authorization: Bearer …`` or, for the page, as the HttpOnly,
SameSite=Strict cookie the sign-in form sets; a cookie-authenticated POST must also carry the
``X-Pipestate-Request`` header (which a cross-site form cannot send). A tenant-scoped token sees
and acts on its tenant only: anything of another tenant answers 404, as if it did not exist.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from pipestate.adapters.cli.output import to_jsonable
from pipestate.adapters.web import page
from pipestate.adapters.web.auth import ANONYMOUS, Principal, TokenSet
from pipestate.application.clock import SYSTEM_CLOCK
from pipestate.application.control import Control
from pipestate.application.metrics import PipestateMetrics
from pipestate.application.overview import Overview, build_overview
from pipestate.domain.alerts import AlertKind, MonitorStore, RunStatsRepository
from pipestate.domain.clock import Clock
from pipestate.domain.errors import (
    ConcurrencyConflict,
    InvalidInput,
    InvalidTransition,
    NotFound,
    StorageUnavailable,
)
from pipestate.domain.pipeline_schedule import PipelineSchedule
from pipestate.domain.ports import RunFilter, RunOrder, Storage
from pipestate.domain.run import PipelineRun, RunState, require_id

log = logging.getLogger(__name__)

COOKIE: Final = "pipestate_token"
CSRF_HEADER: Final = "X-Pipestate-Request"
MAX_PAGE: Final = 500
MAX_OFFSET: Final = 10_000


class WebConfig:
    """What the app serves and how it checks callers."""

    def __init__(
        self,
        storage: Storage,
        monitor_store: MonitorStore | None = None,
        *,
        tokens: TokenSet | None = None,
        auth_all: bool = False,
        metrics: PipestateMetrics | None = None,
        stats: RunStatsRepository | None = None,
        refresh_seconds: int = 10,
        label: str = "",
        clock: Clock | None = None,
    ) -> None:
        self.storage = storage
        self.monitor_store = monitor_store
        self.tokens = tokens or TokenSet()
        self.auth_all = auth_all
        self.metrics = metrics
        self.stats = stats
        self.refresh_seconds = refresh_seconds
        self.label = label
        self.clock = clock or SYSTEM_CLOCK
        self.control = Control(storage, clock=self.clock)


def run_json(run: PipelineRun) -> dict[str, Any]:
    data: dict[str, Any] = to_jsonable(run)
    data.pop("claim_token", None)  # a fencing token: no caller needs it
    return data


def tenant_json(t: Any) -> dict[str, Any]:
    return {
        "tenant_id": t.tenant_id,
        "total": t.total,
        "counts": {state.value: t.count(state) for state in RunState},
        "success_rate": t.success_rate,
        "schedules": t.schedules,
        "paused_schedules": t.paused,
        "late": t.late,
        "stuck": t.stuck,
        "sla_misses": t.sla_misses,
        "oldest_waiting_seconds": t.oldest_waiting_seconds,
    }


def create_app(config: WebConfig) -> FastAPI:
    app = FastAPI(
        title="pipestate",
        summary="Status and control of scheduled pipeline runs",
        version="1",
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
    )
    storage = config.storage

    # ------------------------------------------------------------------ auth
    def principal_of(request: Request) -> Principal:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            found = config.tokens.match(token.strip()) if scheme.lower() == "bearer" and token else None
            if found is None:
                raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
            return found
        cookie = request.cookies.get(COOKIE)
        if cookie:
            found = config.tokens.match(cookie, via_cookie=True)
            if found is not None:
                return found
        if config.auth_all:
            raise HTTPException(401, "a token is required", headers={"WWW-Authenticate": "Bearer"})
        return ANONYMOUS

    def controller_of(request: Request) -> Principal:
        who = principal_of(request)
        if not who.authenticated:
            detail = "control needs a token" if config.tokens else "control is disabled: no tokens configured"
            raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})
        if who.via_cookie and request.headers.get(CSRF_HEADER) != "1":
            raise HTTPException(403, f"cookie-authenticated requests must send {CSRF_HEADER}: 1")
        return who

    def scoped_tenant(who: Principal, asked: str | None) -> str | None:
        if who.tenant is None:
            return asked
        if asked is not None and asked != who.tenant:
            raise HTTPException(404, f"tenant {asked!r} not found")
        return who.tenant

    async def visible_run(who: Principal, run_id: str) -> PipelineRun:
        run = await storage.get_run(run_id)
        if run is None or not who.sees(run.tenant_id):
            raise HTTPException(404, f"run {run_id!r} not found")
        return run

    def visible_tenant(who: Principal, tenant_id: str) -> None:
        if not who.sees(tenant_id):
            raise HTTPException(404, f"schedule {tenant_id!r} not found")

    # ------------------------------------------------------------------ errors
    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(InvalidInput)
    async def invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(InvalidTransition)
    async def conflict(_: Request, exc: InvalidTransition) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(ConcurrencyConflict)
    async def race(_: Request, exc: ConcurrencyConflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(StorageUnavailable)
    async def unavailable(_: Request, exc: StorageUnavailable) -> JSONResponse:
        log.warning("store unavailable: %s", type(exc).__name__)
        return JSONResponse({"detail": "store unavailable, try again"}, status_code=503)

    # ------------------------------------------------------------------ reads
    async def overview_for(who: Principal, tenant: str | None) -> Overview:
        return await build_overview(
            storage,
            config.monitor_store,
            config.clock.now(),
            tenant=scoped_tenant(who, tenant),
            stats=config.stats,
        )

    async def find(
        who: Principal, tenant: str | None, state: str | None, config_id: str | None, limit: int, offset: int
    ) -> list[PipelineRun]:
        if not 1 <= limit <= MAX_PAGE or not 0 <= offset <= MAX_OFFSET:
            raise HTTPException(422, f"limit must be 1..{MAX_PAGE} and offset 0..{MAX_OFFSET}")
        states = [RunState.parse(state)] if state else None
        runs = await storage.find_runs(
            RunFilter(
                states=states, tenant_id=scoped_tenant(who, tenant or None), config_id=config_id or None
            ),
            order=RunOrder.UPDATED_DESC,
            limit=offset + limit,
        )
        return runs[offset:]

    @app.get("/api/tenants", tags=["status"], summary="Every tenant at a glance")
    async def api_tenants(request: Request, tenant: str | None = None) -> dict[str, Any]:
        who = principal_of(request)
        view = await overview_for(who, tenant)
        return {
            "now": view.now.isoformat(),
            "tenants": [tenant_json(t) for t in view.tenants],
            "waiting": view.waiting,
            "late": view.total(AlertKind.LATE),
            "stuck": view.total(AlertKind.STUCK),
            "monitored": view.monitored,
            "truncated": view.truncated,
        }

    @app.get("/api/runs", tags=["status"], summary="Runs, most recently changed first")
    async def api_runs(
        request: Request,
        tenant: str | None = None,
        state: str | None = None,
        config_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        who = principal_of(request)
        runs = await find(who, tenant, state, config_id, limit, offset)
        return {"runs": [run_json(r) for r in runs], "limit": limit, "offset": offset, "count": len(runs)}

    @app.get("/api/runs/{run_id}", tags=["status"], summary="One run with its queue items and alerts")
    async def api_run(request: Request, run_id: str) -> dict[str, Any]:
        who = principal_of(request)
        run = await visible_run(who, run_id)
        items = await storage.find_queue_items(run_id=run_id)
        alerts = await config.monitor_store.list_alerts(run_id=run_id) if config.monitor_store else []
        return {
            "run": run_json(run),
            "queue_items": [{k: v for k, v in to_jsonable(i).items() if k != "claim_token"} for i in items],
            "alerts": to_jsonable(alerts),
        }

    @app.get("/api/queue", tags=["status"], summary="Queue statistics")
    async def api_queue(request: Request) -> dict[str, Any]:
        who = principal_of(request)
        if who.tenant is not None:
            view = await overview_for(who, None)
            return {"tenant_id": who.tenant, "waiting": view.waiting}
        stats = await storage.queue_stats(config.clock.now())
        data: dict[str, Any] = to_jsonable(stats)
        data["waiting"] = stats.waiting
        return data

    @app.get("/api/schedules", tags=["status"], summary="Schedules")
    async def api_schedules(request: Request, tenant: str | None = None) -> dict[str, Any]:
        who = principal_of(request)
        schedules = await storage.list_schedules(tenant_id=scoped_tenant(who, tenant))
        return {"schedules": to_jsonable(schedules)}

    @app.get("/api/alerts", tags=["status"], summary="Alerts, newest first")
    async def api_alerts(
        request: Request, tenant: str | None = None, kind: str | None = None, limit: int = 100
    ) -> dict[str, Any]:
        who = principal_of(request)
        if config.monitor_store is None:
            return {"alerts": [], "monitored": False}
        alerts = await config.monitor_store.list_alerts(
            tenant_id=scoped_tenant(who, tenant),
            kind=AlertKind.parse(kind) if kind else None,
            limit=max(1, min(limit, MAX_PAGE)),
        )
        return {"alerts": to_jsonable(alerts), "monitored": True}

    # ------------------------------------------------------------------ control
    @app.post(
        "/api/runs/{run_id}/cancel", tags=["control"], summary="Cancel a scheduled, pending or running run"
    )
    async def api_cancel(request: Request, run_id: str) -> dict[str, Any]:
        who = controller_of(request)
        await visible_run(who, run_id)
        run = await config.control.cancel(run_id)
        log.info("run %s cancelled through the API", run_id)
        return {"run": run_json(run)}

    @app.post("/api/runs/{run_id}/retry", tags=["control"], summary="Retry a failed run now")
    async def api_retry(request: Request, run_id: str) -> dict[str, Any]:
        who = controller_of(request)
        await visible_run(who, run_id)
        run = await config.control.retry(run_id)
        log.info("run %s retried through the API", run_id)
        return {"run": run_json(run)}

    async def schedule_action(
        request: Request,
        tenant_id: str,
        config_id: str,
        action: Callable[[str, str], Awaitable[Any]],
    ) -> Any:
        who = controller_of(request)
        require_id("tenant_id", tenant_id)
        visible_tenant(who, tenant_id)
        return await action(tenant_id, config_id)

    @app.post(
        "/api/schedules/{tenant_id}/{config_id}/trigger", tags=["control"], summary="Run a schedule now"
    )
    async def api_trigger(request: Request, tenant_id: str, config_id: str) -> dict[str, Any]:
        run = await schedule_action(request, tenant_id, config_id, config.control.trigger)
        return {"run": run_json(run)}

    @app.post("/api/schedules/{tenant_id}/{config_id}/pause", tags=["control"], summary="Pause a schedule")
    async def api_pause(request: Request, tenant_id: str, config_id: str) -> dict[str, Any]:
        schedule: PipelineSchedule = await schedule_action(
            request, tenant_id, config_id, config.control.pause
        )
        return {"schedule": to_jsonable(schedule)}

    @app.post("/api/schedules/{tenant_id}/{config_id}/resume", tags=["control"], summary="Resume a schedule")
    async def api_resume(request: Request, tenant_id: str, config_id: str) -> dict[str, Any]:
        schedule: PipelineSchedule = await schedule_action(
            request, tenant_id, config_id, config.control.resume
        )
        return {"schedule": to_jsonable(schedule)}

    # ------------------------------------------------------------------ metrics
    @app.get("/metrics", tags=["status"], summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        who = principal_of(request)
        if who.tenant is not None or config.metrics is None:
            raise HTTPException(404, "not found")
        body, content_type = await config.metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/healthz", tags=["status"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # ------------------------------------------------------------------ pages
    def html(request: Request, who: Principal, title: str, body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(
            page.layout(
                title,
                body,
                principal=who,
                refresh=config.refresh_seconds,
                label=config.label,
                now=config.clock.now(),
            ),
            status_code=status,
            headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
        )

    def page_principal(request: Request) -> Principal | HTMLResponse:
        try:
            return principal_of(request)
        except HTTPException as exc:
            return html(
                request, ANONYMOUS, "pipestate: sign in", page.message_page(str(exc.detail)), exc.status_code
            )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request, tenant: str | None = None, state: str | None = None) -> HTMLResponse:
        who = page_principal(request)
        if isinstance(who, HTMLResponse):
            return who
        tenant = tenant or None
        view = await overview_for(who, tenant)
        runs = await find(who, tenant, state or None, None, 50, 0)
        alerts = (
            await config.monitor_store.list_alerts(tenant_id=scoped_tenant(who, tenant), limit=20)
            if config.monitor_store
            else []
        )
        body = page.status_page(
            view, runs, alerts, principal=who, tenant_filter=tenant, state_filter=state or None
        )
        return html(request, who, "pipestate status", body)

    @app.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    async def run_view(request: Request, run_id: str) -> HTMLResponse:
        who = page_principal(request)
        if isinstance(who, HTMLResponse):
            return who
        try:
            run = await visible_run(who, run_id)
        except HTTPException as exc:
            return html(request, who, "pipestate: not found", page.message_page(str(exc.detail)), 404)
        items = await storage.find_queue_items(run_id=run_id)
        alerts = await config.monitor_store.list_alerts(run_id=run_id) if config.monitor_store else []
        return html(request, who, f"run {run_id[:8]}", page.run_page(run, items, alerts, principal=who))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        token = (form.get("token") or [""])[0].strip()
        if not token or config.tokens.match(token) is None:
            return html(request, ANONYMOUS, "pipestate: sign in", page.message_page("invalid token"), 401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=12 * 3600,
        )
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout() -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    return app
