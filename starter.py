"""needflow's command-line client, for people and scripts: `python starter.py COMMAND ...`.

Commands:

  api-key create --name NAME --scopes a,b
      Register a new API key in the database (DATABASE_URL / NEEDFLOW_DATA_DIR) and print
      it once: only its SHA-256 is stored. Scopes: events:write, crm:write, reports:read.

  event send --type TYPE (--opportunity ID | --customer ID) [--id EVT_ID]
             [--data JSON | --set key=value ...] [--occurred-at ISO]
      Send a backend event to POST /v1/events, as the mobile app, the mortgage team or
      core banking would, and print the result (applied / duplicate) and the stage.

  timeline OPPORTUNITY_ID
      An opportunity's stage and status, its checkpoints as a table (stage, entered at,
      trigger, actor, evidence) and its e-signature request, if any.

  referral show REFERRAL_ID
      A referral's status, assignee, lead score (with its top factors), referrer score,
      priority and its history as a table (status, at, actor, assignee, note).

  demo [--run-id ID] [--only rachel|kiara]
      Play two stories against the running stack. Rachel's (seed 000): her checking
      account (interested, SMS authorisation, account opened), then her mortgage from
      interested to closed_won, signed on the local signing page; prints her customer
      journey. Then Kiara's referral (seed 003): Ryan, a wealth advisor, refers her
      mortgage need; routing picks Bob, a mortgage broker, who is e-mailed, accepts, sees
      her in his list and converts her into a customer with a mortgage opportunity; Ryan's
      referrer score before and after. The referral's employees work in a state made up
      for the run (CA-<run id>), so routing only ever sees this run's Bob.
      Every step carries an Idempotency-Key (events an id) derived from the run id, so a
      retried step, or the whole demo re-run with the same --run-id, duplicates nothing.

Every command except `api-key create` talks to a running stack (`make run`) over HTTP:
the API at --api, else NEEDFLOW_API_URL, else http://127.0.0.1:<NEEDFLOW_API_PORT>; the
key from --key, else NEEDFLOW_API_KEY, else NEEDFLOW_DEV_API_KEY, else the dev key file
the dev stack writes (<NEEDFLOW_DATA_DIR>/dev-api-key).

Exit codes: 0 done; 1 the API refused or could not be reached; 2 wrong usage or setup.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from config import Settings, get_settings

Out = Callable[[str], None]
Json = dict[str, Any]

DEV_KEY_FILE = "dev-api-key"  # written by the dev stack (devstack.DEV_KEY_FILE)
TIMEOUT = httpx.Timeout(60.0, connect=5.0)  # an event waits for its workflow to take it
RETRIES = 3  # attempts of a keyed request that failed in transit or with a 5xx
RETRY_STATUS = frozenset({500, 502, 503, 504})


class CliError(Exception):
    """Something the person must fix; printed without a traceback."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ApiFailure(CliError):
    """The API answered with an error: {"error": {"code", "message", "details"}}."""

    def __init__(self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}", exit_code=1)
        self.status = status
        self.code = code
        self.api_message = message
        self.details = dict(details or {})

    @classmethod
    def from_response(cls, r: httpx.Response) -> ApiFailure:
        try:
            err = r.json()["error"]
            return cls(r.status_code, str(err["code"]), str(err["message"]), err.get("details") or {})
        except (ValueError, KeyError, TypeError):
            return cls(r.status_code, f"http_{r.status_code}", r.text.strip()[:300] or r.reason_phrase)


# ------------------------------------------------------------------------------ HTTP


def _request(
    http: httpx.Client,
    method: str,
    url: str,
    *,
    body: Any = None,
    idempotency_key: str | None = None,
    expect: Sequence[int] = (200,),
) -> Json:
    """One API call; the JSON answer, or ApiFailure. A request that is safe to repeat (a GET,
    or a POST with an Idempotency-Key or an event id) is retried after a 5xx or a lost
    connection: the API answers a repeat from the first response."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    retryable = method == "GET" or idempotency_key is not None or url == "/v1/events"
    for attempt in range(1, RETRIES + 1):
        last = attempt == RETRIES or not retryable
        try:
            r = http.request(method, url, json=body, headers=headers)
        except httpx.ConnectError as exc:
            raise CliError(
                f"cannot reach the needflow API at {http.base_url}: {exc}. Is the stack running "
                "(`make run`)? Otherwise point --api or NEEDFLOW_API_URL at it.",
                exit_code=1,
            ) from exc
        except httpx.TransportError:
            if last:
                raise
            time.sleep(0.5 * attempt)
            continue
        if r.status_code in expect:
            return r.json()
        if r.status_code in RETRY_STATUS and not last:
            time.sleep(0.5 * attempt)
            continue
        raise ApiFailure.from_response(r)
    raise AssertionError("unreachable")


def _get(http: httpx.Client, url: str) -> Json:
    return _request(http, "GET", url)


def _post(http: httpx.Client, url: str, body: Any, *, key: str | None = None, expect: int = 201) -> Json:
    return _request(http, "POST", url, body=body, idempotency_key=key, expect=(expect,))


def _now() -> str:
    return datetime.now(UTC).isoformat()


# ------------------------------------------------------------------------------ formatting


_HASH = re.compile(r"^[0-9a-f]{40,}$")
_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def _value(v: Any) -> str:
    """An evidence value, short: hashes abbreviated, times in UTC to the second, and
    quoted when it holds a separator."""
    if not isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if _HASH.match(v):
        return v[:12] + "…"
    if _ISO_TIME.match(v):
        try:
            return datetime.fromisoformat(v).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            pass
    return json.dumps(v, ensure_ascii=False) if re.search(r"[,=\s]", v) or not v else v


def _evidence(evidence: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in evidence.items()) or "-"


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return iso


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return (indent + "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _stage(opp: Json) -> str:
    """`approved (80%)`, `closed_won (100%, won)`."""
    status = "" if opp["status"] == "open" else f", {opp['status']}"
    return f"{opp['stage']} ({opp['probability']}%{status})"


def checkpoint_table(checkpoints: Sequence[Json], indent: str = "") -> list[str]:
    rows = [
        [c["stage"], _when(c["entered_at"]), c["trigger"], c["actor"], _evidence(c.get("evidence") or {})]
        for c in checkpoints
    ]
    return _table(["STAGE", "ENTERED AT", "TRIGGER", "ACTOR", "EVIDENCE"], rows, indent)


def consent_table(consents: Sequence[Json], indent: str = "") -> list[str]:
    rows = [
        [c["channel"], c["product"], c.get("opportunity_id") or "-", _when(c["granted_at"]),
         _evidence(c.get("evidence") or {})]
        for c in consents
    ]  # fmt: skip
    return _table(["CHANNEL", "PRODUCT", "OPPORTUNITY", "GRANTED AT", "EVIDENCE"], rows, indent)


def factors_text(referral: Json) -> str:
    """`value_band=250k-1M raises 0.41, city=… lowers 0.2`: what moved the lead score."""
    factors = referral.get("lead_score_factors") or []
    if not factors:
        return "no factors: nothing moved it off the prior"
    return ", ".join(f"{f['feature']}={_value(f['value'])} {f['effect']} {f['weight']:g}" for f in factors)


def history_table(history: Sequence[Json], indent: str = "") -> list[str]:
    rows = [[h["status"], _when(h["at"]), h["actor"], h.get("assignee_id") or "-", h.get("note") or "-"]
            for h in history]  # fmt: skip
    return _table(["STATUS", "AT", "ACTOR", "ASSIGNEE", "NOTE"], rows, indent)


def prospect_text(p: Mapping[str, Any]) -> str:
    """`Kiara Jones (prospect: +1…, kiara@…, Acme, San Francisco CA)`."""
    place = " ".join(x for x in (p.get("city"), p.get("state")) if x)
    details = ", ".join(x for x in (p.get("phone"), p.get("email"), p.get("employer"), place) if x)
    return f"{p.get('name', '?')} (prospect" + (f": {details})" if details else ")")


def signature_line(sig: Json | None) -> str | None:
    if not sig:
        return None
    line = f"signature: {sig['provider']} envelope {sig['envelope_id']} · {sig['status']}"
    if sig.get("signing_url"):
        line += f" · signing link {sig['signing_url']}"
    return line


# ------------------------------------------------------------------------------ commands


def parse_event_data(data_json: str | None, assignments: Sequence[str] | None) -> Json:
    """`--data '{"a": 1}'` (typed JSON) or `--set a=1 --set b=x` (string values)."""
    if data_json is not None:
        try:
            data = json.loads(data_json)
        except json.JSONDecodeError as exc:
            raise CliError(f"--data is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise CliError('--data must be a JSON object, e.g. \'{"application_id": "APP-9"}\'')
        return data
    data = {}
    for item in assignments or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise CliError(f"--set expects key=value, got {item!r}")
        data[name.strip()] = value
    return data


def send_event(
    http: httpx.Client,
    out: Out,
    *,
    type_: str,
    opportunity_id: str | None = None,
    customer_id: str | None = None,
    event_id: str | None = None,
    data: Json | None = None,
    occurred_at: str | None = None,
) -> Json:
    """POST /v1/events; prints `applied`/`duplicate` and where the subject now stands."""
    if (opportunity_id is None) == (customer_id is None):
        raise CliError("an event names exactly one subject: an opportunity or a customer")
    body: Json = {"id": event_id or f"evt-{secrets.token_hex(8)}", "type": type_,
                  "occurred_at": occurred_at or _now(), "data": data or {}}  # fmt: skip
    if opportunity_id is not None:
        body["opportunity_id"] = opportunity_id
    else:
        body["customer_id"] = customer_id
    answer = _post(http, "/v1/events", body, expect=202)
    opp = answer.get("opportunity")
    where = (
        f"opportunity {opp['id']} is in stage {_stage(opp)}"
        if opp
        else f"recorded for customer {answer.get('customer_id') or customer_id}"
    )
    out(f"{answer['result']}: event {answer['id']} ({type_}); {where}")
    return answer


def show_timeline(http: httpx.Client, out: Out, opportunity_id: str) -> Json:
    """GET /v1/opportunities/{id}, printed for a person."""
    opp = _get(http, f"/v1/opportunities/{opportunity_id}")
    head = f"opportunity {opp['id']} · {opp['product']} (process v{opp['process_version']})"
    head += f" · customer {opp['customer_id']} · owner {opp['owner_id']}"
    if opp.get("amount"):
        head += f" · amount {opp['amount']}"
    out(head)
    status = f"stage {opp['stage']} ({opp['probability']}%) · status {opp['status']}"
    if opp.get("lost_reason"):
        status += f" ({opp['lost_reason']})"
    out(f"{status} · workflow {opp['workflow_id']}")
    for line in checkpoint_table(opp["checkpoints"]):
        out(line)
    sig = signature_line(opp.get("signature"))
    if sig:
        out(sig)
    return opp


def show_referral(http: httpx.Client, out: Out, referral_id: str) -> Json:
    """GET /v1/referrals/{id}, printed for a person."""
    ref = _get(http, f"/v1/referrals/{referral_id}")
    head = f"referral {ref['id']} · {ref['expressed_interest']}"
    if ref.get("value"):
        head += f" · value {ref['value']}"
    head += f" · referred by {ref['referrer']['type']} {ref['referrer']['id']}"
    head += f" · created {_when(ref['created_at'])}"
    out(head)
    whom = [prospect_text(ref["prospect"])] if ref.get("prospect") else []
    if ref.get("customer_id"):
        whom.append(f"customer {ref['customer_id']}")
    out(f"for {' · '.join(whom) or '-'}")
    if ref.get("notes"):
        out(f"notes: {ref['notes']}")
    status = f"status {ref['status']}"
    if ref.get("close_reason"):
        status += f" ({ref['close_reason']})"
    status += f" · assignee {ref.get('assignee_id') or '-'}"
    if ref.get("queue"):
        status += f" · queue {ref['queue']}"
    if ref.get("sla_deadline"):
        status += f" · SLA {_when(ref['sla_deadline'])}"
    if ref.get("opportunity_id"):
        status += f" · opportunity {ref['opportunity_id']}"
    out(f"{status} · workflow {ref['workflow_id']}")
    scores = f"referrer score {ref['referrer_score']}/100 · priority {ref['priority']:.2f}"
    out(f"lead score {ref['lead_score']}/99 ({factors_text(ref)}) · {scores}")
    for line in history_table(ref["history"]):
        out(line)
    return ref


def create_api_key(database_url: str, name: str, scopes: Sequence[str]) -> str:
    """Register a new key straight in the database; returns it (only its hash is kept)."""
    from sqlalchemy.exc import SQLAlchemyError

    from store.db import make_sync_engine
    from store.keys import ALL_SCOPES, register_api_key

    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown or not scopes:
        problem = f"unknown scope(s) {', '.join(unknown)}" if unknown else "give at least one scope"
        raise CliError(f"{problem}; known scopes: {', '.join(ALL_SCOPES)}")
    engine = make_sync_engine(database_url)
    try:
        return register_api_key(engine, name, list(scopes))
    except SQLAlchemyError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise CliError(
            f"could not store the key in {where}: {type(exc).__name__}: {str(exc).splitlines()[0]}. "
            "Is this the stack's database (DATABASE_URL, NEEDFLOW_DATA_DIR), with its migrations "
            "applied (`make run` applies them)?",
            exit_code=1,
        ) from exc
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------ demo


STORIES = ("rachel", "kiara")


class Demo:
    """Rachel's story (seed 000) and Kiara's referral (seed 003) through the API, each
    step keyed by the run id."""

    def __init__(self, http: httpx.Client, out: Out, run_id: str) -> None:
        self.http = http
        self.out = out
        self.run = run_id

    def key(self, step: str) -> str:
        return f"demo-{self.run}-{step}"

    def post(self, step: str, url: str, body: Json, expect: int = 201) -> Json:
        return _post(self.http, url, body, key=self.key(step), expect=expect)

    def event(self, step: str, type_: str, opportunity_id: str, data: Json) -> Json:
        """What a backend system would send; the event id is the step's key."""
        body = {"id": self.key(step), "type": type_, "occurred_at": _now(),
                "opportunity_id": opportunity_id, "data": data}  # fmt: skip
        answer = _post(self.http, "/v1/events", body, expect=202)
        opp = answer["opportunity"]
        if answer["result"] == "duplicate":
            self.out(f"  event     {type_}: already applied; now {_stage(opp)}")
        else:
            self.out(f"  event     {type_} → {_stage(opp)}")
        return opp

    def run_all(self, only: str | None = None) -> dict[str, Json]:
        """Both stories, or `only` one; what each ended with: Rachel's mortgage
        opportunity, Kiara's referral."""
        titles = {"rachel": "Rachel's journey (seed 000)", "kiara": "Kiara's referral (seed 003)"}
        stories = [only] if only else list(STORIES)
        what = " and ".join(titles[s] for s in stories)
        self.out(f"needflow demo: {what} · run {self.run} · API {self.http.base_url}")
        _get(self.http, "/healthz")
        done: dict[str, Json] = {}
        if "rachel" in stories:
            matt, dan, rachel = self.people()
            self.checking_account(rachel, matt)
            done["rachel"] = self.mortgage(rachel, dan)
            self.journey(rachel["id"])
        if "kiara" in stories:
            done["kiara"] = self.kiara()
        return done

    def people(self) -> tuple[Json, Json, Json]:
        def employee(name: str, role: str, lob: str, product: str) -> Json:
            return self.post(name.lower(), "/v1/employees", {
                "name": name, "email": f"{name.lower()}@cumulus.example", "role": role,
                "line_of_business": lob, "products": [product], "cities": ["New York"], "states": ["NY"],
                "capacity": 20,
            })  # fmt: skip

        matt = employee("Matt", "banker", "retail", "checking")
        dan = employee("Dan", "mortgage_broker", "mortgage", "mortgage")
        rachel = self.post("rachel", "/v1/customers", {
            "name": "Rachel Adams", "email": "rachel.adams@example.com", "phone": "+12125550100",
            "city": "New York", "state": "NY",
        })  # fmt: skip
        self.out("people")
        self.out(f"  Matt      personal banker (retail)   {matt['id']}")
        self.out(f"  Dan       mortgage broker            {dan['id']}")
        self.out(f"  Rachel    customer, New York NY      {rachel['id']} "
                 f"(household {rachel['household_id']})")  # fmt: skip
        return matt, dan, rachel

    def checking_account(self, rachel: Json, matt: Json) -> Json:
        """Her first product: a chatbot lead, Matt records the need, she authorises by SMS."""
        cid = rachel["id"]
        self.out("checking account (her first product)")
        chat = "Asked the Cumulus chatbot about a checking account for her move to New York"
        self.post("chat", f"/v1/customers/{cid}/interactions", {"channel": "chatbot", "summary": chat})
        self.out(f"  chatbot   {chat}")
        need = self.post("need-checking", f"/v1/customers/{cid}/needs", {
            "kind": "everyday_banking", "description": "A checking account for her salary and bills",
            "recorded_by": matt["id"],
        })  # fmt: skip
        self.out(f"  need      {need['kind']}: {need['description']} (recorded by Matt)")
        opp = self.post("opp-checking", "/v1/opportunities", {
            "customer_id": cid, "product": "checking", "owner_id": matt["id"], "need_id": need["id"],
        })  # fmt: skip
        self.out(f"  opened    {opp['id']} · {_stage(opp)}")
        self.event("sms", "consent.sms_authorization", opp["id"], {
            "phone": rachel["phone"], "message_id": f"SM-{self.run}",
            # The SMS's own time, as the gateway would resend it: the same on a re-run.
            "text": "YES, open my Cumulus checking account", "received_at": opp["opened_at"],
        })  # fmt: skip
        return self.event("opened", "account.opened", opp["id"], {"account_number": f"CHK-{self.run}"})

    def mortgage(self, rachel: Json, dan: Json) -> Json:
        """Seed 000's five stages: Dan's call and her need, a realtor, the application and
        its approval (as the backends would send them), then her e-signature."""
        cid = rachel["id"]
        self.out("mortgage")
        call = "Check-in call: Rachel is moving to New York and wants to buy a home"
        self.post("call", f"/v1/customers/{cid}/interactions",
                  {"channel": "call", "employee_id": dan["id"], "summary": call})  # fmt: skip
        self.out(f"  call      {call}")
        need = self.post("need-home", f"/v1/customers/{cid}/needs", {
            "kind": "buy_home", "description": "Buy a home in New York", "recorded_by": dan["id"],
        })  # fmt: skip
        self.out(f"  need      {need['kind']}: {need['description']} (recorded by Dan)")
        opp = self.post("opp-mortgage", "/v1/opportunities", {
            "customer_id": cid, "product": "mortgage", "owner_id": dan["id"], "need_id": need["id"],
            "amount": "500000.00",
        })  # fmt: skip
        self.out(f"  opened    {opp['id']} · {_stage(opp)} · amount {opp['amount']}")
        realtor = "Jane Realty, Brooklyn"
        opp = self.post("searching", f"/v1/opportunities/{opp['id']}/advance", {
            "actor_id": dan["id"], "to_stage": "searching", "evidence": {"realtor": realtor},
        }, expect=200)  # fmt: skip
        self.out(f"  advance   {_stage(opp)} · realtor {realtor}")
        opp = self.event("applied", "mortgage.application_submitted", opp["id"],
                         {"application_id": f"APP-{self.run}"})  # fmt: skip
        opp = self.event("approved", "mortgage.application_approved", opp["id"],
                         {"approval_id": f"APR-{self.run}", "approved_amount": "500000.00"})  # fmt: skip
        return self.sign(opp, rachel["name"])

    def sign(self, opp: Json, signer: str) -> Json:
        """She opens the signing link and signs, as in a browser (no API key sent)."""
        if opp["status"] == "won":  # a re-run: she signed in the first run
            self.out(f"  signed    already, in an earlier run · {_stage(opp)}")
            return opp
        sig = opp.get("signature") or {}
        url = sig.get("signing_url")
        if not url:
            raise CliError(f"opportunity {opp['id']} has no signing link (signature: {sig or 'none'})", 1)
        for method, form in (("GET", None), ("POST", {"full_name": signer, "agree": "yes"})):
            request = self.http.build_request(method, url, data=form)
            request.headers.pop("Authorization", None)
            page = self.http.send(request)
            if page.status_code != 200:
                answer = f"{page.status_code}: {page.text[:300]}"
                raise CliError(f"the signing page answered {method} with {answer}", exit_code=1)
        opp = _get(self.http, f"/v1/opportunities/{opp['id']}")
        self.out(f"  signed    by {signer} on the {sig['provider']} signing page → {_stage(opp)}")
        if opp["stage"] != "closed_won":
            raise CliError(f"after signing, opportunity {opp['id']} is in {opp['stage']}, not closed_won", 1)
        return opp

    def journey(self, customer_id: str) -> Json:
        """What Kevin reviews: each product's checkpoints, and her consents."""
        journey = _get(self.http, f"/v1/customers/{customer_id}/journey")
        self.out("customer journey (GET /v1/customers/{id}/journey)")
        for opp in journey["opportunities"]:
            self.out(f"  {opp['product']} {opp['id']} · {_stage(opp)}")
            for line in checkpoint_table(opp["checkpoints"], "    "):
                self.out(line)
        self.out("  consents")
        for line in consent_table(journey["consents"], "    "):
            self.out(line)
        return journey

    # -------------------------------------------------------------- Kiara's referral

    def referral_people(self, state: str, city: str) -> tuple[Json, Json, Json]:
        """Kevin, Ryan and Bob, working in the run's own territory."""

        def employee(name: str, role: str, lob: str, products: list[str], manager: str | None = None) -> Json:
            body: Json = {"name": name, "email": f"{name.lower()}@cumulus.example", "role": role,
                          "line_of_business": lob, "products": products, "cities": [city], "states": [state],
                          "capacity": 20}  # fmt: skip
            if manager:
                body["manager_id"] = manager
            return self.post(name.lower(), "/v1/employees", body)

        kevin = employee("Kevin", "manager", "mortgage", [])
        ryan = employee("Ryan", "advisor", "wealth", ["wealth"])
        bob = employee("Bob", "mortgage_broker", "mortgage", ["mortgage"], kevin["id"])
        # Routing weighs every employee in the bank, earlier demo runs' Bobs too: a state of
        # the run's own keeps this run's referral with this run's Bob.
        self.out(f"referral people · {city}, state {state} (a state made up for this run, so routing, which "
                 "weighs every employee in the bank, finds this run's alone)")  # fmt: skip
        for who, what in ((kevin, "manager (mortgage)"), (ryan, "wealth advisor"),
                          (bob, "mortgage broker, reports to Kevin")):  # fmt: skip
            self.out(f"  {who['name']:<9} {what:<34} {who['id']}")
        return kevin, ryan, bob

    def kiara(self) -> Json:
        """Seed 003: Ryan (wealth) refers Kiara's mortgage need; routing picks Bob, who is
        e-mailed, accepts, sees her in his list and converts her; Ryan's referrer score
        before and after. Returns the referral as it now is (converted)."""
        state, city = f"CA-{self.run}", "San Francisco"
        kevin, ryan, bob = self.referral_people(state, city)
        names = {kevin["id"]: "Kevin", ryan["id"]: "Ryan", bob["id"]: "Bob"}
        self.out("Kiara's referral")
        ref = self.post("referral-kiara", "/v1/referrals", {
            "referrer": {"type": "employee", "id": ryan["id"]},
            "prospect": {"name": "Kiara Jones", "phone": "+14155550123", "email": "kiara.jones@example.com",
                         "employer": "Acme Robotics", "city": city, "state": state},
            "expressed_interest": "mortgage", "value": "500000.00",
            "notes": "Ryan's wealth client: buying her first home in San Francisco, needs a mortgage",
        })  # fmt: skip
        rid = ref["id"]
        earlier = _get(self.http, f"/v1/referrals/{rid}")  # how far an earlier run with this id got
        done_before = {h["status"] for h in earlier["history"]}
        then = " (in an earlier run)" if done_before - {"created", "assigned"} else ""
        kiara = prospect_text(ref["prospect"])
        self.out(f"  referred  by Ryan{then} · {kiara} · mortgage {ref['value']} · {rid}")
        # The answer to its creation (replayed on a re-run): routing, scoring and the e-mail are done.
        assignee = ref.get("assignee_id")
        picked = names.get(assignee, assignee) if assignee else f"nobody (queue {ref.get('queue')})"
        self.out(f"  routed    → {picked}: {ref['history'][-1].get('note') or '-'}")
        if assignee != bob["id"]:
            raise CliError(f"routing gave referral {rid} to {picked}, not to this run's Bob ({bob['id']})", 1)
        self.out(f"  scores    lead {ref['lead_score']}/99 ({factors_text(ref)})")
        self.out(f"            referrer {ref['referrer_score']}/100 (Ryan has no decided referral yet: the "
                 f"bank-wide rate) · priority {ref['priority']:.2f}")  # fmt: skip
        try:
            mails = _get(self.http, f"/v1/outbox?to_employee_id={bob['id']}&limit=1")["items"]
        except ApiFailure as exc:
            if exc.status != 403:
                raise
            mails = None
            self.out("  e-mail    not shown: reading the outbox needs a key with reports:read")
        if mails:
            mail = mails[0]
            sent = mail.get("sent_at")
            how = f"sent {_when(sent)}" if sent else "in the outbox: no SMTP server configured"
            self.out(f'  e-mail    to Bob <{mail["to_address"]}>: "{mail["subject"]}" ({how})')
        elif mails is not None:
            self.out("  e-mail    none to Bob in the outbox")

        bob_acts = {"actor_id": bob["id"]}
        accepted = self.post("accept-kiara", f"/v1/referrals/{rid}/accept", bob_acts, expect=200)
        self.out("  accepted  by Bob" + (" in an earlier run" if "accepted" in done_before else ""))
        self.bobs_list(bob, converted_before=earlier["status"] == "converted")

        need = {"kind": "buy_home", "description": "Buy her first home in San Francisco"}
        converted = self.post("convert-kiara", f"/v1/referrals/{rid}/convert",
                              {**bob_acts, "need": need}, expect=200)  # fmt: skip
        again = " in an earlier run" if earlier["status"] == "converted" else ""
        self.out(f'  converted by Bob{again}: need {need["kind"]} "{need["description"]}"')
        customer = _get(self.http, f"/v1/customers/{converted['customer_id']}")
        opp = _get(self.http, f"/v1/opportunities/{converted['opportunity_id']}")
        self.out(f"    customer     {customer['id']} · {customer['name']} "
                 f"· household {customer['household_id']}")  # fmt: skip
        self.out(f"    need         {opp['need_id']}")
        owner = names.get(opp["owner_id"], opp["owner_id"])
        self.out(f"    opportunity  {opp['id']} · {opp['product']} {_stage(opp)} · amount {opp['amount']} "
                 f"· owner {owner} · referral {opp['referral_id']}")  # fmt: skip

        now = _get(self.http, f"/v1/referrals/{rid}")
        before, after = accepted["referrer_score"], converted["referrer_score"]
        if after > before:
            trend = "up: his referral converted"
        elif after == before == 100:
            trend = "unchanged: every referral the bank decided converted, so he was at 100 already"
        else:
            trend = "unchanged" if after == before else "down"
        then = f", in an earlier run; now {now['referrer_score']}" if again else ""
        self.out(f"  referrer  Ryan's referrer score {before} → {after} ({trend}){then}")
        return now

    def bobs_list(self, bob: Json, converted_before: bool) -> list[Json]:
        """What Bob sees: his open referrals, highest priority first."""
        items = _get(self.http, f"/v1/employees/{bob['id']}/referrals")["items"]
        self.out("  Bob's open referrals (GET /v1/employees/{id}/referrals), highest priority first")
        rows = [
            [f"{r['priority']:.2f}", str(r["lead_score"]), str(r["referrer_score"]), r["status"], r["id"],
             (r.get("prospect") or {}).get("name") or r.get("customer_id") or "-", r.get("value") or "-"]
            for r in items
        ]  # fmt: skip
        if rows:
            heads = ["PRIORITY", "LEAD", "REFERRER", "STATUS", "REFERRAL", "FOR", "VALUE"]
            for line in _table(heads, rows, "    "):
                self.out(line)
        else:
            self.out("    none" + (": Kiara's was converted in an earlier run" if converted_before else ""))
        return items


def run_demo(http: httpx.Client, out: Out, *, run_id: str | None = None, ui_url: str | None = None,
             only: str | None = None) -> dict[str, Json]:  # fmt: skip
    """Play the demo; returns Rachel's mortgage opportunity (closed_won) under `rachel` and
    Kiara's referral (converted) under `kiara`, for the stories played."""
    done = Demo(http, out, run_id or secrets.token_hex(4)).run_all(only)
    searches = []
    if "rachel" in done:
        opp = done["rachel"]
        out(f"done: mortgage opportunity {opp['id']} is {opp['stage']} (workflow {opp['workflow_id']})")
        searches.append('Stage="closed_won"')
    if "kiara" in done:
        ref = done["kiara"]
        out(f"done: referral {ref['id']} is {ref['status']} into opportunity {ref['opportunity_id']} "
            f"(workflow {ref['workflow_id']})")  # fmt: skip
        searches.append('ReferralStatus="converted"')
    if ui_url:
        out(f"Temporal Web UI: {ui_url} · search {' or '.join(searches)}")
    return done


# ------------------------------------------------------------------------------ main


def api_url(arg: str | None, settings: Settings, environ: Mapping[str, str]) -> str:
    return (arg or environ.get("NEEDFLOW_API_URL") or f"http://127.0.0.1:{settings.api_port}").rstrip("/")


def api_key(arg: str | None, settings: Settings, environ: Mapping[str, str]) -> str:
    """--key, NEEDFLOW_API_KEY, NEEDFLOW_DEV_API_KEY, then the dev stack's key file."""
    key = arg or environ.get("NEEDFLOW_API_KEY") or settings.dev_api_key
    if key:
        return key.strip()
    path = settings.data_dir / DEV_KEY_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    raise CliError(
        f"no API key: pass --key KEY or set NEEDFLOW_API_KEY. The dev stack (`make run`) writes one "
        f"with every scope to {path.resolve()} (set NEEDFLOW_DATA_DIR if yours is elsewhere); or make one "
        "with `python starter.py api-key create --name me --scopes events:write,crm:write,reports:read`."
    )


def build_parser() -> argparse.ArgumentParser:
    # --api/--key work before or after the command (SUPPRESS: a subcommand that was not
    # given them keeps the top-level value).
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--api", default=argparse.SUPPRESS, help="API base URL (env NEEDFLOW_API_URL)")
    conn.add_argument("--key", default=argparse.SUPPRESS, help="API key (env NEEDFLOW_API_KEY)")

    parser = argparse.ArgumentParser(
        prog="python starter.py", description=__doc__.split("\n\n")[0],
        epilog="Run `python starter.py COMMAND -h` for a command's options.",
    )  # fmt: skip
    parser.add_argument("--api", default=None, help="API base URL (env NEEDFLOW_API_URL)")
    parser.add_argument("--key", default=None, help="API key (env NEEDFLOW_API_KEY)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    key_cmd = commands.add_parser("api-key", help="manage API keys (in the database)")
    key_sub = key_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = key_sub.add_parser("create", help="register a new API key and print it once")
    create.add_argument("--name", required=True, help="who the key is for, e.g. mobile-app")
    create.add_argument("--scopes", required=True,
                        help="comma-separated, of: events:write, crm:write, reports:read")  # fmt: skip

    event = commands.add_parser("event", help="backend events")
    event_sub = event.add_subparsers(dest="action", required=True, metavar="ACTION")
    send = event_sub.add_parser("send", parents=[conn], help="send an event to POST /v1/events")
    send.add_argument("--type", required=True, dest="event_type", help="e.g. mortgage.application_submitted")
    subject = send.add_mutually_exclusive_group(required=True)
    subject.add_argument("--opportunity", metavar="ID", help="the opportunity the event is about")
    subject.add_argument("--customer", metavar="ID", help="the customer the event is about")
    send.add_argument("--id", dest="event_id", help="event id (default: a new one); a repeat is a duplicate")
    data = send.add_mutually_exclusive_group()
    data.add_argument("--data", metavar="JSON", help="the event's data as a JSON object")
    data.add_argument("--set", action="append", metavar="KEY=VALUE", help="a data field (string); repeatable")
    send.add_argument("--occurred-at", metavar="ISO", help="when it happened (default: now)")

    timeline = commands.add_parser("timeline", parents=[conn], help="an opportunity's checkpoints")
    timeline.add_argument("opportunity_id", metavar="OPPORTUNITY_ID")

    referral = commands.add_parser("referral", help="referrals")
    referral_sub = referral.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = referral_sub.add_parser("show", parents=[conn], help="a referral's status, scores and history")
    show.add_argument("referral_id", metavar="REFERRAL_ID")

    stories = "play Rachel's story (seed 000) and Kiara's referral (seed 003)"
    demo = commands.add_parser("demo", parents=[conn], help=stories)
    demo.add_argument("--run-id", help="replay an earlier run: its keys make every step a repeat")
    demo.add_argument("--only", choices=STORIES, help="play only this story")
    return parser


def main(argv: Sequence[str] | None = None, settings: Settings | None = None,
         environ: Mapping[str, str] | None = None) -> int:  # fmt: skip
    args = build_parser().parse_args(argv)
    settings = settings or get_settings()
    environ = os.environ if environ is None else environ
    out: Out = lambda line: print(line, flush=True)  # noqa: E731
    try:
        if args.command == "api-key":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            key = create_api_key(settings.resolved_database_url, args.name, scopes)
            out(key)
            print(f"API key {args.name!r} ({', '.join(scopes)}) created; only its hash is stored, so keep it "
                  "now: it cannot be shown again.", file=sys.stderr)  # fmt: skip
            return 0
        base_url = api_url(args.api, settings, environ)
        key = api_key(args.key, settings, environ)
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base_url, headers=auth, timeout=TIMEOUT) as http:
            if args.command == "event":
                send_event(
                    http, out, type_=args.event_type, opportunity_id=args.opportunity,
                    customer_id=args.customer, event_id=args.event_id,
                    data=parse_event_data(args.data, args.set), occurred_at=args.occurred_at,
                )  # fmt: skip
            elif args.command == "timeline":
                show_timeline(http, out, args.opportunity_id)
            elif args.command == "referral":
                show_referral(http, out, args.referral_id)
            elif args.command == "demo":
                ui = f"http://127.0.0.1:{settings.ui_port}/namespaces/{settings.namespace}/workflows"
                run_demo(http, out, run_id=args.run_id, ui_url=ui, only=args.only)
        return 0
    except CliError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except httpx.HTTPError as exc:
        print(f"error: talking to the API failed: {exc!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
