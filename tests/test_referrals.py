"""Kiara's referral (seed 003) and the referral lifecycle through the HTTP API: routing,
e-mail, accept / reject / reassign, conversion, closing, scores and priorities."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from temporalio.client import Client

from domain.scoring import priority
from tests.helpers import Api, Inbox, territory
from workflows import SA_ASSIGNEE_ID, SA_EXPRESSED_INTEREST, SA_REFERRAL_STATUS


async def test_kiaras_referral_from_ryan_to_bob_converts(api: Api, smtp_inbox: Inbox, client: Client) -> None:
    state = territory()
    people = await api.staff(state)
    ryan, bob = people["ryan"], people["bob"]
    # Another broker in the state but not the city: Kiara's city decides.
    await api.employee(
        name="Bea", email=f"bea.{state}@bank.example", products=["mortgage"], states=[state], cities=["Oakland"]
    )

    ref = await api.refer(ryan, state)
    assert (ref["status"], ref["assignee_id"]) == ("assigned", bob["id"])
    assert ref["prospect"]["name"] == "Kiara Jones" and ref["value"] == "500000.00"
    assert 1 <= ref["lead_score"] <= 99 and 0 <= ref["referrer_score"] <= 100
    assert [h["status"] for h in ref["history"]] == ["created", "assigned"]
    assert "san francisco" in ref["history"][-1]["note"].lower()
    assert ref["workflow_id"] == f"referral-{ref['id']}"

    [mail] = smtp_inbox.to(bob["email"])
    body = mail.get_content()
    assert "Kiara Jones" in mail["Subject"] and "500,000.00" in mail["Subject"]
    assert "Kiara Jones" in body and "+14155550123" in body and "Wants to buy her first home" in body

    desc = await client.get_workflow_handle(ref["workflow_id"]).describe()
    assert desc.typed_search_attributes.get(SA_REFERRAL_STATUS) == "assigned"
    assert desc.typed_search_attributes.get(SA_ASSIGNEE_ID) == bob["id"]
    assert desc.typed_search_attributes.get(SA_EXPRESSED_INTEREST) == "mortgage"

    accepted = (await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]}, expect=200)).json()
    assert accepted["status"] == "accepted"
    listed = (await api.get(f"/v1/employees/{bob['id']}/referrals")).json()["items"]
    assert [r["id"] for r in listed] == [ref["id"]]

    score_before = accepted["referrer_score"]
    converted = (
        await api.post(
            f"/v1/referrals/{ref['id']}/convert",
            {"actor_id": bob["id"], "need": {"kind": "buy_home", "description": "Buy her first home in San Francisco"}},
            expect=200,
        )
    ).json()
    assert converted["status"] == "converted" and converted["opportunity_id"]
    assert converted["referrer_score"] > score_before  # Ryan's referrals convert: his score rises

    opp = (await api.get(f"/v1/opportunities/{converted['opportunity_id']}")).json()
    assert (opp["product"], opp["stage"], opp["owner_id"], opp["amount"]) == (
        "mortgage",
        "interested",
        bob["id"],
        "500000.00",
    )
    assert opp["referral_id"] == ref["id"] and opp["customer_id"] == converted["customer_id"]
    customer = (await api.get(f"/v1/customers/{converted['customer_id']}")).json()
    assert (customer["name"], customer["city"], customer["household_id"] is not None) == (
        "Kiara Jones",
        "San Francisco",
        True,
    )
    journey = (await api.get(f"/v1/customers/{customer['id']}/journey")).json()
    assert [n["kind"] for n in journey["needs"]] == ["buy_home"]
    assert journey["needs"][0]["id"] == opp["need_id"]
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
    ref = await api.refer(people["ryan"], state)
    r = await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": people["ryan"]["id"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_transition"
    assert (await api.get(f"/v1/referrals/{ref['id']}")).json() == ref
    r = await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": people["kevin"]["id"]}, expect=200)
    assert r.json()["status"] == "accepted" and r.json()["history"][-1]["actor"] == people["kevin"]["id"]


async def test_reject_reroutes_never_back(api: Api, smtp_inbox: Inbox) -> None:
    state = territory()
    people = await api.staff(state)
    ann = await api.employee(name="Ann", email=f"ann.{state}@bank.example", products=["mortgage"], states=[state])
    ref = await api.refer(people["ryan"], state)
    assert ref["assignee_id"] == people["bob"]["id"]

    r = await api.post(f"/v1/referrals/{ref['id']}/reject", {"actor_id": people["bob"]["id"], "reason": ""})
    assert r.status_code == 422  # a rejection needs a reason
    r = await api.post(
        f"/v1/referrals/{ref['id']}/reject",
        {"actor_id": people["bob"]["id"], "reason": "too busy this week"},
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
    assert any(ref["id"] in m.get_content() for m in smtp_inbox.to(people["kevin"]["email"]))

    # A manager may still hand it to someone explicitly.
    ref = (
        await api.post(
            f"/v1/referrals/{ref['id']}/reassign",
            {"actor_id": people["kevin"]["id"], "to_employee_id": people["bob"]["id"], "reason": "Bob has room now"},
            expect=200,
        )
    ).json()
    assert (ref["status"], ref["assignee_id"]) == ("assigned", people["bob"]["id"])


async def test_no_rule_matches_fallback_queue_and_managers_told(api: Api, smtp_inbox: Inbox) -> None:
    state = territory()
    people = await api.staff(state)
    elsewhere = await api.employee(
        role="manager", name="Olga", email=f"olga.{state}@bank.example", products=[], states=[territory()]
    )
    ref = await api.refer(people["ryan"], state, interest="insurance")  # nobody sells insurance here
    assert (ref["status"], ref["assignee_id"], ref["queue"]) == ("unassigned", None, "unassigned-referrals")
    assert "fallback queue" in ref["history"][-1]["note"]
    told = [m for m in smtp_inbox.to(people["kevin"]["email"]) if ref["id"] in m.get_content()]
    assert len(told) == 1 and "Unassigned referral" in told[0]["Subject"]
    # Managers of other territories are not bothered with it.
    assert not [m for m in smtp_inbox.to(elsewhere["email"]) if ref["id"] in m.get_content()]


async def test_same_idempotency_key_makes_one_referral(api: Api, client: Client) -> None:
    state = territory()
    people = await api.staff(state)
    key = f"ref-{uuid.uuid4().hex}"
    first = await api.refer(people["ryan"], state, idem=key)
    again = await api.refer(people["ryan"], state, idem=key)
    assert again == first
    found = [wf.id async for wf in client.list_workflows(f'WorkflowId = "{first["workflow_id"]}"')]
    assert len(found) == 1
    assert len((await api.get(f"/v1/employees/{people['bob']['id']}/referrals")).json()["items"]) == 1


async def test_close_needs_a_reason_and_ends_it(api: Api) -> None:
    state = territory()
    people = await api.staff(state)
    ref = await api.refer(people["ryan"], state)
    bob = people["bob"]
    closed = (
        await api.post(
            f"/v1/referrals/{ref['id']}/close", {"actor_id": bob["id"], "reason": "no longer moving"}, expect=200
        )
    ).json()
    assert (closed["status"], closed["close_reason"]) == ("closed", "no longer moving")
    r = await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_transition"


async def test_converting_a_product_without_a_process_is_refused(api: Api) -> None:
    state = territory()
    people = await api.staff(state)
    saver = await api.employee(name="Sam", email=f"sam.{state}@bank.example", products=["savings"], states=[state])
    ref = await api.refer(people["ryan"], state, interest="savings", value=None)
    assert ref["assignee_id"] == saver["id"]
    await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": saver["id"]}, expect=200)
    r = await api.post(
        f"/v1/referrals/{ref['id']}/convert",
        {"actor_id": saver["id"], "need": {"kind": "save", "description": "Save for a car"}},
    )
    assert r.status_code == 409 and "no sales process" in r.json()["error"]["message"]
    assert (await api.get(f"/v1/referrals/{ref['id']}")).json()["status"] == "accepted"


async def test_open_referrals_in_documented_priority_order(api: Api) -> None:
    state = territory()
    people = await api.staff(state)
    bob = people["bob"]
    # Referrers with different track records give different referrer scores.
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
    low = await api.refer(people["ryan"], state, name="From Ryan")
    high = await api.refer(good, state, name="From Good")

    items = (await api.get(f"/v1/employees/{bob['id']}/referrals")).json()["items"]
    assert [r["id"] for r in items] == [high["id"], low["id"]]
    now = datetime.now(UTC)
    for r in items:
        age = now - datetime.fromisoformat(r["created_at"])
        expected = priority(r["lead_score"], r["referrer_score"], age, timedelta(hours=1))  # the default SLA
        assert abs(r["priority"] - expected) < 0.05
