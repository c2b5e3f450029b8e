"""Idempotency as a client sees it (spec/API.md): repeating a request with the same
Idempotency-Key returns the first response and changes nothing; the same key with a
different body is 409 `conflict`; keys belong to one API key; an event's `id` does
the same for backend events (a repeat is `duplicate`).

Each test also counts what was written: rows in the system of record, and workflows.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, delete, insert, select
from temporalio.client import Client

from api.idempotency import LEASE_SECONDS
from domain.ids import referral_workflow_id
from store.keys import hash_key, register_api_key
from store.models import (
    ApiKey,
    Checkpoint,
    Customer,
    CustomerSignal,
    Employee,
    Household,
    IdempotencyRecord,
    Need,
    Opportunity,
    ProcessedEvent,
    Referral,
)
from tests.helpers import (
    Api,
    assert_error,
    assert_validation_error,
    count,
    territory,
    unique,
    until_equal,
    within,
    workflow_ids,
)

OCCURRED_AT = "2026-11-25T10:00:00+00:00"


# ---------------------------------------------------------------- helpers


async def until_listed(client: Client, query: str, expected: list[str]) -> None:
    """Wait until visibility (which lags behind a start) lists exactly `expected` for
    `query`. It returns at the first match: the store's counts, not visibility, prove that
    no second workflow was made."""
    await until_equal(lambda: workflow_ids(client, query), sorted(expected), f"visibility listing {query}")


def checkpoints_in(db: Engine, opportunity_id: str, stage: str | None = None) -> int:
    where = [Checkpoint.opportunity_id == opportunity_id]
    if stage is not None:
        where.append(Checkpoint.stage == stage)
    return count(db, Checkpoint, *where)


async def searching_mortgage(api: Api) -> tuple[dict, dict]:
    dan = await api.employee(name="Dan", email="dan@cumulus.example")
    opp = await api.opportunity(owner=dan)
    body = {"actor_id": dan["id"], "to_stage": "searching", "evidence": {"realtor": "Jane Realty"}}
    opp = (await api.post(f"/v1/opportunities/{opp['id']}/advance", body, expect=200)).json()
    return dan, opp


async def opening_body(api: Api) -> dict:
    dan = await api.employee()
    customer, need = await api.customer_with_need(dan["id"], name=unique("Opening Olga"))
    return {
        "customer_id": customer["id"],
        "product": "mortgage",
        "owner_id": dan["id"],
        "need_id": need["id"],
        "amount": "450000.00",
    }


# ---------------------------------------------------------------- customers


async def test_same_key_same_body_returns_the_first_customer_and_creates_one(api: Api, db: Engine) -> None:
    key = unique("idem-customer")
    body = {"name": unique("Ida Idempotent"), "email": "ida@example.com", "city": "Boston", "state": "MA"}
    first = await api.post("/v1/customers", body, idem=key, expect=201)
    second = await api.post("/v1/customers", body, idem=key, expect=201)
    assert second.json() == first.json()
    assert count(db, Customer, Customer.name == body["name"]) == 1
    assert count(db, Household, Household.id == first.json()["household_id"]) == 1
    assert (await api.get(f"/v1/customers/{first.json()['id']}")).json() == first.json()


async def test_same_key_different_body_is_409_conflict_and_creates_nothing(api: Api, db: Engine) -> None:
    key = unique("idem-customer")
    first = (await api.post("/v1/customers", {"name": unique("Carl First")}, idem=key, expect=201)).json()
    other_name = unique("Carl Second")
    households = count(db, Household)
    err = assert_error(await api.post("/v1/customers", {"name": other_name}, idem=key), 409, "conflict")
    assert err["details"] == {"idempotency_key": key}
    assert err["message"] == "this Idempotency-Key was used with a different request"
    assert count(db, Customer, Customer.name == other_name) == 0
    assert count(db, Household) == households
    # The key still answers with its first response.
    again = await api.post("/v1/customers", {"name": first["name"]}, idem=key, expect=201)
    assert again.json() == first


async def test_keyed_request_that_failed_answers_the_same_failure_and_creates_nothing(api: Api, db: Engine) -> None:
    key = unique("idem-bad-household")
    body = {"name": unique("Hana Homeless"), "household_id": "hh_nope"}
    first = await api.post("/v1/customers", body, idem=key)
    assert_validation_error(first, "household_id")
    second = await api.post("/v1/customers", body, idem=key)
    assert (second.status_code, second.json()) == (first.status_code, first.json())
    assert count(db, Customer, Customer.name == body["name"]) == 0


async def test_same_key_for_needs_records_one_need(api: Api, db: Engine) -> None:
    dan = await api.employee()
    customer, _ = await api.customer_with_need(dan["id"])
    key = unique("idem-need")
    body = {"kind": "retire", "description": "Retire at 60", "recorded_by": dan["id"]}
    first = await api.post(f"/v1/customers/{customer['id']}/needs", body, idem=key, expect=201)
    second = await api.post(f"/v1/customers/{customer['id']}/needs", body, idem=key, expect=201)
    assert second.json() == first.json()
    assert count(db, Need, Need.customer_id == customer["id"], Need.kind == "retire") == 1
    journey = (await api.get(f"/v1/customers/{customer['id']}/journey")).json()
    assert [n["kind"] for n in journey["needs"]].count("retire") == 1


async def test_same_key_for_employees_creates_one_employee(api: Api, db: Engine) -> None:
    key = unique("idem-employee")
    email = f"{unique('eve')}@bank.example"
    body = {
        "name": "Eve",
        "email": email,
        "role": "advisor",
        "line_of_business": "wealth",
        "products": ["wealth"],
        "cities": [],
        "states": [],
        "capacity": 5,
    }
    first = await api.post("/v1/employees", body, idem=key, expect=201)
    second = await api.post("/v1/employees", body, idem=key, expect=201)
    assert second.json() == first.json()
    assert count(db, Employee, Employee.email == email) == 1


async def test_the_same_key_under_two_api_keys_is_two_requests(api: Api, db: Engine, keys: dict[str, str]) -> None:
    key = unique("idem-shared")
    name = unique("Twin Tess")
    a = await api.post("/v1/customers", {"name": name}, idem=key, key=keys["all"], expect=201)
    b = await api.post("/v1/customers", {"name": name}, idem=key, key=keys["crm:write"], expect=201)
    assert a.json()["id"] != b.json()["id"]
    assert a.json()["household_id"] != b.json()["household_id"]
    assert count(db, Customer, Customer.name == name) == 2
    # Each API key replays its own first response...
    assert (await api.post("/v1/customers", {"name": name}, idem=key, key=keys["all"], expect=201)).json() == a.json()
    assert (
        await api.post("/v1/customers", {"name": name}, idem=key, key=keys["crm:write"], expect=201)
    ).json() == b.json()
    assert count(db, Customer, Customer.name == name) == 2

    # ...and another API key's different body under the same key is no conflict.
    key2 = unique("idem-shared")
    other = unique("Other Oscar")
    await api.post("/v1/customers", {"name": name}, idem=key2, key=keys["all"], expect=201)
    d = await api.post("/v1/customers", {"name": other}, idem=key2, key=keys["crm:write"], expect=201)
    assert d.json()["name"] == other
    assert count(db, Customer, Customer.name == other) == 1


async def test_concurrent_repeats_of_a_keyed_customer_create_answer_the_same(api: Api, db: Engine) -> None:
    # A client that times out and retries at once races its own first request. (An
    # exception out of the in-process app is what a real client sees as a 500.)
    for _ in range(3):
        key = unique("idem-race")
        body = {"name": unique("Rae Race")}
        answers = await asyncio.gather(
            *(api.post("/v1/customers", body, idem=key) for _ in range(4)), return_exceptions=True
        )
        assert count(db, Customer, Customer.name == body["name"]) == 1
        failures = [a for a in answers if isinstance(a, BaseException)]
        assert not failures, f"a repeat failed: {failures!r}"
        assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]
        assert len({a.text for a in answers}) == 1


async def test_keyed_request_to_a_long_unknown_path_is_404(api: Api, db: Engine) -> None:
    dan = await api.employee()
    long_id = "x" * 600
    key = unique("idem-long")
    body = {"kind": "buy_home", "description": "A home", "recorded_by": dan["id"]}
    first = await api.post(f"/v1/customers/{long_id}/needs", body, idem=key)
    assert_error(first, 404, "not_found")
    second = await api.post(f"/v1/customers/{long_id}/needs", body, idem=key)
    assert (second.status_code, second.json()) == (404, first.json())


# ---------------------------------------------------------------- opportunities


async def test_opening_twice_with_the_same_key_makes_one_opportunity_and_one_workflow(
    api: Api, db: Engine, client: Client
) -> None:
    body = await opening_body(api)
    key = unique("idem-open")
    first = await api.post("/v1/opportunities", body, idem=key, expect=201)
    second = await api.post("/v1/opportunities", body, idem=key, expect=201)
    opp = first.json()
    assert second.json() == opp
    assert count(db, Opportunity, Opportunity.customer_id == body["customer_id"]) == 1
    assert checkpoints_in(db, opp["id"]) == 1
    await until_listed(client, f'CustomerId = "{body["customer_id"]}"', [f"opportunity-{opp['id']}"])
    assert opp["workflow_id"] == f"opportunity-{opp['id']}"
    journey = (await api.get(f"/v1/customers/{body['customer_id']}/journey")).json()
    assert [o["id"] for o in journey["opportunities"]] == [opp["id"]]


async def test_concurrent_repeats_of_a_keyed_opening_make_one_opportunity(api: Api, db: Engine, client: Client) -> None:
    body = await opening_body(api)
    key = unique("idem-open-race")
    answers = await asyncio.gather(
        *(api.post("/v1/opportunities", body, idem=key) for _ in range(3)), return_exceptions=True
    )
    assert not [a for a in answers if isinstance(a, BaseException)], answers
    assert [a.status_code for a in answers] == [201] * 3, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    opp_id = answers[0].json()["id"]
    assert count(db, Opportunity, Opportunity.customer_id == body["customer_id"]) == 1
    assert checkpoints_in(db, opp_id) == 1
    await until_listed(client, f'CustomerId = "{body["customer_id"]}"', [f"opportunity-{opp_id}"])


async def test_opening_with_the_same_key_and_another_body_is_409_and_opens_nothing(
    api: Api, db: Engine, client: Client
) -> None:
    body = await opening_body(api)
    key = unique("idem-open")
    opp = (await api.post("/v1/opportunities", body, idem=key, expect=201)).json()
    r = await api.post("/v1/opportunities", {**body, "amount": "999999.00"}, idem=key)
    assert_error(r, 409, "conflict")
    assert count(db, Opportunity, Opportunity.customer_id == body["customer_id"]) == 1
    assert (await api.get(f"/v1/opportunities/{opp['id']}")).json()["amount"] == "450000.00"
    await until_listed(client, f'CustomerId = "{body["customer_id"]}"', [opp["workflow_id"]])


async def test_advancing_twice_with_the_same_key_answers_the_first_and_enters_once(api: Api, db: Engine) -> None:
    dan = await api.employee()
    opp = await api.opportunity(owner=dan)
    path = f"/v1/opportunities/{opp['id']}/advance"
    body = {"actor_id": dan["id"], "to_stage": "searching", "evidence": {"realtor": "Jane Realty"}}
    key = unique("idem-advance")
    first = await api.post(path, body, idem=key, expect=200)
    second = await api.post(path, body, idem=key)
    assert (second.status_code, second.json()) == (200, first.json())
    assert first.json()["stage"] == "searching"
    assert checkpoints_in(db, opp["id"], "searching") == 1
    now = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert [c["stage"] for c in now["checkpoints"]] == ["interested", "searching"]

    # Even after the opportunity moved on, the key replays its first answer and changes nothing.
    await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-1"})
    third = await api.post(path, body, idem=key)
    assert (third.status_code, third.json()) == (200, first.json())
    assert checkpoints_in(db, opp["id"], "searching") == 1
    assert (await api.get(f"/v1/opportunities/{opp['id']}")).json()["stage"] == "applied"


async def test_advance_key_is_per_api_key(api: Api, db: Engine, keys: dict[str, str]) -> None:
    dan = await api.employee()
    dans_key = register_api_key(db, unique("dan-mobile"), ["crm:write"], employee_id=dan["id"])
    opp = await api.opportunity(owner=dan)
    path = f"/v1/opportunities/{opp['id']}/advance"
    body = {"actor_id": dan["id"], "to_stage": "searching", "evidence": {"realtor": "Jane Realty"}}
    key = unique("idem-advance")
    await api.post(path, body, idem=key, key=keys["all"], expect=200)
    # Another API key's request with the same key is a request of its own: it is refused
    # because `searching` is no longer next, rather than replaying the other key's answer.
    err = assert_error(await api.post(path, body, idem=key, key=dans_key), 409, "invalid_transition")
    assert err["details"] == {"current_stage": "searching", "next_stage": "applied"}
    assert checkpoints_in(db, opp["id"], "searching") == 1


async def test_close_lost_twice_with_the_same_key_closes_once(api: Api, db: Engine) -> None:
    dan = await api.employee()
    opp = await api.opportunity(owner=dan)
    path = f"/v1/opportunities/{opp['id']}/close-lost"
    key = unique("idem-close")
    body = {"actor_id": dan["id"], "reason": "Bought with cash"}
    first = await api.post(path, body, idem=key, expect=200)
    assert first.json()["status"] == "lost"
    second = await api.post(path, body, idem=key)
    assert (second.status_code, second.json()) == (200, first.json())
    assert checkpoints_in(db, opp["id"]) == 2


# ---------------------------------------------------------------- events


async def test_the_same_event_twice_is_duplicate_and_enters_the_stage_once(api: Api, db: Engine) -> None:
    _, opp = await searching_mortgage(api)
    event_id = unique("evt-submitted")
    first = await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-9"}, event_id=event_id)
    assert first.json()["result"] == "applied" and first.json()["id"] == event_id
    second = await api.event(
        "mortgage.application_submitted", opp["id"], {"application_id": "APP-9"}, event_id=event_id
    )
    assert second.status_code == 202
    assert second.json()["result"] == "duplicate" and second.json()["id"] == event_id
    assert second.json()["opportunity"]["id"] == opp["id"]
    assert second.json()["opportunity"]["stage"] == "applied"
    now = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert [c["stage"] for c in now["checkpoints"]] == ["interested", "searching", "applied"]
    assert checkpoints_in(db, opp["id"], "applied") == 1
    assert count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 1

    # Still a duplicate once the opportunity has moved on.
    await api.event("mortgage.application_approved", opp["id"], {"approval_id": "APR-1"})
    third = await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-9"}, event_id=event_id)
    assert third.json()["result"] == "duplicate"
    assert third.json()["opportunity"]["stage"] == "approved"
    assert checkpoints_in(db, opp["id"], "applied") == 1
    assert checkpoints_in(db, opp["id"]) == 4


async def test_a_repeated_event_after_the_opportunity_is_won_is_duplicate(api: Api, db: Engine) -> None:
    banker = await api.employee(role="banker", lob="retail", products=["checking"])
    opp = await api.opportunity(product="checking", amount=None, owner=banker)
    await api.event(
        "consent.sms_authorization",
        opp["id"],
        {
            "phone": "+12125550100",
            "message_id": unique("SM"),
            "text": "YES",
            "received_at": "2026-11-25T09:59:00+00:00",
        },
    )
    event_id = unique("evt-opened")
    first = await api.event("account.opened", opp["id"], {"account_number": "ACC-1"}, event_id=event_id)
    assert first.json()["result"] == "applied" and first.json()["opportunity"]["status"] == "won"
    second = await api.event("account.opened", opp["id"], {"account_number": "ACC-1"}, event_id=event_id)
    assert second.json()["result"] == "duplicate" and second.json()["opportunity"]["status"] == "won"
    assert checkpoints_in(db, opp["id"], "opened") == 1


async def concurrent_copies_of_an_event(api: Api, db: Engine) -> list[str]:
    """Three copies of one event at once: each answered 202 with the opportunity in
    `applied`, the stage entered once, the event recorded once. Returns their results."""
    _, opp = await searching_mortgage(api)
    event_id = unique("evt-race")
    answers = await asyncio.gather(
        *(
            api.event(
                "mortgage.application_submitted", opp["id"], {"application_id": "APP-9"}, event_id=event_id, expect=None
            )
            for _ in range(3)
        ),
        return_exceptions=True,
    )
    assert not [a for a in answers if isinstance(a, BaseException)], answers
    assert [a.status_code for a in answers] == [202] * 3, [a.text for a in answers]
    assert [(a.json()["id"], a.json()["opportunity"]["stage"]) for a in answers] == [(event_id, "applied")] * 3
    assert checkpoints_in(db, opp["id"], "applied") == 1
    assert count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 1
    return sorted(a.json()["result"] for a in answers)


async def test_concurrent_copies_of_an_event_enter_the_stage_once(api: Api, db: Engine) -> None:
    await concurrent_copies_of_an_event(api, db)


async def test_concurrent_copies_of_an_event_are_applied_once_and_duplicate_after(api: Api, db: Engine) -> None:
    # As for customer events (below): one copy applied, every other one a duplicate (the
    # first delivery claims the id: api/routers/events.py).
    assert await concurrent_copies_of_an_event(api, db) == ["applied", "duplicate", "duplicate"]


async def test_concurrent_deliveries_of_one_id_with_different_bodies_apply_one_and_refuse_the_other(
    api: Api, db: Engine
) -> None:
    """Two events racing under one id: one is applied, the other is 409 `conflict`, and
    the opportunity holds exactly the one applied."""
    _, opp = await searching_mortgage(api)
    event_id = unique("evt-race-bodies")
    answers = await asyncio.gather(
        *(
            api.event(
                "mortgage.application_submitted", opp["id"], {"application_id": app}, event_id=event_id, expect=None
            )
            for app in ("APP-A", "APP-B")
        )
    )
    assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
    won = next(a for a in answers if a.status_code == 202).json()
    lost = next(a for a in answers if a.status_code == 409)
    assert won["result"] == "applied"
    assert_error(lost, 409, "conflict")
    assert checkpoints_in(db, opp["id"], "applied") == 1
    assert count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 1


async def test_an_event_the_workflow_refused_leaves_its_id_free(api: Api, db: Engine) -> None:
    """A refused event (409 invalid_transition) used nothing: the same id with a corrected
    event is applied."""
    _, opp = await searching_mortgage(api)
    event_id = unique("evt-refused")
    early = await api.event(
        "mortgage.application_approved", opp["id"], {"approval_id": "APR-1"}, event_id=event_id, expect=None
    )
    assert_error(early, 409, "invalid_transition")
    r = await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-9"}, event_id=event_id)
    assert r.json()["result"] == "applied"
    assert checkpoints_in(db, opp["id"], "applied") == 1


async def test_the_same_event_id_for_another_type_is_409_conflict_and_changes_nothing(api: Api, db: Engine) -> None:
    _, opp = await searching_mortgage(api)
    event_id = unique("evt-reused")
    await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-9"}, event_id=event_id)
    r = await api.event(
        "mortgage.application_approved", opp["id"], {"approval_id": "APR-1"}, event_id=event_id, expect=None
    )
    assert_error(r, 409, "conflict")
    now = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert now["stage"] == "applied" and now["signature"] is None
    assert checkpoints_in(db, opp["id"], "approved") == 0
    assert checkpoints_in(db, opp["id"]) == 3
    with db.connect() as conn:
        assert (
            conn.scalar(select(ProcessedEvent.type).where(ProcessedEvent.id == event_id))
            == "mortgage.application_submitted"
        )

    # Reusing it for a customer event is just as much a conflict.
    r = await api.post(
        "/v1/events",
        {
            "id": event_id,
            "type": "nps.response",
            "occurred_at": OCCURRED_AT,
            "customer_id": opp["customer_id"],
            "data": {"score": 10},
        },
    )
    assert_error(r, 409, "conflict")
    assert count(db, CustomerSignal, CustomerSignal.event_id == event_id) == 0


async def test_the_same_event_id_for_another_opportunity_or_data_is_409_conflict(api: Api, db: Engine) -> None:
    """A backend that reuses an id for a different event must hear so, not get a silent duplicate."""
    _, first = await searching_mortgage(api)
    _, second = await searching_mortgage(api)
    event_id = unique("evt-reused")
    await api.event("mortgage.application_submitted", first["id"], {"application_id": "APP-1"}, event_id=event_id)

    r = await api.event(
        "mortgage.application_submitted", second["id"], {"application_id": "APP-1"}, event_id=event_id, expect=None
    )
    assert_error(r, 409, "conflict")
    r = await api.event(
        "mortgage.application_submitted", first["id"], {"application_id": "APP-2"}, event_id=event_id, expect=None
    )
    assert_error(r, 409, "conflict")
    assert (await api.get(f"/v1/opportunities/{second['id']}")).json()["stage"] == "searching"
    assert checkpoints_in(db, second["id"], "applied") == 0
    assert checkpoints_in(db, first["id"], "applied") == 1


async def test_the_same_customer_event_twice_is_duplicate_and_recorded_once(api: Api, db: Engine) -> None:
    customer = (await api.post("/v1/customers", {"name": unique("Nina Nps")}, expect=201)).json()
    event_id = unique("evt-nps")
    body = {
        "id": event_id,
        "type": "nps.response",
        "occurred_at": OCCURRED_AT,
        "customer_id": customer["id"],
        "data": {"score": 9, "comment": "Great"},
    }
    first = await api.post("/v1/events", body, expect=202)
    assert first.json()["result"] == "applied" and first.json()["customer_id"] == customer["id"]
    second = await api.post("/v1/events", body, expect=202)
    assert second.json()["result"] == "duplicate" and second.json()["customer_id"] == customer["id"]
    assert count(db, CustomerSignal, CustomerSignal.customer_id == customer["id"]) == 1
    assert count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 1

    # Reused for another customer event type: a conflict, nothing recorded.
    r = await api.post(
        "/v1/events",
        {**body, "type": "account.activity", "data": {"product": "checking", "period": "2026-11", "transactions": 3}},
    )
    assert_error(r, 409, "conflict")
    assert count(db, CustomerSignal, CustomerSignal.customer_id == customer["id"]) == 1


async def test_concurrent_copies_of_a_customer_event_are_recorded_once(api: Api, db: Engine) -> None:
    customer = (await api.post("/v1/customers", {"name": unique("Rita Race")}, expect=201)).json()
    event_id = unique("evt-nps-race")
    body = {
        "id": event_id,
        "type": "nps.response",
        "occurred_at": OCCURRED_AT,
        "customer_id": customer["id"],
        "data": {"score": 7},
    }
    answers = await asyncio.gather(*(api.post("/v1/events", body) for _ in range(3)), return_exceptions=True)
    assert not [a for a in answers if isinstance(a, BaseException)], answers
    assert [a.status_code for a in answers] == [202] * 3, [a.text for a in answers]
    assert sorted(a.json()["result"] for a in answers) == ["applied", "duplicate", "duplicate"]
    assert count(db, CustomerSignal, CustomerSignal.customer_id == customer["id"]) == 1


# ---------------------------------------------------------------- leases and busy answers


def _reserved_by_a_dead_process(db: Engine, api: Api, key: str, body: bytes, *, ago: timedelta) -> None:
    """A reservation (no answer yet) of `key` for POST /v1/customers with `body`, made
    `ago` by a process that then died."""
    with db.begin() as conn:
        key_id = conn.scalar(select(ApiKey.id).where(ApiKey.key_sha256 == hash_key(api.key)))
        conn.execute(
            insert(IdempotencyRecord).values(
                api_key_id=key_id,
                key=key,
                method="POST",
                path="/v1/customers",
                request_sha256=hashlib.sha256(body).hexdigest(),
                status_code=0,
                response="",
                created_at=datetime.now(UTC) - ago,
            )
        )


async def test_a_key_reserved_by_a_process_that_died_is_taken_over_after_its_lease(api: Api, db: Engine) -> None:
    name = unique("Lease Taker")
    body = json.dumps({"name": name}).encode()
    key = unique("idem-dead")
    _reserved_by_a_dead_process(db, api, key, body, ago=timedelta(seconds=LEASE_SECONDS + 60))
    headers = {**api.headers(idempotency_key=key), "Content-Type": "application/json"}
    r = await api.request("POST", "/v1/customers", content=body, headers=headers)
    assert r.status_code == 201, r.text
    assert count(db, Customer, Customer.name == name) == 1
    again = await api.request("POST", "/v1/customers", content=body, headers=headers)
    assert (again.status_code, again.json(), again.headers.get("Idempotent-Replayed")) == (201, r.json(), "true")


async def test_a_key_reserved_within_its_lease_is_still_in_progress(
    api: Api, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("api.idempotency.WAIT_FOR_FIRST_SECONDS", 0.2)  # do not wait a minute
    name = unique("Lease Holder")
    body = json.dumps({"name": name}).encode()
    key = unique("idem-busy")
    _reserved_by_a_dead_process(db, api, key, body, ago=timedelta(seconds=5))
    headers = {**api.headers(idempotency_key=key), "Content-Type": "application/json"}
    r = await api.request("POST", "/v1/customers", content=body, headers=headers)
    err = assert_error(r, 409, "conflict")
    assert "still in progress" in err["message"]
    assert count(db, Customer, Customer.name == name) == 0


async def test_opening_again_after_the_opportunity_closed_never_starts_it_again(
    api: Api, db: Engine, client: Client
) -> None:
    """Once the key's stored answer is purged (store/upkeep.py), the same opening again
    lands on the closed opportunity's workflow id, which is never started again
    (REJECT_DUPLICATE): the answer is the closed opportunity, not a second lifecycle."""
    body = await opening_body(api)
    key = unique("idem-reopen")
    opp = (await api.post("/v1/opportunities", body, idem=key, expect=201)).json()
    lost = {"actor_id": body["owner_id"], "reason": "went elsewhere"}
    await api.post(f"/v1/opportunities/{opp['id']}/close-lost", lost, expect=200)
    handle = client.get_workflow_handle(opp["workflow_id"])
    await within(handle.result(), "the lost opportunity's workflow closing")
    first_run = (await within(handle.describe(), "describe")).run_id
    with db.begin() as conn:  # the key's record purged, as after its retention
        conn.execute(delete(IdempotencyRecord).where(IdempotencyRecord.key == key))
    again = await api.post("/v1/opportunities", body, idem=key)
    assert again.status_code == 201, again.text
    assert (again.json()["id"], again.json()["status"]) == (opp["id"], "lost")
    described = await within(handle.describe(), "describe")
    assert described.run_id == first_run
    assert checkpoints_in(db, opp["id"]) == 2  # interested, closed_lost: nothing opened again


async def test_creating_a_referral_again_after_it_closed_answers_it_as_it_ended(
    api: Api, db: Engine, client: Client
) -> None:
    """The same create after the key's record is purged lands on the closed referral's
    workflow id, which is never started again: the answer is the closed referral."""
    state = territory()
    people = await api.staff(state)
    key = unique("idem-referral")
    ref = await api.refer(people["ryan"], state, idem=key)
    closing = {"actor_id": ref["assignee_id"], "reason": "not moving after all"}
    await api.post(f"/v1/referrals/{ref['id']}/close", closing, expect=200)
    handle = client.get_workflow_handle(referral_workflow_id(ref["id"]))
    await within(handle.result(), "the closed referral's workflow ending")
    first_run = (await within(handle.describe(), "describe")).run_id
    with db.begin() as conn:
        conn.execute(delete(IdempotencyRecord).where(IdempotencyRecord.key == key))
    again = await api.refer(people["ryan"], state, idem=key)
    assert (again["id"], again["status"]) == (ref["id"], "closed")
    assert count(db, Referral, Referral.id == ref["id"]) == 1
    assert (await within(handle.describe(), "describe")).run_id == first_run  # not routed again
