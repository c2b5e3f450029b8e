"""Rows written straight to the store for tests that need the past: opportunities opened,
moved through their stages and won (or lost) at chosen times, and referrals made and
decided at chosen times. The API would stamp them now; scorecards, customer-health checks,
the practice audit and the dashboard are about given months, and the audit about records
an old CRM or an import left behind, malpractice included, that the API would refuse.

Such an opportunity has no workflow: read it through reports, the journey, the dashboard
and the events API only, never through its workflow.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypedDict

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from store.models import Checkpoint, Consent, Customer, Household, Need, Opportunity, Referral

#: The stages whose checkpoint closes an opportunity, and how.
_WON_STAGES = ("closed_won", "opened")
_LOST_STAGE = "closed_lost"


class PlantedOpportunity(TypedDict):
    """What `insert_opportunity` wrote: the customer's and need's ids too, made or given
    (a journey or a second opportunity of the same customer needs them)."""

    id: str
    customer_id: str
    need_id: str


def _unique(prefix: str) -> str:
    return f"{prefix}_test_{uuid.uuid4().hex}"


def insert_opportunity(
    db: Engine,
    stages: Sequence[tuple[str, dict[str, Any]]] = (),
    *,
    owner_id: str,
    opened_at: datetime,
    step: timedelta = timedelta(days=1),
    product: str = "mortgage",
    status: str | None = None,
    closed_at: datetime | None = None,
    amount: str | None = None,
    customer_id: str | None = None,
    need_id: str | None = None,
    need_at: datetime | None = None,
    consents: Sequence[tuple[datetime, datetime | None]] = (),
    campaign_id: str | None = None,
) -> PlantedOpportunity:
    """An opportunity row, as an old CRM would have left it, in one transaction.

    `stages` (stage, evidence) become its checkpoints, one every `step` from `opened_at`,
    entered by `owner_id`; its stage is the last one and its status follows from it (won
    at `closed_won` or checking's `opened`, lost at `closed_lost`, else open), closed at
    the last checkpoint. Without stages it has no checkpoint: `status` (default `won`)
    sets the stage (`closed_won`, `closed_lost` or `interested`) and `closed_at` is as
    given, which a won or lost row must have (migration 0014's CHECK refuses it
    otherwise). Either way `status` and `closed_at`, when given, win.

    Without `customer_id` a customer is made in a household of her own; without `need_id`
    a need of hers is recorded at `need_at`, by default one `step` before it opened (so
    `need_after_opportunity` holds unless `need_at` says otherwise). `consents` are (granted,
    withdrawn) pairs of her consent to `product`. Nothing is checked against the process:
    skipped stages and missing evidence are written as given, for the audit to find.
    """
    if need_id is not None and customer_id is None:
        raise ValueError("a need_id needs the customer_id it belongs to")
    last = stages[-1][0] if stages else None
    if status is None:
        status = "won" if last in (None, *_WON_STAGES) else "lost" if last == _LOST_STAGE else "open"
    stage = last or {"won": "closed_won", "lost": _LOST_STAGE}.get(status, "interested")
    entered = [opened_at + i * step for i in range(len(stages))]
    if closed_at is None and entered and status != "open":
        closed_at = entered[-1]
    oid = _unique("opp")
    with Session(db) as session, session.begin():
        if customer_id is None:
            household = Household(id=_unique("hh"), name="Planted household")
            customer_id = _unique("cus")
            session.add(household)
            session.flush()
            session.add(Customer(id=customer_id, household_id=household.id, name="Planted Customer"))
            session.flush()
        if need_id is None:
            need_id = _unique("need")
            session.add(
                Need(
                    id=need_id,
                    customer_id=customer_id,
                    kind="buy_home",
                    description="A home",
                    recorded_by=owner_id,
                    recorded_at=need_at or opened_at - step,
                )
            )
            session.flush()
        session.add(
            Opportunity(
                id=oid,
                customer_id=customer_id,
                product=product,
                process_version=1,
                owner_id=owner_id,
                need_id=need_id,
                amount=Decimal(amount) if amount is not None else None,
                campaign_id=campaign_id,
                stage=stage,
                probability={"won": 100, "lost": 0}.get(status, 10),
                status=status,
                lost_reason="rates" if status == "lost" else None,
                last_seq=len(stages),
                workflow_id=f"opportunity-{oid}",
                opened_at=opened_at,
                closed_at=closed_at,
            )
        )
        session.flush()
        for seq, ((cp_stage, evidence), at) in enumerate(zip(stages, entered, strict=True), start=1):
            session.add(
                Checkpoint(
                    opportunity_id=oid,
                    seq=seq,
                    stage=cp_stage,
                    entered_at=at,
                    trigger="manual",
                    actor=owner_id,
                    evidence=evidence,
                )
            )
        for granted, withdrawn in consents:
            session.add(
                Consent(
                    id=_unique("con"),
                    customer_id=customer_id,
                    product=product,
                    channel="branch",
                    evidence={"document_id": "DOC-1"},
                    granted_at=granted,
                    withdrawn_at=withdrawn,
                )
            )
    return {"id": oid, "customer_id": customer_id, "need_id": need_id}


def insert_referral(
    db: Engine,
    *,
    referrer_id: str,
    created_at: datetime,
    referrer_type: str = "employee",
    referrer_lob: str | None = None,
    assignee_id: str | None = None,
    status: str = "assigned",
    decided_at: datetime | None = None,
    lead_score: int = 30,
) -> str:
    """A referral row made by `referrer_id` at `created_at` (decided at `decided_at`),
    written straight to the store: the API cannot backdate one."""
    rid = f"ref_test_{uuid.uuid4().hex}"
    with Session(db) as session, session.begin():
        session.add(
            Referral(
                id=rid,
                status=status,
                referrer_type=referrer_type,
                referrer_id=referrer_id,
                referrer_line_of_business=referrer_lob,
                prospect={"name": "Past Prospect"},
                expressed_interest="mortgage",
                source=referrer_type,
                assignee_id=assignee_id,
                lead_score=lead_score,
                lead_score_factors=[],
                features={},
                workflow_id=f"referral-{rid}",
                last_seq=1,
                created_at=created_at,
                decided_at=decided_at,
            )
        )
    return rid
