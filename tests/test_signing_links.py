"""Signing that only the customer can do (API.md v1.1, signing links): the link reaches
her by e-mail only; no API answer, workflow history or access-log line holds it; only its
token's SHA-256 is stored; it expires, and dies with a closed or replaced request (410);
the page tells browsers to keep and leak nothing; a customer with no e-mail address is
`undeliverable` and the owner is told."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select, update
from temporalio.client import Client

from api.routers.signing import RedactSigningLinks
from store.models import Notification, SignatureRequest
from tests.helpers import Api, assert_error, until, within


def _token(link: str) -> str:
    return link.rsplit("/", 1)[1]


def _path(link: str) -> str:
    return link.removeprefix("http://testserver")


async def test_the_link_is_in_her_e_mail_only(api: Api, db: Engine, client: Client, keys: dict[str, str]) -> None:
    opp = await api.mortgage_to_approved()
    link = await api.signing_link(opp)
    token = _token(link)

    # Not in any answer a CRM key can read, nor in the workflow's history.
    crm = keys["crm:write"]
    for path in (f"/v1/opportunities/{opp['id']}",):
        assert token not in (await api.get(path, key=crm)).text
    assert token not in (await api.get(f"/v1/customers/{opp['customer_id']}/journey")).text
    err = assert_error(await api.get("/v1/outbox", key=crm, expect=None), 403, "forbidden")
    assert err["details"] == {"required_scope": "admin"}
    history = await within(client.get_workflow_handle(opp["workflow_id"]).fetch_history(), "history")
    assert token not in history.to_json()

    # The store keeps its SHA-256, and the token only in the message to her.
    with db.connect() as conn:
        row = conn.execute(select(SignatureRequest).where(SignatureRequest.opportunity_id == opp["id"])).one()
        mails = conn.execute(select(Notification).where(Notification.body.contains(token))).all()
    assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert all(token not in str(value) for value in row)
    customer = (await api.get(f"/v1/customers/{opp['customer_id']}")).json()
    assert [(m.to_address, m.to_employee_id) for m in mails] == [(customer["email"], None)]
    assert (row.expires_at - row.created_at).total_seconds() == 7 * 24 * 3600


async def test_the_page_keeps_and_leaks_nothing(api: Api) -> None:
    opp = await api.mortgage_to_approved()
    page = await api.request("GET", _path(await api.signing_link(opp)))
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-frame-options"] == "DENY"
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    assert "<script" not in page.text
    # She sees her name and the document, not her contact details.
    assert "Rachel Adams" in page.text and "rachel" not in page.text.lower().replace("rachel adams", "")
    dead = await api.request("GET", "/sign/no-such-token")
    assert dead.status_code == 404 and dead.headers["cache-control"] == "no-store"


async def test_an_expired_link_is_410_and_the_owner_is_told(api: Api, db: Engine) -> None:
    opp = await api.mortgage_to_approved()
    link = await api.signing_link(opp)
    with db.begin() as conn:
        conn.execute(
            update(SignatureRequest)
            .where(SignatureRequest.opportunity_id == opp["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    page = await api.request("GET", _path(link))
    assert page.status_code == 410 and "This link has expired." in page.text and "<form" not in page.text
    assert (await api.sign(link)).status_code == 410

    now = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert (now["stage"], now["status"], now["signature"]["status"]) == ("approved", "open", "expired")

    async def told() -> list[str]:
        with db.connect() as conn:
            return list(
                conn.scalars(select(Notification.subject).where(Notification.to_employee_id == opp["owner_id"]))
            )

    assert await until(told, "the owner told of the expiry") == [f"Signature expired on opportunity {opp['id']}"]
    # The owner sends a new one; the new link works.
    await api.post(f"/v1/opportunities/{opp['id']}/resend-signature", {"actor_id": opp["owner_id"]}, expect=200)
    fresh = await api.signing_link(opp)
    assert fresh != link and (await api.sign(fresh)).status_code == 200


async def test_an_answer_the_workflow_has_not_caught_up_with_is_come_back_not_a_dead_link(api: Api, db: Engine) -> None:
    """The store can say a request is out before its workflow knows it (the sending
    activity commits first; after a worker dies, for seconds): she is asked to come back,
    not told the link is dead. Simulated by the reverse: a declined request set back to
    `sent` in the store, which the workflow refuses."""
    opp = await api.mortgage_to_approved()
    link = await api.signing_link(opp)
    assert (await api.request("POST", _path(link), data={"action": "decline"})).status_code == 200
    with db.begin() as conn:
        conn.execute(update(SignatureRequest).where(SignatureRequest.opportunity_id == opp["id"]).values(status="sent"))

    page = await api.sign(link)
    assert page.status_code == 503 and "Open this link again in a minute" in page.text, page.text
    assert page.headers["Retry-After"].isdigit()
    now = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert (now["stage"], now["status"]) == ("approved", "open")  # nothing signed

    # Once the store says what happened, the page says it.
    with db.begin() as conn:
        conn.execute(
            update(SignatureRequest).where(SignatureRequest.opportunity_id == opp["id"]).values(status="declined")
        )
    page = await api.sign(link)
    assert page.status_code == 410 and "You declined these documents." in page.text


async def test_a_customer_with_no_e_mail_is_undeliverable_and_the_owner_told(api: Api, db: Engine) -> None:
    owner = await api.employee(name="Dan Nomail")
    customer = (await api.post("/v1/customers", {"name": "Nora Nomail", "city": "Boston"}, expect=201)).json()
    need = (
        await api.post(
            f"/v1/customers/{customer['id']}/needs",
            {"kind": "buy_home", "description": "A flat", "recorded_by": owner["id"]},
            expect=201,
        )
    ).json()
    body = {"customer_id": customer["id"], "product": "mortgage", "owner_id": owner["id"], "need_id": need["id"]}
    opp = (await api.post("/v1/opportunities", {**body, "amount": "300000.00"}, expect=201)).json()
    await api.advance(opp, "searching", {"realtor": "Jane Realty"})
    await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-N"})
    opp = (await api.event("mortgage.application_approved", opp["id"], {"approval_id": "APR-N"})).json()["opportunity"]
    assert (opp["stage"], opp["signature"]["status"]) == ("approved", "undeliverable")

    with db.connect() as conn:
        told = list(conn.scalars(select(Notification.subject).where(Notification.to_employee_id == owner["id"])))
        to_her = conn.scalar(
            select(Notification.id).where(Notification.body.contains(opp["id"]), Notification.to_employee_id.is_(None))
        )
    assert told == [f"Signature request undeliverable on opportunity {opp['id']}"]
    assert to_her is None
    # Resending is allowed (once she has an address it goes out); without one it is undeliverable again.
    again = await api.post(f"/v1/opportunities/{opp['id']}/resend-signature", {"actor_id": owner["id"]}, expect=200)
    assert again.json()["signature"]["status"] == "undeliverable"
    assert again.json()["signature"]["envelope_id"] == f"undeliverable-{opp['id']}-2"


def test_the_access_log_never_shows_a_token() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("203.0.113.7:5000", "GET", "/sign/AbC-123_secret?x=1", "1.1", 200),
        None,
    )
    assert RedactSigningLinks().filter(record) is True
    assert record.getMessage() == '203.0.113.7:5000 - "GET /sign/…?x=1 HTTP/1.1" 200'
