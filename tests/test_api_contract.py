"""The HTTP contract of spec/API.md as a client sees it: the error shape, validation,
authentication and scopes, not-found answers, households, the journey, OpenAPI.

Every refused request is also checked to have changed nothing: read back through the
API, and by counting rows in the system of record (and, for opportunities, workflows).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import Engine, select
from temporalio.client import Client

from store.models import (
    Checkpoint,
    Consent,
    Customer,
    Employee,
    Household,
    Interaction,
    Need,
    Opportunity,
    ProcessedEvent,
)
from tests.dbutil import test_database_base_url
from tests.helpers import Api, assert_error, assert_validation_error, count, unique, until_equal

OCCURRED_AT = "2026-11-25T10:00:00+00:00"
T = TypeVar("T")


# ---------------------------------------------------------------- helpers


def on_postgres() -> bool:
    return (test_database_base_url() or "").startswith("postgres")


async def post_raw(api: Api, path: str, content: bytes, key: str | None = None) -> httpx.Response:
    headers = {**api.headers(key), "Content-Type": "application/json"}
    return await api.request("POST", path, content=content, headers=headers)


def employee_body(**kw: Any) -> dict:
    return {
        "name": "Erin Employee",
        "email": f"{unique('erin')}@bank.example",
        "role": "banker",
        "line_of_business": "retail",
        "products": ["checking"],
        "cities": [],
        "states": [],
        "capacity": 10,
        **kw,
    }


async def workflows_of_customer(client: Client, customer_id: str) -> list[str]:
    """The ids of the customer's workflows as visibility lists them, sorted (a duplicate shows)."""
    return sorted([w.id async for w in client.list_workflows(f'CustomerId = "{customer_id}"')])


async def checking_opportunity(api: Api) -> dict:
    banker = await api.employee(
        role="banker", lob="retail", products=["checking"], name="Bea Banker", email="bea@bank.example"
    )
    return await api.opportunity(product="checking", amount=None, owner=banker)


def sms_data(**overrides: Any) -> dict:
    data = {
        "phone": "+12125550100",
        "message_id": unique("SM"),
        "text": "YES",
        "received_at": "2026-11-25T09:59:00+00:00",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


# ---------------------------------------------------------------- malformed bodies


def body_problems(err: dict) -> list[tuple[str, str]]:
    """(field, type) of each problem a 422 lists; the body as a whole is the field ''."""
    return [(e["field"], e["type"]) for e in err["details"]["errors"]]


@pytest.mark.parametrize(
    "path, content, problem",
    [
        ("/v1/customers", b'{"name": "Half A Body"', "json_invalid"),
        ("/v1/customers", b"not json at all", "json_invalid"),
        ("/v1/customers", b'["a", "list"]', "model_attributes_type"),  # JSON, but not an object
        ("/v1/employees", b'{"name": "Erin", "email":', "json_invalid"),
        ("/v1/opportunities", b"{,}", "json_invalid"),
    ],
)
async def test_malformed_json_is_a_validation_error_and_writes_nothing(
    api: Api, db: Engine, path: str, content: bytes, problem: str
) -> None:
    before = {m: count(db, m) for m in (Customer, Household, Employee, Opportunity)}
    err = assert_validation_error(await post_raw(api, path, content))
    assert body_problems(err) == [("", problem)]
    assert {m: count(db, m) for m in before} == before


async def test_malformed_json_event_is_a_validation_error_and_records_nothing(api: Api, db: Engine) -> None:
    before = count(db, ProcessedEvent)
    err = assert_validation_error(await post_raw(api, "/v1/events", b'{"id": "evt-broken", "type": '))
    assert body_problems(err) == [("", "json_invalid")]
    assert count(db, ProcessedEvent) == before
    assert count(db, ProcessedEvent, ProcessedEvent.id == "evt-broken") == 0


# ---------------------------------------------------------------- missing fields, enums, extras


async def test_customer_without_name_is_422_naming_name(api: Api, db: Engine) -> None:
    email = f"{unique('noname')}@example.com"
    r = await api.post("/v1/customers", {"email": email})
    assert_validation_error(r, "name")
    assert count(db, Customer, Customer.email == email) == 0


async def test_need_without_description_is_422_and_records_no_need(api: Api, db: Engine) -> None:
    dan = await api.employee()
    customer, _ = await api.customer_with_need(dan["id"])
    r = await api.post(f"/v1/customers/{customer['id']}/needs", {"kind": "buy_home", "recorded_by": dan["id"]})
    assert_validation_error(r, "description")
    journey = (await api.get(f"/v1/customers/{customer['id']}/journey")).json()
    assert len(journey["needs"]) == 1
    assert count(db, Need, Need.customer_id == customer["id"]) == 1


async def test_opportunity_without_need_id_is_422_naming_need_id(api: Api, db: Engine) -> None:
    dan = await api.employee()
    customer, _ = await api.customer_with_need(dan["id"])
    r = await api.post(
        "/v1/opportunities",
        {"customer_id": customer["id"], "product": "mortgage", "owner_id": dan["id"], "amount": "300000.00"},
    )
    assert_validation_error(r, "need_id")
    assert count(db, Opportunity, Opportunity.customer_id == customer["id"]) == 0


async def test_employee_without_role_is_422_naming_role(api: Api, db: Engine) -> None:
    body = employee_body()
    del body["role"]
    assert_validation_error(await api.post("/v1/employees", body), "role")
    assert count(db, Employee, Employee.email == body["email"]) == 0


async def test_unknown_product_is_422_naming_product(api: Api, db: Engine, client: Client) -> None:
    dan = await api.employee()
    customer, need = await api.customer_with_need(dan["id"])
    r = await api.post(
        "/v1/opportunities",
        {
            "customer_id": customer["id"],
            "product": "yacht",
            "owner_id": dan["id"],
            "need_id": need["id"],
            "amount": "100000.00",
        },
    )
    assert_validation_error(r, "product")
    assert (await api.get(f"/v1/customers/{customer['id']}/journey")).json()["opportunities"] == []
    assert count(db, Opportunity, Opportunity.customer_id == customer["id"]) == 0


@pytest.mark.parametrize(
    "override, field",
    [
        ({"role": "wizard"}, "role"),
        ({"line_of_business": "casino"}, "line_of_business"),
        ({"products": ["checking", "yacht"]}, "products"),
    ],
)
async def test_unknown_employee_enum_is_422_naming_field(api: Api, db: Engine, override: dict, field: str) -> None:
    body = employee_body(**override)
    assert_validation_error(await api.post("/v1/employees", body), field)
    assert count(db, Employee, Employee.email == body["email"]) == 0


async def test_unknown_interaction_channel_is_422_naming_channel(api: Api, db: Engine) -> None:
    dan = await api.employee()
    customer, _ = await api.customer_with_need(dan["id"])
    r = await api.post(f"/v1/customers/{customer['id']}/interactions", {"channel": "carrier_pigeon", "summary": "Coo"})
    assert_validation_error(r, "channel")
    assert (await api.get(f"/v1/customers/{customer['id']}/journey")).json()["interactions"] == []
    assert count(db, Interaction, Interaction.customer_id == customer["id"]) == 0


async def test_unknown_fields_are_refused(api: Api, db: Engine) -> None:
    name = unique("Extra Field")
    r = await api.post("/v1/customers", {"name": name, "nickname": "Rach"})
    assert_validation_error(r, "nickname")
    assert count(db, Customer, Customer.name == name) == 0

    dan = await api.employee()
    customer, need = await api.customer_with_need(dan["id"])
    r = await api.post(
        "/v1/opportunities",
        {
            "customer_id": customer["id"],
            "product": "mortgage",
            "owner_id": dan["id"],
            "need_id": need["id"],
            "amount": "300000.00",
            "discount": "10",
        },
    )
    assert_validation_error(r, "discount")
    assert count(db, Opportunity, Opportunity.customer_id == customer["id"]) == 0

    opp = await api.opportunity(owner=dan)
    r = await api.post(
        f"/v1/opportunities/{opp['id']}/advance",
        {"actor_id": dan["id"], "to_stage": "searching", "evidence": {"realtor": "Jane"}, "skip_checks": True},
    )
    assert_validation_error(r, "skip_checks")
    again = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert again["stage"] == "interested" and len(again["checkpoints"]) == 1
    assert count(db, Checkpoint, Checkpoint.opportunity_id == opp["id"]) == 1


# ---------------------------------------------------------------- events


async def test_event_of_unknown_type_is_422_and_records_nothing(api: Api, db: Engine) -> None:
    opp = await api.opportunity()
    event_id = unique("evt-unknown")
    r = await api.event("mortgage.teleported", opp["id"], {"application_id": "APP-1"}, event_id=event_id, expect=None)
    assert_validation_error(r, "type")
    assert count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 0
    assert (await api.get(f"/v1/opportunities/{opp['id']}")).json()["stage"] == "interested"


async def test_application_submitted_without_application_id_is_422(api: Api, db: Engine) -> None:
    dan = await api.employee()
    opp = await api.opportunity(owner=dan)
    await api.post(
        f"/v1/opportunities/{opp['id']}/advance",
        {"actor_id": dan["id"], "to_stage": "searching", "evidence": {"realtor": "Jane"}},
        expect=200,
    )
    event_id = unique("evt-noapp")
    r = await api.event(
        "mortgage.application_submitted", opp["id"], {"note": "forgot the id"}, event_id=event_id, expect=None
    )
    assert_validation_error(r, "data.application_id")
    after = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert after["stage"] == "searching"
    assert [c["stage"] for c in after["checkpoints"]] == ["interested", "searching"]
    assert count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 0
    assert count(db, Checkpoint, Checkpoint.opportunity_id == opp["id"]) == 2


async def test_sms_authorisation_without_message_id_is_422_and_records_no_consent(api: Api, db: Engine) -> None:
    opp = await checking_opportunity(api)
    event_id = unique("evt-nomsg")
    r = await api.event(
        "consent.sms_authorization", opp["id"], sms_data(message_id=None), event_id=event_id, expect=None
    )
    assert_validation_error(r, "data.message_id")
    after = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert after["stage"] == "interested" and len(after["checkpoints"]) == 1
    journey = (await api.get(f"/v1/customers/{opp['customer_id']}/journey")).json()
    assert journey["consents"] == []
    assert count(db, Consent, Consent.opportunity_id == opp["id"]) == 0
    assert count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 0


async def test_event_without_opportunity_id_is_422(api: Api, db: Engine) -> None:
    event_id = unique("evt-nosubject")
    r = await api.post(
        "/v1/events",
        {
            "id": event_id,
            "type": "mortgage.application_submitted",
            "occurred_at": OCCURRED_AT,
            "data": {"application_id": "APP-1"},
        },
    )
    assert_validation_error(r, "opportunity_id")
    assert count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 0


async def test_event_without_id_or_time_is_422(api: Api, db: Engine) -> None:
    opp = await api.opportunity()
    r = await api.post(
        "/v1/events",
        {
            "type": "mortgage.application_submitted",
            "occurred_at": OCCURRED_AT,
            "opportunity_id": opp["id"],
            "data": {"application_id": "APP-1"},
        },
    )
    assert_validation_error(r, "id")
    event_id = unique("evt-notime")
    r = await api.post(
        "/v1/events",
        {
            "id": event_id,
            "type": "mortgage.application_submitted",
            "opportunity_id": opp["id"],
            "data": {"application_id": "APP-1"},
        },
    )
    assert_validation_error(r, "occurred_at")
    assert count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 0
    assert count(db, Checkpoint, Checkpoint.opportunity_id == opp["id"]) == 1


async def test_event_for_unknown_opportunity_is_404_and_records_nothing(api: Api, db: Engine) -> None:
    event_id = unique("evt-nobody")
    r = await api.event(
        "mortgage.application_submitted",
        "opp_does_not_exist",
        {"application_id": "APP-1"},
        event_id=event_id,
        expect=None,
    )
    assert_error(r, 404, "not_found")
    assert count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 0


async def test_customer_event_for_unknown_customer_is_404_and_records_nothing(api: Api, db: Engine) -> None:
    event_id = unique("evt-nps")
    r = await api.post(
        "/v1/events",
        {
            "id": event_id,
            "type": "nps.response",
            "occurred_at": OCCURRED_AT,
            "customer_id": "cus_does_not_exist",
            "data": {"score": 9},
        },
    )
    assert_error(r, 404, "not_found")
    assert count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 0


async def test_event_that_does_not_apply_is_409_invalid_transition_and_changes_nothing(api: Api, db: Engine) -> None:
    opp = await api.opportunity()  # a mortgage in `interested`: not yet searching
    event_id = unique("evt-early")
    r = await api.event(
        "mortgage.application_submitted", opp["id"], {"application_id": "APP-1"}, event_id=event_id, expect=None
    )
    err = assert_error(r, 409, "invalid_transition")
    assert err["details"] == {"current_stage": "interested"}
    other = unique("evt-wrongproduct")
    r = await api.event("account.opened", opp["id"], {"account_number": "ACC-1"}, event_id=other, expect=None)
    err = assert_error(r, 409, "invalid_transition")
    # Nothing structured to name: the message is where the fact lives.
    assert (err["message"], err["details"]) == ("'account.opened' does not apply to a mortgage opportunity", {})
    after = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert after["stage"] == "interested" and len(after["checkpoints"]) == 1
    assert count(db, ProcessedEvent, ProcessedEvent.id.in_([event_id, other])) == 0
    assert count(db, Checkpoint, Checkpoint.opportunity_id == opp["id"]) == 1


# ---------------------------------------------------------------- opening opportunities


async def test_refused_opportunities_leave_no_opportunity_and_no_workflow(api: Api, db: Engine, client: Client) -> None:
    dan = await api.employee()
    customer, need = await api.customer_with_need(dan["id"], name="Refused Rita")
    other, other_need = await api.customer_with_need(dan["id"], name="Other Otto")
    base = {"customer_id": customer["id"], "owner_id": dan["id"]}

    # No such need.
    r = await api.post(
        "/v1/opportunities", {**base, "product": "mortgage", "need_id": "need_nope", "amount": "400000.00"}
    )
    assert_validation_error(r, "need_id")
    # Another customer's need.
    r = await api.post(
        "/v1/opportunities", {**base, "product": "mortgage", "need_id": other_need["id"], "amount": "400000.00"}
    )
    assert_validation_error(r, "need_id")
    # A product without a sales process.
    r = await api.post("/v1/opportunities", {**base, "product": "savings", "need_id": need["id"]})
    assert_validation_error(r, "product")
    # A mortgage needs the desired amount.
    r = await api.post("/v1/opportunities", {**base, "product": "mortgage", "need_id": need["id"]})
    assert_validation_error(r, "amount")
    # Same refusals with an Idempotency-Key change nothing either.
    r = await api.post(
        "/v1/opportunities", {**base, "product": "savings", "need_id": need["id"]}, idem=unique("idem-savings")
    )
    assert_validation_error(r, "product")

    journey = (await api.get(f"/v1/customers/{customer['id']}/journey")).json()
    assert journey["opportunities"] == []
    assert count(db, Opportunity, Opportunity.customer_id.in_([customer["id"], other["id"]])) == 0

    # A valid opening now shows up as the one and only workflow of this customer.
    opp = (
        await api.post(
            "/v1/opportunities",
            {**base, "product": "mortgage", "need_id": need["id"], "amount": "400000.00"},
            expect=201,
        )
    ).json()
    await until_equal(
        lambda: workflows_of_customer(client, customer["id"]),
        [f"opportunity-{opp['id']}"],
        "the customer's one workflow in visibility",
    )
    assert await workflows_of_customer(client, other["id"]) == []
    assert count(db, Opportunity, Opportunity.customer_id == customer["id"]) == 1
    journey = (await api.get(f"/v1/customers/{customer['id']}/journey")).json()
    assert [o["id"] for o in journey["opportunities"]] == [opp["id"]]


async def test_opportunity_for_unknown_customer_or_owner_is_422(api: Api, db: Engine) -> None:
    dan = await api.employee()
    customer, need = await api.customer_with_need(dan["id"])
    r = await api.post(
        "/v1/opportunities",
        {
            "customer_id": "cus_nope",
            "product": "mortgage",
            "owner_id": dan["id"],
            "need_id": need["id"],
            "amount": "1.00",
        },
    )
    assert_validation_error(r, "customer_id")
    r = await api.post(
        "/v1/opportunities",
        {
            "customer_id": customer["id"],
            "product": "mortgage",
            "owner_id": "emp_nope",
            "need_id": need["id"],
            "amount": "1.00",
        },
    )
    assert_validation_error(r, "owner_id")
    assert count(db, Opportunity, Opportunity.customer_id == customer["id"]) == 0


async def test_refused_advance_is_409_and_changes_nothing(api: Api, db: Engine) -> None:
    dan = await api.employee()
    other = await api.employee(name="Otto Other", email="otto@bank.example")
    opp = await api.opportunity(owner=dan)
    path = f"/v1/opportunities/{opp['id']}/advance"
    # missing evidence, a stage that is not next, not the owner: each refusal says which
    for body, details in (
        ({"actor_id": dan["id"], "to_stage": "searching", "evidence": {}}, {"missing_evidence": ["realtor"]}),
        (
            {"actor_id": dan["id"], "to_stage": "approved", "evidence": {}},
            {"current_stage": "interested", "next_stage": "searching"},
        ),
        (
            {"actor_id": other["id"], "to_stage": "searching", "evidence": {"realtor": "Jane"}},
            {"actor_id": other["id"]},
        ),
    ):
        assert assert_error(await api.post(path, body), 409, "invalid_transition")["details"] == details
    await api.post(path, {"actor_id": dan["id"], "to_stage": "searching", "evidence": {"realtor": "Jane"}}, expect=200)
    # a stage entered only by an event
    err = assert_error(
        await api.post(path, {"actor_id": dan["id"], "to_stage": "applied", "evidence": {}}), 409, "invalid_transition"
    )
    assert err["details"] == {"entered_by": "event"}
    # an unknown actor is a wrong field, not a refused transition
    assert_validation_error(
        await api.post(path, {"actor_id": "emp_nope", "to_stage": "applied", "evidence": {}}), "actor_id"
    )
    after = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert [c["stage"] for c in after["checkpoints"]] == ["interested", "searching"]
    assert count(db, Checkpoint, Checkpoint.opportunity_id == opp["id"]) == 2


async def test_advance_on_unknown_opportunity_is_404(api: Api) -> None:
    dan = await api.employee()
    r = await api.post(
        "/v1/opportunities/opp_nope/advance",
        {"actor_id": dan["id"], "to_stage": "searching", "evidence": {"realtor": "Jane"}},
    )
    assert_error(r, 404, "not_found")


# ---------------------------------------------------------------- authentication and scopes


async def test_no_authorization_header_is_401(api: Api, db: Engine) -> None:
    name = unique("Anonymous")
    r = await api.request("POST", "/v1/customers", json={"name": name})
    assert_error(r, 401, "unauthenticated")
    r = await api.request("GET", "/v1/customers/cus_whatever")
    assert_error(r, 401, "unauthenticated")
    r = await api.request(
        "POST",
        "/v1/events",
        json={"id": unique("evt"), "type": "nps.response", "occurred_at": OCCURRED_AT, "customer_id": "x", "data": {}},
    )
    assert_error(r, 401, "unauthenticated")
    assert count(db, Customer, Customer.name == name) == 0


async def test_unknown_or_malformed_key_is_401(api: Api, db: Engine) -> None:
    name = unique("Unknown Key")
    r = await api.post("/v1/customers", {"name": name}, key="nf_this-key-was-never-issued")
    assert_error(r, 401, "unauthenticated")
    r = await api.request("POST", "/v1/customers", json={"name": name}, headers={"Authorization": f"Basic {api.key}"})
    assert_error(r, 401, "unauthenticated")
    assert count(db, Customer, Customer.name == name) == 0


async def test_key_without_the_scope_is_403(api: Api, db: Engine, keys: dict[str, str]) -> None:
    opp = await api.opportunity()
    event_id = unique("evt-reader")
    r = await api.post(
        "/v1/events",
        {
            "id": event_id,
            "type": "mortgage.application_submitted",
            "occurred_at": OCCURRED_AT,
            "opportunity_id": opp["id"],
            "data": {"application_id": "APP-1"},
        },
        key=keys["reports:read"],
    )
    assert_error(r, 403, "forbidden")
    assert count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 0

    name = unique("Scopeless")
    r = await api.post("/v1/customers", {"name": name}, key=keys["events:write"])
    assert_error(r, 403, "forbidden")
    r = await api.post("/v1/customers", {"name": name}, key=keys["reports:read"])
    assert_error(r, 403, "forbidden")
    assert count(db, Customer, Customer.name == name) == 0

    body = employee_body()
    assert_error(await api.post("/v1/employees", body, key=keys["events:write"]), 403, "forbidden")
    assert count(db, Employee, Employee.email == body["email"]) == 0

    r = await api.post(
        f"/v1/opportunities/{opp['id']}/advance",
        {"actor_id": opp["owner_id"], "to_stage": "searching", "evidence": {"realtor": "Jane"}},
        key=keys["events:write"],
    )
    assert_error(r, 403, "forbidden")
    assert (await api.get(f"/v1/opportunities/{opp['id']}")).json()["stage"] == "interested"


async def test_keys_with_the_scope_are_let_in(api: Api, keys: dict[str, str]) -> None:
    name = unique("Crm Writer")
    customer = (await api.post("/v1/customers", {"name": name}, key=keys["crm:write"], expect=201)).json()
    assert customer["name"] == name and customer["id"].startswith("cus_")
    assert (await api.get(f"/v1/customers/{customer['id']}")).json() == customer
    event_id = unique("evt-nps")
    r = await api.post(
        "/v1/events",
        {
            "id": event_id,
            "type": "nps.response",
            "occurred_at": OCCURRED_AT,
            "customer_id": customer["id"],
            "data": {"score": 9},
        },
        key=keys["events:write"],
        expect=202,
    )
    assert r.json() == {"id": event_id, "result": "applied", "customer_id": customer["id"], "opportunity": None}


# ---------------------------------------------------------------- not found


async def test_unknown_customer_and_opportunity_are_404(api: Api) -> None:
    for path, what in (
        ("/v1/customers/cus_nope", ("customer", "cus_nope")),
        ("/v1/customers/cus_nope/journey", ("customer", "cus_nope")),
        ("/v1/opportunities/opp_nope", ("opportunity", "opp_nope")),
    ):
        err = assert_error(await api.get(path, expect=None), 404, "not_found")
        assert (err["details"], err["message"]) == ({"id": what[1]}, f"no {what[0]} {what[1]!r}")


async def test_needs_and_interactions_on_unknown_customer_are_404(api: Api, db: Engine) -> None:
    dan = await api.employee()
    needs, interactions = count(db, Need), count(db, Interaction)
    r = await api.post(
        "/v1/customers/cus_nope/needs", {"kind": "buy_home", "description": "A home", "recorded_by": dan["id"]}
    )
    assert_error(r, 404, "not_found")
    r = await api.post("/v1/customers/cus_nope/interactions", {"channel": "call", "summary": "Called"})
    assert_error(r, 404, "not_found")
    assert (count(db, Need), count(db, Interaction)) == (needs, interactions)


async def test_need_recorded_by_unknown_employee_is_422(api: Api, db: Engine) -> None:
    dan = await api.employee()
    customer, _ = await api.customer_with_need(dan["id"])
    r = await api.post(
        f"/v1/customers/{customer['id']}/needs",
        {"kind": "retire", "description": "Retire early", "recorded_by": "emp_nope"},
    )
    assert_validation_error(r, "recorded_by")
    assert count(db, Need, Need.customer_id == customer["id"]) == 1


# ---------------------------------------------------------------- customers and households


async def test_customers_get_a_new_household_unless_one_is_given(api: Api, db: Engine) -> None:
    a = (await api.post("/v1/customers", {"name": unique("Ann")}, expect=201)).json()
    b = (await api.post("/v1/customers", {"name": unique("Bob")}, expect=201)).json()
    assert a["household_id"].startswith("hh_") and b["household_id"].startswith("hh_")
    assert a["household_id"] != b["household_id"]
    c = (await api.post("/v1/customers", {"name": unique("Cat"), "household_id": a["household_id"]}, expect=201)).json()
    assert c["household_id"] == a["household_id"]
    assert (await api.get(f"/v1/customers/{c['id']}")).json()["household_id"] == a["household_id"]
    assert count(db, Customer, Customer.household_id == a["household_id"]) == 2
    assert count(db, Household, Household.id.in_([a["household_id"], b["household_id"]])) == 2


async def test_unknown_household_is_422_and_creates_nothing(api: Api, db: Engine) -> None:
    name = unique("Homeless")
    households = count(db, Household)
    r = await api.post("/v1/customers", {"name": name, "household_id": "hh_nope"})
    assert_validation_error(r, "household_id")
    assert count(db, Customer, Customer.name == name) == 0
    assert count(db, Household) == households


def published_max_length(doc: dict, schema: str, field: str) -> int:
    prop = doc["components"]["schemas"][schema]["properties"][field]
    lengths = [alt["maxLength"] for alt in [prop, *prop.get("anyOf", [])] if "maxLength" in alt]
    assert lengths, f"/openapi.json gives no maxLength for {schema}.{field}"
    return lengths[0]


async def test_customer_city_and_state_as_long_as_openapi_allows_are_stored(api: Api, db: Engine) -> None:
    doc = (await api.request("GET", "/openapi.json")).json()
    city = "C" * published_max_length(doc, "CustomerCreate", "city")
    state = "S" * published_max_length(doc, "CustomerCreate", "state")
    name = unique("Longtown Lou")
    # An exception out of the in-process app is what a real client sees as a 500.
    created = (await api.post("/v1/customers", {"name": name, "city": city, "state": state}, expect=201)).json()
    assert (created["city"], created["state"]) == (city, state)
    again = (await api.get(f"/v1/customers/{created['id']}")).json()
    assert (again["city"], again["state"]) == (city, state)
    assert count(db, Customer, Customer.name == name) == 1


async def test_customer_is_read_back_as_created(api: Api) -> None:
    body = {
        "name": unique("Rachel"),
        "email": "r@example.com",
        "phone": "+12125550100",
        "employer": "Acme",
        "city": "New York",
        "state": "NY",
    }
    created = (await api.post("/v1/customers", body, expect=201)).json()
    assert {k: created[k] for k in body} == body
    assert (await api.get(f"/v1/customers/{created['id']}")).json() == created


# ---------------------------------------------------------------- times

NAIVE = "2026-11-25T10:00:00"  # no offset: API.md's times are "ISO-8601 with offset"


async def test_interaction_time_without_offset_is_422(api: Api, db: Engine) -> None:
    customer = (await api.post("/v1/customers", {"name": unique("Naive Nick")}, expect=201)).json()
    r = await api.post(
        f"/v1/customers/{customer['id']}/interactions",
        {"channel": "call", "summary": "Called about a mortgage", "occurred_at": NAIVE},
    )
    assert_validation_error(r, "occurred_at")
    assert count(db, Interaction, Interaction.customer_id == customer["id"]) == 0


async def test_customer_event_time_without_offset_is_422(api: Api, db: Engine) -> None:
    customer = (await api.post("/v1/customers", {"name": unique("Naive Nora")}, expect=201)).json()
    event_id = unique("evt-naive")
    r = await api.post(
        "/v1/events",
        {
            "id": event_id,
            "type": "nps.response",
            "occurred_at": NAIVE,
            "customer_id": customer["id"],
            "data": {"score": 8},
        },
    )
    assert_validation_error(r, "occurred_at")
    assert count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 0


async def test_opportunity_event_time_without_offset_is_422(api: Api, db: Engine) -> None:
    opp = await checking_opportunity(api)
    event_id = unique("evt-naive")
    r = await api.post(
        "/v1/events",
        {
            "id": event_id,
            "type": "consent.sms_authorization",
            "occurred_at": NAIVE,
            "opportunity_id": opp["id"],
            "data": sms_data(),
        },
    )
    assert_validation_error(r, "occurred_at")
    assert count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 0
    assert count(db, Checkpoint, Checkpoint.opportunity_id == opp["id"]) == 1


# ---------------------------------------------------------------- the journey


async def test_journey_lists_needs_interactions_opportunities_and_consents(api: Api) -> None:
    before = datetime.now(UTC)
    opp = await checking_opportunity(api)
    after = datetime.now(UTC)
    customer_id = opp["customer_id"]
    await api.post(
        f"/v1/customers/{customer_id}/interactions",
        {
            "channel": "branch",
            "employee_id": opp["owner_id"],
            "summary": "Walked in for an account",
            "occurred_at": "2026-11-20T15:00:00+00:00",
        },
        expect=201,
    )
    await api.post(f"/v1/customers/{customer_id}/interactions", {"channel": "sms", "summary": "Texted"}, expect=201)
    data = sms_data()
    r = await api.event("consent.sms_authorization", opp["id"], data)
    assert r.json()["opportunity"]["stage"] == "authorised"

    journey = (await api.get(f"/v1/customers/{customer_id}/journey")).json()
    assert set(journey) == {"customer", "needs", "interactions", "referrals", "opportunities", "consents", "review"}
    assert journey["customer"]["id"] == customer_id
    assert [(n["id"], n["kind"]) for n in journey["needs"]] == [(opp["need_id"], "buy_home")]
    assert before <= datetime.fromisoformat(journey["needs"][0]["recorded_at"]) <= after
    assert [i["channel"] for i in journey["interactions"]] == ["branch", "sms"]
    assert journey["interactions"][0]["employee_id"] == opp["owner_id"]
    assert journey["interactions"][0]["occurred_at"] == "2026-11-20T15:00:00Z"
    assert journey["referrals"] == []  # nobody referred her
    [o] = journey["opportunities"]
    assert o["id"] == opp["id"] and o["product"] == "checking" and o["stage"] == "authorised"
    assert [c["stage"] for c in o["checkpoints"]] == ["interested", "authorised"]
    assert o["checkpoints"][1]["trigger"] == "event"
    [consent] = journey["consents"]
    assert consent["channel"] == "sms" and consent["opportunity_id"] == opp["id"]
    assert consent["product"] == "checking" and consent["customer_id"] == customer_id
    assert {k: consent["evidence"][k] for k in ("phone", "message_id", "text")} == {
        k: data[k] for k in ("phone", "message_id", "text")
    }
    # Kevin's three questions (store/audit.py; tests/test_practice_audit.py tries each rule).
    assert journey["review"] == [
        {
            "opportunity_id": opp["id"],
            "product": "checking",
            "consent": True,
            "need_before_sale": True,
            "all_checkpoints": True,
            "exceptions": [],
        }
    ]


# ---------------------------------------------------------------- employees


async def test_duplicate_employee_id_is_409_conflict_and_keeps_the_first(api: Api, db: Engine) -> None:
    emp_id = unique("emp-fixed")
    first = (await api.post("/v1/employees", employee_body(id=emp_id, name="First Fiona"), expect=201)).json()
    assert first["id"] == emp_id
    second = employee_body(id=emp_id, name="Second Sam")
    err = assert_error(await api.post("/v1/employees", second), 409, "conflict")
    assert err["details"] == {"id": emp_id}
    assert count(db, Employee, Employee.id == emp_id) == 1
    with db.connect() as conn:
        assert conn.scalar(select(Employee.name).where(Employee.id == emp_id)) == "First Fiona"


async def test_employee_with_unknown_manager_is_422(api: Api, db: Engine) -> None:
    body = employee_body(manager_id="emp_nope")
    assert_validation_error(await api.post("/v1/employees", body), "manager_id")
    assert count(db, Employee, Employee.email == body["email"]) == 0


# ---------------------------------------------------------------- OpenAPI


async def test_openapi_document_is_served_and_lists_the_main_paths(api: Api) -> None:
    r = await api.request("GET", "/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path, method in [
        ("/v1/customers", "post"),
        ("/v1/customers/{customer_id}", "get"),
        ("/v1/customers/{customer_id}/needs", "post"),
        ("/v1/customers/{customer_id}/interactions", "post"),
        ("/v1/customers/{customer_id}/journey", "get"),
        ("/v1/employees", "post"),
        ("/v1/opportunities", "post"),
        ("/v1/opportunities/{opportunity_id}", "get"),
        ("/v1/opportunities/{opportunity_id}/advance", "post"),
        ("/v1/opportunities/{opportunity_id}/close-lost", "post"),
        ("/v1/opportunities/{opportunity_id}/resend-signature", "post"),
        ("/v1/events", "post"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from /openapi.json"
    schemas = doc["components"]["schemas"]
    # API.md's opening body, exactly: adding a field is fine, but then this list grows with API.md.
    opening = set(schemas["OpportunityCreate"]["properties"])
    assert opening == {"customer_id", "product", "owner_id", "need_id", "amount", "referral_id", "campaign_id"}
    assert set(schemas["OpportunityCreate"]["required"]) == {"customer_id", "product", "owner_id", "need_id"}


async def test_openapi_declares_the_error_shape_on_every_route(api: Api) -> None:
    """/docs shows what a refusal really looks like ({"error": {code, message, details}}),
    not FastAPI's default 422 body, which the API never sends."""
    doc = (await api.request("GET", "/openapi.json")).json()
    error = doc["components"]["schemas"]["ErrorOut"]
    assert error["properties"]["error"]["$ref"].endswith("/ErrorBody")
    assert set(doc["components"]["schemas"]["ErrorBody"]["required"]) == {"code", "message", "details"}
    v1 = {path: ops for path, ops in doc["paths"].items() if path.startswith("/v1/")}
    assert len(v1) > 30
    for path, operations in v1.items():
        for method, op in operations.items():
            for status in ("401", "422"):
                ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorOut"), (method, path, status, ref)
