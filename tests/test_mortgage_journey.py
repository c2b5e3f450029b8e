"""Rachel's mortgage (seed 000), end to end through the HTTP API."""

from __future__ import annotations

import hashlib

from tests.helpers import Api


async def test_mortgage_from_interested_to_closed_won(api: Api, keys: dict[str, str]) -> None:
    dan = await api.employee(name="Dan", email="dan@cumulus.example")
    opp = await api.opportunity(owner=dan)
    assert (opp["stage"], opp["probability"], opp["status"]) == ("interested", 10, "open")
    assert opp["process_version"] == 1 and opp["amount"] == "500000.00"
    assert [c["stage"] for c in opp["checkpoints"]] == ["interested"]

    opp = (
        await api.post(
            f"/v1/opportunities/{opp['id']}/advance",
            {"actor_id": dan["id"], "to_stage": "searching", "evidence": {"realtor": "Jane Realty"}},
            expect=200,
        )
    ).json()
    assert (opp["stage"], opp["probability"]) == ("searching", 20)
    assert opp["checkpoints"][-1]["evidence"] == {"realtor": "Jane Realty"}
    assert opp["checkpoints"][-1]["trigger"] == "manual" and opp["checkpoints"][-1]["actor"] == dan["id"]

    r = await api.event(
        "mortgage.application_submitted", opp["id"], {"application_id": "APP-9"}, event_id=f"sub-{opp['id']}"
    )
    assert r.json()["result"] == "applied"
    opp = r.json()["opportunity"]
    assert (opp["stage"], opp["probability"]) == ("applied", 50)
    assert opp["checkpoints"][-1]["trigger"] == "event"
    assert opp["checkpoints"][-1]["evidence"]["application_id"] == "APP-9"

    r = await api.event("mortgage.application_approved", opp["id"], {"approval_id": "APR-1"})
    opp = r.json()["opportunity"]
    assert (opp["stage"], opp["probability"]) == ("approved", 80)
    sig = opp["signature"]
    assert sig["provider"] == "local" and sig["status"] == "sent" and "signing_url" not in sig
    link = await api.signing_link(opp)  # it reached Rachel by e-mail, and only her
    assert link.startswith("http://testserver/sign/")

    page = await api.request("GET", httpx_path(link))
    assert page.status_code == 200 and "Mortgage closing documents" in page.text and "500,000.00" in page.text

    signed = await api.sign(link, "Rachel Adams")
    assert signed.status_code == 200, signed.text
    assert "<h1>Signed — thank you</h1>" in signed.text and "Signed by Rachel Adams at " in signed.text

    opp = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert (opp["stage"], opp["probability"], opp["status"]) == ("closed_won", 100, "won")
    assert [c["stage"] for c in opp["checkpoints"]] == ["interested", "searching", "applied", "approved", "closed_won"]

    journey = (await api.get(f"/v1/customers/{opp['customer_id']}/journey")).json()
    assert [n["kind"] for n in journey["needs"]] == ["buy_home"]
    [consent] = journey["consents"]
    assert (consent["channel"], consent["product"], consent["opportunity_id"], consent["customer_id"]) == (
        "esignature",
        "mortgage",
        opp["id"],
        opp["customer_id"],
    )
    assert (consent["evidence"]["provider"], consent["evidence"]["envelope_id"]) == ("local", sig["envelope_id"])
    assert consent["evidence"]["signer_name"] == "Rachel Adams"
    assert consent["evidence"]["client_address"] == "203.0.113.7"
    # The consent's hash is the hash of exactly the document the customer was shown.
    assert consent["evidence"]["document_sha256"] == sig["document_sha256"]
    assert sig["document_sha256"] == hashlib.sha256(_document_of(page.text).encode()).hexdigest()


def httpx_path(url: str) -> str:
    import httpx

    return httpx.URL(url).path


def _document_of(page: str) -> str:
    start = page.index('<article class="document">')
    end = page.index("</article>", start) + len("</article>")
    return page[start:end]
