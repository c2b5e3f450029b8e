"""Rachel's checking account (SMS consent), and the e-signature paths: a link used twice,
a decline that keeps the opportunity where it is and tells the owner, and a resend."""

from __future__ import annotations

import httpx
from sqlalchemy import Engine, select

from store.models import Notification
from tests.helpers import Api, until

NO_LONGER_VALID = "<h1>This signing link is no longer valid</h1>"


def page_path(url: str) -> str:
    return httpx.URL(url).path


async def test_checking_account_journey_records_sms_consent(api: Api) -> None:
    matt = await api.employee(
        role="banker", lob="retail", name="Matt", email="matt@bank.example", products=["checking"]
    )
    opp = await api.opportunity(product="checking", amount=None, owner=matt)
    assert (opp["stage"], opp["probability"]) == ("interested", 10)

    sms = {
        "phone": "+12125550100",
        "message_id": "SM-77",
        "text": "YES open my account",
        "received_at": "2026-11-25T09:59:00+00:00",
    }
    r = await api.event("consent.sms_authorization", opp["id"], sms)
    assert r.json()["result"] == "applied"
    opp = r.json()["opportunity"]
    assert (opp["stage"], opp["probability"], opp["status"]) == ("authorised", 60, "open")

    r = await api.event("account.opened", opp["id"], {"account_number": "CHK-001"})
    opp = r.json()["opportunity"]
    assert (opp["stage"], opp["probability"], opp["status"]) == ("opened", 100, "won")
    assert [c["stage"] for c in opp["checkpoints"]] == ["interested", "authorised", "opened"]
    assert [c["trigger"] for c in opp["checkpoints"]] == ["manual", "event", "event"]

    journey = (await api.get(f"/v1/customers/{opp['customer_id']}/journey")).json()
    [consent] = journey["consents"]
    assert (consent["channel"], consent["product"], consent["opportunity_id"], consent["customer_id"]) == (
        "sms",
        "checking",
        opp["id"],
        opp["customer_id"],
    )
    assert {k: consent["evidence"][k] for k in ("phone", "message_id", "text")} == {
        "phone": "+12125550100",
        "message_id": "SM-77",
        "text": "YES open my account",
    }


async def _approved(api: Api) -> dict:
    opp = await api.opportunity()
    await api.post(
        f"/v1/opportunities/{opp['id']}/advance",
        {"actor_id": opp["owner_id"], "to_stage": "searching", "evidence": {"realtor": "R"}},
        expect=200,
    )
    await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-3"})
    return (await api.event("mortgage.application_approved", opp["id"], {"approval_id": "APR-3"})).json()["opportunity"]


async def test_signing_link_is_single_use(api: Api) -> None:
    opp = await _approved(api)
    url = await api.signing_link(opp)
    assert (await api.sign(url)).status_code == 200
    again = await api.sign(url, "Someone Else")
    # An HTML page for the customer: the page is where the fact lives.
    already = "These documents have been signed already. Ask your adviser if you need a new link."
    assert again.status_code == 410 and NO_LONGER_VALID in again.text and already in again.text
    shown = await api.request("GET", page_path(url))
    assert shown.status_code == 410 and NO_LONGER_VALID in shown.text and already in shown.text
    journey = (await api.get(f"/v1/customers/{opp['customer_id']}/journey")).json()
    assert [c["evidence"]["signer_name"] for c in journey["consents"]] == ["Rachel Adams"]
    won = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert [c["stage"] for c in won["checkpoints"]] == ["interested", "searching", "applied", "approved", "closed_won"]
    assert won["checkpoints"][-1]["evidence"]["signer_name"] == "Rachel Adams"


async def test_unknown_or_incomplete_signature_changes_nothing(api: Api) -> None:
    opp = await _approved(api)
    unknown = await api.sign("http://testserver/sign/not-a-token")
    assert unknown.status_code == 404 and "<h1>Unknown signing link</h1>" in unknown.text
    r = await api.request(
        "POST", page_path(await api.signing_link(opp)), data={"full_name": "Rachel Adams"}
    )  # did not tick "I agree"
    assert r.status_code == 422
    assert "To sign, type your full name and tick the box to say you agree." in r.text
    after = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert after == opp  # still approved, the same envelope still out for signature


async def test_decline_keeps_approved_tells_owner_and_resend_works(api: Api, db: Engine) -> None:
    opp = await _approved(api)
    first = opp["signature"]
    first_link = await api.signing_link(opp)
    declined = await api.sign(first_link, action="decline")
    assert declined.status_code == 200
    opp = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert (opp["stage"], opp["status"], opp["signature"]["status"]) == ("approved", "open", "declined")

    async def told() -> list[str]:
        with db.connect() as conn:
            return list(
                conn.scalars(select(Notification.subject).where(Notification.to_employee_id == opp["owner_id"]))
            )

    subjects = await until(told, "the owner told of the decline")
    assert subjects == [f"Signature declined on opportunity {opp['id']}"]

    r = await api.post(f"/v1/opportunities/{opp['id']}/resend-signature", {"actor_id": opp["owner_id"]}, expect=200)
    second = r.json()["signature"]
    assert second["status"] == "sent" and second["envelope_id"] != first["envelope_id"]
    second_link = await api.signing_link(opp)
    assert second_link != first_link
    assert (await api.sign(first_link)).status_code == 410  # the old link stays dead
    assert (await api.sign(second_link)).status_code == 200
    won = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert won["status"] == "won"
    assert won["checkpoints"][-1]["evidence"]["envelope_id"] == second["envelope_id"]
