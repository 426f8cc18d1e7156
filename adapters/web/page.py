"""Server-rendered HTML for the status page (no templates engine, no build step, no external assets).

Every value is escaped with :func:`html.escape`. Numbers that tests (and people) read carry a
``data-testid``. The page reloads itself every ``refresh`` seconds, except while an input has
the focus. Control buttons call the JSON API with ``fetch`` (same-origin cookie plus the
``X-Pipestate-Request`` header that cookie-authenticated writes need).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from typing import Final
from urllib.parse import quote, urlencode

from pipestate.adapters.web.auth import Principal
from pipestate.application.overview import Overview
from pipestate.domain.alerts import Alert
from pipestate.domain.queue import QueueItem, QueueStatus
from pipestate.domain.run import ACTIVE_STATES, PipelineRun, RunState

_STATES: Final = (
    RunState.SCHEDULED,
    RunState.PENDING,
    RunState.RUNNING,
    RunState.COMPLETED,
    RunState.FAILED,
    RunState.CANCELLED,
    RunState.SKIPPED,
)

_CSS: Final = """
:root { --bg:#f6f7f9; --fg:#1d2330; --muted:#5b6474; --card:#fff; --line:#dde1e8; --accent:#2457c5;
  --bad:#b42318; --warn:#b54708; --ok:#067647; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg);
  color:var(--fg); }
header { display:flex; flex-wrap:wrap; gap:.5rem 1rem; align-items:center; justify-content:space-between;
  padding:.75rem 1rem; background:#18202f; color:#fff; }
header h1 { margin:0; font-size:1.15rem; } header a { color:#fff; text-decoration:none; }
header .meta { color:#c5cbd6; font-size:.85rem; }
header form { display:flex; gap:.4rem; } header input { width:11rem; }
main { max-width:1360px; margin:0 auto; padding:1rem; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:1rem;
  margin-bottom:1rem; }
h2 { margin:0 0 .75rem; font-size:1.05rem; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(130px,1fr)); gap:.75rem;
  margin-bottom:1rem; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:.75rem; }
.card .n { font-size:1.6rem; font-weight:650; } .card .l { color:var(--muted); font-size:.85rem; }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { padding:.4rem .45rem; border-bottom:1px solid var(--line); text-align:left; white-space:nowrap; }
th { font-size:.75rem; color:var(--muted); font-weight:600; text-transform:uppercase; letter-spacing:.02em;
  white-space:normal; vertical-align:bottom; }
td.num, th.num { text-align:right; }
.state { display:inline-block; padding:.05rem .45rem; border-radius:999px; font-size:.8rem; font-weight:600;
  background:#eef1f6; }
.s-RUNNING { background:#e0eaff; color:#1d3f99; } .s-COMPLETED { background:#dcfae6; color:var(--ok); }
.s-FAILED { background:#fee4e2; color:var(--bad); }
.s-PENDING, .s-SCHEDULED { background:#fef0c7; color:var(--warn); }
.bad { color:var(--bad); font-weight:650; } .muted { color:var(--muted); }
button, input, select { font:inherit; padding:.3rem .6rem; border-radius:6px; border:1px solid var(--line); }
button { background:var(--accent); color:#fff; border-color:var(--accent); cursor:pointer; }
button.danger { background:var(--bad); border-color:var(--bad); }
form.filters { display:flex; flex-wrap:wrap; gap:.5rem; margin-bottom:.75rem; }
ol.timeline { list-style:none; padding:0; margin:0; border-left:3px solid var(--line); }
ol.timeline li { margin:0 0 .75rem .75rem; } ol.timeline time { color:var(--muted); font-size:.85rem; }
dl { display:grid; grid-template-columns:max-content 1fr; gap:.3rem 1rem; margin:0; }
dt { color:var(--muted); } dd { margin:0; overflow-wrap:anywhere; }
@media (max-width: 600px) { main { padding:.5rem; } section { padding:.75rem; } header input { width:8rem; } }
"""

_JS: Final = """
async function act(button) {
  const url = button.dataset.url, label = button.dataset.label;
  if (!confirm(label + '?')) return;
  const r = await fetch(url, {method: 'POST', credentials: 'same-origin',
                              headers: {'X-Pipestate-Request': '1'}});
  if (!r.ok) {
    const b = await r.json().catch(() => ({}));
    alert(label + ' failed: ' + (b.detail || r.status));
  }
  location.reload();
}
const REFRESH = Number(document.body.dataset.refresh);
if (REFRESH > 0) setInterval(() => {
  const f = document.activeElement;
  if (!f || !['INPUT', 'SELECT', 'TEXTAREA'].includes(f.tagName)) location.reload();
}, REFRESH * 1000);
"""


def fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _e(value: object) -> str:
    return escape("" if value is None else str(value))


def _state(state: RunState) -> str:
    return f'<span class="state s-{state.value}">{state.value}</span>'


def layout(title: str, body: str, *, principal: Principal, refresh: int, label: str, now: datetime) -> str:
    if principal.authenticated:
        who = "all tenants" if principal.tenant is None else f"tenant {principal.tenant}"
        account = (
            f'<form method="post" action="/logout"><span class="meta">signed in: {_e(who)}</span>'
            '<button type="submit">Sign out</button></form>'
        )
    else:
        account = (
            '<form method="post" action="/login"><input type="password" name="token" '
            'placeholder="access token" aria-label="access token" autocomplete="current-password">'
            '<button type="submit">Sign in</button></form>'
        )
    every = f"refreshes every {refresh}s" if refresh > 0 else "auto-refresh off"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body data-refresh="{refresh}">
<header><div><h1><a href="/">pipestate</a></h1>
<div class="meta">{_e(label)} · {fmt_time(now)} UTC · {every}</div></div>{account}</header>
<main>{body}</main><script>{_JS}</script></body></html>"""


def _card(label: str, value: object, testid: str, *, bad: bool = False) -> str:
    cls = ' class="n bad"' if bad else ' class="n"'
    return (
        f'<div class="card"><div{cls} data-testid="{testid}">{_e(value)}</div>'
        f'<div class="l">{_e(label)}</div></div>'
    )


def _buttons(run: PipelineRun, principal: Principal) -> str:
    """Control buttons; the URL and label travel in data attributes, never inside script text."""
    if not principal.authenticated:
        return ""
    rid = quote(run.run_id, safe="")
    out = []
    if run.state in ACTIVE_STATES:
        out.append(
            f'<button class="danger" data-testid="cancel-{_e(run.run_id)}" data-url="/api/runs/{rid}/cancel" '
            f'data-label="Cancel run {_e(run.run_id[:8])}" onclick="act(this)">Cancel</button>'
        )
    if run.state is RunState.FAILED:
        out.append(
            f'<button data-testid="retry-{_e(run.run_id)}" data-url="/api/runs/{rid}/retry" '
            f'data-label="Retry run {_e(run.run_id[:8])}" onclick="act(this)">Retry</button>'
        )
    return " ".join(out)


def run_rows(runs: Sequence[PipelineRun], principal: Principal) -> str:
    if not runs:
        return '<tr><td colspan="7" class="muted">no runs</td></tr>'
    rows = []
    for run in runs:
        rows.append(
            f'<tr data-testid="run-{_e(run.run_id)}">'
            f'<td><a href="/runs/{quote(run.run_id, safe="")}">{_e(run.run_id[:8])}</a></td>'
            f"<td>{_e(run.tenant_id)}/{_e(run.config_id)}</td>"
            f'<td data-testid="state-{_e(run.run_id)}">{_state(run.state)}</td>'
            f"<td>{fmt_time(run.scheduled_time)}</td>"
            f'<td class="num">{run.attempt}</td>'
            f"<td>{fmt_time(run.updated_at)}</td>"
            f"<td>{_buttons(run, principal)}</td></tr>"
        )
    return "".join(rows)


def alert_rows(alerts: Iterable[Alert]) -> str:
    rows = [
        f"<tr><td>{fmt_time(a.detected_at)}</td><td>{_e(a.kind.value)}</td>"
        f"<td>{_e(a.tenant_id)}/{_e(a.config_id or '')}</td><td>{_e(a.reason)}</td></tr>"
        for a in alerts
    ]
    return "".join(rows) or '<tr><td colspan="4" class="muted">no alerts</td></tr>'


def status_page(
    overview: Overview,
    runs: Sequence[PipelineRun],
    alerts: Sequence[Alert],
    *,
    principal: Principal,
    tenant_filter: str | None,
    state_filter: str | None,
) -> str:
    totals = {s: sum(t.count(s) for t in overview.tenants) for s in _STATES}
    late = sum(t.late for t in overview.tenants)
    stuck = sum(t.stuck for t in overview.tenants)
    cards = "".join(
        [
            _card("runs", sum(totals.values()), "total-runs"),
            _card("running", totals[RunState.RUNNING], "total-running"),
            _card("waiting in queue", overview.waiting, "total-waiting"),
            _card("late", late, "total-late", bad=late > 0),
            _card("stuck", stuck, "total-stuck", bad=stuck > 0),
            _card("failed", totals[RunState.FAILED], "total-failed", bad=totals[RunState.FAILED] > 0),
        ]
    )
    head = "".join(f'<th class="num">{s.value.lower()}</th>' for s in _STATES)
    tenant_rows = []
    for t in overview.tenants:  # the columns a phone shows first: the ones that need action
        tid = _e(t.tenant_id)
        cells = "".join(f'<td class="num" data-testid="t-{tid}-{s.value}">{t.count(s)}</td>' for s in _STATES)
        rate = "-" if t.success_rate is None else f"{t.success_rate:.0%}"
        tenant_rows.append(
            f'<tr><td><a href="/?{_e(urlencode({"tenant": t.tenant_id}))}">{tid}</a></td>'
            f'<td class="num{" bad" if t.late else ""}" data-testid="t-{tid}-late">{t.late}</td>'
            f'<td class="num{" bad" if t.stuck else ""}" data-testid="t-{tid}-stuck">{t.stuck}</td>'
            f'<td class="num" data-testid="t-{tid}-success">{rate}</td>'
            f'<td class="num" data-testid="t-{tid}-oldest">{fmt_age(t.oldest_waiting_seconds)}</td>'
            f'<td class="num" data-testid="t-{tid}-sla">{t.sla_misses}</td>'
            f'<td class="num" data-testid="t-{tid}-total">{t.total}</td>{cells}'
            f'<td class="num">{t.schedules}{f" ({t.paused} paused)" if t.paused else ""}</td></tr>'
        )
    tenants = (
        '<section><h2>Tenants</h2><div class="scroll"><table><thead><tr><th>tenant</th>'
        '<th class="num">late</th><th class="num">stuck</th><th class="num">success</th>'
        '<th class="num">oldest wait</th><th class="num">sla missed</th>'
        f'<th class="num">runs</th>{head}<th class="num">schedules</th></tr></thead>'
        f"<tbody>{''.join(tenant_rows) or '<tr><td class=muted colspan=15>no tenants</td></tr>'}</tbody>"
        "</table></div>"
        + (
            ""
            if overview.monitored
            else '<p class="muted">late/stuck need the monitor table (SQL stores)</p>'
        )
        + "</section>"
    )
    queue = _queue_section(overview)
    states = "".join(
        f'<option value="{s.value}"{" selected" if state_filter == s.value else ""}>{s.value}</option>'
        for s in _STATES
    )
    filters = (
        '<form class="filters" method="get" action="/">'
        f'<input name="tenant" placeholder="tenant" value="{_e(tenant_filter or "")}" aria-label="tenant">'
        f'<select name="state" aria-label="state"><option value="">any state</option>{states}</select>'
        '<button type="submit">Filter</button></form>'
    )
    runs_html = (
        f"<section><h2>Runs</h2>{filters}"
        '<div class="scroll"><table><thead><tr><th>run</th><th>tenant/config</th><th>state</th>'
        "<th>scheduled</th>"
        '<th class="num">att</th><th>updated</th><th></th></tr></thead>'
        f'<tbody data-testid="runs">{run_rows(runs, principal)}</tbody></table></div></section>'
    )
    alerts_html = (
        '<section><h2>Recent alerts</h2><div class="scroll"><table><thead><tr><th>detected</th><th>kind</th>'
        f"<th>pipeline</th><th>reason</th></tr></thead><tbody>{alert_rows(alerts)}</tbody></table></div></section>"
    )
    return f'<div class="cards">{cards}</div>{tenants}{queue}{runs_html}{alerts_html}'


def _queue_section(overview: Overview) -> str:
    stats = overview.queue
    if stats is None:
        return (
            f'<section><h2>Queue</h2><p><span data-testid="queue-waiting">{overview.waiting}</span> '
            "items waiting</p></section>"
        )
    rows = "".join(
        f'<tr><td>{p}</td><td class="num" data-testid="queue-p{p}">{n}</td></tr>'
        for p, n in sorted(stats.waiting_by_priority.items())
    )
    statuses = " · ".join(f"{s.value.lower()} {stats.by_status.get(s, 0)}" for s in QueueStatus)
    empty = "<tr><td colspan=2 class=muted>empty</td></tr>"
    oldest = fmt_age(stats.oldest_waiting_age_seconds)
    return (
        '<section><h2>Queue</h2><div class="scroll"><table><thead><tr><th>priority</th>'
        f'<th class="num">waiting</th></tr></thead><tbody>{rows or empty}'
        "</tbody></table></div>"
        f'<p class="muted">{_e(statuses)} · average wait {fmt_age(stats.avg_wait_seconds)} · p95 '
        f'{fmt_age(stats.p95_wait_seconds)} · oldest waiting <span data-testid="queue-oldest">{oldest}</span>'
        "</p></section>"
    )


def run_page(
    run: PipelineRun, items: Sequence[QueueItem], alerts: Sequence[Alert], *, principal: Principal
) -> str:
    events: list[tuple[datetime, str]] = []
    if run.created_at:
        events.append((run.created_at, "created"))
    events.append((run.scheduled_time, "due (scheduled time)"))
    for item in sorted(items, key=lambda i: i.created_at):
        events.append((item.created_at, f"queued (priority {item.priority}, item {item.queue_id[:8]})"))
        if item.claimed_at:
            events.append(
                (
                    item.claimed_at,
                    f"claimed by {item.worker_id or '?'} (claim {item.attempts});"
                    f" item now {item.status.value}"
                    + (f": {item.error_message}" if item.error_message else ""),
                )
            )
        if item.completed_at:
            events.append((item.completed_at, f"item {item.status.value.lower()}"))
    if run.started_at:
        events.append((run.started_at, f"attempt {run.attempt} started on {run.worker_id or '?'}"))
    if run.completed_at:
        what = (
            run.state.value.lower() if run.state.is_terminal or run.state is RunState.FAILED else "finished"
        )
        detail = f" ({run.error_type}: {run.error_message})" if run.error_type else ""
        events.append((run.completed_at, f"{what}{detail}"))
    if run.next_retry_at:
        events.append((run.next_retry_at, "retry due"))
    for alert in alerts:
        events.append((alert.detected_at, f"alert {alert.kind.value}: {alert.reason}"))
    timeline = "".join(
        f"<li><time>{fmt_time(at)}</time><div>{_e(text)}</div></li>"
        for at, text in sorted(events, key=lambda e: e[0])
    )
    fields = [
        ("run", run.run_id),
        ("tenant / config", f"{run.tenant_id} / {run.config_id}"),
        ("priority", run.priority),
        ("attempts", run.attempt),
        ("retries", run.retry_count),
        ("worker", run.worker_id),
        ("lease expires", fmt_time(run.lease_expires_at)),
        ("duration", f"{run.duration_seconds:.1f}s" if run.duration_seconds is not None else None),
        ("error", f"{run.error_type}: {run.error_message}" if run.error_type else None),
        ("cancel reason", run.cancel_reason),
    ]
    details = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v if v is not None else '-')}</dd>" for k, v in fields)
    return (
        f'<section><h2>Run {_e(run.run_id[:8])} <span data-testid="run-state">{_state(run.state)}</span></h2>'
        f"<dl>{details}</dl><p>{_buttons(run, principal)}</p></section>"
        f'<section><h2>Timeline</h2><ol class="timeline">{timeline}</ol></section>'
    )


def message_page(text: str) -> str:
    return f'<section><p data-testid="message">{_e(text)}</p><p><a href="/">back</a></p></section>'
