"""Campaigns (seed 002, spec/API.md "v1.1 additions" → Campaigns): a goal that never counts
one product's sales, prequalification rules as data, a customer prequalified with every
rule's reason and the outcome recorded, a campaign opportunity opened only for a customer
whose latest prequalification qualified, and progress against the goal exactly as
store/campaigns.py defines it.

The rules themselves are pure (domain/campaigns.py) and tested first, without a server.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from domain.campaigns import (
    CustomerFacts,
    LatestPrequalification,
    PrequalificationRule,
    RuleConflict,
    check_campaign_opening,
    check_rules,
    prequalify,
)
from domain.opportunity import TransitionRefused
from domain.types import Product
from store.keys import register_api_key
from store.models import Campaign, IdempotencyRecord, Opportunity, Prequalification
from tests.helpers import Api, assert_error, assert_validation_error, count, named_fields, territory, unique

SMS = {
    "phone": "+12125550100",
    "message_id": "SM-1",
    "text": "YES open my account",
    "received_at": "2026-11-25T09:59:00+00:00",
}


def rules(*data: dict[str, Any]) -> list[PrequalificationRule]:
    return [PrequalificationRule.model_validate(d) for d in data]


# ---------------------------------------------------------------- the pure rules


def test_every_rule_says_whether_it_held_and_why() -> None:
    campaign_rules = rules(
        {"has_need": "open_account"},
        {"has_product": "mortgage"},
        {"lacks_product": "checking"},
        {"state_in": ["NY", "New  jersey"]},
    )
    passing = CustomerFacts(
        need_kinds=frozenset({"open_account", "buy_home"}),
        products_held=frozenset({Product.mortgage}),
        state="new jersey",
    )
    outcome = prequalify(campaign_rules, passing)
    assert outcome.qualified is True
    assert [r.model_dump() for r in outcome.reasons] == [
        {"rule": {"has_need": "open_account"}, "passed": True, "message": "has a recorded need 'open_account'"},
        {"rule": {"has_product": "mortgage"}, "passed": True, "message": "holds mortgage"},
        {"rule": {"lacks_product": "checking"}, "passed": True, "message": "does not hold checking"},
        {
            "rule": {"state_in": ["NY", "New  jersey"]},
            "passed": True,
            "message": "lives in new jersey, one of NY, New  jersey",
        },
    ]

    failing = CustomerFacts(need_kinds=frozenset({"buy_home"}), products_held=frozenset({Product.checking}), state="CA")
    outcome = prequalify(campaign_rules, failing)
    assert outcome.qualified is False
    assert [(r.passed, r.message) for r in outcome.reasons] == [
        (False, "has no recorded need 'open_account' (needs on record: buy_home)"),
        (False, "does not hold mortgage (holds checking)"),
        (False, "already holds checking"),
        (False, "lives in CA, not in NY, New  jersey"),
    ]

    nothing = CustomerFacts(need_kinds=frozenset(), products_held=frozenset(), state=None)
    outcome = prequalify(campaign_rules, nothing)
    assert [(r.passed, r.message) for r in outcome.reasons] == [
        (False, "has no recorded need 'open_account' (needs on record: none)"),
        (False, "does not hold mortgage (holds no product)"),
        (True, "does not hold checking"),
        (False, "has no state on record (the campaign is for NY, New  jersey)"),
    ]
    assert outcome.qualified is False


def test_a_rule_is_exactly_one_condition_and_rules_must_be_satisfiable() -> None:
    for bad in ({}, {"has_need": "x", "state_in": ["NY"]}, {"has_car": "yes"}, {"state_in": []}):
        with pytest.raises(ValueError):
            PrequalificationRule.model_validate(bad)
    with pytest.raises(RuleConflict) as caught:
        check_rules(rules({"has_need": "x"}, {"lacks_product": "wealth"}, {"has_product": "wealth"}))
    assert caught.value.index == 2
    check_rules(rules({"has_product": "wealth"}, {"lacks_product": "insurance"}))  # no conflict


def test_only_a_qualified_latest_prequalification_opens_a_campaign_opportunity() -> None:
    at = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    with pytest.raises(TransitionRefused) as never:
        check_campaign_opening("cmp_1", "cus_1", None)
    assert never.value.details == {"campaign_id": "cmp_1", "customer_id": "cus_1", "prequalification_id": None}

    failed = {"rule": {"lacks_product": "checking"}, "passed": False, "message": "already holds checking"}
    held = {"rule": {"state_in": ["NY"]}, "passed": True, "message": "lives in NY, one of NY"}
    with pytest.raises(TransitionRefused) as refused:
        check_campaign_opening("cmp_1", "cus_1", LatestPrequalification("pq_2", False, [held, failed], at))
    assert refused.value.details == {
        "campaign_id": "cmp_1",
        "customer_id": "cus_1",
        "prequalification_id": "pq_2",
        "failed": [failed],
    }
    assert "already holds checking" in refused.value.message

    check_campaign_opening("cmp_1", "cus_1", LatestPrequalification("pq_3", True, [held], at))  # no refusal


# ---------------------------------------------------------------- creating a campaign


def campaign_body(name: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "starts_on": "2026-12-01",
        "ends_on": "2027-02-28",
        "goal": {"metric": "product_line_units", "target": 40, "line_of_business": "retail"},
        "prequalification": [{"has_need": "open_account"}, {"lacks_product": "checking"}],
    }
    body.update(changes)
    return body


async def test_a_campaign_is_created_once_per_idempotency_key(api: Api, db: Engine) -> None:
    name = unique("Winter retail")
    key = unique("idem-campaign")
    body = campaign_body(name, prequalification=[{"has_need": "open_account"}, {"state_in": ["NY", "NJ"]}])
    first = await api.post("/v1/campaigns", body, idem=key, expect=201)
    campaign = first.json()
    assert campaign["id"].startswith("cmp_")
    assert {k: v for k, v in campaign.items() if k not in ("id", "created_at")} == {
        "name": name,
        "starts_on": "2026-12-01",
        "ends_on": "2027-02-28",
        "goal": {"metric": "product_line_units", "target": 40, "line_of_business": "retail"},
        "prequalification": [{"has_need": "open_account"}, {"state_in": ["NY", "NJ"]}],
        "created_via": "test-all",
    }
    again = await api.post("/v1/campaigns", body, idem=key, expect=201)
    assert (again.json(), again.headers.get("idempotent-replayed")) == (campaign, "true")
    assert count(db, Campaign, Campaign.name == name) == 1

    read = (await api.get(f"/v1/campaigns/{campaign['id']}")).json()
    assert read == {**campaign, "progress": {"metric": "product_line_units", "value": 0, "target": 40, "won": 0}}
    assert_error(await api.get("/v1/campaigns/cmp_nope", expect=None), 404, "not_found")


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("ends before it starts", {"starts_on": "2026-12-01", "ends_on": "2026-11-30"}, "ends_on"),
    ("a product's sales", {"goal": {"metric": "mortgage_units", "target": 10}}, "goal.metric"),
    (
        "a goal naming a product",
        {"goal": {"metric": "product_line_units", "target": 10, "line_of_business": "mortgage", "product": "mortgage"}},
        "goal.product",
    ),
    (
        "a product line without its line",
        {"goal": {"metric": "product_line_units", "target": 10}},
        "goal.line_of_business",
    ),
    (
        "a line on another metric",
        {"goal": {"metric": "new_households", "target": 10, "line_of_business": "retail"}},
        "goal.line_of_business",
    ),
    ("a ratio above 1", {"goal": {"metric": "cross_sell_ratio", "target": 1.5}}, "goal.target"),
    ("a zero target", {"goal": {"metric": "new_households", "target": 0}}, "goal.target"),
    ("a fractional count", {"goal": {"metric": "new_households", "target": 2.5}}, "goal.target"),
    ("no rules", {"prequalification": []}, "prequalification"),
    ("an empty rule", {"prequalification": [{"has_need": "x"}, {}]}, "prequalification.1"),
    (
        "a rule of two conditions",
        {"prequalification": [{"has_need": "x"}, {"has_need": "y", "state_in": ["NY"]}]},
        "prequalification.1",
    ),
    ("an unknown rule", {"prequalification": [{"has_need": "x"}, {"owns_boat": True}]}, "prequalification.1.owns_boat"),
    (
        "an unknown product",
        {"prequalification": [{"has_need": "x"}, {"has_product": "boat"}]},
        "prequalification.1.has_product",
    ),
    ("no states", {"prequalification": [{"has_need": "x"}, {"state_in": []}]}, "prequalification.1.state_in"),
    (
        "a state read as a boolean",
        {"prequalification": [{"has_need": "x"}, {"state_in": [True]}]},
        "prequalification.1.state_in",
    ),
    (
        "rules that cannot all hold",
        {"prequalification": [{"has_product": "wealth"}, {"has_need": "x"}, {"lacks_product": "wealth"}]},
        "prequalification.2",
    ),
]


@pytest.mark.parametrize(("case", "changes", "field"), INVALID, ids=[c[0] for c in INVALID])
async def test_an_invalid_campaign_is_422_naming_the_field_and_writes_nothing(
    api: Api, db: Engine, case: str, changes: dict[str, Any], field: str
) -> None:
    name = unique("Invalid campaign")
    key = unique("idem-invalid")
    err = assert_validation_error(await api.post("/v1/campaigns", campaign_body(name, **changes), idem=key))
    assert named_fields(err) == {field}, err
    assert count(db, Campaign, Campaign.name == name) == 0
    assert count(db, IdempotencyRecord, IdempotencyRecord.key == key) == 0


# ---------------------------------------------------------------- prequalifying and opening


async def banker(api: Api, db: Engine, state: str) -> tuple[dict, str]:
    """A retail banker in her own state, and a crm:write key bound to her."""
    matt = await api.employee(
        role="banker",
        lob="retail",
        name="Matt",
        email=f"matt.{state}@bank.example",
        products=["checking"],
        states=[state],
    )
    key_name = unique("matt-device")
    return matt, register_api_key(db, key_name, ["crm:write"], employee_id=matt["id"])


async def open_checking(api: Api, customer: dict, need: dict, owner: dict, campaign_id: str | None = None) -> Any:
    body = {"customer_id": customer["id"], "product": "checking", "owner_id": owner["id"], "need_id": need["id"]}
    if campaign_id is not None:
        body["campaign_id"] = campaign_id
    return await api.post("/v1/opportunities", body)


async def win_checking(api: Api, opp: dict) -> dict:
    await api.event("consent.sms_authorization", opp["id"], SMS)
    won = (await api.event("account.opened", opp["id"], {"account_number": unique("CHK")})).json()["opportunity"]
    assert won["status"] == "won", won
    return won


async def test_prequalification_refuses_with_every_reason_then_allows_and_only_then_a_campaign_opportunity_opens(
    api: Api, db: Engine
) -> None:
    state = territory()
    matt, device = await banker(api, db, state)
    body = campaign_body(
        unique("Open an account"),
        prequalification=[{"has_need": "open_account"}, {"lacks_product": "checking"}, {"state_in": ["NY", "NJ"]}],
    )
    campaign = (await api.post("/v1/campaigns", body, expect=201)).json()
    customer, need = await api.customer_with_need(matt["id"], name=unique("Rachel Campaign"))  # NY, buy_home
    prequalify = f"/v1/campaigns/{campaign['id']}/prequalify"

    def opportunities() -> int:
        return count(db, Opportunity, Opportunity.customer_id == customer["id"])

    # Never prequalified: 409, nothing opened.
    err = assert_error(await open_checking(api, customer, need, matt, campaign["id"]), 409, "invalid_transition")
    assert err["details"] == {"campaign_id": campaign["id"], "customer_id": customer["id"], "prequalification_id": None}
    assert opportunities() == 0

    # Refused, with every rule's reason, and recorded (the bound key acts as Matt: no actor_id).
    refused = (await api.post(prequalify, {"customer_id": customer["id"]}, key=device, expect=200)).json()
    assert refused["qualified"] is False
    assert refused["reasons"] == [
        {
            "rule": {"has_need": "open_account"},
            "passed": False,
            "message": "has no recorded need 'open_account' (needs on record: buy_home)",
        },
        {"rule": {"lacks_product": "checking"}, "passed": True, "message": "does not hold checking"},
        {"rule": {"state_in": ["NY", "NJ"]}, "passed": True, "message": "lives in NY, one of NY, NJ"},
    ]
    assert (refused["campaign_id"], refused["customer_id"], refused["actor"]) == (
        campaign["id"],
        customer["id"],
        matt["id"],
    )
    with Session(db) as session:
        row = session.get(Prequalification, refused["id"])
        assert row is not None
        assert (row.qualified, row.reasons, row.actor, row.at) == (
            False,
            refused["reasons"],
            matt["id"],
            datetime.fromisoformat(refused["at"]),
        )
        assert row.via == refused["via"] and row.via.startswith("matt-device")

    # Opening now: 409 saying which rule failed.
    err = assert_error(await open_checking(api, customer, need, matt, campaign["id"]), 409, "invalid_transition")
    assert err["details"]["prequalification_id"] == refused["id"]
    assert err["details"]["failed"] == [refused["reasons"][0]]
    assert opportunities() == 0

    # The need is recorded: she qualifies, and the campaign opportunity opens carrying the campaign.
    opening_need = (
        await api.post(
            f"/v1/customers/{customer['id']}/needs",
            {
                "kind": "open_account",
                "description": "Wants a checking account for her salary",
                "recorded_by": matt["id"],
            },
            expect=201,
        )
    ).json()
    allowed = (await api.post(prequalify, {"customer_id": customer["id"]}, key=device, expect=200)).json()
    assert allowed["qualified"] is True
    assert [r["passed"] for r in allowed["reasons"]] == [True, True, True]
    opened = await open_checking(api, customer, opening_need, matt, campaign["id"])
    assert opened.status_code == 201, opened.text
    opp = opened.json()
    assert (opp["campaign_id"], opp["stage"]) == (campaign["id"], "interested")
    with Session(db) as session:
        assert session.get(Opportunity, opp["id"]).campaign_id == campaign["id"]

    # Won, it counts toward the campaign's retail goal.
    await win_checking(api, opp)
    progress = (await api.get(f"/v1/campaigns/{campaign['id']}")).json()["progress"]
    assert progress == {"metric": "product_line_units", "value": 1, "target": 40, "won": 1}

    # An unknown campaign is 404, and opens nothing.
    before = opportunities()
    assert_error(await open_checking(api, customer, opening_need, matt, "cmp_unknown"), 404, "not_found")
    assert opportunities() == before


async def test_the_latest_prequalification_decides(api: Api, db: Engine) -> None:
    state = territory()
    matt, _ = await banker(api, db, state)
    campaign = (
        await api.post(
            "/v1/campaigns",
            campaign_body(unique("First account"), prequalification=[{"lacks_product": "checking"}]),
            expect=201,
        )
    ).json()
    customer, need = await api.customer_with_need(matt["id"], name=unique("Kiara Latest"))
    prequalify = f"/v1/campaigns/{campaign['id']}/prequalify"

    # An unbound key names the employee (it has crm:act-as); without one: 422.
    assert_validation_error(await api.post(prequalify, {"customer_id": customer["id"]}), "actor_id")
    assert_validation_error(
        await api.post(prequalify, {"customer_id": "cus_nobody", "actor_id": matt["id"]}), "customer_id"
    )
    assert_error(
        await api.post("/v1/campaigns/cmp_nope/prequalify", {"customer_id": customer["id"], "actor_id": matt["id"]}),
        404,
        "not_found",
    )
    assert count(db, Prequalification, Prequalification.customer_id == customer["id"]) == 0

    first = (await api.post(prequalify, {"customer_id": customer["id"], "actor_id": matt["id"]}, expect=200)).json()
    assert first["qualified"] is True
    assert first["via"] == "test-all"

    # She opens a checking account outside the campaign; prequalified again, she no longer qualifies.
    plain = (await open_checking(api, customer, need, matt)).json()
    assert plain["campaign_id"] is None
    await win_checking(api, plain)
    second = (await api.post(prequalify, {"customer_id": customer["id"], "actor_id": matt["id"]}, expect=200)).json()
    assert (second["qualified"], second["reasons"]) == (
        False,
        [{"rule": {"lacks_product": "checking"}, "passed": False, "message": "already holds checking"}],
    )
    assert datetime.fromisoformat(second["at"]) >= datetime.fromisoformat(first["at"])

    # The earlier, qualified one no longer counts.
    before = count(db, Opportunity, Opportunity.customer_id == customer["id"])
    err = assert_error(await open_checking(api, customer, need, matt, campaign["id"]), 409, "invalid_transition")
    assert err["details"] == {
        "campaign_id": campaign["id"],
        "customer_id": customer["id"],
        "prequalification_id": second["id"],
        "failed": second["reasons"],
    }
    assert count(db, Opportunity, Opportunity.customer_id == customer["id"]) == before


# ---------------------------------------------------------------- progress


DAY0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


async def test_progress_is_each_metric_as_defined_on_a_seeded_set(api: Api, db: Engine) -> None:
    """Won opportunities written straight into the store (their won times chosen), for
    customers of this test's own households and three campaigns of their own."""
    owner = await api.employee(role="banker", lob="retail", name="Pat", email="pat@bank.example", products=[])
    c1, n1 = await api.customer_with_need(owner["id"], name=unique("One"))
    c2a, n2a = await api.customer_with_need(owner["id"], name=unique("Two A"))
    c2b = (
        await api.post("/v1/customers", {"name": unique("Two B"), "household_id": c2a["household_id"]}, expect=201)
    ).json()
    n2b = (
        await api.post(
            f"/v1/customers/{c2b['id']}/needs",
            {"kind": "save", "description": "Save for a car", "recorded_by": owner["id"]},
            expect=201,
        )
    ).json()
    c3, n3 = await api.customer_with_need(owner["id"], name=unique("Three"))
    c4, n4 = await api.customer_with_need(owner["id"], name=unique("Four"))
    households = (
        await api.post(
            "/v1/campaigns",
            campaign_body(unique("New households"), goal={"metric": "new_households", "target": 5}),
            expect=201,
        )
    ).json()
    cross = (
        await api.post(
            "/v1/campaigns",
            campaign_body(unique("Cross-sell"), goal={"metric": "cross_sell_ratio", "target": 0.4}),
            expect=201,
        )
    ).json()
    retail = (
        await api.post(
            "/v1/campaigns",
            campaign_body(
                unique("Retail"), goal={"metric": "product_line_units", "target": 3, "line_of_business": "retail"}
            ),
            expect=201,
        )
    ).json()
    hh, cs, rt = households["id"], cross["id"], retail["id"]

    def opp(
        customer: dict, need: dict, product: str, campaign: str | None, day: int | None, status: str = "won"
    ) -> Opportunity:
        opened = DAY0 + timedelta(days=(day or 20) - 1)
        return Opportunity(
            id=unique("opp-seed"),
            customer_id=customer["id"],
            product=product,
            process_version=1,
            owner_id=owner["id"],
            need_id=need["id"],
            campaign_id=campaign,
            stage={"won": "closed_won", "lost": "closed_lost"}.get(status, "interested"),
            probability=100 if status == "won" else 0 if status == "lost" else 10,
            status=status,
            workflow_id="seeded",
            opened_at=opened,
            closed_at=DAY0 + timedelta(days=day) if day is not None and status != "open" else None,
        )

    seeded = [
        # Campaign "new households": H1's first win is its (day 5); H2 had won a mortgage
        # (day 3) before its campaign win (day 6); H3's first win is its (day 7; day 8 is
        # the same household again); lost and open ones never count.  → 2
        opp(c1, n1, "checking", hh, 5),
        opp(c2a, n2a, "mortgage", None, 3),
        opp(c2b, n2b, "checking", hh, 6),
        opp(c3, n3, "checking", hh, 7),
        opp(c3, n3, "insurance", hh, 8),
        opp(c4, n4, "checking", hh, 9, "lost"),
        opp(c4, n4, "savings", hh, None, "open"),
        # Campaign "cross-sell": c1 held checking (day 5) → yes; c3 held insurance → yes;
        # c2a held only a mortgage, and sells a mortgage → no (her household's checking is
        # not hers); c4 held nothing yet on day 2 (her checking comes on day 13) → no;
        # a lost one is not won.  → 2 of 4 = 0.5
        opp(c1, n1, "mortgage", cs, 10),
        opp(c3, n3, "checking", cs, 11),
        opp(c2a, n2a, "mortgage", cs, 12),
        opp(c4, n4, "wealth", cs, 2),
        opp(c4, n4, "checking", None, 13),
        opp(c4, n4, "insurance", cs, 14, "lost"),
        # Campaign "retail": savings and a credit card are retail; a mortgage is not; open
        # and lost ones never count.  → 2
        opp(c1, n1, "savings", rt, 15),
        opp(c2b, n2b, "credit_card", rt, 16),
        opp(c3, n3, "mortgage", rt, 17),
        opp(c4, n4, "checking", rt, None, "open"),
        opp(c4, n4, "personal_loan", rt, 18, "lost"),
    ]
    with Session(db) as session, session.begin():
        session.add_all(seeded)

    async def progress(campaign: dict) -> dict:
        return (await api.get(f"/v1/campaigns/{campaign['id']}")).json()["progress"]

    assert await progress(households) == {"metric": "new_households", "value": 2, "target": 5, "won": 4}
    assert await progress(cross) == {"metric": "cross_sell_ratio", "value": 0.5, "target": 0.4, "won": 4}
    assert await progress(retail) == {"metric": "product_line_units", "value": 2, "target": 3, "won": 3}
