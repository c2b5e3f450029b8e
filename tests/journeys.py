"""Whole journeys through the HTTP API, shared by the tests that need a finished workflow."""

from __future__ import annotations

from tests.conftest import Api


async def mortgage_to_closed_won(api: Api, *, decline_first: bool = False) -> dict:
    opp = await api.opportunity()
    owner = opp["owner_id"]
    await api.post(f"/v1/opportunities/{opp['id']}/advance",
                   {"actor_id": owner, "to_stage": "searching", "evidence": {"realtor": "Jane Realty"}}, expect=200)
    await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-9"})
    opp = (await api.event("mortgage.application_approved", opp["id"], {"approval_id": "APR-9"})).json()["opportunity"]
    if decline_first:
        assert (await api.sign(opp["signature"]["signing_url"], action="decline")).status_code == 200
        opp = (await api.post(f"/v1/opportunities/{opp['id']}/resend-signature", {"actor_id": owner},
                              expect=200)).json()
    assert (await api.sign(opp["signature"]["signing_url"])).status_code == 200
    return (await api.get(f"/v1/opportunities/{opp['id']}")).json()


async def checking_to_opened(api: Api) -> dict:
    matt = await api.employee(role="banker", lob="retail", name="Matt", products=["checking"])
    opp = await api.opportunity(product="checking", amount=None, owner=matt)
    await api.event("consent.sms_authorization", opp["id"],
                    {"phone": "+12125550100", "message_id": "SM-1", "text": "YES",
                     "received_at": "2026-11-25T09:00:00+00:00"})
    return (await api.event("account.opened", opp["id"], {"account_number": "CHK-1"})).json()["opportunity"]
