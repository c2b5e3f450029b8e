"""Rows written straight to the store for tests that need the past: opportunities won
(or lost) at a chosen time and referrals made and decided at chosen times. The API
would stamp them now; scorecards and customer-health checks are about given months.

Such an opportunity has no workflow and no checkpoints: read it through reports and the
events API only (the customer-health and scorecard tests), never through its workflow.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from store.models import Opportunity, Referral


def insert_opportunity(
    db: Engine,
    *,
    customer_id: str,
    need_id: str,
    owner_id: str,
    product: str = "mortgage",
    status: str = "won",
    opened_at: datetime,
    closed_at: datetime | None = None,
    amount: str | None = None,
) -> str:
    """An opportunity row: `won` / `lost` at `closed_at`, or `open`."""
    oid = f"opp_test_{uuid.uuid4().hex}"
    stage = {"won": "closed_won", "lost": "closed_lost"}.get(status, "interested")
    with Session(db) as session, session.begin():
        session.add(
            Opportunity(
                id=oid,
                customer_id=customer_id,
                product=product,
                process_version=1,
                owner_id=owner_id,
                need_id=need_id,
                amount=Decimal(amount) if amount is not None else None,
                stage=stage,
                probability={"won": 100, "lost": 0}.get(status, 10),
                status=status,
                lost_reason="rates" if status == "lost" else None,
                last_seq=0,
                workflow_id=f"opportunity-{oid}",
                opened_at=opened_at,
                closed_at=closed_at,
            )
        )
    return oid


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
