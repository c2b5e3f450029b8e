"""Whole journeys through the HTTP API, shared by the tests that need a finished workflow."""

from __future__ import annotations

from tests.helpers import Api, territory


async def mortgage_to_closed_won(api: Api, *, decline_first: bool = False) -> dict:
    opp = await api.opportunity()
    owner = opp["owner_id"]
    await api.post(
        f"/v1/opportunities/{opp['id']}/advance",
        {"actor_id": owner, "to_stage": "searching", "evidence": {"realtor": "Jane Realty"}},
        expect=200,
    )
    await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-9"})
    opp = (await api.event("mortgage.application_approved", opp["id"], {"approval_id": "APR-9"})).json()["opportunity"]
    if decline_first:
        assert (await api.sign(opp["signature"]["signing_url"], action="decline")).status_code == 200
        opp = (
            await api.post(f"/v1/opportunities/{opp['id']}/resend-signature", {"actor_id": owner}, expect=200)
        ).json()
    assert (await api.sign(opp["signature"]["signing_url"])).status_code == 200
    return (await api.get(f"/v1/opportunities/{opp['id']}")).json()


async def checking_to_opened(api: Api) -> dict:
    matt = await api.employee(role="banker", lob="retail", name="Matt", products=["checking"])
    opp = await api.opportunity(product="checking", amount=None, owner=matt)
    await api.event(
        "consent.sms_authorization",
        opp["id"],
        {"phone": "+12125550100", "message_id": "SM-1", "text": "YES", "received_at": "2026-11-25T09:00:00+00:00"},
    )
    return (await api.event("account.opened", opp["id"], {"account_number": "CHK-1"})).json()["opportunity"]


async def referral_converted(api: Api) -> dict:
    """Kiara's referral: routed to Bob, accepted, converted."""

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
