"""The JSON API and the page through an HTTP client (httpx on the ASGI app), on real SQL stores."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest

from pipestate.adapters.sqlalchemy import SqlAlchemyStorage
from pipestate.adapters.web.app import CSRF_HEADER, WebConfig, create_app
from pipestate.adapters.web.auth import TokenSet
from pipestate.application.metrics import PipestateMetrics
from pipestate.domain.clock import FrozenClock
from pipestate.domain.errors import InvalidArgument
from pipestate.domain.queue import QueueStatus
from pipestate.domain.run import PipelineRun, RunState
from tests.observability.conftest import Population, SqlTarget, populate

ADMIN = "admin-token-0123456789abcdef"
ACME = "acme-token-0123456789abcdefgh"
GLOBEX = "globex-token-0123456789abcdef"
TOKENS = f"* {ADMIN}\nacme {ACME}\n# a comment\nglobex {GLOBEX}\n"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Api:
    client: httpx.AsyncClient
    storage: SqlAlchemyStorage
    population: Population
    clock: FrozenClock

    async def stored(self, run: PipelineRun) -> PipelineRun:
        found = await self.storage.get_run(run.run_id)
        assert found is not None
        return found


async def _api(sql_target: SqlTarget, clock: FrozenClock, *, auth_all: bool = False) -> AsyncIterator[Api]:
    storage, alerts = await sql_target.open()
    population = await populate(storage, clock.now())
    config = WebConfig(
        storage,
        alerts,
        tokens=TokenSet.parse(TOKENS),
        auth_all=auth_all,
        metrics=PipestateMetrics(storage, alerts, clock=clock),
        clock=clock,
        label="test store",
    )
    transport = httpx.ASGITransport(app=create_app(config))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield Api(client, storage, population, clock)


@pytest.fixture
async def api(sql_target: SqlTarget, clock: FrozenClock) -> AsyncIterator[Api]:
    async for value in _api(sql_target, clock):
        yield value


@pytest.fixture
async def locked_api(sql_target: SqlTarget, clock: FrozenClock) -> AsyncIterator[Api]:
    async for value in _api(sql_target, clock, auth_all=True):
        yield value


# --------------------------------------------------------------------------- reads
async def test_tenants_match_the_store(api: Api) -> None:
    body = (await api.client.get("/api/tenants")).json()
    assert [t["tenant_id"] for t in body["tenants"]] == ["acme", "globex"]
    for tenant in body["tenants"]:
        for state in RunState:
            assert tenant["counts"][state.value] == api.population.count(tenant["tenant_id"], state)
        assert tenant["total"] == api.population.count(tenant["tenant_id"])
    acme = body["tenants"][0]
    assert acme["success_rate"] == pytest.approx(3 / 4) and acme["schedules"] == 2
    assert body["waiting"] == api.population.count(state=RunState.PENDING) == 3
    assert body["monitored"] is True and acme["late"] == 0  # no max_delay configured


async def test_runs_filter_and_page(api: Api) -> None:
    pending = (await api.client.get("/api/runs", params={"state": "pending"})).json()["runs"]
    assert sorted(r["run_id"] for r in pending) == sorted(
        r.run_id for r in api.population.runs if r.state is RunState.PENDING
    )
    first = (await api.client.get("/api/runs", params={"tenant": "acme", "limit": 3})).json()["runs"]
    rest = (await api.client.get("/api/runs", params={"tenant": "acme", "limit": 50, "offset": 3})).json()[
        "runs"
    ]
    ids = [r["run_id"] for r in first + rest]
    assert len(first) == 3 and len(ids) == len(set(ids)) == api.population.count("acme")
    assert all("claim_token" not in r for r in first + rest)
    assert (await api.client.get("/api/runs", params={"limit": 0})).status_code == 422
    assert (await api.client.get("/api/runs", params={"state": "nope"})).status_code == 422


async def test_one_run_with_its_queue_items(api: Api) -> None:
    run = api.population.first("globex", RunState.PENDING)
    body = (await api.client.get(f"/api/runs/{run.run_id}")).json()
    assert body["run"]["state"] == "PENDING" and body["run"]["tenant_id"] == "globex"
    assert [i["status"] for i in body["queue_items"]] == ["QUEUED"]
    assert (await api.client.get("/api/runs/no-such-run")).status_code == 404


async def test_queue_schedules_alerts_and_openapi(api: Api) -> None:
    queue = (await api.client.get("/api/queue")).json()
    assert queue["waiting"] == 3 and queue["waiting_by_priority"] == {"2": 1, "5": 1, "6": 1}
    schedules = (await api.client.get("/api/schedules")).json()["schedules"]
    assert sorted((s["tenant_id"], s["config_id"]) for s in schedules) == [
        ("acme", "clicks"),
        ("acme", "orders"),
        ("globex", "sync"),
    ]
    assert (await api.client.get("/api/alerts")).json() == {"alerts": [], "monitored": True}
    spec = (await api.client.get("/openapi.json")).json()
    for path in (
        "/api/runs/{run_id}/cancel",
        "/api/schedules/{tenant_id}/{config_id}/trigger",
        "/api/tenants",
    ):
        assert path in spec["paths"]


# --------------------------------------------------------------------------- tokens
async def test_control_without_a_token_is_401_and_changes_nothing(api: Api) -> None:
    run = api.population.first("acme", RunState.PENDING)
    for headers in ({}, bearer("wrong-token-0123456789abcdef"), {"Authorization": "Basic abc"}):
        response = await api.client.post(f"/api/runs/{run.run_id}/cancel", headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    paused = await api.client.post("/api/schedules/acme/orders/pause")
    assert paused.status_code == 401
    assert await api.stored(run) == run
    schedule = await api.storage.list_schedules(tenant_id="acme")
    assert all(s.enabled for s in schedule)


async def test_another_tenants_token_gets_404_on_read_and_control_and_changes_nothing(api: Api) -> None:
    run = api.population.first("acme", RunState.PENDING)
    globex = bearer(GLOBEX)
    assert (await api.client.get(f"/api/runs/{run.run_id}", headers=globex)).status_code == 404
    assert (await api.client.get("/api/runs", params={"tenant": "acme"}, headers=globex)).status_code == 404
    for action in ("cancel", "retry"):
        response = await api.client.post(f"/api/runs/{run.run_id}/{action}", headers=globex)
        assert response.status_code == 404
    for action in ("pause", "resume", "trigger"):
        response = await api.client.post(f"/api/schedules/acme/orders/{action}", headers=globex)
        assert response.status_code == 404
    assert await api.stored(run) == run
    assert len(await api.storage.find_queue_items()) == 3  # nothing triggered
    assert all(s.enabled for s in await api.storage.list_schedules())
    # what the globex token does see: its tenant only
    tenants = (await api.client.get("/api/tenants", headers=globex)).json()["tenants"]
    assert [t["tenant_id"] for t in tenants] == ["globex"]
    runs = (await api.client.get("/api/runs", headers=globex)).json()["runs"]
    assert {r["tenant_id"] for r in runs} == {"globex"} and len(runs) == api.population.count("globex")
    assert (await api.client.get("/api/queue", headers=globex)).json() == {
        "tenant_id": "globex",
        "waiting": 1,
    }
    assert (await api.client.get("/metrics", headers=globex)).status_code == 404


async def test_control_with_the_tenants_token(api: Api) -> None:
    acme = bearer(ACME)
    run = api.population.first("acme", RunState.PENDING)
    cancelled = await api.client.post(f"/api/runs/{run.run_id}/cancel", headers=acme)
    assert cancelled.status_code == 200 and cancelled.json()["run"]["state"] == "CANCELLED"
    assert (await api.stored(run)).state is RunState.CANCELLED
    assert (await api.client.post(f"/api/runs/{run.run_id}/cancel", headers=acme)).status_code == 409
    failed = api.population.first("acme", RunState.FAILED)  # failed as not retryable
    assert (await api.client.post(f"/api/runs/{failed.run_id}/retry", headers=acme)).status_code == 409
    paused = await api.client.post("/api/schedules/acme/orders/pause", headers=acme)
    assert paused.status_code == 200 and paused.json()["schedule"]["enabled"] is False
    resumed = await api.client.post("/api/schedules/acme/orders/resume", headers=bearer(ADMIN))
    assert resumed.json()["schedule"]["enabled"] is True
    triggered = (await api.client.post("/api/schedules/acme/clicks/trigger", headers=acme)).json()["run"]
    assert triggered["state"] == "PENDING" and triggered["priority"] == 6
    items = await api.storage.find_queue_items(run_id=triggered["run_id"])
    assert [i.status for i in items] == [QueueStatus.QUEUED]
    missing = await api.client.post("/api/schedules/acme/nope/trigger", headers=acme)
    assert missing.status_code == 404


async def test_retry_puts_a_retryable_failure_back_in_the_queue(api: Api) -> None:
    now = api.clock.now()
    run = PipelineRun.new(
        tenant_id="globex", config_id="sync", scheduled_time=now - timedelta(hours=9), now=now
    )
    run.make_pending(now)
    run.start(now, worker_id="w", claim_token="tok", lease_expires_at=now + timedelta(minutes=5))
    run.fail(now, error_message="flaky", error_type="TransientError")
    await api.storage.insert_runs([run])
    response = await api.client.post(f"/api/runs/{run.run_id}/retry", headers=bearer(GLOBEX))
    assert response.status_code == 200 and response.json()["run"]["state"] == "PENDING"
    assert [i.status for i in await api.storage.find_queue_items(run_id=run.run_id)] == [QueueStatus.QUEUED]


async def test_with_auth_all_every_endpoint_needs_a_token(locked_api: Api) -> None:
    client = locked_api.client
    for path in ("/api/tenants", "/api/runs", "/api/queue", "/api/schedules", "/metrics"):
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers=bearer(ADMIN))).status_code == 200
    page = await client.get("/")
    assert page.status_code == 401 and "Sign in" in page.text


async def test_the_page_signs_in_with_a_cookie_and_cookie_writes_need_the_header(locked_api: Api) -> None:
    client = locked_api.client
    assert (await client.post("/login", content="token=wrong-token-0123456789")).status_code == 401
    signed = await client.post(
        "/login", content=f"token={ACME}", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert signed.status_code == 303
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = await client.get("/")
    assert page.status_code == 200 and "signed in: tenant acme" in page.text and "globex" not in page.text
    run = locked_api.population.first("acme", RunState.PENDING)
    forged = await client.post(f"/api/runs/{run.run_id}/cancel")
    assert forged.status_code == 403 and (await locked_api.stored(run)).state is RunState.PENDING
    done = await client.post(f"/api/runs/{run.run_id}/cancel", headers={CSRF_HEADER: "1"})
    assert done.status_code == 200 and (await locked_api.stored(run)).state is RunState.CANCELLED
    await client.post("/logout")
    client.cookies.clear()
    assert (await client.get("/api/tenants")).status_code == 401


async def test_tokens_never_reach_the_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    run = api.population.first("acme", RunState.PENDING)
    await api.client.post(f"/api/runs/{run.run_id}/cancel", headers=bearer(ACME))
    await api.client.post(f"/api/runs/{run.run_id}/cancel", headers=bearer(ACME + "x"))
    assert "cancelled through the API" in caplog.text
    assert ACME not in caplog.text and ADMIN not in caplog.text
    assert ACME not in repr(TokenSet.parse(TOKENS))


@pytest.mark.parametrize("text", ["acme short", "acme", "a b c", "* has space-but-long-enough"])
def test_bad_token_files_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        TokenSet.parse(text)
    assert "short" not in str(caught.value) and "space-but" not in str(caught.value)


async def test_the_status_page_shows_the_store(api: Api) -> None:
    page = (await api.client.get("/")).text
    for tenant in ("acme", "globex"):
        assert f'data-testid="t-{tenant}-total">{api.population.count(tenant)}<' in page
        for state in RunState:
            assert f'data-testid="t-{tenant}-{state.value}">{api.population.count(tenant, state)}<' in page
    assert 'data-testid="total-waiting">3<' in page
    assert "Cancel" not in page  # anonymous: no control buttons
    run = api.population.first("acme", RunState.COMPLETED)
    detail = await api.client.get(f"/runs/{run.run_id}")
    assert detail.status_code == 200 and "attempt 1 started on w1" in detail.text
    assert (await api.client.get("/runs/nope")).status_code == 404


async def test_the_page_escapes_what_the_store_holds(api: Api) -> None:
    now = api.clock.now()
    hostile = PipelineRun.new(
        tenant_id="acme", config_id="<img src=x onerror=alert(1)>", scheduled_time=now, now=now
    )
    hostile.run_id = "r'\");alert(2);//<script>alert(3)</script>"
    await api.storage.insert_runs([hostile])
    page = (await api.client.get("/", headers=bearer(ADMIN))).text
    assert "<img src=x" not in page and "<script>alert(3)" not in page and "');alert(2)" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'data-label="Cancel run r&#x27;&quot;);ale"' in page  # data attribute, not script text
