"""Insurance and wealth through signature, with their own documents; what happens to an
outstanding signing link when the opportunity is closed lost; a manager's close-lost and
resend on someone else's opportunity."""

from __future__ import annotations

import hashlib
import html

import pytest
from sqlalchemy import Engine, select

from store.models import SignatureRequest
from tests.helpers import Api

#: What each product's own template says, and the subject its process gives the envelope.
DOCUMENTS = {
    "insurance": ("Insurance policy", "<h2>Cover</h2>", "Your insurance policy documents"),
    "wealth": ("Wealth management agreement", None, "Your wealth management agreement"),
}


def _path(url: str) -> str:
    return url.removeprefix("http://testserver")


@pytest.mark.parametrize("product", ["insurance", "wealth"])
async def test_proposal_sends_the_products_own_document_and_the_signature_wins(api: Api, product: str) -> None:
    role, lob = {"insurance": ("insurance_agent", "insurance"), "wealth": ("advisor", "wealth")}[product]
    owner = await api.employee(role=role, lob=lob, name="Ines Agent", products=[product])
    opp = await api.opportunity(product=product, amount="25000.00", owner=owner)
    opp = await api.advance(opp, "proposal", {"proposal_id": "PR-1"})
    assert (opp["stage"], opp["probability"], opp["signature"]["status"]) == ("proposal", 50, "sent")

    page = await api.request("GET", _path(await api.signing_link(opp)))
    assert page.status_code == 200
    title, marker, subject = DOCUMENTS[product]
    text = html.unescape(page.text)
    assert subject in text and f"<h1>{title}</h1>" in text
    if marker:
        assert marker in text
    # The document is about her, her recorded need, the amount and her adviser.
    for part in ("Rachel Adams", "Buy a home in New York", "25,000.00", "Ines Agent", opp["id"]):
        assert part in text, part

    assert (await api.sign(await api.signing_link(opp))).status_code == 200
    won = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert (won["stage"], won["status"], won["probability"]) == ("closed_won", "won", 100)
    assert [c["stage"] for c in won["checkpoints"]] == ["interested", "proposal", "closed_won"]
    [consent] = (await api.get(f"/v1/customers/{opp['customer_id']}/journey")).json()["consents"]
    assert (consent["product"], consent["channel"]) == (product, "esignature")
    assert consent["evidence"]["signer_name"] == "Rachel Adams"
    assert consent["evidence"]["document_sha256"] == won["signature"]["document_sha256"]


async def test_the_signed_documents_hash_is_of_exactly_the_document_shown(api: Api, db: Engine) -> None:
    role_owner = await api.employee(role="insurance_agent", lob="insurance", name="Ines Agent", products=["insurance"])
    opp = await api.opportunity(product="insurance", amount="10000.00", owner=role_owner)
    opp = await api.advance(opp, "proposal", {"proposal_id": "PR-hash"})
    page = await api.request("GET", _path(await api.signing_link(opp)))
    with db.connect() as conn:
        html_stored = conn.scalar(
            select(SignatureRequest.document_html).where(SignatureRequest.opportunity_id == opp["id"])
        )
    assert html_stored in page.text  # the page shows exactly the stored document
    assert (await api.sign(await api.signing_link(opp))).status_code == 200
    won = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert hashlib.sha256(html_stored.encode()).hexdigest() == won["signature"]["document_sha256"]


async def test_closing_lost_kills_the_outstanding_signing_link(api: Api) -> None:
    opp = await api.mortgage_to_approved()
    url = await api.signing_link(opp)
    body = {"actor_id": opp["owner_id"], "reason": "the customer bought elsewhere"}
    lost = (await api.post(f"/v1/opportunities/{opp['id']}/close-lost", body, expect=200)).json()
    assert (lost["stage"], lost["status"], lost["lost_reason"]) == ("closed_lost", "lost", body["reason"])
    assert lost["signature"]["status"] == "voided"

    page = await api.request("GET", _path(url))
    assert page.status_code == 410 and "no longer valid" in page.text and "<form" not in page.text
    assert (await api.sign(url)).status_code == 410
    after = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert [c["stage"] for c in after["checkpoints"]] == [
        "interested",
        "searching",
        "applied",
        "approved",
        "closed_lost",
    ]
    assert (await api.get(f"/v1/customers/{opp['customer_id']}/journey")).json()["consents"] == []


async def test_a_manager_may_close_lost_and_resend_for_the_owner_a_colleague_may_not(api: Api) -> None:
    kim = await api.employee(role="manager", name="Kim", email="kim@bank.example", products=[])
    eve = await api.employee(name="Eve", email="eve@bank.example")
    opp = await api.mortgage_to_approved()
    first = opp["signature"]
    first_link = await api.signing_link(opp)
    assert (await api.sign(first_link, action="decline")).status_code == 200

    # A colleague who neither owns it nor manages may not resend or close it.
    r = await api.post(f"/v1/opportunities/{opp['id']}/resend-signature", {"actor_id": eve["id"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_transition"
    assert r.json()["error"]["details"] == {"actor_id": eve["id"]}
    r = await api.post(f"/v1/opportunities/{opp['id']}/close-lost", {"actor_id": eve["id"], "reason": "x"})
    assert r.status_code == 409 and r.json()["error"]["details"] == {"actor_id": eve["id"]}

    resent = (
        await api.post(f"/v1/opportunities/{opp['id']}/resend-signature", {"actor_id": kim["id"]}, expect=200)
    ).json()
    second = resent["signature"]
    assert second["status"] == "sent" and second["envelope_id"] != first["envelope_id"]
    second_link = await api.signing_link(opp)
    assert (await api.request("GET", _path(first_link))).status_code == 410  # the declined one stays dead

    body = {"actor_id": kim["id"], "reason": "the customer asked us to stop"}
    lost = (await api.post(f"/v1/opportunities/{opp['id']}/close-lost", body, expect=200)).json()
    assert (lost["status"], lost["checkpoints"][-1]["actor"]) == ("lost", kim["id"])
    assert (await api.request("GET", _path(second_link))).status_code == 410
