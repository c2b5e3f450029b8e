"""Rachel's story (seed 000): her checking account (a chatbot lead, her need, SMS
authorisation, account opened), then her mortgage from interested to closed_won, signed
on the local signing page like in a browser, and the customer journey a manager reviews.
One story per module, so each reads top to bottom."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import quote

from cli import CliError, Json
from cli.render import checkpoint_table, consent_table, stage_text

#: A signing link in an e-mail's body.
LINK = re.compile(r"https?://\S+/sign/[A-Za-z0-9_\-]+")

if TYPE_CHECKING:  # the stories are played by Demo, which imports them
    from cli.demo import Demo


def play(demo: Demo) -> Json:
    """Matt opens her checking account, Dan takes her mortgage to closed_won; then her
    journey. Returns the mortgage opportunity."""
    matt, dan, rachel = people(demo)
    checking_account(demo, rachel, matt)
    opp = mortgage(demo, rachel, dan)
    journey(demo, rachel["id"])
    return opp


def people(demo: Demo) -> tuple[Json, Json, Json]:
    def employee(name: str, role: str, lob: str, product: str) -> Json:
        return demo.post(name.lower(), "/v1/employees", {
            "name": name, "email": f"{name.lower()}@cumulus.example", "role": role,
            "line_of_business": lob, "products": [product], "cities": ["New York"], "states": ["NY"],
            "capacity": 20,
        })  # fmt: skip

    matt = employee("Matt", "banker", "retail", "checking")
    dan = employee("Dan", "mortgage_broker", "mortgage", "mortgage")
    rachel = demo.post("rachel", "/v1/customers", {
        "name": "Rachel Adams", "email": "rachel.adams@example.com", "phone": "+12125550100",
        "city": "New York", "state": "NY",
    })  # fmt: skip
    demo.out("people")
    demo.out(f"  Matt      personal banker (retail)   {matt['id']}")
    demo.out(f"  Dan       mortgage broker            {dan['id']}")
    demo.out(f"  Rachel    customer, New York NY      {rachel['id']} "
             f"(household {rachel['household_id']})")  # fmt: skip
    return matt, dan, rachel


def checking_account(demo: Demo, rachel: Json, matt: Json) -> Json:
    """Her first product: a chatbot lead, Matt records the need, she authorises by SMS."""
    cid = rachel["id"]
    demo.out("checking account (her first product)")
    chat = "Asked the Cumulus chatbot about a checking account for her move to New York"
    demo.post("chat", f"/v1/customers/{cid}/interactions", {"channel": "chatbot", "summary": chat})
    demo.out(f"  chatbot   {chat}")
    need = demo.post("need-checking", f"/v1/customers/{cid}/needs", {
        "kind": "everyday_banking", "description": "A checking account for her salary and bills",
        "recorded_by": matt["id"],
    })  # fmt: skip
    demo.out(f"  need      {need['kind']}: {need['description']} (recorded by Matt)")
    opp = demo.post("opp-checking", "/v1/opportunities", {
        "customer_id": cid, "product": "checking", "owner_id": matt["id"], "need_id": need["id"],
    })  # fmt: skip
    demo.out(f"  opened    {opp['id']} · {stage_text(opp)}")
    demo.event("sms", "consent.sms_authorization", opp["id"], {
        "phone": rachel["phone"], "message_id": f"SM-{demo.run}",
        # The SMS's own time, as the gateway would resend it: the same on a re-run.
        "text": "YES, open my Cumulus checking account", "received_at": opp["opened_at"],
    })  # fmt: skip
    return demo.event("opened", "account.opened", opp["id"], {"account_number": f"CHK-{demo.run}"})


def mortgage(demo: Demo, rachel: Json, dan: Json) -> Json:
    """Seed 000's five stages: Dan's call and her need, a realtor, the application and
    its approval (as the backends would send them), then her e-signature."""
    cid = rachel["id"]
    demo.out("mortgage")
    call = "Check-in call: Rachel is moving to New York and wants to buy a home"
    demo.post("call", f"/v1/customers/{cid}/interactions",
              {"channel": "call", "employee_id": dan["id"], "summary": call})  # fmt: skip
    demo.out(f"  call      {call}")
    need = demo.post("need-home", f"/v1/customers/{cid}/needs", {
        "kind": "buy_home", "description": "Buy a home in New York", "recorded_by": dan["id"],
    })  # fmt: skip
    demo.out(f"  need      {need['kind']}: {need['description']} (recorded by Dan)")
    opp = demo.post("opp-mortgage", "/v1/opportunities", {
        "customer_id": cid, "product": "mortgage", "owner_id": dan["id"], "need_id": need["id"],
        "amount": "500000.00",
    })  # fmt: skip
    demo.out(f"  opened    {opp['id']} · {stage_text(opp)} · amount {opp['amount']}")
    realtor = "Jane Realty, Brooklyn"
    opp = demo.post("searching", f"/v1/opportunities/{opp['id']}/advance", {
        "actor_id": dan["id"], "to_stage": "searching", "evidence": {"realtor": realtor},
    }, expect=200)  # fmt: skip
    demo.out(f"  advance   {stage_text(opp)} · realtor {realtor}")
    opp = demo.event("applied", "mortgage.application_submitted", opp["id"],
                     {"application_id": f"APP-{demo.run}"})  # fmt: skip
    opp = demo.event("approved", "mortgage.application_approved", opp["id"],
                     {"approval_id": f"APR-{demo.run}", "approved_amount": "500000.00"})  # fmt: skip
    return sign(demo, opp, rachel["name"], rachel["email"])


def sign(demo: Demo, opp: Json, signer: str, address: str) -> Json:
    """She opens the signing link her e-mail brought (the outbox, with no SMTP server) and
    signs, as in a browser (no API key sent)."""
    if opp["status"] == "won":  # a re-run: she signed in the first run
        demo.out(f"  signed    already, in an earlier run · {stage_text(opp)}")
        return opp
    sig = opp.get("signature") or {}
    url = signing_link(demo, address, opp["id"])
    if not url:
        raise CliError(f"no signing link for opportunity {opp['id']} reached {address} (signature: {sig})", 1)
    for method, form in (("GET", None), ("POST", {"full_name": signer, "agree": "yes"})):
        request = demo.http.build_request(method, url, data=form)
        request.headers.pop("Authorization", None)
        page = demo.http.send(request)
        if page.status_code != 200:
            answer = f"{page.status_code}: {page.text[:300]}"
            raise CliError(f"the signing page answered {method} with {answer}", exit_code=1)
    opp = demo.get(f"/v1/opportunities/{opp['id']}")
    demo.out(f"  signed    by {signer} on the {sig['provider']} signing page → {stage_text(opp)}")
    if opp["stage"] != "closed_won":
        raise CliError(f"after signing, opportunity {opp['id']} is in {opp['stage']}, not closed_won", 1)
    return opp


def signing_link(demo: Demo, address: str, opportunity_id: str) -> str | None:
    """The link in the newest e-mail to `address` about this opportunity (its reference)."""
    for mail in demo.get(f"/v1/outbox?to={quote(address)}")["items"]:
        if opportunity_id in mail["body"] and (found := LINK.search(mail["body"])):
            return found.group(0)
    return None


def journey(demo: Demo, customer_id: str) -> Json:
    """What Kevin reviews: each product's checkpoints, and her consents."""
    journey = demo.get(f"/v1/customers/{customer_id}/journey")
    demo.out("customer journey (GET /v1/customers/{id}/journey)")
    for opp in journey["opportunities"]:
        demo.out(f"  {opp['product']} {opp['id']} · {stage_text(opp)}")
        for line in checkpoint_table(opp["checkpoints"], "    "):
            demo.out(line)
    demo.out("  consents")
    for line in consent_table(journey["consents"], "    "):
        demo.out(line)
    return journey
