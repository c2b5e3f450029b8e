"""Kiara's referral (seed 003): Ryan, a wealth advisor, refers her mortgage need;
routing picks Bob, a mortgage broker, who is e-mailed, accepts, sees her in his list and
converts her into a customer with a mortgage opportunity; Ryan's referrer score before
and after. The employees work in a state made up for the run, so routing only ever sees
this run's Bob."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from cli import CliError, Json
from cli.render import factors_text, prospect_text, stage_text, table, when

if TYPE_CHECKING:  # the stories are played by Demo, which imports them
    from cli.demo import Demo


def bobs_mail(demo: Demo, bob: Json, wait: float = 3.0) -> Json | None:
    """Bob's newest e-mail, after giving the e-mail sender a moment to deliver it: the
    referral is answered once the e-mail is recorded, and it goes out just after (with no
    SMTP server it stays pending in the outbox)."""
    deadline = time.monotonic() + wait
    while True:
        mails = demo.get(f"/v1/outbox?to_employee_id={bob['id']}&limit=1")["items"]
        if not mails or mails[0].get("status") not in ("pending", "sending") or time.monotonic() > deadline:
            return mails[0] if mails else None
        time.sleep(0.1)


def play(demo: Demo) -> Json:
    """Seed 003: Ryan (wealth) refers Kiara's mortgage need; routing picks Bob, who is
    e-mailed, accepts, sees her in his list and converts her; Ryan's referrer score
    before and after. Returns the referral as it now is (converted)."""
    state, city = f"CA-{demo.run}", "San Francisco"
    kevin, ryan, bob = referral_people(demo, state, city)
    names = {kevin["id"]: "Kevin", ryan["id"]: "Ryan", bob["id"]: "Bob"}
    demo.out("Kiara's referral")
    ref = demo.post("referral-kiara", "/v1/referrals", {
        "referrer": {"type": "employee", "id": ryan["id"]},
        "prospect": {"name": "Kiara Jones", "phone": "+14155550123", "email": "kiara.jones@example.com",
                     "employer": "Acme Robotics", "city": city, "state": state},
        "expressed_interest": "mortgage", "value": "500000.00",
        "notes": "Ryan's wealth client: buying her first home in San Francisco, needs a mortgage",
    })  # fmt: skip
    rid = ref["id"]
    earlier = demo.get(f"/v1/referrals/{rid}")  # how far an earlier run with this id got
    done_before = {h["status"] for h in earlier["history"]}
    then = " (in an earlier run)" if done_before - {"created", "assigned"} else ""
    kiara = prospect_text(ref["prospect"])
    demo.out(f"  referred  by Ryan{then} · {kiara} · mortgage {ref['value']} · {rid}")
    # The answer to its creation (replayed on a re-run): routing, scoring and the e-mail are done.
    assignee = ref.get("assignee_id")
    picked = names.get(assignee, assignee) if assignee else f"nobody (queue {ref.get('queue')})"
    demo.out(f"  routed    → {picked}: {ref['history'][-1].get('note') or '-'}")
    if assignee != bob["id"]:
        raise CliError(f"routing gave referral {rid} to {picked}, not to this run's Bob ({bob['id']})", 1)
    demo.out(f"  scores    lead {ref['lead_score']}/99 ({factors_text(ref)})")
    demo.out(f"            referrer {ref['referrer_score']}/100 (Ryan has no decided referral yet: the "
             f"bank-wide rate) · priority {ref['priority']:.2f}")  # fmt: skip
    mail = bobs_mail(demo, bob)
    if mail:
        sent, status = mail.get("sent_at"), mail.get("status", "pending")
        if sent:
            how = f"sent {when(sent)}"
        elif status in ("pending", "sending"):
            how = "in the outbox, not sent yet: no SMTP server configured, or it is not reachable"
        else:
            how = f"{status}: {mail.get('last_error')}"
        demo.out(f'  e-mail    to Bob <{mail["to_address"]}>: "{mail["subject"]}" ({how})')
    else:
        demo.out("  e-mail    none to Bob in the outbox")

    bob_acts = {"actor_id": bob["id"]}
    accepted = demo.post("accept-kiara", f"/v1/referrals/{rid}/accept", bob_acts, expect=200)
    demo.out("  accepted  by Bob" + (" in an earlier run" if "accepted" in done_before else ""))
    bobs_list(demo, bob, converted_before=earlier["status"] == "converted")

    need = {"kind": "buy_home", "description": "Buy her first home in San Francisco"}
    converted = demo.post("convert-kiara", f"/v1/referrals/{rid}/convert",
                          {**bob_acts, "need": need}, expect=200)  # fmt: skip
    again = " in an earlier run" if earlier["status"] == "converted" else ""
    demo.out(f'  converted by Bob{again}: need {need["kind"]} "{need["description"]}"')
    customer = demo.get(f"/v1/customers/{converted['customer_id']}")
    opp = demo.get(f"/v1/opportunities/{converted['opportunity_id']}")
    demo.out(f"    customer     {customer['id']} · {customer['name']} "
             f"· household {customer['household_id']}")  # fmt: skip
    demo.out(f"    need         {opp['need_id']}")
    owner = names.get(opp["owner_id"], opp["owner_id"])
    demo.out(f"    opportunity  {opp['id']} · {opp['product']} {stage_text(opp)} · amount {opp['amount']} "
             f"· owner {owner} · referral {opp['referral_id']}")  # fmt: skip

    now = demo.get(f"/v1/referrals/{rid}")
    before, after = accepted["referrer_score"], converted["referrer_score"]
    if after > before:
        trend = "up: his referral converted"
    elif after == before == 100:
        trend = "unchanged: every referral the bank decided converted, so he was at 100 already"
    else:
        trend = "unchanged" if after == before else "down"
    then = f", in an earlier run; now {now['referrer_score']}" if again else ""
    demo.out(f"  referrer  Ryan's referrer score {before} → {after} ({trend}){then}")
    return now


def referral_people(demo: Demo, state: str, city: str) -> tuple[Json, Json, Json]:
    """Kevin, Ryan and Bob, working in the run's own territory."""

    def employee(name: str, role: str, lob: str, products: list[str], manager: str | None = None) -> Json:
        body: Json = {"name": name, "email": f"{name.lower()}@cumulus.example", "role": role,
                      "line_of_business": lob, "products": products, "cities": [city], "states": [state],
                      "capacity": 20}  # fmt: skip
        if manager:
            body["manager_id"] = manager
        return demo.post(name.lower(), "/v1/employees", body)

    kevin = employee("Kevin", "manager", "mortgage", [])
    ryan = employee("Ryan", "advisor", "wealth", ["wealth"])
    bob = employee("Bob", "mortgage_broker", "mortgage", ["mortgage"], kevin["id"])
    # Routing weighs every employee in the bank, earlier demo runs' Bobs too: a state of
    # the run's own keeps this run's referral with this run's Bob.
    demo.out(f"referral people · {city}, state {state} (a state made up for this run, so routing, which "
             "weighs every employee in the bank, finds this run's alone)")  # fmt: skip
    for who, what in ((kevin, "manager (mortgage)"), (ryan, "wealth advisor"),
                      (bob, "mortgage broker, reports to Kevin")):  # fmt: skip
        demo.out(f"  {who['name']:<9} {what:<34} {who['id']}")
    return kevin, ryan, bob


def bobs_list(demo: Demo, bob: Json, converted_before: bool) -> list[Json]:
    """What Bob sees: his open referrals, highest priority first."""
    items = demo.get(f"/v1/employees/{bob['id']}/referrals")["items"]
    demo.out("  Bob's open referrals (GET /v1/employees/{id}/referrals), highest priority first")
    rows = [
        [f"{r['priority']:.2f}", str(r["lead_score"]), str(r["referrer_score"]), r["status"], r["id"],
         (r.get("prospect") or {}).get("name") or r.get("customer_id") or "-", r.get("value") or "-"]
        for r in items
    ]  # fmt: skip
    if rows:
        heads = ["PRIORITY", "LEAD", "REFERRER", "STATUS", "REFERRAL", "FOR", "VALUE"]
        for line in table(heads, rows, "    "):
            demo.out(line)
    else:
        demo.out("    none" + (": Kiara's was converted in an earlier run" if converted_before else ""))
    return items
