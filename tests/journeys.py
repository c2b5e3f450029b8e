"""Whole journeys through the HTTP API, each ending its workflow: the paths the replay
corpus (tests/histories/) keeps, and the tests that need a finished workflow.

Each returns the final resource (opportunity or referral) as the API shows it.
"""

from __future__ import annotations

from tests.helpers import Api, Inbox, territory, until

# ---------------------------------------------------------------- opportunities


async def mortgage_to_closed_won(api: Api, *, decline_first: bool = False) -> dict:
    """Rachel's mortgage (seed 000) to Closed Won; with `decline_first`, she declines the
    first envelope and signs the one the owner resends."""
    opp = await api.mortgage_to_approved()
    if decline_first:
        assert (await api.sign(await api.signing_link(opp), action="decline")).status_code == 200
        opp = (
            await api.post(f"/v1/opportunities/{opp['id']}/resend-signature", {"actor_id": opp["owner_id"]}, expect=200)
        ).json()
    assert (await api.sign(await api.signing_link(opp))).status_code == 200
    return (await api.get(f"/v1/opportunities/{opp['id']}")).json()


async def mortgage_closed_lost_by_owner(api: Api) -> dict:
    """A mortgage the owner closes as lost from Searching, with a reason."""
    opp = await api.opportunity()
    await api.advance(opp, "searching", {"realtor": "Jane Realty"})
    body = {"actor_id": opp["owner_id"], "reason": "bought with another bank"}
    return (await api.post(f"/v1/opportunities/{opp['id']}/close-lost", body, expect=200)).json()


async def mortgage_lost_by_event(api: Api) -> dict:
    """A mortgage the lender declines after the application: lost by a backend event."""
    opp = await api.opportunity()
    await api.advance(opp, "searching", {"realtor": "Jane Realty"})
    await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-7"})
    r = await api.event("mortgage.application_declined", opp["id"], {"reason": "income too low"})
    return r.json()["opportunity"]


async def proposal_to_closed_won(api: Api, product: str) -> dict:
    """An insurance policy or a wealth agreement: a proposal (which sends the product's
    documents to sign), then the customer's signature."""
    role, lob = {"insurance": ("insurance_agent", "insurance"), "wealth": ("advisor", "wealth")}[product]
    owner = await api.employee(role=role, lob=lob, name="Ines Agent", products=[product])
    opp = await api.opportunity(product=product, amount="10000.00", owner=owner)
    opp = await api.advance(opp, "proposal", {"proposal_id": f"PR-{product}"})
    assert (await api.sign(await api.signing_link(opp))).status_code == 200
    return (await api.get(f"/v1/opportunities/{opp['id']}")).json()


async def checking_to_opened(api: Api) -> dict:
    """Rachel's checking account (seed 000): SMS authorisation, then the account opened."""
    matt = await api.employee(role="banker", lob="retail", name="Matt", products=["checking"])
    opp = await api.opportunity(product="checking", amount=None, owner=matt)
    await api.event(
        "consent.sms_authorization",
        opp["id"],
        {"phone": "+12125550100", "message_id": "SM-1", "text": "YES", "received_at": "2026-11-25T09:00:00+00:00"},
    )
    return (await api.event("account.opened", opp["id"], {"account_number": "CHK-1"})).json()["opportunity"]


# ---------------------------------------------------------------- referrals


async def referral_converted(api: Api) -> dict:
    """Kiara's referral (seed 003): routed to Bob, accepted, converted."""
    state = territory()
    people = await api.staff(state)
    ref = await api.refer(people["ryan"], state)
    bob = people["bob"]
    await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]}, expect=200)
    return (
        await api.post(
            f"/v1/referrals/{ref['id']}/convert",
            {"actor_id": bob["id"], "need": {"kind": "buy_home", "description": "A home"}},
            expect=200,
        )
    ).json()


async def referral_rejected_reassigned_closed(api: Api) -> dict:
    state = territory()
    people = await api.staff(state)
    ref = await api.refer(people["ryan"], state)
    ref = (
        await api.post(
            f"/v1/referrals/{ref['id']}/reject", {"actor_id": people["bob"]["id"], "reason": "too busy"}, expect=200
        )
    ).json()
    ref = (
        await api.post(
            f"/v1/referrals/{ref['id']}/reassign",
            {"actor_id": people["kevin"]["id"], "to_employee_id": people["bob"]["id"]},
            expect=200,
        )
    ).json()
    return (
        await api.post(
            f"/v1/referrals/{ref['id']}/close",
            {"actor_id": people["kevin"]["id"], "reason": "customer withdrew"},
            expect=200,
        )
    ).json()


async def referral_lapsed_closed(fast_api: Api) -> dict:
    """The acceptance SLA lapses (a timer fires): Bob, the only broker, is passed over,
    the referral waits in the queue and the manager closes it. `fast_api` has an
    acceptance SLA of well under a second."""
    state = territory()
    people = await fast_api.staff(state)
    ref = await fast_api.refer(people["ryan"], state)

    async def queued() -> bool:
        return (await fast_api.referral(ref["id"]))["status"] == "unassigned"

    await until(queued, "the referral re-routed to the queue after the lapse")
    body = {"actor_id": people["kevin"]["id"], "reason": "nobody free to take it"}

    # The store says "unassigned" a moment before the workflow has taken the routing's
    # result; until it has, a command is refused ("routing right now; try again").
    async def closed() -> dict | None:
        r = await fast_api.post(f"/v1/referrals/{ref['id']}/close", body)
        assert r.status_code in (200, 409), r.text
        return r.json() if r.status_code == 200 else None

    return await until(closed, "the manager's close")


async def referral_escalated_closed(fast_api: Api, inbox: Inbox) -> dict:
    """The follow-up SLA runs out twice (timers fire): a reminder to Bob, an escalation to
    Kevin, then Bob closes it. `fast_api` has a follow-up SLA of well under a second."""
    state = territory()
    people = await fast_api.staff(state)
    ref = await fast_api.refer(people["ryan"], state)
    bob = people["bob"]
    await fast_api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]}, expect=200)

    async def escalated() -> list:
        return inbox.about(people["kevin"]["email"], "not followed up", ref["id"])

    await until(escalated, "the escalation to the manager")
    body = {"actor_id": bob["id"], "reason": "the customer chose to wait a year"}
    return (await fast_api.post(f"/v1/referrals/{ref['id']}/close", body, expect=200)).json()
