"""Referral commands beyond the happy path, through the HTTP API: reassigning (handing it
on, to the current assignee, from accepted, to nobody known), reject and close by the wrong
person, a referral of an existing customer, exactly one of `customer_id` and `prospect`,
Idempotency-Key on every command, and the search attributes the Web UI finds referrals
and opportunities by.

A refused command answers 409 (or 422) and leaves no trace: not in the referral, not in
the store's history rows, not even in the workflow's history.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from temporalio.client import Client

from domain.ids import referral_customer_id, referral_household_id, referral_need_id, referral_opportunity_id
from store.models import Customer, Household, Need, Opportunity, Referral, ReferralHistory
from tests.helpers import (
    Api,
    Inbox,
    assert_error,
    assert_validation_error,
    count,
    history_length,
    statuses,
    territory,
    within,
    without_priority,
)
from workflows import (
    SA_ASSIGNEE_ID,
    SA_CUSTOMER_ID,
    SA_EXPRESSED_INTEREST,
    SA_OPPORTUNITY_STATUS,
    SA_OWNER_ID,
    SA_PRODUCT,
    SA_REFERRAL_STATUS,
    SA_STAGE,
)

#: The session's acceptance SLA (the settings' default): a (re)assignment's deadline.
ACCEPT_SLA = timedelta(hours=1)
#: The subject of the e-mail a recipient gets when a referral is routed or reassigned to them.
NEW_REFERRAL = "New referral: mortgage worth 500,000.00 for"
NEED = {"kind": "buy_home", "description": "Buy her first home"}


# ---------------------------------------------------------------- what a refused command must not change


class Trace:
    """Everything a referral command could leave behind: the referral as the API shows it,
    its history rows in the store, and its workflow's history."""

    def __init__(self, api: Api, client: Client, db: Engine, referral: dict) -> None:
        self.api, self.client, self.db = api, client, db
        self.referral_id, self.workflow_id = referral["id"], referral["workflow_id"]

    async def take(self) -> tuple[dict, int, int]:
        ref = await self.api.referral(self.referral_id)
        rows = count(self.db, ReferralHistory, ReferralHistory.referral_id == self.referral_id)
        events = await history_length(self.client, self.workflow_id)
        return without_priority(ref), rows, events

    async def refused(self, command: str, body: dict, status: int, code: str, *, idem: str | None = None) -> dict:
        """POST a command that must be refused with `status` `code`; assert nothing changed."""
        before = await self.take()
        r = await self.api.post(f"/v1/referrals/{self.referral_id}/{command}", body, idem=idem)
        err = assert_error(r, status, code)
        assert await self.take() == before, f"the refused {command} left a trace"
        return err


async def search_attributes(client: Client, workflow_id: str) -> dict[str, str | None]:
    """A referral's search attributes as its workflow set them (describe: no visibility lag)."""
    sa = (await within(client.get_workflow_handle(workflow_id).describe(), "describe")).typed_search_attributes
    return {
        "ReferralStatus": sa.get(SA_REFERRAL_STATUS),
        "AssigneeId": sa.get(SA_ASSIGNEE_ID),
        "ExpressedInterest": sa.get(SA_EXPRESSED_INTEREST),
    }


async def opportunity_attributes(client: Client, workflow_id: str) -> dict[str, str | None]:
    """An opportunity's search attributes as its workflow set them."""
    sa = (await within(client.get_workflow_handle(workflow_id).describe(), "describe")).typed_search_attributes
    return {
        "Product": sa.get(SA_PRODUCT),
        "Stage": sa.get(SA_STAGE),
        "OwnerId": sa.get(SA_OWNER_ID),
        "CustomerId": sa.get(SA_CUSTOMER_ID),
        "OpportunityStatus": sa.get(SA_OPPORTUNITY_STATUS),
    }


def new_key() -> str:
    return f"cmd-{uuid.uuid4().hex}"


async def open_ids(api: Api, employee: dict) -> list[str]:
    return [r["id"] for r in (await api.get(f"/v1/employees/{employee['id']}/referrals")).json()["items"]]


# ---------------------------------------------------------------- reassign


async def test_the_assignee_may_hand_a_referral_on(api: Api, client: Client, db: Engine, smtp_inbox: Inbox) -> None:
    state = territory()
    people = await api.staff(state)
    bob, ann = people["bob"], await api.broker(state)
    ref = await api.refer(people["ryan"], state)
    assert ref["assignee_id"] == bob["id"]

    # "A manager (or the assignee handing it on) may reassign" (domain/referral.py).
    handed = (
        await api.post(
            f"/v1/referrals/{ref['id']}/reassign",
            {"actor_id": bob["id"], "to_employee_id": ann["id"], "reason": "Ann speaks Portuguese"},
            expect=200,
        )
    ).json()
    assert (handed["status"], handed["assignee_id"]) == ("assigned", ann["id"])
    assert statuses(handed) == ["created", "assigned", "assigned"]
    last = handed["history"][-1]
    assert (last["actor"], last["note"], last["assignee_id"]) == (bob["id"], "Ann speaks Portuguese", ann["id"])
    assert len(await smtp_inbox.settled_about(api, ann["email"], NEW_REFERRAL, "Kiara Jones")) == 1
    assert await open_ids(api, ann) == [ref["id"]]
    assert await open_ids(api, bob) == []
    assert await search_attributes(client, ref["workflow_id"]) == {
        "ReferralStatus": "assigned",
        "AssigneeId": ann["id"],
        "ExpressedInterest": "mortgage",
    }

    # Handed on, it is no longer Bob's to act on.
    err = await Trace(api, client, db, ref).refused("accept", {"actor_id": bob["id"]}, 409, "invalid_transition")
    assert err["details"] == {"actor_id": bob["id"], "assignee_id": ann["id"]}


async def test_reassigning_to_the_current_assignee_is_refused_and_leaves_no_trace(
    api: Api, client: Client, db: Engine, smtp_inbox: Inbox
) -> None:
    state = territory()
    people = await api.staff(state)
    bob, kevin = people["bob"], people["kevin"]
    ref = await api.refer(people["ryan"], state)
    trace = Trace(api, client, db, ref)

    for actor in (kevin, bob):  # the manager, and Bob "handing it on" to himself
        err = await trace.refused(
            "reassign", {"actor_id": actor["id"], "to_employee_id": bob["id"]}, 409, "invalid_transition"
        )
        assert err["message"] == f"the referral is already assigned to {bob['id']}"
    assert (
        len(await smtp_inbox.settled_about(api, bob["email"], NEW_REFERRAL, "Kiara Jones")) == 1
    )  # the routing's, no other


async def test_reassigning_an_accepted_referral_starts_over_with_the_new_assignee(
    api: Api, client: Client, db: Engine
) -> None:
    state = territory()
    people = await api.staff(state)
    bob, kevin, ann = people["bob"], people["kevin"], await api.broker(state)
    ref = await api.refer(people["ryan"], state)
    accepted = (await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]}, expect=200)).json()
    assert accepted["status"] == "accepted"

    before = datetime.now(UTC)
    moved = (
        await api.post(
            f"/v1/referrals/{ref['id']}/reassign",
            {"actor_id": kevin["id"], "to_employee_id": ann["id"], "reason": "Bob is on leave"},
            expect=200,
        )
    ).json()
    after = datetime.now(UTC)
    # Back to `assigned`, now Ann's, who must accept it within a new acceptance SLA (not
    # the follow-up SLA Bob's acceptance started).
    assert (moved["status"], moved["assignee_id"]) == ("assigned", ann["id"])
    assert statuses(moved) == ["created", "assigned", "accepted", "assigned"]
    last = moved["history"][-1]
    assert (last["actor"], last["note"], last["assignee_id"]) == (kevin["id"], "Bob is on leave", ann["id"])
    deadline = datetime.fromisoformat(moved["sla_deadline"])
    slack = timedelta(seconds=1)  # the workflow's clock reads the server's time, not ours
    assert before + ACCEPT_SLA - slack <= deadline <= after + ACCEPT_SLA + slack, (before, deadline, after)
    assert await open_ids(api, bob) == []
    assert await open_ids(api, ann) == [ref["id"]]

    # Bob can no longer act on it; Ann accepts it.
    trace = Trace(api, client, db, ref)
    err = await trace.refused("close", {"actor_id": bob["id"], "reason": "done"}, 409, "invalid_transition")
    assert err["details"] == {"actor_id": bob["id"], "assignee_id": ann["id"]}
    again = (await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": ann["id"]}, expect=200)).json()
    assert (again["status"], again["assignee_id"], again["history"][-1]["actor"]) == (
        "accepted",
        ann["id"],
        ann["id"],
    )
    assert statuses(again) == ["created", "assigned", "accepted", "assigned", "accepted"]


async def test_reassigning_to_an_unknown_employee_is_a_422_naming_the_field(
    api: Api, client: Client, db: Engine
) -> None:
    state = territory()
    people = await api.staff(state)
    ref = await api.refer(people["ryan"], state)
    trace = Trace(api, client, db, ref)
    err = await trace.refused(
        "reassign",
        {"actor_id": people["kevin"]["id"], "to_employee_id": "emp_nobody"},
        422,
        "validation_error",
    )
    assert err["details"] == {"field": "to_employee_id"}


# ---------------------------------------------------------------- the wrong person


async def test_reject_close_and_reassign_by_the_wrong_person_are_refused(api: Api, client: Client, db: Engine) -> None:
    state = territory()
    people = await api.staff(state)
    bob, ryan, ann = people["bob"], people["ryan"], await api.broker(state)
    ref = await api.refer(ryan, state)
    trace = Trace(api, client, db, ref)
    refusal = {"assignee_id": bob["id"]}

    # Ryan referred it and Ann could have had it, but neither is its assignee or a manager.
    for actor in (ryan, ann):
        err = await trace.refused("reject", {"actor_id": actor["id"], "reason": "not mine"}, 409, "invalid_transition")
        assert err["details"] == {"actor_id": actor["id"], **refusal}
        err = await trace.refused("close", {"actor_id": actor["id"], "reason": "not mine"}, 409, "invalid_transition")
        assert err["details"] == {"actor_id": actor["id"], **refusal}
    err = await trace.refused(
        "reassign", {"actor_id": ann["id"], "to_employee_id": ann["id"]}, 409, "invalid_transition"
    )
    assert err["details"] == {"actor_id": ann["id"], **refusal}

    # Accepted, it is still Bob's alone (or a manager's) to close.
    await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]}, expect=200)
    err = await trace.refused("close", {"actor_id": ann["id"], "reason": "not mine"}, 409, "invalid_transition")
    assert err["details"] == {"actor_id": ann["id"], **refusal}
    assert (await api.referral(ref["id"]))["status"] == "accepted"


# ---------------------------------------------------------------- an existing customer


async def test_a_referral_of_an_existing_customer_is_routed_by_her_place_and_converts_without_new_records(
    api: Api, db: Engine, smtp_inbox: Inbox
) -> None:
    # Two states with a Portland each: Ryan and Bob work Portland in one, Bea in the other,
    # where Maya lives. The referral names no place: hers decides.
    here, there = territory(), territory()
    people = await api.staff(here, city="Portland")
    ryan, bob = people["ryan"], people["bob"]
    bea = await api.employee(
        name="Bea", email=f"bea.{there}@bank.example", products=["mortgage"], states=[there], cities=["Portland"]
    )
    maya = (
        await api.post(
            "/v1/customers",
            {"name": "Maya Lin", "email": "maya@example.com", "city": "Portland", "state": there},
            expect=201,
        )
    ).json()

    ref = await api.refer(ryan, here, customer_id=maya["id"])
    assert (ref["status"], ref["assignee_id"]) == ("assigned", bea["id"])
    assert (ref["customer_id"], ref["prospect"]) == (maya["id"], None)
    assert len(await smtp_inbox.settled_about(api, bea["email"], NEW_REFERRAL, "Maya Lin")) == 1
    assert await open_ids(api, bob) == []

    await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bea["id"]}, expect=200)
    customers, households = count(db, Customer), count(db, Household)
    converted = (
        await api.post(f"/v1/referrals/{ref['id']}/convert", {"actor_id": bea["id"], "need": NEED}, expect=200)
    ).json()
    assert (converted["status"], converted["customer_id"], converted["opportunity_id"]) == (
        "converted",
        maya["id"],
        referral_opportunity_id(ref["id"]),
    )
    # No new customer, no new household: not in total, and not the ones a prospect would get.
    assert (count(db, Customer), count(db, Household)) == (customers, households)
    assert count(db, Customer, Customer.id == referral_customer_id(ref["id"])) == 0
    assert count(db, Household, Household.id == referral_household_id(ref["id"])) == 0
    assert (await api.get(f"/v1/customers/{maya['id']}")).json() == maya
    # The need is hers, and so is the opportunity.
    assert count(db, Need, Need.customer_id == maya["id"]) == 1
    assert count(db, Need, Need.id == referral_need_id(ref["id"]), Need.customer_id == maya["id"]) == 1
    opp = (await api.get(f"/v1/opportunities/{converted['opportunity_id']}")).json()
    assert (opp["customer_id"], opp["need_id"], opp["owner_id"], opp["referral_id"], opp["stage"]) == (
        maya["id"],
        referral_need_id(ref["id"]),
        bea["id"],
        ref["id"],
        "interested",
    )
    assert count(db, Opportunity, Opportunity.customer_id == maya["id"]) == 1


# ---------------------------------------------------------------- exactly one of customer_id and prospect


async def test_a_referral_needs_exactly_one_of_customer_id_and_prospect(api: Api, db: Engine) -> None:
    state = territory()
    people = await api.staff(state)
    customer, _ = await api.customer_with_need(people["bob"]["id"])
    prospect = {"name": "Kiara Jones", "city": "San Francisco", "state": state}
    base = {"referrer": {"type": "employee", "id": people["ryan"]["id"]}, "expressed_interest": "mortgage"}
    referrals = count(db, Referral)

    for body in ({**base, "customer_id": customer["id"], "prospect": prospect}, base):
        r = await api.post("/v1/referrals", body)
        err = assert_validation_error(r, "customer_id")
        assert err["details"] == {"field": "customer_id"}
    assert count(db, Referral) == referrals
    assert await open_ids(api, people["bob"]) == []


# ---------------------------------------------------------------- Idempotency-Key


async def test_accept_and_close_with_an_idempotency_key_happen_once_and_closing_shows_in_search(
    api: Api, client: Client, db: Engine
) -> None:
    state = territory()
    people = await api.staff(state)
    bob, kevin = people["bob"], people["kevin"]
    ref = await api.refer(people["ryan"], state)
    other = await api.refer(people["ryan"], state, name="Other Prospect")
    trace = Trace(api, client, db, ref)
    path = f"/v1/referrals/{ref['id']}"

    accept_key = new_key()
    first = await api.post(f"{path}/accept", {"actor_id": bob["id"]}, idem=accept_key)
    assert first.status_code == 200 and first.json()["status"] == "accepted"
    before = await trace.take()
    again = await api.post(f"{path}/accept", {"actor_id": bob["id"]}, idem=accept_key)
    assert (again.status_code, again.json()) == (200, first.json())
    assert await trace.take() == before
    assert statuses(first.json()) == ["created", "assigned", "accepted"]
    # The same key with another body, or for another referral: 409 conflict, nothing done.
    err = await trace.refused("accept", {"actor_id": kevin["id"]}, 409, "conflict", idem=accept_key)
    assert err["details"] == {"idempotency_key": accept_key}
    r = await api.post(f"/v1/referrals/{other['id']}/accept", {"actor_id": bob["id"]}, idem=accept_key)
    assert assert_error(r, 409, "conflict")["details"] == {"idempotency_key": accept_key}
    assert (await api.referral(other["id"]))["status"] == "assigned"

    close_key = new_key()
    closing = {"actor_id": bob["id"], "reason": "bought elsewhere"}
    first = await api.post(f"{path}/close", closing, idem=close_key)
    assert first.status_code == 200 and first.json()["status"] == "closed"
    before = await trace.take()
    again = await api.post(f"{path}/close", closing, idem=close_key)
    assert (again.status_code, again.json()) == (200, first.json())
    assert await trace.take() == before
    assert statuses(again.json()) == ["created", "assigned", "accepted", "closed"]
    err = await trace.refused("close", {**closing, "reason": "changed her mind"}, 409, "conflict", idem=close_key)
    assert err["details"] == {"idempotency_key": close_key}
    assert (await api.referral(ref["id"]))["close_reason"] == "bought elsewhere"
    assert await search_attributes(client, ref["workflow_id"]) == {
        "ReferralStatus": "closed",
        "AssigneeId": bob["id"],
        "ExpressedInterest": "mortgage",
    }

    # A repeat answers what the first request answered, even after the referral moved on.
    replayed = await api.post(f"{path}/accept", {"actor_id": bob["id"]}, idem=accept_key)
    assert (replayed.status_code, replayed.json()["status"], replayed.json()["history"]) == (
        200,
        "accepted",
        before[0]["history"][:3],
    )


async def test_reject_with_an_idempotency_key_reroutes_once(
    api: Api, client: Client, db: Engine, smtp_inbox: Inbox
) -> None:
    state = territory()
    people = await api.staff(state)
    bob, ann = people["bob"], await api.broker(state)
    ref = await api.refer(people["ryan"], state)
    trace = Trace(api, client, db, ref)
    key = new_key()
    rejection = {"actor_id": bob["id"], "reason": "too busy this week"}
    reject = lambda body: api.post(f"/v1/referrals/{ref['id']}/reject", body, idem=key)  # noqa: E731

    # A client that retries before the first answer arrived, then once more afterwards.
    first, racing = await asyncio.gather(reject(rejection), reject(rejection))
    assert (first.status_code, racing.status_code) == (200, 200), (first.text, racing.text)
    assert racing.json() == first.json()
    assert (first.json()["status"], first.json()["assignee_id"]) == ("assigned", ann["id"])
    before = await trace.take()
    again = await reject(rejection)
    assert (again.status_code, again.json()) == (200, first.json())
    assert await trace.take() == before
    assert statuses(again.json()) == ["created", "assigned", "rejected", "assigned"]
    assert before[1] == 4  # history rows in the store
    assert len(await smtp_inbox.settled_about(api, ann["email"], NEW_REFERRAL, "Kiara Jones")) == 1
    assert (
        len(await smtp_inbox.settled_about(api, bob["email"], NEW_REFERRAL, "Kiara Jones")) == 1
    )  # the first routing's

    err = await trace.refused("reject", {**rejection, "reason": "on leave"}, 409, "conflict", idem=key)
    assert err["details"] == {"idempotency_key": key}


async def test_reassign_with_an_idempotency_key_happens_once(
    api: Api, client: Client, db: Engine, smtp_inbox: Inbox
) -> None:
    state = territory()
    people = await api.staff(state)
    kevin, ann = people["kevin"], await api.broker(state)
    ref = await api.refer(people["ryan"], state)
    trace = Trace(api, client, db, ref)
    key = new_key()
    move = {"actor_id": kevin["id"], "to_employee_id": ann["id"], "reason": "Ann has room"}

    first = await api.post(f"/v1/referrals/{ref['id']}/reassign", move, idem=key)
    assert first.status_code == 200 and first.json()["assignee_id"] == ann["id"]
    before = await trace.take()
    again = await api.post(f"/v1/referrals/{ref['id']}/reassign", move, idem=key)
    assert (again.status_code, again.json()) == (200, first.json())
    assert await trace.take() == before
    assert statuses(again.json()) == ["created", "assigned", "assigned"]
    assert len(await smtp_inbox.settled_about(api, ann["email"], NEW_REFERRAL, "Kiara Jones")) == 1

    err = await trace.refused("reassign", {**move, "reason": "another reason"}, 409, "conflict", idem=key)
    assert err["details"] == {"idempotency_key": key}


async def test_convert_with_an_idempotency_key_happens_once(api: Api, client: Client, db: Engine) -> None:
    state = territory()
    people = await api.staff(state)
    bob = people["bob"]
    ref = await api.refer(people["ryan"], state)
    await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]}, expect=200)
    customers, households, opportunities = count(db, Customer), count(db, Household), count(db, Opportunity)
    key = new_key()
    conversion = {"actor_id": bob["id"], "need": NEED}

    first = await api.post(f"/v1/referrals/{ref['id']}/convert", conversion, idem=key)
    assert first.status_code == 200
    assert (first.json()["status"], first.json()["opportunity_id"], first.json()["customer_id"]) == (
        "converted",
        referral_opportunity_id(ref["id"]),
        referral_customer_id(ref["id"]),
    )
    again = await api.post(f"/v1/referrals/{ref['id']}/convert", conversion, idem=key)
    assert (again.status_code, again.json()) == (200, first.json())
    assert statuses(again.json()) == ["created", "assigned", "accepted", "converted"]
    # One prospect became one customer in one household, with one opportunity.
    assert (count(db, Customer), count(db, Household), count(db, Opportunity)) == (
        customers + 1,
        households + 1,
        opportunities + 1,
    )
    assert count(db, Opportunity, Opportunity.referral_id == ref["id"]) == 1
    assert count(db, ReferralHistory, ReferralHistory.referral_id == ref["id"]) == 4

    r = await api.post(
        f"/v1/referrals/{ref['id']}/convert",
        {**conversion, "need": {**NEED, "description": "Something else"}},
        idem=key,
    )
    assert assert_error(r, 409, "conflict")["details"] == {"idempotency_key": key}
    assert count(db, Opportunity) == opportunities + 1


# ---------------------------------------------------------------- search attributes


async def test_search_attributes_follow_rerouting_conversion_and_loss(api: Api, client: Client) -> None:
    state = territory()
    people = await api.staff(state)
    bob, ann = people["bob"], await api.broker(state)
    ref = await api.refer(people["ryan"], state)
    wf = ref["workflow_id"]
    assert await search_attributes(client, wf) == {
        "ReferralStatus": "assigned",
        "AssigneeId": bob["id"],
        "ExpressedInterest": "mortgage",
    }

    await api.post(f"/v1/referrals/{ref['id']}/reject", {"actor_id": bob["id"], "reason": "busy"}, expect=200)
    assert await search_attributes(client, wf) == {
        "ReferralStatus": "assigned",
        "AssigneeId": ann["id"],
        "ExpressedInterest": "mortgage",
    }
    await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": ann["id"]}, expect=200)
    assert (await search_attributes(client, wf))["ReferralStatus"] == "accepted"
    converted = (
        await api.post(f"/v1/referrals/{ref['id']}/convert", {"actor_id": ann["id"], "need": NEED}, expect=200)
    ).json()
    assert await search_attributes(client, wf) == {
        "ReferralStatus": "converted",
        "AssigneeId": ann["id"],
        "ExpressedInterest": "mortgage",
    }

    # The opportunity it became, closed lost.
    opp = (await api.get(f"/v1/opportunities/{converted['opportunity_id']}")).json()
    expected = {
        "Product": "mortgage",
        "Stage": "interested",
        "OwnerId": ann["id"],
        "CustomerId": converted["customer_id"],
        "OpportunityStatus": "open",
    }
    assert await opportunity_attributes(client, opp["workflow_id"]) == expected
    lost = (
        await api.post(
            f"/v1/opportunities/{opp['id']}/close-lost", {"actor_id": ann["id"], "reason": "withdrawn"}, expect=200
        )
    ).json()
    assert (lost["status"], lost["stage"]) == ("lost", "closed_lost")
    assert await opportunity_attributes(client, opp["workflow_id"]) == {
        **expected,
        "Stage": "closed_lost",
        "OpportunityStatus": "lost",
    }
