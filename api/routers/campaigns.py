"""Campaigns (seed 002): create one with a non-push goal and prequalification rules,
prequalify a customer (recorded, with every rule's outcome), read its progress.

The goal and rules are validated by domain/campaigns.py (as the request body, and again
when a stored campaign is read back); the rules are evaluated there too, over plain facts
store/campaigns.py reads. Opening a campaign opportunity (api/routers/opportunities.py)
asks `require_prequalified`: the customer's latest prequalification must be qualified.

Scopes: creating and prequalifying are `crm:write` (front ends acting for staff);
reading a campaign with its progress is `reports:read` — progress against a goal is a
manager's figure, and staff who prequalify customers do so on the customer's needs, not
on how far the campaign is from its target.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncSession

from api.actors import actor_id_for, resolve_actor
from api.deps import CrmWriter, IdempotencyKey, ReportReader, ServicesDep
from api.errors import invalid, invalid_transition, not_found
from api.idempotency import idempotent, keyed_done
from api.schemas import (
    CampaignCreate,
    CampaignOut,
    CampaignProgressOut,
    GoalOut,
    PrequalificationOut,
    PrequalifyIn,
    ProgressOut,
    ReasonOut,
)
from domain.campaigns import (
    Campaign as CampaignRules,
)
from domain.campaigns import (
    CampaignGoal,
    PrequalificationRule,
    RuleConflict,
    check_campaign_opening,
    check_rules,
    prequalify,
)
from domain.ids import resource_id
from domain.opportunity import TransitionRefused
from store.audit_findings import judge, prequalification_affects
from store.campaigns import campaign_progress, customer_facts, latest_prequalification
from store.models import Campaign, Customer, Prequalification

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])


def campaign_rules(row: Campaign) -> CampaignRules:
    """The stored campaign as the rules read it, its goal and rules validated again."""
    return CampaignRules(
        id=row.id,
        name=row.name,
        starts_on=row.starts_on,
        ends_on=row.ends_on,
        goal=CampaignGoal.model_validate(
            {"metric": row.goal_metric, "target": row.goal_target, "line_of_business": row.goal_line_of_business}
        ),
        prequalification=tuple(PrequalificationRule.model_validate(r) for r in row.prequalification),
    )


def campaign_out(row: Campaign) -> CampaignOut:
    rules = campaign_rules(row)
    return CampaignOut(
        id=row.id,
        name=row.name,
        starts_on=row.starts_on,
        ends_on=row.ends_on,
        goal=GoalOut(
            metric=rules.goal.metric,
            target=rules.goal.target_value(),
            line_of_business=rules.goal.line_of_business.value if rules.goal.line_of_business else None,
        ),
        prequalification=[r.as_data() for r in rules.prequalification],
        created_at=row.created_at,
        created_via=row.created_via,
    )


def prequalification_out(row: Prequalification) -> PrequalificationOut:
    return PrequalificationOut(
        id=row.id,
        campaign_id=row.campaign_id,
        customer_id=row.customer_id,
        qualified=row.qualified,
        reasons=[ReasonOut.model_validate(r) for r in row.reasons],
        at=row.at,
        actor=row.actor,
        via=row.via,
    )


async def require_prequalified(session: AsyncSession, campaign_id: str, customer_id: str) -> None:
    """Opening a campaign opportunity: 404 for an unknown campaign; 409 `invalid_transition`
    unless the customer's latest prequalification for it qualified (details say why)."""
    if await session.get(Campaign, campaign_id) is None:
        raise not_found("campaign", campaign_id)
    try:
        check_campaign_opening(
            campaign_id, customer_id, await latest_prequalification(session, campaign_id, customer_id)
        )
    except TransitionRefused as exc:
        raise invalid_transition(exc.message, **exc.details) from None


@router.post("", status_code=201, response_model=CampaignOut)
async def create_campaign(
    body: CampaignCreate, request: Request, svc: ServicesDep, who: CrmWriter, key: IdempotencyKey = None
):
    try:
        check_rules(body.prequalification)
    except RuleConflict as exc:
        raise invalid(exc.message, field=f"prequalification.{exc.index}") from None

    async def create() -> CampaignOut:
        campaign_id = resource_id("cmp", who.id, key)
        async with svc.sessions.begin() as session:
            if (done := await keyed_done(session, Campaign, campaign_id, key)) is not None:
                return campaign_out(done)  # an earlier attempt committed it, then failed to answer
            campaign = Campaign(
                id=campaign_id,
                name=body.name,
                starts_on=body.starts_on,
                ends_on=body.ends_on,
                goal_metric=body.goal.metric,
                goal_target=body.goal.target,
                goal_line_of_business=body.goal.line_of_business.value if body.goal.line_of_business else None,
                prequalification=[r.as_data() for r in body.prequalification],
                created_at=datetime.now(UTC),
                created_via=who.name,
            )
            session.add(campaign)
            await session.flush()
            return campaign_out(campaign)  # inside the transaction: no answer, no row

    return await idempotent(request, svc, who, key, 201, create)


@router.get("/{campaign_id}", response_model=CampaignProgressOut)
async def get_campaign(campaign_id: str, svc: ServicesDep, who: ReportReader):
    async with svc.sessions() as session:
        row = await session.get(Campaign, campaign_id)
        if row is None:
            raise not_found("campaign", campaign_id)
        out = campaign_out(row)
        progress = await campaign_progress(session, campaign_id, campaign_rules(row).goal)
    return CampaignProgressOut(
        **out.model_dump(),
        progress=ProgressOut(metric=progress.metric, value=progress.value, target=progress.target, won=progress.won),
    )


@router.post("/{campaign_id}/prequalify", response_model=PrequalificationOut)
async def prequalify_customer(
    campaign_id: str,
    body: PrequalifyIn,
    request: Request,
    svc: ServicesDep,
    who: CrmWriter,
    key: IdempotencyKey = None,
):
    actor_id_for(who, body.actor_id)  # like the scope: before anything, never a key's stored answer

    async def run() -> PrequalificationOut:
        prequalification_id = resource_id("pq", who.id, key)
        async with svc.sessions.begin() as session:
            if (done := await keyed_done(session, Prequalification, prequalification_id, key)) is not None:
                return prequalification_out(done)
            row = await session.get(Campaign, campaign_id)
            if row is None:
                raise not_found("campaign", campaign_id)
            customer = await session.get(Customer, body.customer_id)
            if customer is None:
                raise invalid(f"no customer {body.customer_id!r}", field="customer_id")
            actor = await resolve_actor(session, who, body.actor_id)
            outcome = prequalify(campaign_rules(row).prequalification, await customer_facts(session, customer))
            record = Prequalification(
                id=prequalification_id,
                campaign_id=campaign_id,
                customer_id=customer.id,
                qualified=outcome.qualified,
                reasons=[r.model_dump(mode="json") for r in outcome.reasons],
                at=datetime.now(UTC),
                actor=actor.id,
                via=actor.via,
            )
            session.add(record)
            await judge(session, svc.catalog, *prequalification_affects(customer.id, campaign_id))
            return prequalification_out(record)

    return await idempotent(request, svc, who, key, 200, run)
