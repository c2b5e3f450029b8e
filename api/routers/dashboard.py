"""The managers' dashboard: GET /dashboard, one page per manager, and its sign-in.

Sign-in
-------
`GET /dashboard` without a session shows a form; `POST /dashboard/sign-in` takes an API
key holding `reports:read`, looked up exactly as every API request's key is
(`api.deps.principal_for`: its SHA-256, unrevoked). The browser then holds only a
session cookie: a random id (32 bytes, `secrets.token_urlsafe`), `HttpOnly`,
`SameSite=Strict`, `Secure` when the page was served over https, scoped to `/dashboard`.
Never the key, never anything in the URL.

Sessions are kept server-side, in the API process's memory (`api.sessions`, keyed by
the SHA-256 of the session id), for at most `SESSION_TTL`. Chosen over a signed cookie
because it needs no new secret to configure and rotate, and signing out really ends the
session (a signed cookie stays valid until it expires). The cost: a restart of the API, or
a second API process behind a balancer without sticky sessions, asks the manager to sign
in again — cheap for a page. The session keeps the key's SHA-256 (what the store keeps,
useless as a credential) and every request looks the key up again: a revoked key, or one
that lost `reports:read`, ends the session on its next request.

The page
--------
`?manager_id=` chooses the manager (default: the employee the key is bound to, when that
employee manages anyone; else a picker); their team is their direct reports. `?period=`
(YYYY-MM, default the current UTC month) is the month of the scorecards and of the audit
exceptions (opportunities opened within it). The pipeline funnel is the team's
opportunities now, by stage (store/reports.py `pipeline_report`), and the referrers are the
team's conversion over the referrer window (`referrer_report`). Every figure comes from
the store module that defines it; this module only selects and arranges.

The numbers reach the page as a JSON block (`#dashboard-data`) that `static/dashboard.js`
draws with the vendored Chart.js (static/vendor/chartjs, no CDN: the CSP allows scripts
from this origin only, and none inline); they are also written as text and `data-*`
attributes, so the page reads without script and tests can check the charts.

An opportunity's page
---------------------
Each audit exception links to `GET /dashboard/opportunities/{id}`, under the same session
(the cookie's path is `/dashboard`) and the same scope: `GET /v1/opportunities/{id}` wants
a Bearer key a browser does not send, so a manager following the link would get 401. The
page shows the opportunity, its checkpoints and its practice-audit review: Kevin's three
questions and each broken rule's sentence, from `store.audit` (`load_facts`, `review`,
`findings`), so it says what the report and the journey say. It shows the customer's id
only (the dashboard shows no customer's name, nor any contact detail) and of each
checkpoint's evidence its keys only: values such as an SMS's phone number are the
customer's. Without a session it redirects to the sign-in at `/dashboard`; it has no
script at all.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from api.deps import Principal, Services, ServicesDep, principal_for
from api.sessions import BrowserSessions, sessions_for
from domain.customer_health import month_bounds, parse_period
from store.audit import findings, load_facts, practice_audit, review, stage_name, when
from store.keys import hash_key
from store.models import Checkpoint, Employee, Opportunity
from store.reports import pipeline_report, referrer_report
from store.scorecards import scorecards

SCOPE = "reports:read"
COOKIE = "needflow_dashboard"
COOKIE_PATH = "/dashboard"
#: How long a dashboard session lasts after sign-in, in seconds (no sliding renewal).
SESSION_TTL = 8 * 3600

#: Like the signing page's: nothing cached or framed, no referrer; scripts and styles from
#: this origin only (no inline script: the data is a JSON block, not code).
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}

_HERE = Path(__file__).resolve().parent.parent
STATIC_DIR = _HERE / "static"
#: The static files the dashboard serves (explicit: nothing else under static/ is served).
STATIC_FILES: dict[str, str] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "vendor/chartjs/chart.umd.js": "text/javascript; charset=utf-8",
}

router = APIRouter(tags=["dashboard"], include_in_schema=False)
templates = Jinja2Templates(directory=_HERE / "templates")


# ---------------------------------------------------------------- sessions


def sessions_of(request: Request) -> BrowserSessions:
    return sessions_for(request, "dashboard", SESSION_TTL)


async def signed_in(request: Request, svc: Services) -> Principal | None:
    """The key behind the request's session, looked up now; a dead key ends the session."""
    sessions = sessions_of(request)
    session_id = request.cookies.get(COOKIE)
    found = sessions.get(session_id)
    if found is None:
        return None
    who = await principal_for(svc, found.key_sha256)
    if who is None or SCOPE not in who.scopes:
        sessions.close(session_id)
        return None
    return who


def _set_cookie(response: Response, request: Request, session_id: str) -> None:
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=SESSION_TTL,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


def _page(request: Request, status: int, **ctx: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, "dashboard.html", ctx, status_code=status, headers=SECURITY_HEADERS)


def _sign_in_page(request: Request, status: int = 200, error: str | None = None) -> HTMLResponse:
    response = _page(request, status, signed_in=False, error=error)
    if request.cookies.get(COOKIE):
        _clear_cookie(response, request)
    return response


# ---------------------------------------------------------------- routes


@router.post("/dashboard/sign-in")
async def sign_in(request: Request, svc: ServicesDep, api_key: Annotated[str, Form(max_length=500)] = ""):
    """Exchange an API key holding `reports:read` for a session cookie."""
    key = api_key.strip()
    who = await principal_for(svc, hash_key(key)) if key else None
    if who is None:
        return _sign_in_page(request, 401, "Unknown or revoked API key.")
    if SCOPE not in who.scopes:
        return _sign_in_page(request, 403, f"This API key lacks the scope {SCOPE}.")
    sessions = sessions_of(request)
    sessions.close(request.cookies.get(COOKIE))  # a new session id at every sign-in
    response = RedirectResponse("/dashboard", status_code=303, headers=SECURITY_HEADERS)
    _set_cookie(response, request, sessions.open(hash_key(key)))
    return response


@router.post("/dashboard/sign-out")
async def sign_out(request: Request):
    sessions_of(request).close(request.cookies.get(COOKIE))
    response = RedirectResponse("/dashboard", status_code=303, headers=SECURITY_HEADERS)
    _clear_cookie(response, request)
    return response


@router.get("/dashboard")
async def dashboard(
    request: Request,
    svc: ServicesDep,
    manager_id: Annotated[str | None, Query(max_length=64)] = None,
    period: Annotated[str | None, Query(max_length=7)] = None,
):
    """The manager's page (module docstring); the sign-in form without a session."""
    who = await signed_in(request, svc)
    if who is None:
        return _sign_in_page(request)

    now = datetime.now(UTC)
    error = None
    try:
        first_day = parse_period(period) if period else date(now.year, now.month, 1)
    except ValueError as exc:
        error, first_day = f"Period: {exc}.", date(now.year, now.month, 1)

    async with svc.sessions() as session:
        managers = (
            await session.execute(
                select(Employee.id, Employee.name)
                .where(
                    Employee.id.in_(select(Employee.manager_id).where(Employee.manager_id.is_not(None)))
                    | (Employee.role == "manager")
                )
                .order_by(Employee.name, Employee.id)
            )
        ).all()
    manager_ids = {m.id for m in managers}
    chosen = manager_id or (who.employee_id if who.employee_id in manager_ids else None)
    ctx: dict[str, Any] = {
        "signed_in": True,
        "key_name": who.name,
        "managers": managers,
        "manager_id": chosen,
        "period": f"{first_day:%Y-%m}",
        "error": error,
        "data": None,
    }
    if chosen is not None and chosen not in manager_ids:
        ctx["error"] = f"No manager with id {chosen}."
        return _page(request, 404, **ctx)
    if chosen is not None:
        data = await _team_data(svc, chosen, first_day, now)
        ctx.update(data=data, manager_name=next(m.name for m in managers if m.id == chosen))
    return _page(request, 200, **ctx)


def opportunity_href(opportunity_id: str) -> str:
    """Where the dashboard links an opportunity: its page under the dashboard's session."""
    return f"{COOKIE_PATH}/opportunities/{quote(opportunity_id, safe='')}"


@router.get("/dashboard/opportunities/{opportunity_id}")
async def opportunity_page(request: Request, svc: ServicesDep, opportunity_id: str):
    """One opportunity and its practice-audit review (module docstring); without a
    session, a redirect to the sign-in."""
    who = await signed_in(request, svc)
    if who is None:
        return RedirectResponse(COOKIE_PATH, status_code=303, headers=SECURITY_HEADERS)
    opp = await _opportunity_data(svc, opportunity_id)
    ctx: dict[str, Any] = {"key_name": who.name, "opportunity_id": opportunity_id, "opp": opp}
    if opp is None:
        ctx["error"] = f"No opportunity with id {opportunity_id}."
    return templates.TemplateResponse(
        request, "dashboard_opportunity.html", ctx, status_code=200 if opp else 404, headers=SECURITY_HEADERS
    )


def _static_route(name: str, media_type: str) -> None:
    path = STATIC_DIR / name

    async def static_file() -> FileResponse:
        return FileResponse(
            path,
            media_type=media_type,
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=3600"},
        )

    router.add_api_route(f"/static/{name}", static_file, methods=["GET"], include_in_schema=False)


# One route per file (no directory is served): the dashboard's script and style sheet and
# the vendored Chart.js.
for _name, _media_type in STATIC_FILES.items():
    _static_route(_name, _media_type)


# ---------------------------------------------------------------- the page's numbers


def _stage_order(svc: Services) -> list[str]:
    """Stages in funnel order across products: by their relative place in their process
    (every product's latest), the won stages (`closed_won`, checking's `opened`) then
    `closed_lost` last."""
    rank: dict[str, tuple[int, float]] = {}
    for product in svc.catalog.products():
        process = svc.catalog.latest(product)
        if process is None:
            continue
        open_stages = [s for s in process.stages if s.outcome is None and s.key != "closed_lost"]
        for stage in process.stages:
            if stage.key == "closed_lost":
                place = (2, 0.0)
            elif stage.outcome is not None:
                place = (1, 0.0)
            else:
                place = (0, open_stages.index(stage) / max(1, len(open_stages) - 1))
            rank[stage.key] = min(rank.get(stage.key, place), place)
    return sorted(rank, key=lambda key: (*rank[key], key))


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


async def _team_data(svc: Services, manager_id: str, first_day: date, now: datetime) -> dict[str, Any]:
    start, end = month_bounds(first_day)
    last_day = (end - timedelta(days=1)).date()
    window_days = svc.settings.referrer_window_days
    async with svc.sessions() as session:
        team = (
            await session.execute(
                select(Employee.id, Employee.name).where(Employee.manager_id == manager_id).order_by(Employee.name)
            )
        ).all()
        team_ids = [t.id for t in team]
        pipeline = await pipeline_report(session, now=now, owner_ids=team_ids)
    async with svc.sessions() as session:
        referrers = await referrer_report(session, now=now, window_days=window_days, employee_ids=team_ids)
    async with svc.sessions() as session:
        cards = await scorecards(session, period=first_day, manager_id=manager_id)
    exceptions = []
    for emp_id in team_ids:
        async with svc.sessions() as session:
            exceptions += await practice_audit(
                session, svc.catalog, opened_from=first_day, opened_to=last_day, owner_id=emp_id
            )

    names = {t.id: t.name for t in team}
    known = _stage_order(svc)
    by_stage: dict[str, int] = {}
    by_product: dict[str, dict[str, int]] = {}
    for row in pipeline.opportunities_by_product_and_stage:
        by_stage[row.stage] = by_stage.get(row.stage, 0) + row.count
        by_product.setdefault(row.product, {})[row.stage] = row.count
    stages = [s for s in known if s in by_stage] + sorted(s for s in by_stage if s not in known)

    return {
        "manager_id": manager_id,
        "period": f"{first_day:%Y-%m}",
        "team": [{"id": t.id, "name": t.name} for t in team],
        "funnel": {
            "stages": stages,
            "counts": [by_stage[s] for s in stages],
            "by_product": {p: [counts.get(s, 0) for s in stages] for p, counts in sorted(by_product.items())},
            "by_status": pipeline.opportunities_by_status,
        },
        "referrers": {
            "window_days": window_days,
            "items": [
                {
                    "id": r.referrer_id,
                    "name": r.name or r.referrer_id,
                    "referrals": r.referrals,
                    "decided": r.decided,
                    "converted": r.converted,
                    "conversion_rate": r.conversion_rate,
                    "referrer_score": r.referrer_score,
                }
                for r in referrers.items
            ],
        },
        "scorecards": [
            {
                "employee_id": c.employee_id,
                "name": c.name,
                "customers": c.customers,
                "units": c.units,
                "amount": _money(c.amount),
                "nps": c.nps,
                "active_customer_share": c.active_customer_share,
                "on_time_payment_share": c.on_time_payment_share,
                "referrals_made": c.referrals_made,
                "referrals_converted": c.referrals_converted,
                "cross_lob_referrals": c.cross_lob_referrals,
            }
            for c in cards
        ],
        "exceptions": [
            {
                "opportunity_id": e.opportunity_id,
                "rule": e.rule,
                "detail": e.detail,
                "owner_id": e.owner_id,
                "owner": names.get(e.owner_id, e.owner_id),
                "product": e.product,
                "href": opportunity_href(e.opportunity_id),
            }
            for e in exceptions
        ],
    }


# ---------------------------------------------------------------- an opportunity's page


async def _opportunity_data(svc: Services, opportunity_id: str) -> dict[str, Any] | None:
    async with svc.sessions() as session:
        # load_facts reads from one snapshot on PostgreSQL; the rows below share it.
        facts = await load_facts(session, svc.catalog, [Opportunity.id == opportunity_id])
        if not facts:
            return None
        [fact] = facts
        opp = await session.get(Opportunity, opportunity_id)
        assert opp is not None
        checkpoints = (
            await session.scalars(
                select(Checkpoint).where(Checkpoint.opportunity_id == opportunity_id).order_by(Checkpoint.seq)
            )
        ).all()
        people = {
            e.id: e
            for e in await session.execute(
                select(Employee.id, Employee.name, Employee.manager_id).where(
                    Employee.id.in_({opp.owner_id, *(c.actor for c in checkpoints)})
                )
            )
        }
    owner = people.get(opp.owner_id)
    verdict = review(fact)
    # Back to the dashboard where its exceptions are listed: its owner's manager's team, the
    # month it opened.
    back = {"manager_id": owner.manager_id} if owner is not None and owner.manager_id else {}
    back["period"] = f"{opp.opened_at:%Y-%m}"
    return {
        "id": opp.id,
        "customer_id": opp.customer_id,
        "product": opp.product,
        "process_version": opp.process_version,
        "owner_id": opp.owner_id,
        "owner": owner.name if owner is not None else opp.owner_id,
        "stage": opp.stage,
        "stage_name": stage_name(fact.process, opp.stage),
        "status": opp.status,
        "amount": _money(opp.amount) if opp.amount is not None else None,
        "opened_at": when(opp.opened_at),
        "closed_at": when(opp.closed_at) if opp.closed_at is not None else None,
        "lost_reason": opp.lost_reason,
        "campaign_id": opp.campaign_id,
        "back": f"{COOKIE_PATH}?{urlencode(back)}",
        "checkpoints": [
            {
                "seq": c.seq,
                "stage": c.stage,
                "stage_name": stage_name(fact.process, c.stage),
                "entered_at": when(c.entered_at),
                "trigger": c.trigger,
                "actor": c.actor,
                "actor_name": people[c.actor].name if c.actor in people else None,
                "via": c.via,
                "evidence_keys": sorted(c.evidence or {}),
            }
            for c in checkpoints
        ],
        "review": {
            "won": opp.status == "won",
            "consent": verdict.consent,
            "need_before_sale": verdict.need_before_sale,
            "all_checkpoints": verdict.all_checkpoints,
        },
        "findings": [{"rule": f.rule, "detail": f.detail} for f in findings(fact)],
    }
