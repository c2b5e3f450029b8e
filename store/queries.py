"""Read queries: what the API answers with, in as few round trips as it takes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, case, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, defer

from domain.routing import place_key
from domain.scoring import priority, referrer_score
from domain.types import Role
from store.models import (
    Checkpoint,
    Consent,
    Customer,
    Employee,
    Interaction,
    Need,
    Opportunity,
    Referral,
    ReferralHistory,
    SignatureRequest,
)


async def territory_managers(session: AsyncSession, states: list[str]) -> list[Employee]:
    """The active managers who list one of `states` (compared as routing compares places);
    if none does, every active manager: what must reach a manager reaches someone."""
    managers = list(
        await session.scalars(
            select(Employee).where(Employee.role == Role.manager.value, Employee.active).order_by(Employee.id)
        )
    )
    wanted = {place_key(s) for s in states}
    local = [m for m in managers if wanted & {place_key(s) for s in m.states}]
    return local or managers


@dataclass
class OpportunityRecord:
    opportunity: Opportunity
    checkpoints: list[Checkpoint] = field(default_factory=list)
    signature: SignatureRequest | None = None


#: An opportunity's latest signature request (the highest request number), for the outer
#: join of `opportunity_records`.
_LatestSignature = aliased(SignatureRequest)
_LATEST_REQUEST_NO = (
    select(func.max(SignatureRequest.request_no))
    .where(SignatureRequest.opportunity_id == Opportunity.id)
    .correlate(Opportunity)
    .scalar_subquery()
)


async def opportunity_records(session: AsyncSession, *where: Any) -> list[OpportunityRecord]:
    """The opportunities matching `where` (conditions on `Opportunity`), in opened_at
    order, each with its checkpoints and its latest signature request: two queries."""
    rows = (
        await session.execute(
            select(Opportunity, _LatestSignature)
            .outerjoin(
                _LatestSignature,
                and_(
                    _LatestSignature.opportunity_id == Opportunity.id,
                    _LatestSignature.request_no == _LATEST_REQUEST_NO,
                ),
            )
            .options(defer(_LatestSignature.document_html, raiseload=True))  # the document: the signing page's alone
            .where(*where)
            .order_by(Opportunity.opened_at, Opportunity.id)
        )
    ).all()
    if not rows:
        return []
    checkpoints: dict[str, list[Checkpoint]] = defaultdict(list)
    for cp in await session.scalars(
        select(Checkpoint)
        .where(Checkpoint.opportunity_id.in_([o.id for o, _ in rows]))
        .order_by(Checkpoint.opportunity_id, Checkpoint.seq)
    ):
        checkpoints[cp.opportunity_id].append(cp)
    return [OpportunityRecord(o, checkpoints[o.id], sig) for o, sig in rows]


async def opportunity_record(session: AsyncSession, opportunity_id: str) -> OpportunityRecord | None:
    found = await opportunity_records(session, Opportunity.id == opportunity_id)
    return found[0] if found else None


#: A referrer is its type and id together: a partner's id may look like an employee's.
ReferrerKey = tuple[str, str]


def referrer_tallies(referrer: ReferrerKey, since: datetime) -> Select:
    """One row: the bank's decided and converted referrals since `since`, and this
    referrer's, side by side (the inputs of `domain.scoring.referrer_score`)."""
    converted = Referral.status == "converted"
    mine = (Referral.referrer_type == referrer[0]) & (Referral.referrer_id == referrer[1])
    return select(
        func.count().label("bank_decided"),
        func.coalesce(func.sum(case((converted, 1), else_=0)), 0).label("bank_converted"),
        func.coalesce(func.sum(case((mine, 1), else_=0)), 0).label("decided"),
        func.coalesce(func.sum(case((mine & converted, 1), else_=0)), 0).label("converted"),
    ).where(Referral.decided_at.is_not(None), Referral.decided_at >= since)


def score_from_tallies(row: Any) -> int:
    return referrer_score(
        int(row.converted), int(row.decided), bank_converted=int(row.bank_converted), bank_decided=int(row.bank_decided)
    )


async def referrer_scores(
    session: AsyncSession, referrers: list[ReferrerKey], since: datetime
) -> dict[ReferrerKey, int]:
    """Current referrer scores (domain/scoring.py) over referrals decided since `since`."""
    keys = sorted(set(referrers))
    if len(keys) == 1:
        return {keys[0]: score_from_tallies((await session.execute(referrer_tallies(keys[0], since))).one())}
    converted = func.sum(case((Referral.status == "converted", 1), else_=0))
    in_window = (Referral.decided_at.is_not(None), Referral.decided_at >= since)
    bank_decided, bank_converted = (await session.execute(select(func.count(), converted).where(*in_window))).one()
    bank_decided, bank_converted = int(bank_decided or 0), int(bank_converted or 0)
    per = {
        (rtype, rid): (int(conv or 0), int(dec))
        for rtype, rid, dec, conv in await session.execute(
            select(Referral.referrer_type, Referral.referrer_id, func.count(), converted)
            .where(*in_window, tuple_(Referral.referrer_type, Referral.referrer_id).in_(keys))
            .group_by(Referral.referrer_type, Referral.referrer_id)
        )
    }
    return {
        key: referrer_score(*per.get(key, (0, 0)), bank_converted=bank_converted, bank_decided=bank_decided)
        for key in keys
    }


@dataclass
class ReferralRecord:
    referral: Referral
    history: list[ReferralHistory]
    referrer_score: int
    priority: float


async def referral_records(
    session: AsyncSession, referrals: list[Referral], *, now: datetime, window: timedelta, accept_sla: timedelta
) -> list[ReferralRecord]:
    """Referrals with their history, current referrer score and priority (domain/scoring.py)."""
    if not referrals:
        return []
    ids = [r.id for r in referrals]
    history: dict[str, list[ReferralHistory]] = defaultdict(list)
    for h in await session.scalars(
        select(ReferralHistory).where(ReferralHistory.referral_id.in_(ids)).order_by(ReferralHistory.seq)
    ):
        history[h.referral_id].append(h)
    scores = await referrer_scores(session, [(r.referrer_type, r.referrer_id) for r in referrals], now - window)
    out = []
    for r in referrals:
        score = scores[(r.referrer_type, r.referrer_id)]
        open_ = r.decided_at is None
        prio = priority(r.lead_score, score, (now - r.created_at) if open_ else timedelta(0), accept_sla)
        out.append(ReferralRecord(r, history[r.id], score, prio))
    return out


@dataclass
class Journey:
    customer: Customer
    needs: list[Need]
    interactions: list[Interaction]
    opportunities: list[OpportunityRecord]
    consents: list[Consent]
    referrals: list[Referral]


async def customer_journey(session: AsyncSession, customer_id: str) -> Journey | None:
    customer = await session.get(Customer, customer_id)
    if customer is None:
        return None
    needs = list(await session.scalars(select(Need).where(Need.customer_id == customer_id).order_by(Need.recorded_at)))
    interactions = list(
        await session.scalars(
            select(Interaction).where(Interaction.customer_id == customer_id).order_by(Interaction.occurred_at)
        )
    )
    consents = list(
        await session.scalars(select(Consent).where(Consent.customer_id == customer_id).order_by(Consent.granted_at))
    )
    referrals = list(
        await session.scalars(select(Referral).where(Referral.customer_id == customer_id).order_by(Referral.created_at))
    )
    return Journey(
        customer,
        needs,
        interactions,
        await opportunity_records(session, Opportunity.customer_id == customer_id),
        consents,
        referrals,
    )
