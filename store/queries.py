"""Read queries: what the API answers with, in as few round trips as it takes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import Checkpoint, Consent, Customer, Interaction, Need, Opportunity, SignatureRequest


@dataclass
class OpportunityRecord:
    opportunity: Opportunity
    checkpoints: list[Checkpoint] = field(default_factory=list)
    signature: SignatureRequest | None = None


async def opportunity_records(session: AsyncSession, opportunities: list[Opportunity]) -> list[OpportunityRecord]:
    ids = [o.id for o in opportunities]
    if not ids:
        return []
    checkpoints: dict[str, list[Checkpoint]] = defaultdict(list)
    for cp in await session.scalars(
        select(Checkpoint).where(Checkpoint.opportunity_id.in_(ids)).order_by(Checkpoint.opportunity_id, Checkpoint.seq)
    ):
        checkpoints[cp.opportunity_id].append(cp)
    signatures: dict[str, SignatureRequest] = {}
    for sig in await session.scalars(
        select(SignatureRequest).where(SignatureRequest.opportunity_id.in_(ids)).order_by(SignatureRequest.request_no)
    ):
        signatures[sig.opportunity_id] = sig  # the latest request wins
    return [OpportunityRecord(o, checkpoints[o.id], signatures.get(o.id)) for o in opportunities]


async def opportunity_record(session: AsyncSession, opportunity_id: str) -> OpportunityRecord | None:
    opp = await session.get(Opportunity, opportunity_id)
    if opp is None:
        return None
    return (await opportunity_records(session, [opp]))[0]


@dataclass
class Journey:
    customer: Customer
    needs: list[Need]
    interactions: list[Interaction]
    opportunities: list[OpportunityRecord]
    consents: list[Consent]


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
    opportunities = list(
        await session.scalars(
            select(Opportunity).where(Opportunity.customer_id == customer_id).order_by(Opportunity.opened_at)
        )
    )
    consents = list(
        await session.scalars(select(Consent).where(Consent.customer_id == customer_id).order_by(Consent.granted_at))
    )
    return Journey(customer, needs, interactions, await opportunity_records(session, opportunities), consents)
