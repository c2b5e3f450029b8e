"""Who may call what (spec/API.md, Authentication and Errors), on every route the app has.

- SCOPES is the contract: the one scope each /v1 route needs (method + path -> scope).
  PUBLIC lists the routes that need no key. Together they must name exactly the app's
  routes, so a route added without a row here (and so, likely, without a scope check)
  fails `test_the_tables_name_exactly_the_apps_routes`.
- For every route in SCOPES: no key and an unknown key are 401 `unauthenticated`, a key
  with every scope but that one is 403 `forbidden`, a key with just that scope is let
  in, and a refused write writes nothing (WRITES names the rows each write would make).
- A revoked key is 401 on its very next request, and its idempotency keys replay nothing.
- An unexpected exception is a 500 `internal_error` in the one error shape, with nothing
  of the exception in it, and it frees the request's Idempotency-Key: the retry does the
  work.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fastapi.routing
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import Engine, select, update
from temporalio.client import Client

from api.app import create_app
from api.routers import customers as customers_router
from api.routers import employees as employees_router
from config import Settings
from store.keys import ALL_SCOPES, hash_key, register_api_key
from store.models import (
    ApiKey,
    Campaign,
    Checkpoint,
    Consent,
    Customer,
    CustomerSignal,
    Employee,
    IdempotencyRecord,
    Interaction,
    Need,
    Opportunity,
    Prequalification,
    ProcessedEvent,
    Referral,
    ReferralHistory,
    SignatureRequest,
)
from tests.helpers import Api, assert_error, count, territory, unique

OCCURRED_AT = "2026-11-25T10:00:00+00:00"

Route = tuple[str, str]  # (method, path template), as the app declares it

#: The contract: the scope each route needs. Add a row with every new route.
SCOPES: dict[Route, str] = {
    ("POST", "/v1/customers"): "crm:write",
    ("GET", "/v1/customers/{customer_id}"): "crm:write",
    ("POST", "/v1/customers/{customer_id}/needs"): "crm:write",
    ("POST", "/v1/customers/{customer_id}/interactions"): "crm:write",
    ("POST", "/v1/customers/{customer_id}/consents"): "crm:write",
    ("POST", "/v1/consents/{consent_id}/withdraw"): "crm:write",
    ("GET", "/v1/customers/{customer_id}/journey"): "reports:read",
    ("POST", "/v1/employees"): "admin",
    ("PATCH", "/v1/employees/{employee_id}"): "admin",
    ("GET", "/v1/employees/{employee_id}/referrals"): "crm:write",
    ("POST", "/v1/referrals"): "crm:write",
    ("GET", "/v1/referrals/{referral_id}"): "crm:write",
    ("POST", "/v1/referrals/{referral_id}/accept"): "crm:write",
    ("POST", "/v1/referrals/{referral_id}/reject"): "crm:write",
    ("POST", "/v1/referrals/{referral_id}/reassign"): "crm:write",
    ("POST", "/v1/referrals/{referral_id}/convert"): "crm:write",
    ("POST", "/v1/referrals/{referral_id}/close"): "crm:write",
    ("POST", "/v1/opportunities"): "crm:write",
    ("GET", "/v1/opportunities/{opportunity_id}"): "crm:write",
    ("POST", "/v1/opportunities/{opportunity_id}/advance"): "crm:write",
    ("POST", "/v1/opportunities/{opportunity_id}/close-lost"): "crm:write",
    ("POST", "/v1/opportunities/{opportunity_id}/resend-signature"): "crm:write",
    ("POST", "/v1/imports"): "admin",
    ("POST", "/v1/campaigns"): "crm:write",
    ("POST", "/v1/campaigns/{campaign_id}/prequalify"): "crm:write",
    # Progress against a campaign's goal is a manager's figure (api/routers/campaigns.py).
    ("GET", "/v1/campaigns/{campaign_id}"): "reports:read",
    ("POST", "/v1/events"): "events:write",
    ("GET", "/v1/outbox"): "admin",
    ("POST", "/v1/api-keys"): "admin",
    ("GET", "/v1/api-keys"): "admin",
    ("DELETE", "/v1/api-keys/{key_id}"): "admin",
    ("GET", "/v1/reports/referrers"): "reports:read",
    ("GET", "/v1/reports/pipeline"): "reports:read",
    ("GET", "/v1/reports/scorecards"): "reports:read",
    ("GET", "/v1/reports/practice-audit"): "reports:read",
}

#: Routes that need no key, and what each answers without one (the signing page: an
#: unknown token). The customer signing page is reached by its unguessable token alone.
PUBLIC: dict[Route, int] = {
    ("GET", "/healthz"): 200,
    ("GET", "/openapi.json"): 200,
    ("GET", "/docs"): 200,
    ("GET", "/docs/oauth2-redirect"): 200,
    ("GET", "/redoc"): 200,
    ("GET", "/sign/{token}"): 404,
    ("POST", "/sign/{token}"): 404,
    # Authenticated by the message's HMAC instead of a key: unsigned, it is refused.
    ("POST", "/v1/webhooks/docusign"): 401,
    # The managers' dashboard: signed in by a session cookie, not a key (tests/test_dashboard.py
    # checks it): the sign-in form, a refused sign-in, sign-out, an opportunity's page
    # (without a session: to the sign-in), and its static files.
    ("GET", "/dashboard"): 200,
    ("POST", "/dashboard/sign-in"): 401,
    ("POST", "/dashboard/sign-out"): 303,
    ("GET", "/dashboard/opportunities/{opportunity_id}"): 303,
    ("GET", "/static/dashboard.js"): 200,
    ("GET", "/static/dashboard.css"): 200,
    ("GET", "/static/vendor/chartjs/chart.umd.js"): 200,
    # The codec server for Temporal's Web UI and CLI, outside /v1 (its tools call
    # ENDPOINT/encode and ENDPOINT/decode): an `admin` key or a codec session, else 401
    # (tests/test_codec.py checks the keys, the scope and the session); its sign-in form,
    # a refused sign-in and sign-out.
    ("POST", "/codec/encode"): 401,
    ("POST", "/codec/decode"): 401,
    ("GET", "/codec/sign-in"): 200,
    ("POST", "/codec/sign-in"): 401,
    ("POST", "/codec/sign-out"): 200,
}

#: Routes found to lack the check SCOPES asks for: (strict) xfail with the reason, until fixed.
KNOWN_GAPS: dict[Route, str] = {}


# ---------------------------------------------------------------- the app's routes


def _route_objects(app: FastAPI) -> Iterable[Any]:
    # FastAPI >= 0.16x keeps included routers lazily (app.routes holds one entry per
    # include_router); iter_route_contexts flattens them the way /openapi.json does.
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    return flatten(app.routes) if flatten is not None else app.routes


def app_routes(app: FastAPI) -> set[Route]:
    """Every (method, path) the app answers; a mount or websocket is ("*", path)."""
    found: set[Route] = set()
    for route in _route_objects(app):
        path = route.path
        methods = set(route.methods or ())
        if "GET" in methods:
            methods.discard("HEAD")  # Starlette adds HEAD to every GET route
        found |= {(m, path) for m in methods} if methods else {("*", path)}
    return found


def test_the_tables_name_exactly_the_apps_routes(settings: Settings, client: Client, task_queue: str) -> None:
    routes = app_routes(create_app(settings, client=client, task_queue=task_queue))
    assert not set(SCOPES) & set(PUBLIC), "a route is both scoped and public"
    missing = sorted(routes - set(SCOPES) - set(PUBLIC))
    assert not missing, f"routes with no row in SCOPES or PUBLIC (which scope do they need?): {missing}"
    gone = sorted((set(SCOPES) | set(PUBLIC)) - routes)
    assert not gone, f"rows for routes the app does not have: {gone}"
    assert all(path.startswith("/v1/") for _, path in SCOPES), "a scoped route outside /v1"
    #: The one /v1 route without a key: a provider's webhook, authenticated by its signature.
    signed_webhooks = {("POST", "/v1/webhooks/docusign")}
    unkeyed = [r for r in routes if r[1].startswith("/v1/") and r not in SCOPES]
    assert sorted(unkeyed) == sorted(signed_webhooks), "a /v1 route needs no key"
    assert set(SCOPES.values()) <= set(ALL_SCOPES)
    assert set(WRITES) == {r for r in SCOPES if r[0] != "GET"}, "every write route needs a row in WRITES"
    assert set(KNOWN_GAPS) <= set(SCOPES)


async def test_openapi_documents_the_same_routes(api: Api) -> None:
    doc = (await api.http.get("/openapi.json")).json()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented <= set(SCOPES) | set(PUBLIC), sorted(documented - set(SCOPES) - set(PUBLIC))
    assert set(SCOPES) <= documented, sorted(set(SCOPES) - documented)


# ---------------------------------------------------------------- what the probes act on


@dataclass(frozen=True)
class Subjects:
    """Real things for the probes to act on, so a missing check would do real work."""

    dan: str  # a mortgage broker, owner of `opportunity`
    customer_id: str
    need_id: str
    opportunity_id: str
    referral_id: str
    referrer_id: str
    assignee_id: str
    manager_id: str
    key_id: str  # a key made for the test to revoke
    consent_id: str  # a branch consent of `customer_id`
    campaign_id: str  # a campaign `customer_id` may be prequalified for

    def path(self, template: str) -> str:
        ids = {
            "customer_id": self.customer_id,
            "employee_id": self.assignee_id,
            "opportunity_id": self.opportunity_id,
            "referral_id": self.referral_id,
            "key_id": self.key_id,
            "consent_id": self.consent_id,
            "campaign_id": self.campaign_id,
        }
        names = re.findall(r"{(\w+)}", template)
        assert set(names) <= set(ids), f"no subject for {set(names) - set(ids)} in {template}: add one"
        return template.format(**ids)


@pytest_asyncio.fixture(scope="module")
async def subjects(app_client: httpx.AsyncClient, keys: dict[str, str], db: Engine) -> Subjects:
    api = Api(app_client, keys["all"])
    spare = register_api_key(db, unique("spare"), ["reports:read"])
    with db.connect() as conn:
        key_id = conn.scalar(select(ApiKey.id).where(ApiKey.key_sha256 == hash_key(spare)))
    dan = await api.employee(name="Dan Access", email="dan.access@bank.example")
    customer, need = await api.customer_with_need(dan["id"], name=unique("Ada Access"))
    opp = await api.opportunity(owner=dan)
    state = territory()
    staff = await api.staff(state)
    ref = await api.refer(staff["ryan"], state, name=unique("Kiara Access"))
    assert ref["assignee_id"] == staff["bob"]["id"], ref
    consent = await api.post(
        f"/v1/customers/{customer['id']}/consents",
        {"actor_id": dan["id"], "product": "mortgage", "channel": "branch", "evidence": {"document_id": "BR-1"}},
        expect=201,
    )
    campaign = await api.post(
        "/v1/campaigns",
        {
            "name": unique("Access campaign"),
            "starts_on": "2026-12-01",
            "ends_on": "2026-12-31",
            "goal": {"metric": "new_households", "target": 10},
            "prequalification": [{"has_need": "buy_home"}],
        },
        expect=201,
    )
    return Subjects(
        dan=dan["id"],
        customer_id=customer["id"],
        need_id=need["id"],
        opportunity_id=opp["id"],
        referral_id=ref["id"],
        referrer_id=staff["ryan"]["id"],
        assignee_id=staff["bob"]["id"],
        manager_id=staff["kevin"]["id"],
        key_id=key_id,
        consent_id=consent.json()["id"],
        campaign_id=campaign.json()["id"],
    )


#: For each write route: a valid body (tagged with `tag`) that would change something if
#: let in, and the rows that change would make (counted before and after a refusal).
Write = Callable[[Subjects, str], tuple[dict[str, Any], Callable[[Engine], int]]]


def _write(body: dict[str, Any], model: Any, *where: Any) -> tuple[dict[str, Any], Callable[[Engine], int]]:
    return body, lambda db: count(db, model, *where)


WRITES: dict[Route, Write] = {
    ("POST", "/v1/customers"): lambda s, tag: _write({"name": tag}, Customer, Customer.name == tag),
    ("POST", "/v1/customers/{customer_id}/needs"): lambda s, tag: _write(
        {"kind": "retire", "description": tag, "recorded_by": s.dan}, Need, Need.description == tag
    ),
    ("POST", "/v1/customers/{customer_id}/interactions"): lambda s, tag: _write(
        {"channel": "call", "summary": tag}, Interaction, Interaction.summary == tag
    ),
    ("PATCH", "/v1/employees/{employee_id}"): lambda s, tag: _write(
        {"capacity": 7}, Employee, Employee.id == s.assignee_id, Employee.capacity == 7
    ),
    ("POST", "/v1/customers/{customer_id}/consents"): lambda s, tag: _write(
        {"actor_id": s.dan, "product": "mortgage", "channel": "branch", "evidence": {"document_id": tag}},
        Consent,
        Consent.customer_id == s.customer_id,
    ),
    ("POST", "/v1/consents/{consent_id}/withdraw"): lambda s, tag: _write(
        {"actor_id": s.dan, "reason": tag}, Consent, Consent.id == s.consent_id, Consent.withdrawn_at.is_not(None)
    ),
    ("POST", "/v1/employees"): lambda s, tag: _write(
        {
            "name": "Eve Access",
            "email": f"{tag}@bank.example",
            "role": "advisor",
            "line_of_business": "retail",
            "capacity": 5,
        },
        Employee,
        Employee.email == f"{tag}@bank.example",
    ),
    ("POST", "/v1/referrals"): lambda s, tag: _write(
        {
            "referrer": {"type": "employee", "id": s.referrer_id},
            "customer_id": s.customer_id,
            "expressed_interest": "mortgage",
            "notes": tag,
        },
        Referral,
        Referral.notes == tag,
    ),
    ("POST", "/v1/referrals/{referral_id}/accept"): lambda s, tag: _write(
        {"actor_id": s.assignee_id}, ReferralHistory, ReferralHistory.referral_id == s.referral_id
    ),
    ("POST", "/v1/referrals/{referral_id}/reject"): lambda s, tag: _write(
        {"actor_id": s.assignee_id, "reason": tag}, ReferralHistory, ReferralHistory.referral_id == s.referral_id
    ),
    ("POST", "/v1/referrals/{referral_id}/reassign"): lambda s, tag: _write(
        {"actor_id": s.manager_id, "to_employee_id": s.dan, "reason": tag},
        ReferralHistory,
        ReferralHistory.referral_id == s.referral_id,
    ),
    ("POST", "/v1/referrals/{referral_id}/convert"): lambda s, tag: _write(
        {"actor_id": s.assignee_id, "need": {"kind": "buy_home", "description": tag}},
        ReferralHistory,
        ReferralHistory.referral_id == s.referral_id,
    ),
    ("POST", "/v1/referrals/{referral_id}/close"): lambda s, tag: _write(
        {"actor_id": s.assignee_id, "reason": tag}, ReferralHistory, ReferralHistory.referral_id == s.referral_id
    ),
    ("POST", "/v1/opportunities"): lambda s, tag: _write(
        {"customer_id": s.customer_id, "product": "mortgage", "owner_id": s.dan, "need_id": s.need_id},
        Opportunity,
        Opportunity.customer_id == s.customer_id,
    ),
    ("POST", "/v1/opportunities/{opportunity_id}/advance"): lambda s, tag: _write(
        {"actor_id": s.dan, "to_stage": "searching", "evidence": {"realtor": tag}},
        Checkpoint,
        Checkpoint.opportunity_id == s.opportunity_id,
    ),
    ("POST", "/v1/opportunities/{opportunity_id}/close-lost"): lambda s, tag: _write(
        {"actor_id": s.dan, "reason": tag}, Checkpoint, Checkpoint.opportunity_id == s.opportunity_id
    ),
    ("POST", "/v1/opportunities/{opportunity_id}/resend-signature"): lambda s, tag: _write(
        {"actor_id": s.dan}, SignatureRequest, SignatureRequest.opportunity_id == s.opportunity_id
    ),
    ("POST", "/v1/imports"): lambda s, tag: _write(
        {"source": tag, "customers": [{"external_id": "C-1", "name": tag}]}, Customer, Customer.name == tag
    ),
    ("POST", "/v1/campaigns"): lambda s, tag: _write(
        {
            "name": tag,
            "starts_on": "2026-12-01",
            "ends_on": "2026-12-31",
            "goal": {"metric": "cross_sell_ratio", "target": 0.3},
            "prequalification": [{"has_need": "buy_home"}],
        },
        Campaign,
        Campaign.name == tag,
    ),
    ("POST", "/v1/campaigns/{campaign_id}/prequalify"): lambda s, tag: _write(
        {"customer_id": s.customer_id, "actor_id": s.dan},
        Prequalification,
        Prequalification.campaign_id == s.campaign_id,
    ),
    ("POST", "/v1/api-keys"): lambda s, tag: _write(
        {"name": tag, "scopes": ["reports:read"]}, ApiKey, ApiKey.name == tag
    ),
    ("DELETE", "/v1/api-keys/{key_id}"): lambda s, tag: (
        None,
        lambda db: count(db, ApiKey, ApiKey.id == s.key_id, ApiKey.revoked_at.is_not(None)),
    ),
    ("POST", "/v1/events"): lambda s, tag: (
        {
            "id": tag,
            "type": "nps.response",
            "occurred_at": OCCURRED_AT,
            "customer_id": s.customer_id,
            "data": {"score": 9},
        },
        lambda db: (
            count(db, ProcessedEvent, ProcessedEvent.id == tag)
            + count(db, CustomerSignal, CustomerSignal.event_id == tag)
        ),
    ),
}


# ---------------------------------------------------------------- scopes on every route


def _scope_cases() -> Iterator[Any]:
    for route in sorted(SCOPES):
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[route])] if route in KNOWN_GAPS else []
        yield pytest.param(route, id=f"{route[0]} {route[1]}", marks=marks)


@pytest.mark.parametrize("route", list(_scope_cases()))
async def test_each_route_wants_its_key_and_its_scope(
    route: Route, api: Api, keys: dict[str, str], db: Engine, subjects: Subjects
) -> None:
    method, template = route
    scope = SCOPES[route]
    path = subjects.path(template)
    tag = unique("access")
    if route in WRITES:
        body, written = WRITES[route](subjects, tag)
    else:
        body, written = None, (lambda _db: 0)
    before = written(db)

    async def call(authorization: str | None, json: Any = body) -> httpx.Response:
        headers = {"Idempotency-Key": tag} if method != "GET" else {}
        if authorization is not None:
            headers["Authorization"] = authorization
        return await api.request(method, path, json=json, headers=headers)

    # No key, or one that was never issued: 401, and the client is told how to authenticate.
    for authorization in (None, "Bearer nf_never-issued", f"Basic {keys[scope]}"):
        r = await call(authorization)
        assert_error(r, 401, "unauthenticated")
        assert r.headers.get("www-authenticate") == "Bearer", (authorization, dict(r.headers))

    # Every other scope: 403, naming the scope this route needs.
    others = [s for s in ALL_SCOPES if s != scope]
    assert others
    for other in others:
        err = assert_error(await call(f"Bearer {keys[other]}"), 403, "forbidden")
        assert err["details"] == {"required_scope": scope}, (other, err)

    # Nothing was written, not even the Idempotency-Key.
    assert written(db) == before
    assert count(db, IdempotencyRecord, IdempotencyRecord.key == tag) == 0

    # The scope is checked before the body: an empty body is still 403 without the scope,
    # and 422 with it (so the key with the scope got past the check, and did nothing).
    right = f"Bearer {keys[scope]}"
    if method == "GET":
        r = await call(right)
        assert r.status_code == 200, r.text
    elif method == "DELETE":  # no body to refuse: the right key does it
        assert (await call(right)).status_code == 204
        assert written(db) == before + 1
    else:
        assert_error(await call(f"Bearer {keys[others[0]]}", json={}), 403, "forbidden")
        assert_error(await call(right, json={}), 422, "validation_error")
        assert written(db) == before
        assert count(db, IdempotencyRecord, IdempotencyRecord.key == tag) == 0


@pytest.mark.parametrize("route", sorted(PUBLIC), ids=lambda r: f"{r[0]} {r[1]}")
async def test_public_routes_answer_without_a_key(route: Route, api: Api) -> None:
    method, template = route
    path = template.format(token=unique("no-such-token"), opportunity_id=unique("no-such-opportunity"))
    data = {"full_name": "Nobody", "agree": "yes"} if method == "POST" else None
    r = await api.request(method, path, data=data)
    assert r.status_code == PUBLIC[route], (route, r.status_code, r.text[:300])


# ---------------------------------------------------------------- revoked keys


def revoke(db: Engine, key: str) -> None:
    """What revoking a key does in the store (the API has no revoke route yet)."""
    with db.begin() as conn:
        done = conn.execute(
            update(ApiKey).where(ApiKey.key_sha256 == hash_key(key)).values(revoked_at=datetime.now(UTC))
        )
    assert done.rowcount == 1


async def test_a_revoked_key_is_401_at_once(api: Api, db: Engine, subjects: Subjects) -> None:
    key = register_api_key(db, unique("to-revoke"), ["crm:write", "reports:read"])
    customer_path = f"/v1/customers/{subjects.customer_id}"
    assert (await api.get(customer_path, key=key)).json()["id"] == subjects.customer_id
    name = unique("Before Revocation")
    await api.post("/v1/customers", {"name": name}, key=key, idem=name, expect=201)
    await api.get("/v1/reports/pipeline", key=key)

    revoke(db, key)

    assert_error(await api.get(customer_path, key=key, expect=None), 401, "unauthenticated")
    assert_error(await api.get("/v1/reports/pipeline", key=key, expect=None), 401, "unauthenticated")
    # Its Idempotency-Keys replay nothing to it any more...
    assert_error(await api.post("/v1/customers", {"name": name}, key=key, idem=name), 401, "unauthenticated")
    # ...and it writes nothing.
    other = unique("After Revocation")
    assert_error(await api.post("/v1/customers", {"name": other}, key=key, idem=other), 401, "unauthenticated")
    assert count(db, Customer, Customer.name == name) == 1
    assert count(db, Customer, Customer.name == other) == 0
    assert count(db, IdempotencyRecord, IdempotencyRecord.key == other) == 0
    # Other keys are untouched.
    assert (await api.get(customer_path)).json()["id"] == subjects.customer_id


# ---------------------------------------------------------------- 5xx


SECRET = "db-password=hunter2 at /srv/needflow/api/routers/customers.py"


class Fault:
    """Stands in for a function a route calls, raising an unexpected exception while armed."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.armed = True
        self.raised = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            self.raised += 1
            raise RuntimeError(SECRET)
        return self.real(*args, **kwargs)


@pytest_asyncio.fixture(scope="module")
async def lenient(
    settings: Settings, client: Client, task_queue: str, keys: dict[str, str], worker: None
) -> AsyncIterator[Api]:
    """A separate app, served so that an exception inside it reaches the test as the 500
    a real client would get (the shared app's transport re-raises it instead)."""
    app = create_app(settings, client=client, task_queue=task_queue)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield Api(http, keys["all"])


def assert_internal_error(r: httpx.Response) -> None:
    err = assert_error(r, 500, "internal_error")
    assert r.headers["content-type"] == "application/json", r.headers
    for leak in ("hunter2", "/srv/", "customers.py", "RuntimeError", "Traceback", 'File "'):
        assert leak not in r.text, f"the 500 leaks {leak!r}: {r.text}"
    assert err["details"] == {}, err


async def test_an_unexpected_exception_is_a_500_in_the_error_shape(
    lenient: Api, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = Fault(customers_router.resource_id)
    monkeypatch.setattr(customers_router, "resource_id", fault)
    name = unique("Faulty Fay")
    assert_internal_error(await lenient.post("/v1/customers", {"name": name}))
    assert fault.raised == 1
    assert count(db, Customer, Customer.name == name) == 0


async def test_a_5xx_frees_its_idempotency_key_and_the_retry_does_the_work(
    lenient: Api, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = Fault(customers_router.resource_id)
    monkeypatch.setattr(customers_router, "resource_id", fault)
    name = unique("Retried Rita")
    key = unique("idem-5xx")

    assert_internal_error(await lenient.post("/v1/customers", {"name": name}, idem=key))
    assert fault.raised == 1
    assert count(db, Customer, Customer.name == name) == 0
    assert count(db, IdempotencyRecord, IdempotencyRecord.key == key) == 0

    fault.armed = False  # the fault is gone
    retried = await lenient.post("/v1/customers", {"name": name}, idem=key)
    assert retried.status_code == 201, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert retried.json()["name"] == name
    assert count(db, Customer, Customer.name == name) == 1
    assert count(db, IdempotencyRecord, IdempotencyRecord.key == key, IdempotencyRecord.status_code == 201) == 1

    # From now on the key answers with the retry's response.
    again = await lenient.post("/v1/customers", {"name": name}, idem=key)
    assert (again.status_code, again.json(), again.headers.get("idempotent-replayed")) == (
        201,
        retried.json(),
        "true",
    )
    assert count(db, Customer, Customer.name == name) == 1
    assert fault.raised == 1


async def test_a_5xx_while_answering_a_keyed_create_writes_nothing_and_the_retry_creates_it_once(
    lenient: Api, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = Fault(customers_router.customer_out)
    monkeypatch.setattr(customers_router, "customer_out", fault)
    name = unique("Late Lara")
    key = unique("idem-5xx-late")

    assert_internal_error(await lenient.post("/v1/customers", {"name": name}, idem=key))
    assert fault.raised == 1
    assert count(db, IdempotencyRecord, IdempotencyRecord.key == key) == 0
    assert count(db, Customer, Customer.name == name) == 0  # the answer failed: the write was rolled back

    fault.armed = False  # the fault is gone
    retried = await lenient.post("/v1/customers", {"name": name}, idem=key)
    assert retried.status_code == 201, retried.text
    assert retried.json()["name"] == name
    assert count(db, Customer, Customer.name == name) == 1


async def test_a_5xx_while_answering_a_keyed_employee_create_writes_nothing_and_the_retry_creates_it_once(
    lenient: Api, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = Fault(employees_router.employee_out)
    monkeypatch.setattr(employees_router, "employee_out", fault)
    email = f"{unique('late')}@bank.example"
    body = {"name": "Late Leo", "email": email, "role": "advisor", "line_of_business": "retail", "capacity": 5}
    key = unique("idem-5xx-employee")

    assert_internal_error(await lenient.post("/v1/employees", body, idem=key))
    assert (fault.raised, count(db, Employee, Employee.email == email)) == (1, 0)

    fault.armed = False
    retried = await lenient.post("/v1/employees", body, idem=key)
    assert retried.status_code == 201, retried.text
    assert count(db, Employee, Employee.email == email) == 1
