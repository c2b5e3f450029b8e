"""The practice audit (store/audit.py): each rule as a pure function over plain facts, then
through the API on a book with known malpractice planted straight in the store (as an
import or an old CRM would leave it) beside clean records, one of them a real journey.

The session database is shared by every test, so the planted book belongs to owners of
its own and the audit is read filtered by owner."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect

from domain.opportunity import ClosedAtMissing
from domain.process import ProcessDefinition, load_catalog
from domain.types import Product
from store import models
from store.audit import (
    CheckpointFact,
    ConsentFact,
    Finding,
    OpportunityFacts,
    PrequalificationFact,
    campaign_not_prequalified,
    consent_missing,
    evidence_missing,
    findings,
    need_after_opportunity,
    review,
    stage_out_of_order,
)
from store.db import make_sync_engine
from tests.helpers import Api, assert_validation_error
from tests.store_rows import insert_opportunity

AUDIT = "/v1/reports/practice-audit"
CATALOG = load_catalog(Path(__file__).resolve().parents[1] / "processes")


def process(product: str) -> ProcessDefinition:
    found = CATALOG.get(Product(product), 1)
    assert found is not None
    return found


def at(day: int, hour: int = 9, minute: int = 0, month: int = 1) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


#: A mortgage's whole journey, stage by stage, with the evidence each asks for.
CLEAN_MORTGAGE: list[tuple[str, dict[str, Any]]] = [
    ("interested", {}),
    ("searching", {"realtor": "Jane Realty"}),
    ("applied", {"application_id": "APP-1"}),
    ("approved", {"approval_id": "APR-1"}),
    ("closed_won", {"envelope_id": "env-1", "document_sha256": "ab" * 32}),
]
CLEAN_CHECKING: list[tuple[str, dict[str, Any]]] = [
    ("interested", {}),
    ("authorised", {"phone": "+12125550100", "message_id": "SM1", "text": "YES"}),
    ("opened", {"account_number": "0001234"}),
]
CLEAN_INSURANCE: list[tuple[str, dict[str, Any]]] = [
    ("interested", {}),
    ("proposal", {"proposal_id": "P-1"}),
    ("closed_won", {"envelope_id": "env-2"}),
]


def checkpoints(stages: list[tuple[str, dict[str, Any]]], opened: datetime) -> tuple[CheckpointFact, ...]:
    """One checkpoint a day from `opened`."""
    return tuple(
        CheckpointFact(seq=i + 1, stage=s, entered_at=opened + timedelta(days=i), evidence=ev)
        for i, (s, ev) in enumerate(stages)
    )


def facts(
    stages: list[tuple[str, dict[str, Any]]] = CLEAN_MORTGAGE, product: str = "mortgage", **kw: Any
) -> OpportunityFacts:
    """A mortgage opened 2026-01-05 09:00, one checkpoint a day, its need recorded the day
    before, won with a consent granted on the day it was approved, unless told otherwise."""
    opened = kw.pop("opened_at", at(5))
    cps = checkpoints(stages, opened)
    last = stages[-1][0]
    status = "won" if last in ("closed_won", "opened") else "lost" if last == "closed_lost" else "open"
    defaults: dict[str, Any] = {
        "id": "opp-1",
        "customer_id": "cus-1",
        "product": product,
        "owner_id": "emp-1",
        "status": status,
        "opened_at": opened,
        "closed_at": cps[-1].entered_at if status != "open" else None,
        "process": process(product),
        "need_recorded_at": opened - timedelta(days=1),
        "need_kind": "buy_home",
        "checkpoints": cps,
        "consents": (ConsentFact(granted_at=cps[-2].entered_at),) if status == "won" else (),
    }
    return OpportunityFacts(**{**defaults, **kw})


# ---------------------------------------------------------------- the rules, pure


def test_a_clean_record_breaks_no_rule() -> None:
    for f in (
        facts(),
        facts(CLEAN_CHECKING, "checking"),
        facts(CLEAN_INSURANCE, "insurance"),
        facts(CLEAN_MORTGAGE[:3]),  # open at Applied
        facts([*CLEAN_MORTGAGE[:2], ("closed_lost", {"reason": "bought elsewhere"})]),
        facts([("interested", {}), ("closed_lost", {})]),
    ):
        assert findings(f) == [], f
        assert review(f).exceptions == []


def test_consent_missing() -> None:
    won = at(9)  # the fifth checkpoint
    assert (
        consent_missing(facts(consents=()))
        == "Won on 2026-01-09 09:00 UTC without any consent of the customer to mortgage."
    )
    assert consent_missing(facts(consents=(ConsentFact(at(11, 10)), ConsentFact(at(10, 8))))) == (
        "Won on 2026-01-09 09:00 UTC, but the customer's consent to mortgage was only granted on 2026-01-10 08:00 UTC."
    )
    assert consent_missing(facts(consents=(ConsentFact(at(6), withdrawn_at=at(7)),))) == (
        "Won on 2026-01-09 09:00 UTC, but the customer's consent to mortgage granted on 2026-01-06 09:00 UTC "
        "had been withdrawn on 2026-01-07 09:00 UTC."
    )
    # Withdrawn at the very moment of the win: not in force.
    assert consent_missing(facts(consents=(ConsentFact(at(6), withdrawn_at=won),))) is not None
    # Granted at the win, or withdrawn after it: the sale had it.
    assert consent_missing(facts(consents=(ConsentFact(won),))) is None
    assert consent_missing(facts(consents=(ConsentFact(at(6), withdrawn_at=at(20)),))) is None
    assert consent_missing(facts(consents=(ConsentFact(at(6), withdrawn_at=at(7)), ConsentFact(at(8))))) is None
    # Not won: not judged. Won is when it closed (`closed_at`), whatever its checkpoints say.
    assert consent_missing(facts(CLEAN_MORTGAGE[:4], consents=())) is None
    assert consent_missing(facts(consents=(ConsentFact(at(9, 10)),))) == (
        "Won on 2026-01-09 09:00 UTC, but the customer's consent to mortgage was only granted on 2026-01-09 10:00 UTC."
    )
    assert consent_missing(facts(closed_at=at(9, 11), consents=(ConsentFact(at(9, 10)),))) is None
    # A won row without closed_at cannot be stored (migration 0014); the rule will not guess.
    with pytest.raises(ClosedAtMissing, match="without closed_at"):
        consent_missing(facts(closed_at=None, consents=(ConsentFact(at(9, 10)),)))


def test_need_after_opportunity() -> None:
    assert need_after_opportunity(facts(need_recorded_at=None, need_kind=None)) == (
        "Opened on 2026-01-05 09:00 UTC with no recorded need."
    )
    assert need_after_opportunity(facts(need_recorded_at=at(5, 9, 1))) == (
        "Opened on 2026-01-05 09:00 UTC, but its need (buy_home) was only recorded on 2026-01-05 09:01 UTC."
    )
    assert need_after_opportunity(facts(need_recorded_at=at(5))) is None  # at the same moment: not after


def test_stage_out_of_order() -> None:
    m = dict(CLEAN_MORTGAGE)

    def order(*keys: str) -> str | None:
        return stage_out_of_order(facts([(k, m.get(k, {})) for k in keys]))

    assert order("interested", "searching", "approved") == (
        "Approved was entered on 2026-01-07 09:00 UTC straight from Searching, skipping Applied."
    )
    assert order("interested", "approved", "closed_won") == (
        "Approved was entered on 2026-01-06 09:00 UTC straight from Interested, skipping Searching and Applied."
    )
    assert order("searching", "applied") == "It started at Searching on 2026-01-05 09:00 UTC, skipping Interested."
    assert order("interested", "searching", "searching") == "Searching was entered again on 2026-01-07 09:00 UTC."
    assert order("interested", "searching", "applied", "searching") == (
        "It went back to Searching from Applied on 2026-01-08 09:00 UTC."
    )
    assert order("interested", "searching", "closed_lost", "applied") == (
        "Applied was entered on 2026-01-08 09:00 UTC, after the opportunity was closed lost."
    )
    assert order("interested", "underwriting") == (
        "It entered underwriting on 2026-01-06 09:00 UTC, a stage the mortgage process (version 1) does not have."
    )
    # Two problems in one opportunity: one finding naming both.
    assert order("interested", "applied", "searching") == (
        "Applied was entered on 2026-01-06 09:00 UTC straight from Interested, skipping Searching. "
        "It went back to Searching from Applied on 2026-01-07 09:00 UTC."
    )
    # closed_lost may follow any stage; no checkpoints is nothing out of order.
    for stages in (["interested", "closed_lost"], ["interested", "searching", "applied", "approved", "closed_lost"]):
        assert order(*stages) is None
    assert stage_out_of_order(facts(checkpoints=())) is None
    # A process version the catalog does not have cannot be judged.
    assert stage_out_of_order(facts([("applied", {})], process=None)) is None


def test_evidence_missing() -> None:
    stages = [*CLEAN_MORTGAGE[:1], ("searching", {"realtor": "   "}), ("applied", {"other": "x"})]
    assert evidence_missing(facts(stages)) == (
        "Searching was entered on 2026-01-06 09:00 UTC without the realtor it asks for. "
        "Applied was entered on 2026-01-07 09:00 UTC without the application_id it asks for."
    )
    sms = [("interested", {}), ("authorised", {"phone": "+1", "message_id": "", "text": None})]
    assert evidence_missing(facts(sms, "checking")) == (
        "Authorised was entered on 2026-01-06 09:00 UTC without the message_id and text it asks for."
    )
    # closed_lost asks for nothing; an unknown stage is stage_out_of_order's business.
    assert evidence_missing(facts([("interested", {}), ("closed_lost", {})])) is None
    assert evidence_missing(facts([("interested", {}), ("underwriting", {})])) is None
    assert evidence_missing(facts(stages, process=None)) is None


def test_campaign_not_prequalified() -> None:
    opened = at(5)

    def prequal(*found: PrequalificationFact) -> str | None:
        return campaign_not_prequalified(facts(campaign_id="cmp-1", prequalifications=found))

    assert (
        prequal() == "Opened on 2026-01-05 09:00 UTC in campaign cmp-1 without the customer being prequalified for it."
    )
    assert prequal(PrequalificationFact(at(1), False), PrequalificationFact(at(3), False)) == (
        "Opened on 2026-01-05 09:00 UTC in campaign cmp-1, but the customer's prequalification of "
        "2026-01-03 09:00 UTC found them not qualified."
    )
    assert prequal(PrequalificationFact(at(6), True)) == (
        "Opened on 2026-01-05 09:00 UTC in campaign cmp-1, but the customer was only found qualified on "
        "2026-01-06 09:00 UTC."
    )
    assert prequal(PrequalificationFact(opened, True)) is None
    assert (
        prequal(PrequalificationFact(at(1), True), PrequalificationFact(at(3), False)) is None
    )  # one qualified before
    # No campaign: nothing to judge.
    assert campaign_not_prequalified(facts(prequalifications=())) is None


def test_findings_one_per_rule_in_rule_order_and_the_review() -> None:
    broken = facts(
        [("interested", {}), ("applied", {}), ("approved", {"approval_id": "A"}), ("closed_won", {})],
        consents=(),
        need_recorded_at=at(6),
        campaign_id="cmp-9",
        prequalifications=(),
    )
    assert [f.rule for f in findings(broken)] == [
        "campaign_not_prequalified",
        "consent_missing",
        "evidence_missing",
        "need_after_opportunity",
        "stage_out_of_order",
    ]
    assert findings(broken)[2] == Finding(
        "evidence_missing", "Applied was entered on 2026-01-06 09:00 UTC without the application_id it asks for."
    )
    r = review(broken)
    assert (r.opportunity_id, r.product, r.consent, r.need_before_sale, r.all_checkpoints) == (
        "opp-1",
        "mortgage",
        False,
        False,
        False,
    )
    assert r.exceptions == [f.rule for f in findings(broken)]
    clean = review(facts())
    assert (clean.consent, clean.need_before_sale, clean.all_checkpoints, clean.exceptions) == (True, True, True, [])
    # Not won: `consent` says whether her consent is in force now; no exception either way.
    open_ = facts(CLEAN_MORTGAGE[:3])
    assert review(open_).consent is False and review(open_).exceptions == []
    assert review(replace(open_, consents=(ConsentFact(at(6)),))).consent is True
    assert review(replace(open_, consents=(ConsentFact(at(6), withdrawn_at=at(7)),))).consent is False
    # Only bad evidence: the checkpoints question is answered no.
    assert review(facts([("interested", {}), ("searching", {})])).all_checkpoints is False


# ---------------------------------------------------------------- through the API


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = make_sync_engine(database_url)
    yield engine
    engine.dispose()


def prequalifications_recorded(db: Engine) -> bool:
    """Whether this store records prequalifications yet (the campaigns work)."""
    model = getattr(models, "Prequalification", None)
    return model is not None and inspect(db).has_table(model.__tablename__)


async def audit(api: Api, **params: str) -> list[dict]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return (await api.get(f"{AUDIT}?{query}")).json()["items"]


async def journey_review(api: Api, customer_id: str) -> list[dict]:
    return (await api.get(f"/v1/customers/{customer_id}/journey")).json()["review"]


async def test_the_audit_finds_each_planted_problem_once_and_nothing_in_clean_records(api: Api, db: Engine) -> None:
    tag = uuid.uuid4().hex[:6]
    dan = await api.employee(name="Dan", email=f"dan.{tag}@bank.example", products=["mortgage", "checking"])
    eve = await api.employee(name="Eve", email=f"eve.{tag}@bank.example")
    owner = dan["id"]
    plant = partial(insert_opportunity, db, owner_id=owner)
    m = dict(CLEAN_MORTGAGE)

    # The malpractice: (opportunity, rule, detail).
    no_consent = plant(CLEAN_MORTGAGE, opened_at=at(5))
    late_consent = plant(CLEAN_MORTGAGE, opened_at=at(12), consents=((at(18, 10), None),))
    withdrawn = plant(CLEAN_MORTGAGE, opened_at=at(19), consents=((at(20), at(21)),))
    late_need = plant(CLEAN_MORTGAGE[:3], opened_at=at(2, month=2), need_at=at(3, 15, 30, month=2))
    skipped = plant([(k, m[k]) for k in ("interested", "searching", "approved")], opened_at=at(9, month=2))
    went_back = plant(
        [(k, m[k]) for k in ("interested", "searching", "applied", "searching")],
        opened_at=at(16, month=2),
        customer_id=skipped["customer_id"],
    )
    no_evidence = plant(
        [("interested", {}), ("searching", {"realtor": "  "}), ("applied", {"submitted": True})],
        opened_at=at(2, month=3),
    )
    insurance = plant(CLEAN_INSURANCE, opened_at=at(30, month=3), product="insurance")
    campaign = plant(CLEAN_MORTGAGE[:2], opened_at=at(6, month=4), campaign_id=f"cmp-{tag}")
    # Clean ones: consent before the win (withdrawn only after it), lost, a checking account.
    clean = [
        plant(CLEAN_MORTGAGE, opened_at=at(9, month=3), consents=((at(12, month=3), at(1, month=4)),)),
        plant([*CLEAN_MORTGAGE[:2], ("closed_lost", {"reason": "rates"})], opened_at=at(16, month=3)),
        plant(CLEAN_CHECKING, opened_at=at(23, month=3), product="checking", consents=((at(24, month=3), None),)),
    ]
    # ... and a real one, through the API: need, opportunity, events, the customer's signature.
    live = await api.mortgage_to_approved(owner=dan)
    r = await api.sign(await api.signing_link(live))
    assert r.status_code == 200, r.text
    assert (await api.get(f"/v1/opportunities/{live['id']}")).json()["status"] == "won"
    # Someone else's malpractice is not Dan's.
    eves = insert_opportunity(db, CLEAN_MORTGAGE, owner_id=eve["id"], opened_at=at(5))

    expected = [
        (no_consent, "consent_missing", "Won on 2026-01-09 09:00 UTC without any consent of the customer to mortgage."),
        (
            late_consent,
            "consent_missing",
            "Won on 2026-01-16 09:00 UTC, but the customer's consent to mortgage was only granted on "
            "2026-01-18 10:00 UTC.",
        ),
        (
            withdrawn,
            "consent_missing",
            "Won on 2026-01-23 09:00 UTC, but the customer's consent to mortgage granted on 2026-01-20 09:00 UTC "
            "had been withdrawn on 2026-01-21 09:00 UTC.",
        ),
        (
            late_need,
            "need_after_opportunity",
            "Opened on 2026-02-02 09:00 UTC, but its need (buy_home) was only recorded on 2026-02-03 15:30 UTC.",
        ),
        (
            skipped,
            "stage_out_of_order",
            "Approved was entered on 2026-02-11 09:00 UTC straight from Searching, skipping Applied.",
        ),
        (went_back, "stage_out_of_order", "It went back to Searching from Applied on 2026-02-19 09:00 UTC."),
        (
            no_evidence,
            "evidence_missing",
            "Searching was entered on 2026-03-03 09:00 UTC without the realtor it asks for. "
            "Applied was entered on 2026-03-04 09:00 UTC without the application_id it asks for.",
        ),
        (insurance, "consent_missing", "Won on 2026-04-01 09:00 UTC without any consent of the customer to insurance."),
    ]
    if prequalifications_recorded(db):  # the campaigns work's table is there
        expected.append(
            (
                campaign,
                "campaign_not_prequalified",
                f"Opened on 2026-04-06 09:00 UTC in campaign cmp-{tag} without the customer being prequalified for it.",
            )
        )
    want = [
        {
            "opportunity_id": o["id"],
            "rule": rule,
            "detail": detail,
            "owner_id": owner,
            "product": "insurance" if o is insurance else "mortgage",
        }
        for o, rule, detail in expected
    ]
    items = await audit(api, owner_id=owner)
    assert items == want  # each exactly once, in opened_at order, nothing for the clean ones
    reported = {i["opportunity_id"] for i in items}
    assert not reported & {c["id"] for c in clean} and live["id"] not in reported

    # Filters: the opening dates (both days included), the product, the owner.
    feb = await audit(api, owner_id=owner, **{"from": "2026-02-02", "to": "2026-02-16"})
    assert [i["opportunity_id"] for i in feb] == [late_need["id"], skipped["id"], went_back["id"]]
    assert await audit(api, owner_id=owner, product="insurance") == [w for w in want if w["product"] == "insurance"]
    assert insurance["id"] not in {i["opportunity_id"] for i in await audit(api, owner_id=owner, product="mortgage")}
    assert await audit(api, owner_id=owner, product="wealth") == []
    assert await audit(api, owner_id=eve["id"]) == [
        {
            "opportunity_id": eves["id"],
            "rule": "consent_missing",
            "detail": "Won on 2026-01-09 09:00 UTC without any consent of the customer to mortgage.",
            "owner_id": eve["id"],
            "product": "mortgage",
        }
    ]
    assert await audit(api, owner_id=owner, **{"from": "2030-01-01"}) == []

    # The journey's review answers Kevin's three questions from the same rules.
    assert await journey_review(api, no_consent["customer_id"]) == [
        {
            "opportunity_id": no_consent["id"],
            "product": "mortgage",
            "consent": False,
            "need_before_sale": True,
            "all_checkpoints": True,
            "exceptions": ["consent_missing"],
        }
    ]
    assert await journey_review(api, skipped["customer_id"]) == [
        {
            "opportunity_id": o["id"],
            "product": "mortgage",
            "consent": False,  # open, and she has not consented yet
            "need_before_sale": True,
            "all_checkpoints": False,
            "exceptions": ["stage_out_of_order"],
        }
        for o in (skipped, went_back)
    ]
    assert (await journey_review(api, late_need["customer_id"]))[0]["need_before_sale"] is False
    assert (await journey_review(api, no_evidence["customer_id"]))[0]["all_checkpoints"] is False
    assert await journey_review(api, live["customer_id"]) == [
        {
            "opportunity_id": live["id"],
            "product": "mortgage",
            "consent": True,
            "need_before_sale": True,
            "all_checkpoints": True,
            "exceptions": [],
        }
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=yesterday", "query.from"),
        ("from=2026-02-30", "query.from"),
        ("to=2026-13-01", "query.to"),
        ("from=2026-03-01&to=2026-02-01", "query.to"),
        ("product=boat", "query.product"),
        ("owner_id=", "query.owner_id"),
    ],
)
async def test_the_audit_validates_its_parameters(api: Api, query: str, field: str) -> None:
    assert_validation_error(await api.get(f"{AUDIT}?{query}", expect=None), field)
