"""No input can poison a workflow (issue 9, items 1 and 9, the API's input).

A string that passes the API but that the store, an e-mail header or a workflow input
cannot hold (a NUL: PostgreSQL refuses it; a line break in a name that becomes a mail
subject; a lone surrogate, which UTF-8 cannot even encode) used to fail its activity on
every retry. Now every string the API takes is one of the kinds of domain/validation.py
(an id, a label, a name, a place, an e-mail, a phone, free text, evidence), event data is
closed per type (domain/events.py), path and query parameters and bodies pass the request
guard of api/limits.py first, and a body FastAPI cannot read is a 422 like malformed JSON.

Each poison input below is sent to a real endpoint; the test checks the answer (status,
code, the field named), that no row was written (every table a command writes, counted
before and after), and that the opportunity's and the referral's workflows recorded
nothing and have no activity retrying (no pending activity past its first attempt).

| # | kind | endpoint | field | answer |
| --- | --- | --- | --- | --- |
| 1 | NUL in a name | POST /v1/customers | name | 422 validation_error, control_character: U+0000 (NUL) |
| 2 | CR/LF in a name (a mail header injection) | POST /v1/customers | name | 422 control_character: U+000D |
| 3 | LF in an e-mail address | POST /v1/employees | email | 422 control_character: U+000A |
| 4 | U+2028 in a prospect's name | POST /v1/referrals | prospect.name | 422 control_character: U+2028 |
| 5 | lone surrogate `\\ud800` (JSON escape) in a name | POST /v1/customers | name | 422 control_character: U+D800 |
| 6 | DEL in an id | POST /v1/opportunities | owner_id | 422 control_character: U+007F |
| 7 | ESC (terminal escape) in free text | POST /v1/customers/{id}/needs | description | 422 control_character: U+001B |
| 8 | C1 control U+0085 (NEL) in a label | POST /v1/customers/{id}/needs | kind | 422 control_character: U+0085 |
| 9 | NUL in a reason (free text) | POST /v1/opportunities/{id}/close-lost | reason | 422 control_character: U+0000 |
| 10 | NUL in a referral's rejection reason | POST /v1/referrals/{id}/reject | reason | 422 control_character |
| 11 | LF in a short label (the referral's source) | POST /v1/referrals | source | 422 control_character |
| 12 | overlong name (201 characters) | POST /v1/customers | name | 422 string_too_long |
| 13 | overlong reason (2,001 characters) | POST /v1/consents/{id}/withdraw | reason | 422 string_too_long |
| 14 | unknown key in event data | POST /v1/events | data.sneaky | 422 extra_forbidden |
| 15 | NUL in event data (becomes evidence) | POST /v1/events | data.application_id | 422 control_character |
| 16 | lone surrogate in an NPS comment | POST /v1/events | data.comment | 422 control_character |
| 17 | 21 keys of event data | POST /v1/events | data | 422 too_long |
| 18 | 21 evidence keys | POST /v1/opportunities/{id}/advance | evidence | 422 too_long |
| 19 | evidence value of 2,001 characters | POST /v1/customers/{id}/consents | evidence.document_id | 422 string_too_long |
| 20 | evidence key with a space and a LF | POST /v1/opportunities/{id}/advance | evidence.`a b\\u000a`.[key] | 422 control_character: U+000A |
| 21 | lone surrogate (`\\udc00`) as an evidence key | POST /v1/opportunities/{id}/advance | evidence.`\\udc00`.[key] | 422 control_character (the key escaped in the answer) |
| 22 | NUL in an evidence value | POST /v1/opportunities/{id}/advance | evidence.realtor | 422 control_character |
| 23 | 1e400 (infinite once parsed) as money | POST /v1/opportunities | amount | 422 finite_number |
| 24 | NaN as money | POST /v1/referrals | value | 422 finite_number |
| 25 | Infinity in imported evidence | POST /v1/imports | opportunities[0].checkpoints[0].evidence.score | 422 finite_number, nothing imported |
| 26 | a count beyond the store's INTEGER (2**31) | POST /v1/events (account.activity) | data.transactions | 422 less_than_equal |
| 27 | an integer of 5,000 digits | POST /v1/customers | (body) | 422 json_invalid: too many digits |
| 28 | JSON nested 100,000 deep | POST /v1/customers | (body) | 422 json_invalid: nested too deeply |
| 29 | invalid UTF-8 bytes in the body | POST /v1/customers | (body) | 422 json_invalid: not valid UTF-8 |
| 30 | body over 1 MiB with Content-Length | POST /v1/customers | (body) | 413 payload_too_large, body never read |
| 31 | body over 1 MiB chunked, no Content-Length | POST /v1/customers | (body) | 413 payload_too_large, reading stopped at the limit |
| 32 | import over 128 MiB with Content-Length | POST /v1/imports | (body) | 413 payload_too_large, body never read |
| 33 | NUL in a path parameter | GET /v1/customers/{id} | path.customer_id | 422 control_character |
| 34 | CR/LF in a query parameter | GET /v1/outbox?to= | query.to | 422 control_character |
| 35 | invalid UTF-8 in a query parameter | GET /v1/reports/practice-audit?owner_id= | query.owner_id | 422 string_unicode: not valid UTF-8 |
| 36 | control character in the Idempotency-Key header | POST /v1/customers | header.Idempotency-Key | 422 control_character |
| 37 | LF in a campaign's name | POST /v1/campaigns | name | 422 control_character |
| 38 | NUL in a prequalification rule's state | POST /v1/campaigns | prequalification.0.state_in.0 | 422 control_character |
| 39 | DEL in the customer of a prequalification | POST /v1/campaigns/{id}/prequalify | customer_id | 422 control_character |
| 40 | NUL in an imported customer's name | POST /v1/imports | customers[0].name | 422 control_character, nothing imported |
| 41 | LF in an import's source | POST /v1/imports | source | 422 control_character, nothing imported |
| 42 | NUL in an interaction's summary | POST /v1/customers/{id}/interactions | summary | 422 control_character |
| 43 | LF in an API key's name | POST /v1/api-keys | name | 422 control_character |
| 44 | tab in a place | PATCH /v1/employees/{id} | cities.0 | 422 control_character |
| 45 | NUL in the signer's name on the signing page | POST /sign/{token} | full_name | 422 (the form again), nothing signed |
| — | line breaks and tabs in free text (allowed) | POST /v1/customers/{id}/needs | description | 201, kept as sent |

Process files (domain/process.py) are checked at load for what their activities need: a
template that does not exist or does not render, a subject with a line break or longer
than DocuSign takes, a stage's evidence its event's data cannot carry, a lost event's
reason field the data lacks, an evidence key the API would refuse: each stops the load
with a message naming the file, the stage and the field.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from jinja2 import DictLoader, Environment, StrictUndefined
from pydantic import BaseModel
from sqlalchemy import Engine
from temporalio.client import Client

from api import schemas
from api.limits import MAX_BODY, MAX_IMPORT_BODY, MiB, RequestGuard
from config import PROJECT_ROOT
from domain import campaigns as domain_campaigns
from domain import imports as domain_imports
from domain.events import EVENT_DATA
from domain.process import SUBJECT_MAX, ProcessError, load_catalog
from domain.validation import FREE_TEXT, ONE_LINE
from esign import documents
from store.models import (
    ApiKey,
    AuditFinding,
    Campaign,
    Checkpoint,
    Consent,
    Customer,
    CustomerSignal,
    Employee,
    EmployeeWorkload,
    EventClaim,
    Household,
    IdempotencyRecord,
    Interaction,
    Need,
    Notification,
    Opportunity,
    Prequalification,
    ProcessedEvent,
    Referral,
    ReferralHistory,
    SignatureRequest,
)
from tests.helpers import (
    Api,
    assert_error,
    assert_validation_error,
    count,
    history_length,
    named_fields,
    territory,
    unique,
    within,
)

#: Every table a command of the API writes: a refused request leaves each as it was.
WRITTEN = (
    Household,
    Customer,
    Need,
    Interaction,
    Employee,
    ApiKey,
    Referral,
    ReferralHistory,
    Opportunity,
    Checkpoint,
    Consent,
    Campaign,
    Prequalification,
    ProcessedEvent,
    CustomerSignal,
    IdempotencyRecord,
    SignatureRequest,
    EventClaim,
    Notification,
    AuditFinding,
    EmployeeWorkload,
)
OCCURRED_AT = "2026-11-25T10:00:00+00:00"


def rows(db: Engine) -> dict[str, int]:
    return {m.__tablename__: count(db, m) for m in WRITTEN}


# ---------------------------------------------------------------- the world poison is sent to


@dataclass
class World:
    """What the poison is aimed at: a customer with a need, a mortgage opportunity at
    Interested (its workflow waiting), a referral assigned to Bob, a branch consent, a
    campaign, an employee."""

    owner: dict
    customer: dict
    need: dict
    opp: dict
    referral: dict
    bob: dict
    consent: dict
    campaign: dict
    ids: dict[str, str] = field(default_factory=dict)

    def format(self, path: str) -> str:
        return path.format(
            customer=self.customer["id"],
            opp=self.opp["id"],
            referral=self.referral["id"],
            consent=self.consent["id"],
            campaign=self.campaign["id"],
            owner=self.owner["id"],
        )

    @property
    def workflows(self) -> tuple[str, ...]:
        return (self.opp["workflow_id"], self.referral["workflow_id"])


def campaign_body(name: str, **changes: Any) -> dict[str, Any]:
    return {
        "name": name,
        "starts_on": "2026-12-01",
        "ends_on": "2027-02-28",
        "goal": {"metric": "product_line_units", "target": 40, "line_of_business": "retail"},
        "prequalification": [{"has_need": "open_account"}, {"state_in": ["NY"]}],
        **changes,
    }


@pytest_asyncio.fixture(scope="module")
async def world(app_client: httpx.AsyncClient, keys: dict[str, str]) -> World:
    api = Api(app_client, keys["all"])
    state = territory()
    owner = await api.employee(name="Olive Owner", email=f"olive.{state}@bank.example", states=[state])
    customer, need = await api.customer_with_need(owner["id"])
    opp = (
        await api.post(
            "/v1/opportunities",
            {
                "customer_id": customer["id"],
                "product": "mortgage",
                "owner_id": owner["id"],
                "need_id": need["id"],
                "amount": "400000.00",
            },
            expect=201,
        )
    ).json()
    staff = await api.staff(state)
    referral = await api.refer(staff["ryan"], state)
    consent = (
        await api.post(
            f"/v1/customers/{customer['id']}/consents",
            {
                "actor_id": owner["id"],
                "product": "mortgage",
                "channel": "branch",
                "evidence": {"document_id": unique("DOC")},
            },
            expect=201,
        )
    ).json()
    campaign = (await api.post("/v1/campaigns", campaign_body(unique("Spring")), expect=201)).json()
    return World(owner, customer, need, opp, referral, staff["bob"], consent, campaign)


async def retrying(client: Client, workflow_id: str) -> list[str]:
    """The workflow's pending activities past their first attempt (an activity failing on
    every retry shows here)."""
    desc = await within(client.get_workflow_handle(workflow_id).describe(), f"describe {workflow_id}")
    return [
        f"{a.activity_type.name} attempt {a.attempt}: {a.last_failure.message}"
        for a in desc.raw_description.pending_activities
        if a.attempt > 1
    ]


# ---------------------------------------------------------------- the poison, sent as JSON or bytes


@dataclass(frozen=True)
class Poison:
    """One poison input: where it goes, what it is, and what it must be answered."""

    kind: str
    method: str
    path: str
    #: A JSON body (built from the world), or raw bytes.
    body: Callable[[World], Any] | bytes | None
    field: str | None
    status: int = 422
    code: str = "validation_error"
    #: The `type` the problem must have (pydantic's, or ours), when it matters.
    type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.kind


def sms(**kw: Any) -> dict[str, Any]:
    return {"phone": "+12125550100", "message_id": unique("SM"), "text": "YES", "received_at": OCCURRED_AT, **kw}


def event(world: World, type_: str, data: dict[str, Any], subject: str = "opportunity_id") -> dict[str, Any]:
    subject_id = world.opp["id"] if subject == "opportunity_id" else world.customer["id"]
    return {"id": unique("evt"), "type": type_, "occurred_at": OCCURRED_AT, subject: subject_id, "data": data}


def customer_json(name_json: str) -> bytes:
    """A customer body whose name is written as raw JSON text (escapes, numbers, ...)."""
    return ('{"name": ' + name_json + ', "email": "poison@example.com"}').encode()


def opportunity(world: World, **kw: Any) -> dict[str, Any]:
    return {
        "customer_id": world.customer["id"],
        "product": "mortgage",
        "owner_id": world.owner["id"],
        "need_id": world.need["id"],
        "amount": "250000.00",
        **kw,
    }


def referral(world: World, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "referrer": {"type": "employee", "id": world.owner["id"]},
        "expressed_interest": "mortgage",
        "prospect": {"name": "Pat Prospect", "email": "pat@example.com", "state": "NY"},
        **kw,
    }
    return body


def small_book(**changes: Any) -> dict[str, Any]:
    """A book of one employee, customer, need and open mortgage at Searching."""
    book: dict[str, Any] = {
        "source": unique("crm"),
        "employees": [
            {
                "external_id": "E-1",
                "name": "Old Employee",
                "email": "old.employee@bank.example",
                "role": "mortgage_broker",
                "line_of_business": "mortgage",
            }
        ],
        "customers": [{"external_id": "C-1", "name": "Old Customer"}],
        "needs": [
            {
                "external_id": "N-1",
                "customer": "C-1",
                "kind": "buy_home",
                "description": "A home",
                "recorded_by": "E-1",
                "recorded_at": "2025-03-01T09:00:00+00:00",
            }
        ],
        "opportunities": [
            {
                "external_id": "O-1",
                "customer": "C-1",
                "product": "mortgage",
                "owner": "E-1",
                "need": "N-1",
                "amount": "300000.00",
                "opened_at": "2025-03-02T09:00:00+00:00",
                "status": "open",
                "checkpoints": [
                    {
                        "stage": "interested",
                        "entered_at": "2025-03-02T09:00:00+00:00",
                        "trigger": "manual",
                        "actor": "E-1",
                    }
                ],
            }
        ],
    }
    book.update(changes)
    return book


def book_json(book: dict[str, Any], *, replace: tuple[str, str]) -> bytes:
    """The book as JSON, one placeholder replaced by raw JSON text (`Infinity`)."""
    return json.dumps(book).replace(*replace).encode()


POISON = [
    Poison(
        "NUL in a name",
        "POST",
        "/v1/customers",
        lambda w: {"name": "Rachel\x00Adams"},
        "name",
        type="control_character",
    ),
    Poison(
        "CR/LF in a name",
        "POST",
        "/v1/customers",
        lambda w: {"name": "Rachel\r\nBcc: everyone@example.com"},
        "name",
        type="control_character",
    ),
    Poison(
        "LF in an e-mail address",
        "POST",
        "/v1/employees",
        lambda w: {
            "name": "Erin",
            "email": "erin@bank.example\nBcc: x@example.com",
            "role": "banker",
            "line_of_business": "retail",
            "capacity": 1,
        },
        "email",
        type="control_character",
    ),
    Poison(
        "U+2028 in a prospect's name",
        "POST",
        "/v1/referrals",
        lambda w: referral(w, prospect={"name": "Pat\u2028Prospect"}),
        "prospect.name",
        type="control_character",
    ),
    Poison(
        "lone surrogate (JSON escape \\ud800) in a name",
        "POST",
        "/v1/customers",
        customer_json('"Rachel \\ud800 Adams"'),
        "name",
        type="control_character",
    ),
    Poison(
        "DEL in an id",
        "POST",
        "/v1/opportunities",
        lambda w: opportunity(w, owner_id=w.owner["id"] + "\x7f"),
        "owner_id",
        type="control_character",
    ),
    Poison(
        "ESC in free text",
        "POST",
        "/v1/customers/{customer}/needs",
        lambda w: {"kind": "buy_home", "description": "\x1b[31mred\x1b[0m", "recorded_by": w.owner["id"]},
        "description",
        type="control_character",
    ),
    Poison(
        "C1 control U+0085 in a label",
        "POST",
        "/v1/customers/{customer}/needs",
        lambda w: {"kind": "buy\x85home", "description": "A home", "recorded_by": w.owner["id"]},
        "kind",
        type="control_character",
    ),
    Poison(
        "NUL in a close-lost reason",
        "POST",
        "/v1/opportunities/{opp}/close-lost",
        lambda w: {"actor_id": w.owner["id"], "reason": "went elsewhere\x00"},
        "reason",
        type="control_character",
    ),
    Poison(
        "NUL in a rejection reason",
        "POST",
        "/v1/referrals/{referral}/reject",
        lambda w: {"actor_id": w.bob["id"], "reason": "not\x00mine"},
        "reason",
        type="control_character",
    ),
    Poison(
        "LF in a short label",
        "POST",
        "/v1/referrals",
        lambda w: referral(w, source="branch\nX-Injected: 1"),
        "source",
        type="control_character",
    ),
    Poison(
        "overlong name",
        "POST",
        "/v1/customers",
        lambda w: {"name": "R" * 201},
        "name",
        type="string_too_long",
    ),
    Poison(
        "overlong reason",
        "POST",
        "/v1/consents/{consent}/withdraw",
        lambda w: {"actor_id": w.owner["id"], "reason": "r" * 2001},
        "reason",
        type="string_too_long",
    ),
    Poison(
        "unknown key in event data",
        "POST",
        "/v1/events",
        lambda w: event(w, "mortgage.application_submitted", {"application_id": "APP-1", "sneaky": "x"}),
        "data.sneaky",
        type=None,
    ),
    Poison(
        "NUL in event data",
        "POST",
        "/v1/events",
        lambda w: event(w, "mortgage.application_submitted", {"application_id": "APP\x00-1"}),
        "data.application_id",
    ),
    Poison(
        "lone surrogate in an NPS comment",
        "POST",
        "/v1/events",
        None,  # raw bytes, built in the test (the event id must be new)
        "data.comment",
    ),
    Poison(
        "21 keys of event data",
        "POST",
        "/v1/events",
        lambda w: event(w, "consent.sms_authorization", sms(**{f"k{i}": "v" for i in range(17)})),
        "data",
        type="too_long",
    ),
    Poison(
        "21 evidence keys",
        "POST",
        "/v1/opportunities/{opp}/advance",
        lambda w: {
            "actor_id": w.owner["id"],
            "to_stage": "searching",
            "evidence": {"realtor": "Jane", **{f"k{i}": "v" for i in range(20)}},
        },
        "evidence",
        type="too_long",
    ),
    Poison(
        "evidence value of 2,001 characters",
        "POST",
        "/v1/customers/{customer}/consents",
        lambda w: {
            "actor_id": w.owner["id"],
            "product": "mortgage",
            "channel": "branch",
            "evidence": {"document_id": "D" * 2001},
        },
        "evidence.document_id",
        type="string_too_long",
    ),
    Poison(
        "evidence key with a space and a line break",
        "POST",
        "/v1/opportunities/{opp}/advance",
        lambda w: {"actor_id": w.owner["id"], "to_stage": "searching", "evidence": {"realtor": "Jane", "a b\n": "x"}},
        "evidence",
    ),
    Poison(
        "lone surrogate in an evidence key",
        "POST",
        "/v1/opportunities/{opp}/advance",
        None,  # raw JSON: built in the test from the world
        "evidence",
        type="control_character",
    ),
    Poison(
        "NUL in an evidence value",
        "POST",
        "/v1/opportunities/{opp}/advance",
        lambda w: {"actor_id": w.owner["id"], "to_stage": "searching", "evidence": {"realtor": "Jane\x00Realty"}},
        "evidence.realtor",
        type="control_character",
    ),
    Poison(
        "1e400 as money",
        "POST",
        "/v1/opportunities",
        None,  # raw JSON: built in the test from the world
        "amount",
        type="finite_number",
    ),
    Poison("NaN as money", "POST", "/v1/referrals", None, "value", type="finite_number"),
    Poison(
        "Infinity in imported evidence",
        "POST",
        "/v1/imports",
        None,
        "opportunities[0].checkpoints[0].evidence.score",
    ),
    Poison(
        "a count beyond the store's INTEGER",
        "POST",
        "/v1/events",
        lambda w: event(
            w,
            "account.activity",
            {"product": "checking", "period": "2026-10", "transactions": 2**31},
            subject="customer_id",
        ),
        "data.transactions",
        type="less_than_equal",
    ),
    Poison(
        "an integer of 5,000 digits",
        "POST",
        "/v1/customers",
        customer_json("1" * 5000),
        "",
        type="json_invalid",
    ),
    Poison("JSON nested 100,000 deep", "POST", "/v1/customers", b"[" * 100_000, "", type="json_invalid"),
    Poison(
        "invalid UTF-8 bytes",
        "POST",
        "/v1/customers",
        b'{"name": "Rachel \xff\xfe Adams"}',
        "",
        type="json_invalid",
    ),
    Poison(
        "body over 1 MiB with Content-Length",
        "POST",
        "/v1/customers",
        customer_json('"' + "R" * MAX_BODY + '"'),
        None,
        status=413,
        code="payload_too_large",
    ),
    Poison(
        "NUL in a path parameter",
        "GET",
        "/v1/customers/{customer}%00x",
        None,
        "path.customer_id",
        type="control_character",
    ),
    Poison(
        "CR/LF in a query parameter",
        "GET",
        "/v1/outbox?to=a%0D%0ABcc:%20b@example.com",
        None,
        "query.to",
        type="control_character",
    ),
    Poison(
        "invalid UTF-8 in a query parameter",
        "GET",
        "/v1/reports/practice-audit?owner_id=%FF%FE",
        None,
        "query.owner_id",
        type="string_unicode",
    ),
    Poison(
        "control character in the Idempotency-Key header",
        "POST",
        "/v1/customers",
        lambda w: {"name": "Idem Potent"},
        "header.Idempotency-Key",
        type="control_character",
        headers={"Idempotency-Key": "key\x01one"},
    ),
    Poison(
        "LF in a campaign's name",
        "POST",
        "/v1/campaigns",
        lambda w: campaign_body("Spring\nsale"),
        "name",
        type="control_character",
    ),
    Poison(
        "NUL in a prequalification rule's state",
        "POST",
        "/v1/campaigns",
        lambda w: campaign_body(unique("Spring"), prequalification=[{"state_in": ["N\x00Y"]}]),
        "prequalification.0.state_in.0",
        type="control_character",
    ),
    Poison(
        "DEL in the customer of a prequalification",
        "POST",
        "/v1/campaigns/{campaign}/prequalify",
        lambda w: {"customer_id": w.customer["id"] + "\x7f", "actor_id": w.owner["id"]},
        "customer_id",
        type="control_character",
    ),
    Poison(
        "NUL in an imported customer's name",
        "POST",
        "/v1/imports",
        lambda w: small_book(customers=[{"external_id": "C-1", "name": "Old\x00Customer"}]),
        "customers[0].name",
    ),
    Poison(
        "LF in an import's source",
        "POST",
        "/v1/imports",
        lambda w: small_book(source="crm\nother"),
        "source",
    ),
    Poison(
        "NUL in an interaction's summary",
        "POST",
        "/v1/customers/{customer}/interactions",
        lambda w: {"channel": "call", "employee_id": w.owner["id"], "summary": "called\x00"},
        "summary",
        type="control_character",
    ),
    Poison(
        "LF in an API key's name",
        "POST",
        "/v1/api-keys",
        lambda w: {"name": "mobile\napp", "scopes": ["events:write"]},
        "name",
        type="control_character",
    ),
    Poison(
        "tab in a place",
        "PATCH",
        "/v1/employees/{owner}",
        lambda w: {"cities": ["San\tFrancisco"]},
        "cities.0",
        type="control_character",
    ),
]


def raw_body(poison: Poison, world: World) -> bytes | None:
    """The bodies that must be written as raw JSON text (escapes and numbers JSON encoders
    would not write), from the world."""
    if poison.kind == "lone surrogate in an NPS comment":
        body = event(world, "nps.response", {"score": 9, "comment": "SURROGATE"}, subject="customer_id")
        return json.dumps(body).replace("SURROGATE", "great \\udfff service").encode()
    if poison.kind == "lone surrogate in an evidence key":
        body = {"actor_id": world.owner["id"], "to_stage": "searching", "evidence": {"realtor": "Jane", "KEY": "x"}}
        return json.dumps(body).replace('"KEY"', '"\\udc00"').encode()
    if poison.kind == "1e400 as money":
        return json.dumps(opportunity(world, amount="AMOUNT")).replace('"AMOUNT"', "1e400").encode()
    if poison.kind == "NaN as money":
        return json.dumps(referral(world, value="VALUE")).replace('"VALUE"', "NaN").encode()
    if poison.kind == "Infinity in imported evidence":
        book = small_book()
        book["opportunities"][0]["checkpoints"][0]["evidence"] = {"score": "SCORE"}
        return book_json(book, replace=('"SCORE"', "Infinity"))
    return None


@pytest.mark.parametrize("poison", POISON, ids=str)
async def test_poison_is_refused_and_nothing_is_written_or_left_retrying(
    poison: Poison, world: World, app_client: httpx.AsyncClient, keys: dict[str, str], db: Engine, client: Client
) -> None:
    api = Api(app_client, keys["all"])
    before = rows(db)
    histories = {wf: await history_length(client, wf) for wf in world.workflows}

    headers = {**api.headers(), **poison.headers}
    raw = raw_body(poison, world)
    if raw is None and isinstance(poison.body, bytes):
        raw = poison.body
    if raw is not None:
        r = await api.request(
            poison.method,
            world.format(poison.path),
            content=raw,
            headers={**headers, "Content-Type": "application/json"},
        )
    elif poison.body is not None:
        assert callable(poison.body)
        r = await api.request(poison.method, world.format(poison.path), json=poison.body(world), headers=headers)
    else:
        r = await api.request(poison.method, world.format(poison.path), headers=headers)

    err = assert_error(r, poison.status, poison.code)
    if poison.field is not None:
        fields = named_fields(err)
        assert any(f == poison.field or f.startswith(poison.field + ".") for f in fields), (poison.field, err)
    if poison.type is not None:
        types_ = {e.get("type") for e in err["details"]["errors"]}
        assert poison.type in types_, err
    # The refusal is for a person: it names the character, never echoes it.
    assert "\x00" not in r.text and "\\u0000" not in r.text, r.text

    assert rows(db) == before
    for wf in world.workflows:
        assert await history_length(client, wf) == histories[wf], f"{wf} recorded something"
        assert await retrying(client, wf) == [], wf


async def test_free_text_keeps_line_breaks_and_tabs_and_the_workflows_go_on(
    world: World, app_client: httpx.AsyncClient, keys: dict[str, str], db: Engine, client: Client
) -> None:
    """The allowed side of the rule, and the poisoned workflows afterwards: the opportunity
    still moves with clean evidence, its activities never retried."""
    api = Api(app_client, keys["all"])
    description = "A home for the family:\n\t- three bedrooms\n\t- a garden"
    need = (
        await api.post(
            f"/v1/customers/{world.customer['id']}/needs",
            {"kind": "buy_home", "description": description, "recorded_by": world.owner["id"]},
            expect=201,
        )
    ).json()
    assert need["description"] == description
    moved = await api.advance(world.opp, "searching", {"realtor": "Jane Realty\nand partners"})
    assert moved["stage"] == "searching"
    assert moved["checkpoints"][-1]["evidence"] == {"realtor": "Jane Realty\nand partners"}
    for wf in world.workflows:
        assert await retrying(client, wf) == [], wf


# ---------------------------------------------------------------- bodies too large, as they stream


async def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(
    app_client: httpx.AsyncClient, keys: dict[str, str], db: Engine
) -> None:
    """No Content-Length: the guard counts the bytes as they arrive and stops reading at
    the limit; the rest of the body is never asked for."""
    api = Api(app_client, keys["all"])
    chunk = 64 * 1024
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"name": "'
        for _ in range(4 * MiB // chunk):
            sent += chunk
            yield b"R" * chunk
        yield b'"}'

    before = rows(db)
    r = await api.request(
        "POST", "/v1/customers", content=body(), headers={**api.headers(), "Content-Type": "application/json"}
    )
    err = assert_error(r, 413, "payload_too_large")
    assert err["details"] == {"limit_bytes": MAX_BODY}
    assert sent <= MAX_BODY + 2 * chunk, f"read {sent} bytes of a body refused at {MAX_BODY}"
    assert rows(db) == before


async def test_an_import_over_its_limit_is_refused_before_its_body_is_read(
    app_client: httpx.AsyncClient, keys: dict[str, str], db: Engine
) -> None:
    api = Api(app_client, keys["all"])
    read = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        read += 1
        yield b"{}"

    before = rows(db)
    headers = {**api.headers(), "Content-Type": "application/json", "Content-Length": str(MAX_IMPORT_BODY + 1)}
    r = await api.request("POST", "/v1/imports", content=body(), headers=headers)
    err = assert_error(r, 413, "payload_too_large")
    assert err["details"] == {"limit_bytes": MAX_IMPORT_BODY}
    assert r.headers["connection"] == "close"
    assert read == 0
    assert rows(db) == before


async def test_an_import_may_be_larger_than_other_bodies(api: Api, db: Engine) -> None:
    """Above 1 MiB but under the import's 128 MiB: read, and judged on its content (here a
    book whose only customer's name is too long)."""
    book = small_book(customers=[{"external_id": "C-1", "name": "x" * (2 * MiB)}])
    r = await api.request("POST", "/v1/imports", json=book, headers=api.headers())
    err = assert_validation_error(r)
    assert "customers[0].name" in named_fields(err)


async def test_the_guard_takes_its_limits_from_settings() -> None:
    class Limits:
        max_body_bytes = 10
        max_import_bytes = 20

    guard = RequestGuard(lambda *a: None, Limits())  # type: ignore[arg-type]
    assert (guard.limit_for("/v1/customers"), guard.limit_for("/v1/imports"), guard.limit_for("/v1/importsx")) == (
        10,
        20,
        10,
    )
    assert guard.limit_for("/codec/decode") == 8 * MiB
    default = RequestGuard(lambda *a: None)  # type: ignore[arg-type]
    assert (default.limit_for("/v1/events"), default.limit_for("/v1/imports")) == (MAX_BODY, MAX_IMPORT_BODY)


# ---------------------------------------------------------------- the signing page's form


async def test_a_signers_name_with_a_control_character_signs_nothing(api: Api, db: Engine, client: Client) -> None:
    opp = await api.mortgage_to_approved()
    link = await api.signing_link(opp)
    before = count(db, Consent, Consent.opportunity_id == opp["id"])
    r = await api.sign(link, full_name="Rachel\x00Adams")
    assert r.status_code == 422, r.text
    assert "To sign, type your full name" in r.text
    assert "\x00" not in r.text
    after = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert (after["stage"], after["status"]) == ("approved", "open")
    assert count(db, Consent, Consent.opportunity_id == opp["id"]) == before
    assert await retrying(client, opp["workflow_id"]) == []
    # The same link still signs with a clean name.
    assert (await api.sign(link)).status_code == 200


# ---------------------------------------------------------------- one way: every string field is checked


def _unchecked(tp: Any, metadata: list[Any], where: str) -> list[str]:
    """The places in annotation `tp` where a `str` is taken without one of
    domain/validation.py's checks."""
    if tp is str:
        return [] if any(m is ONE_LINE or m is FREE_TEXT for m in metadata) else [where]
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(tp)
        return _unchecked(base, [*extra, *metadata], where)
    if origin in (typing.Union, types.UnionType):
        return [p for arg in typing.get_args(tp) for p in _unchecked(arg, metadata, where)]
    if origin in (list, dict, tuple, set, frozenset):
        return [p for arg in typing.get_args(tp) if arg is not Ellipsis for p in _unchecked(arg, [], f"{where}[]")]
    if origin is typing.Literal or tp is Any or tp is None or tp is type(None):
        return []
    if isinstance(tp, type) and (issubclass(tp, Enum) or issubclass(tp, BaseModel)):
        return []  # a vocabulary; a model is walked on its own
    return []


def _models_taken_by_the_api() -> list[type[BaseModel]]:
    found = [m for m in vars(schemas).values() if isinstance(m, type) and issubclass(m, schemas.Body)]
    found += [m for m, _ in EVENT_DATA.values()]
    found += [domain_campaigns.CampaignGoal, domain_campaigns.PrequalificationRule]
    found += [*domain_imports._MODELS.values(), domain_imports.CheckpointIn]
    return found


#: Taken as any JSON on purpose, and checked after: an event's data is validated by its
#: type's closed model (domain/events.py); a goal's `product` is always refused.
ANY_ON_PURPOSE = {"EventIn.data[]", "CampaignGoal.product"}


def test_every_string_the_api_takes_is_one_of_the_checked_kinds() -> None:
    unchecked = []
    for model in _models_taken_by_the_api():
        for name, info in model.model_fields.items():
            where = f"{model.__name__}.{name}"
            unchecked += [p for p in _unchecked(info.annotation, list(info.metadata), where) if p not in ANY_ON_PURPOSE]
    assert unchecked == []
    # And the event data models are closed.
    assert all(m.model_config.get("extra") == "forbid" for m, _ in EVENT_DATA.values())


# ---------------------------------------------------------------- process files, checked at load

SHIPPED = PROJECT_ROOT / "processes"


def _write(tmp_path: Path, product: str, mutate: Callable[[dict], object]) -> Path:
    raw = yaml.safe_load((SHIPPED / f"{product}.v1.yaml").read_text())
    mutate(raw)
    (tmp_path / f"{product}.v1.yaml").write_text(yaml.safe_dump(raw, allow_unicode=False))
    return tmp_path


def _approved(raw: dict) -> dict:
    return raw["stages"][3]["request_signature"]


@pytest.mark.parametrize(
    ("product", "mutate", "where", "expected"),
    [
        (
            "mortgage",
            lambda raw: _approved(raw).update(template="mortgage_closng"),
            "stage 'approved' (#4), field 'request_signature.template'",
            "no document template 'mortgage_closng'",
        ),
        (
            "mortgage",
            lambda raw: _approved(raw).update(subject="Your documents\r\nBcc: everyone@example.com"),
            "stage 'approved' (#4), field 'request_signature.subject'",
            "U+000D (a carriage return) at character 15 is not allowed",
        ),
        (
            "mortgage",
            lambda raw: _approved(raw).update(subject="S" * (SUBJECT_MAX + 1)),
            "stage 'approved' (#4), field 'request_signature.subject'",
            f"is {SUBJECT_MAX + 1} characters long; at most {SUBJECT_MAX}",
        ),
        (
            "mortgage",
            lambda raw: raw["stages"][2].update(evidence=["application_id", "broker_ref"]),
            "stage 'applied' (#3), field 'evidence.1'",
            "evidence 'broker_ref' is not in a 'mortgage.application_submitted' event's data",
        ),
        (
            "mortgage",
            lambda raw: raw["lost_events"][0].update(reason_field="why"),
            "field 'lost_events.0.reason_field'",
            "'why' is not in a 'mortgage.application_declined' event's data",
        ),
        (
            "mortgage",
            lambda raw: raw["stages"][1].update(evidence=["realtor name"]),
            "stage 'searching' (#2), field 'evidence.0'",
            "evidence key 'realtor name' is not one the API takes",
        ),
        (
            "mortgage",
            lambda raw: raw["stages"][1].update(name="Search\ning"),
            "stage 'searching' (#2), field 'name'",
            "U+000A (a line break) at character 7 is not allowed",
        ),
        (
            "checking",
            lambda raw: raw.update(name="Checking\x00"),
            "field 'name'",
            "U+0000 (NUL) at character 9 is not allowed",
        ),
    ],
    ids=[
        "missing-template",
        "subject-crlf",
        "subject-too-long",
        "evidence-not-in-data",
        "reason-field",
        "evidence-key",
        "stage-name-lf",
        "process-name-nul",
    ],
)
def test_a_process_an_activity_would_fail_on_is_refused_at_load(
    tmp_path: Path, product: str, mutate: Callable[[dict], object], where: str, expected: str
) -> None:
    _write(tmp_path, product, mutate)
    with pytest.raises(ProcessError) as err:
        load_catalog(tmp_path)
    text = str(err.value)
    assert text.startswith(f"{tmp_path / f'{product}.v1.yaml'}: {where}: "), text
    assert expected in text, text


def test_a_template_that_does_not_render_is_refused_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A template naming a field the documents do not have fails every render (strict
    undefined): the loader renders each named template once, with and without details."""
    broken = Environment(
        loader=DictLoader({"mortgage_closing.html": "{{ doc.customer_shoe_size }}"}), undefined=StrictUndefined
    )
    monkeypatch.setattr(documents, "_env", broken)
    _write(tmp_path, "mortgage", lambda raw: None)
    with pytest.raises(ProcessError) as err:
        load_catalog(tmp_path)
    assert "field 'request_signature.template': document template 'mortgage_closing' does not render" in str(err.value)
    assert "customer_shoe_size" in str(err.value)


def test_the_shipped_processes_pass_every_load_check() -> None:
    assert load_catalog(SHIPPED).products()
