"""Kiara's referral (seed 003) and the referral lifecycle through the HTTP API: routing,
e-mail, accept / reject / reassign, conversion, closing, scores and priorities."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from sqlalchemy import Engine, select
from temporalio.client import Client

from domain.ids import referral_customer_id, referral_household_id, referral_need_id, referral_opportunity_id
from domain.scoring import FEATURES, LeadFeatures, LeadModel, priority, referrer_score
from store.models import EmployeeWorkload, LeadFeatureCount, Referral
from tests.helpers import (
    Api,
    Inbox,
    assert_error,
    assert_validation_error,
    count,
    territory,
    until_equal,
    within,
    without_priority,
    workflow_ids,
)
from tests.store_rows import insert_referral
from workflows import SA_ASSIGNEE_ID, SA_EXPRESSED_INTEREST, SA_REFERRAL_STATUS

T = TypeVar("T")

#: The session's acceptance SLA (the settings' default): what a priority's age points count against.
ACCEPT_SLA = timedelta(hours=1)
#: The session's referrer window (the settings' default).
WINDOW = timedelta(days=90)
ASSIGNED_NOTE = "rule 'product-in-territory' (#1): least open work (0 of capacity 20) among 1 eligible in San Francisco"


# ---------------------------------------------------------------- what the scores are computed from
# The lead model and the bank's rate are bank-wide, and the session database is shared by every
# test: a test reads them just before it acts and derives the expected scores from those counts
# and from what it did itself, with the formulas of domain/scoring.py.


def lead_counts(db: Engine) -> dict[tuple[str, str], tuple[int, int]]:
    """(feature, value) -> (won, lost) as the store holds them now; ("*", "*") is the totals."""
    with db.connect() as conn:
        rows = conn.execute(
            select(LeadFeatureCount.feature, LeadFeatureCount.value, LeadFeatureCount.won, LeadFeatureCount.lost)
        ).all()
    return {(f, v): (won, lost) for f, v, won, lost in rows}


def lead_model(counts: dict[tuple[str, str], tuple[int, int]]) -> LeadModel:
    won, lost = counts.get(("*", "*"), (0, 0))
    per: dict[str, dict[str, list[int]]] = {f: {} for f in FEATURES}
    for (feature, value), (w, lo) in counts.items():
        if feature in per:
            per[feature][value] = [w, lo]
    return LeadModel.from_dict({"won": won, "lost": lost, "counts": per})


def kiara_features(state: str, *, city: str = "San Francisco") -> LeadFeatures:
    """Kiara's referral (the `Api.refer` defaults) from a wealth advisor, as the lead model sees it."""
    return LeadFeatures(
        expressed_interest="mortgage",
        value_band="250k-1M",  # 500,000.00
        city=city.casefold(),
        state=state.casefold(),
        referrer_type="employee",
        referrer_line_of_business="wealth",
        source="employee",  # no channel given: the referrer's type
    )


def expected_lead(counts: dict[tuple[str, str], tuple[int, int]], features: LeadFeatures) -> tuple[int, list[dict]]:
    scored = lead_model(counts).score(features)
    return scored.score, [f.model_dump(mode="json") for f in scored.factors]


def count_changes(
    before: dict[tuple[str, str], tuple[int, int]], after: dict[tuple[str, str], tuple[int, int]]
) -> dict[tuple[str, str], tuple[int, int]]:
    """(won, lost) added to each count that changed."""
    zero = (0, 0)
    return {
        k: (after[k][0] - before.get(k, zero)[0], after[k][1] - before.get(k, zero)[1])
        for k in after
        if after[k] != before.get(k, zero)
    }


def bank_tallies(db: Engine) -> tuple[int, int]:
    """(converted, decided): the bank's referrals decided within the referrer window."""
    since = datetime.now(UTC) - WINDOW
    decided = count(db, Referral, Referral.decided_at.is_not(None), Referral.decided_at >= since)
    converted = count(db, Referral, Referral.decided_at >= since, Referral.status == "converted")
    return converted, decided


def assert_priority(item: dict, before: datetime, after: datetime) -> None:
    """The priority the documented formula gives for the item's scores and age at some moment
    between `before` and `after` (the request's own clock reading lies between them, and the
    formula is monotone in age)."""
    created = datetime.fromisoformat(item["created_at"])
    lo = priority(item["lead_score"], item["referrer_score"], before - created, ACCEPT_SLA)
    hi = priority(item["lead_score"], item["referrer_score"], after - created, ACCEPT_SLA)
    assert lo <= item["priority"] <= hi, (item["priority"], lo, hi)


async def read_referral(api: Api, referral_id: str) -> dict:
    """GET the referral and check its age-dependent priority against the formula."""
    before = datetime.now(UTC)
    ref = await api.referral(referral_id)
    assert_priority(ref, before, datetime.now(UTC))
    return ref


async def test_kiaras_referral_from_ryan_to_bob_converts(
    api: Api, smtp_inbox: Inbox, client: Client, db: Engine
) -> None:
    state = territory()
    people = await api.staff(state)
    ryan, bob = people["ryan"], people["bob"]
    # Another broker in the state but not the city: Kiara's city decides.
    await api.employee(
        name="Bea", email=f"bea.{state}@bank.example", products=["mortgage"], states=[state], cities=["Oakland"]
    )

    counts = lead_counts(db)
    bank_converted, bank_decided = bank_tallies(db)
    before = datetime.now(UTC)
    ref = await api.refer(ryan, state)
    assert_priority(ref, before, datetime.now(UTC))
    assert (ref["status"], ref["assignee_id"]) == ("assigned", bob["id"])
    assert ref["prospect"]["name"] == "Kiara Jones" and ref["value"] == "500000.00"
    # The documented formulas over the counts the store held when she was referred.
    lead, factors = expected_lead(counts, kiara_features(state))
    assert (ref["lead_score"], ref["lead_score_factors"]) == (lead, factors)
    ryans_first = referrer_score(0, 0, bank_converted, bank_decided)  # no decided referral of his yet
    assert ref["referrer_score"] == ryans_first
    assert [h["status"] for h in ref["history"]] == ["created", "assigned"]
    assert ref["history"][-1]["note"] == ASSIGNED_NOTE
    assert ref["workflow_id"] == f"referral-{ref['id']}"

    [mail] = await smtp_inbox.settled(api, bob["email"])
    body = mail.get_content()
    assert mail["Subject"] == "New referral: mortgage worth 500,000.00 for Kiara Jones"
    assert "Kiara Jones" in body and "+14155550123" in body and "Wants to buy her first home" in body

    desc = await within(client.get_workflow_handle(ref["workflow_id"]).describe(), "describe")
    assert desc.typed_search_attributes.get(SA_REFERRAL_STATUS) == "assigned"
    assert desc.typed_search_attributes.get(SA_ASSIGNEE_ID) == bob["id"]
    assert desc.typed_search_attributes.get(SA_EXPRESSED_INTEREST) == "mortgage"

    accepted = (await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]}, expect=200)).json()
    assert accepted["status"] == "accepted"
    before = datetime.now(UTC)
    listed = (await api.get(f"/v1/employees/{bob['id']}/referrals")).json()["items"]
    after = datetime.now(UTC)
    assert [(r["id"], r["status"]) for r in listed] == [(ref["id"], "accepted")]
    assert_priority(listed[0], before, after)

    assert accepted["referrer_score"] == ryans_first
    converted = (
        await api.post(
            f"/v1/referrals/{ref['id']}/convert",
            {"actor_id": bob["id"], "need": {"kind": "buy_home", "description": "Buy her first home in San Francisco"}},
            expect=200,
        )
    ).json()
    assert converted["status"] == "converted"
    assert converted["opportunity_id"] == referral_opportunity_id(ref["id"])
    # Ryan's referrals convert: his score rises, to 1 converted of 1 decided against a bank
    # that has decided (and converted) one more referral.
    assert converted["referrer_score"] == referrer_score(1, 1, bank_converted + 1, bank_decided + 1)
    assert converted["referrer_score"] > ryans_first
    # A decided referral is no longer waiting: its priority no longer ages.
    assert converted["priority"] == priority(
        converted["lead_score"], converted["referrer_score"], timedelta(0), ACCEPT_SLA
    )
    # The lead model learnt one won referral with exactly her features.
    learnt = lead_counts(db)
    features = dict(zip(FEATURES, kiara_features(state).values(), strict=True))
    assert count_changes(counts, learnt) == {("*", "*"): (1, 0), **{(f, v): (1, 0) for f, v in features.items()}}

    opp = (await api.get(f"/v1/opportunities/{converted['opportunity_id']}")).json()
    assert (opp["product"], opp["stage"], opp["owner_id"], opp["amount"]) == (
        "mortgage",
        "interested",
        bob["id"],
        "500000.00",
    )
    assert converted["customer_id"] == referral_customer_id(ref["id"])
    assert (opp["referral_id"], opp["customer_id"], opp["need_id"]) == (
        ref["id"],
        converted["customer_id"],
        referral_need_id(ref["id"]),
    )
    customer = (await api.get(f"/v1/customers/{converted['customer_id']}")).json()
    assert (customer["name"], customer["city"], customer["state"], customer["household_id"]) == (
        "Kiara Jones",
        "San Francisco",
        state,
        referral_household_id(ref["id"]),
    )
    journey = (await api.get(f"/v1/customers/{customer['id']}/journey")).json()
    assert [(n["id"], n["kind"]) for n in journey["needs"]] == [(opp["need_id"], "buy_home")]
    assert [r["id"] for r in journey["referrals"]] == [ref["id"]]
    assert [o["id"] for o in journey["opportunities"]] == [opp["id"]]
    assert (await api.get(f"/v1/employees/{bob['id']}/referrals")).json()["items"] == []


async def test_least_loaded_then_round_robin(api: Api) -> None:
    state = territory()
    people = await api.staff(state, city="Fresno")
    ryan, bob = people["ryan"], people["bob"]
    ann = await api.employee(name="Ann", email=f"ann.{state}@bank.example", products=["mortgage"], states=[state])
    cal = await api.employee(name="Cal", email=f"cal.{state}@bank.example", products=["mortgage"], states=[state])
    # Referrals from a city no broker lists: the whole state's brokers are eligible.
    assignees = [(await api.refer(ryan, state, city="Sacramento", name=f"P{i}"))["assignee_id"] for i in range(6)]
    # Equal loads take turns: each broker once per round, in the same order both rounds.
    assert sorted(assignees[:3]) == sorted([bob["id"], ann["id"], cal["id"]])
    assert assignees[3:] == assignees[:3]

    # Closing one of Ann's referrals makes her the least loaded.
    refs = (await api.get(f"/v1/employees/{ann['id']}/referrals")).json()["items"]
    assert len(refs) == 2
    await api.post(
        f"/v1/referrals/{refs[0]['id']}/close", {"actor_id": ann["id"], "reason": "not interested"}, expect=200
    )
    assert (await api.refer(ryan, state, city="Sacramento", name="Next"))["assignee_id"] == ann["id"]


async def test_capacity_is_respected(api: Api) -> None:
    state = territory()
    people = await api.staff(state)
    bob = people["bob"]
    full = await api.employee(
        name="Full",
        email=f"full.{state}@bank.example",
        products=["mortgage"],
        states=[state],
        cities=["San Francisco"],
        capacity=1,
    )
    assignees = [(await api.refer(people["ryan"], state, name=f"P{i}"))["assignee_id"] for i in range(4)]
    # One each while both have room; then Full is at capacity (1 of 1) and Bob takes the rest,
    # although Full's lighter load would win the fourth if capacity were ignored.
    assert sorted(assignees[:2]) == sorted([bob["id"], full["id"]])
    assert assignees[2:] == [bob["id"], bob["id"]]


async def test_only_the_assignee_or_a_manager_may_accept(api: Api) -> None:
    state = territory()
    people = await api.staff(state)
    ryan, bob, kevin = people["ryan"], people["bob"], people["kevin"]
    ref = await api.refer(ryan, state)
    r = await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": ryan["id"]})
    err = assert_error(r, 409, "invalid_transition")
    assert err["message"] == "only the referral's assignee or a manager may act on it"
    assert err["details"] == {"actor_id": ryan["id"], "assignee_id": bob["id"]}
    # Nothing changed; only the priority has aged (and is the formula's at the new age).
    assert without_priority(await read_referral(api, ref["id"])) == without_priority(ref)
    r = await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": kevin["id"]}, expect=200)
    assert (r.json()["status"], r.json()["assignee_id"]) == ("accepted", bob["id"])
    assert [(h["status"], h["actor"]) for h in r.json()["history"]] == [
        ("created", ryan["id"]),
        ("assigned", "needflow"),
        ("accepted", kevin["id"]),
    ]


async def test_reject_reroutes_never_back(api: Api, smtp_inbox: Inbox) -> None:
    state = territory()
    people = await api.staff(state)
    kevin, bob = people["kevin"], people["bob"]
    ann = await api.employee(name="Ann", email=f"ann.{state}@bank.example", products=["mortgage"], states=[state])
    ref = await api.refer(people["ryan"], state)
    assert ref["assignee_id"] == bob["id"]

    r = await api.post(f"/v1/referrals/{ref['id']}/reject", {"actor_id": bob["id"], "reason": ""})
    assert_validation_error(r, "reason")  # a rejection needs a reason
    assert without_priority(await read_referral(api, ref["id"])) == without_priority(ref)
    r = await api.post(
        f"/v1/referrals/{ref['id']}/reject",
        {"actor_id": bob["id"], "reason": "too busy this week"},
        expect=200,
    )
    ref = r.json()
    assert (ref["status"], ref["assignee_id"]) == ("assigned", ann["id"])
    assert [h["status"] for h in ref["history"]] == ["created", "assigned", "rejected", "assigned"]
    assert ref["history"][2]["note"] == "rejected: too busy this week"

    # Ann rejects too: nobody is left who has not rejected it, so it waits for a manager.
    ref = (
        await api.post(f"/v1/referrals/{ref['id']}/reject", {"actor_id": ann["id"], "reason": "conflict"}, expect=200)
    ).json()
    assert (ref["status"], ref["assignee_id"], ref["queue"]) == ("unassigned", None, "unassigned-referrals")

    async def told() -> list[str]:
        return [m["Subject"] for m in smtp_inbox.to(kevin["email"]) if ref["id"] in m.get_content()]

    expected = ["Unassigned referral waiting: mortgage worth 500,000.00"]
    await until_equal(told, expected, "the manager told of the unplaced referral, once")

    # A manager may still hand it to someone explicitly.
    ref = (
        await api.post(
            f"/v1/referrals/{ref['id']}/reassign",
            {"actor_id": kevin["id"], "to_employee_id": bob["id"], "reason": "Bob has room now"},
            expect=200,
        )
    ).json()
    assert (ref["status"], ref["assignee_id"]) == ("assigned", bob["id"])


async def test_nobody_eligible_goes_to_the_fallback_queue_and_local_managers_are_told(
    api: Api, smtp_inbox: Inbox
) -> None:
    state = territory()
    people = await api.staff(state)
    elsewhere = await api.employee(
        role="manager", name="Olga", email=f"olga.{state}@bank.example", products=[], states=[territory()]
    )
    ref = await api.refer(people["ryan"], state, interest="insurance")  # nobody sells insurance here
    assert (ref["status"], ref["assignee_id"], ref["queue"]) == ("unassigned", None, "unassigned-referrals")
    assert ref["history"][-1]["note"] == (
        "rule 'product-in-territory' (#1) matched but nobody is eligible (0 in the pool, 0 excluded, 0 at capacity); "
        "sent to the fallback queue 'unassigned-referrals'"
    )
    to_kevin = await smtp_inbox.settled(api, people["kevin"]["email"])
    told = [m["Subject"] for m in to_kevin if ref["id"] in m.get_content()]
    assert told == ["Unassigned referral waiting: insurance worth 500,000.00"]
    # Managers of other territories are not bothered with it.
    assert [m for m in await smtp_inbox.settled(api, elsewhere["email"]) if ref["id"] in m.get_content()] == []


async def test_same_idempotency_key_makes_one_referral(api: Api, client: Client, db: Engine) -> None:
    state = territory()
    people = await api.staff(state)
    key = f"ref-{uuid.uuid4().hex}"
    first = await api.refer(people["ryan"], state, idem=key)
    again = await api.refer(people["ryan"], state, idem=key)
    assert again == first  # the first response, replayed as it was (its priority included)
    assert count(db, Referral, Referral.referrer_id == people["ryan"]["id"]) == 1
    items = (await api.get(f"/v1/employees/{people['bob']['id']}/referrals")).json()["items"]
    assert [r["id"] for r in items] == [first["id"]]
    query = f'WorkflowId = "{first["workflow_id"]}"'
    await until_equal(lambda: workflow_ids(client, query), [first["workflow_id"]], "the one referral workflow")


async def test_close_needs_a_reason_and_ends_it(api: Api) -> None:
    state = territory()
    people = await api.staff(state)
    ref = await api.refer(people["ryan"], state)
    bob = people["bob"]
    r = await api.post(f"/v1/referrals/{ref['id']}/close", {"actor_id": bob["id"], "reason": ""})
    assert_validation_error(r, "reason")
    assert (await api.referral(ref["id"]))["status"] == "assigned"
    closed = (
        await api.post(
            f"/v1/referrals/{ref['id']}/close", {"actor_id": bob["id"], "reason": "no longer moving"}, expect=200
        )
    ).json()
    assert (closed["status"], closed["close_reason"], closed["assignee_id"]) == (
        "closed",
        "no longer moving",
        bob["id"],
    )
    assert [h["status"] for h in closed["history"]] == ["created", "assigned", "closed"]
    r = await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]})
    assert_error(r, 409, "invalid_transition")
    assert await api.referral(ref["id"]) == closed  # decided: nothing ages, nothing changed


async def test_converting_a_product_without_a_process_is_refused(api: Api) -> None:
    state = territory()
    people = await api.staff(state)
    saver = await api.employee(name="Sam", email=f"sam.{state}@bank.example", products=["savings"], states=[state])
    ref = await api.refer(people["ryan"], state, interest="savings", value=None)
    assert ref["assignee_id"] == saver["id"]
    accepted = (await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": saver["id"]}, expect=200)).json()
    r = await api.post(
        f"/v1/referrals/{ref['id']}/convert",
        {"actor_id": saver["id"], "need": {"kind": "save", "description": "Save for a car"}},
    )
    err = assert_error(r, 409, "invalid_transition")
    assert err["details"] == {"field": "product"}
    assert err["message"] == "savings has no sales process, so no opportunity can be opened for it"
    after = await read_referral(api, ref["id"])
    assert without_priority(after) == without_priority(accepted)
    assert (after["status"], after["opportunity_id"], after["customer_id"]) == ("accepted", None, None)


async def test_open_referrals_in_documented_priority_order(api: Api, db: Engine) -> None:
    """Self-contained: whatever else the bank has decided, Good's record (3 of 3 converted)
    beats Ryan's (0 of 1), so Good's referral comes first, by the documented formula."""
    state = territory()
    people = await api.staff(state)
    ryan, bob = people["ryan"], people["bob"]
    good = await api.employee(
        role="advisor", lob="wealth", name="Good", email=f"good.{state}@bank.example", products=[], states=[state]
    )
    for i in range(3):
        done = await api.refer(good, state, name=f"Won {i}")
        await api.post(f"/v1/referrals/{done['id']}/accept", {"actor_id": bob["id"]}, expect=200)
        await api.post(
            f"/v1/referrals/{done['id']}/convert",
            {"actor_id": bob["id"], "need": {"kind": "buy_home", "description": "A home"}},
            expect=200,
        )
    lost = await api.refer(ryan, state, name="Lost")
    await api.post(f"/v1/referrals/{lost['id']}/close", {"actor_id": bob["id"], "reason": "not moving"}, expect=200)

    counts = lead_counts(db)
    bank_converted, bank_decided = bank_tallies(db)
    low = await api.refer(ryan, state, name="From Ryan")
    high = await api.refer(good, state, name="From Good")

    before = datetime.now(UTC)
    items = (await api.get(f"/v1/employees/{bob['id']}/referrals")).json()["items"]
    after = datetime.now(UTC)
    assert [r["id"] for r in items] == [high["id"], low["id"]]
    # Both have the same features, scored by the same model: the same lead score.
    lead, factors = expected_lead(counts, kiara_features(state))
    assert [(r["lead_score"], r["lead_score_factors"]) for r in items] == [(lead, factors)] * 2
    assert [r["referrer_score"] for r in items] == [
        referrer_score(3, 3, bank_converted, bank_decided),
        referrer_score(0, 1, bank_converted, bank_decided),
    ]
    for r in items:
        assert_priority(r, before, after)
    assert items[0]["priority"] > items[1]["priority"]


async def test_priority_counts_age_while_open_and_none_once_decided(api: Api, db: Engine) -> None:
    partner = f"partner-{uuid.uuid4().hex[:8]}"
    made = datetime.now(UTC) - timedelta(minutes=30)
    old = {"referrer_type": "partner", "referrer_id": partner, "created_at": made, "lead_score": 40}
    waiting = insert_referral(db, **old, status="unassigned")
    closed = insert_referral(db, **old, status="closed", decided_at=made)
    bank_converted, bank_decided = bank_tallies(db)
    score = referrer_score(0, 1, bank_converted, bank_decided)  # the partner's one decided referral, closed

    before = datetime.now(UTC)
    open_one = await api.referral(waiting)
    after = datetime.now(UTC)
    assert (open_one["status"], open_one["lead_score"], open_one["referrer_score"]) == ("unassigned", 40, score)
    # Half the acceptance SLA waited: 50 age points, 7.5 of the priority.
    assert_priority(open_one, before, after)
    assert open_one["priority"] == pytest.approx(0.6 * 40 + 0.25 * score + 0.15 * 50, abs=0.05)

    decided = await api.referral(closed)
    assert (decided["status"], decided["lead_score"], decided["referrer_score"]) == ("closed", 40, score)
    assert decided["priority"] == priority(40, score, timedelta(0), ACCEPT_SLA)  # no age points once decided


async def test_concurrent_referrals_never_put_an_employee_over_capacity(api: Api, db: Engine) -> None:
    """Twelve referrals at once for a territory whose only broker (Bob) has room for two:
    two are his, ten wait unassigned, whatever order the routings ran in (each pick is
    confirmed under a lock on the employee's workload row: activities/referral.py)."""
    state = territory()
    people = await api.staff(state)
    bob = people["bob"]
    r = await api.request("PATCH", f"/v1/employees/{bob['id']}", json={"capacity": 2}, headers=api.headers())
    assert r.status_code == 200, r.text
    made = await asyncio.gather(*(api.refer(people["ryan"], state, name=f"Prospect {i}") for i in range(12)))
    assigned = [m for m in made if m["assignee_id"] == bob["id"]]
    assert len(assigned) == 2, [(m["status"], m["assignee_id"]) for m in made]
    assert sorted(m["status"] for m in made) == ["assigned"] * 2 + ["unassigned"] * 10
    assert count(db, Referral, Referral.assignee_id == bob["id"], Referral.status == "assigned") == 2
    with db.connect() as conn:
        load = conn.scalar(select(EmployeeWorkload.open_referrals).where(EmployeeWorkload.employee_id == bob["id"]))
    assert load == 2
