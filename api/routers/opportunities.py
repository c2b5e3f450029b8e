"""Opportunities: open one (starting its workflow), read it, and command it.

Every command is an Update on the opportunity's workflow; its validator is the only
place the process's rules are checked. The answer is read back from the store, which
the workflow's activity wrote before the update returned.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.actors import actor_id_for, resolve_actor
from api.deps import CrmWriter, IdempotencyKey, Principal, Services, ServicesDep
from api.errors import invalid, not_found
from api.idempotency import idempotent
from api.routers.campaigns import require_prequalified
from api.schemas import ActorOnly, Advance, CloseLost, OpportunityCreate, OpportunityOut
from api.views import opportunity_out
from api.workflows import answered, update_opportunity
from domain.ids import keyed_update_id, opportunity_workflow_id, resource_id
from domain.opportunity import (
    Actor,
    AdvanceCommand,
    CloseLostCommand,
    OpportunityAnswer,
    OpportunityInput,
    ResendSignatureCommand,
    TransitionRefused,
    check_opening,
)
from store.models import Customer, Employee, Need, Opportunity
from store.queries import opportunity_record
from workflows.opportunity import OpportunityWorkflow

router = APIRouter(prefix="/v1/opportunities", tags=["opportunities"])


async def read_opportunity(svc: Services, opportunity_id: str) -> OpportunityOut:
    async with svc.sessions() as session:
        rec = await opportunity_record(session, opportunity_id)
    if rec is None:
        raise not_found("opportunity", opportunity_id)
    return opportunity_out(rec)


async def _existing(svc: Services, opportunity_id: str, who: Principal, actor_id: str | None) -> Actor:
    async with svc.sessions() as session:
        if await session.get(Opportunity, opportunity_id) is None:
            raise not_found("opportunity", opportunity_id)
        return await resolve_actor(session, who, actor_id)


@router.post("", status_code=201, response_model=OpportunityOut)
async def open_opportunity(
    body: OpportunityCreate, request: Request, svc: ServicesDep, who: CrmWriter, key: IdempotencyKey = None
):
    async def create() -> OpportunityOut:
        try:
            process = check_opening(svc.catalog.latest(body.product), body.product, body.amount)
        except TransitionRefused as exc:  # a bad request here, not a refused transition
            message = exc.message
            if exc.details.get("field") == "product":
                message += "; opportunities exist for " + ", ".join(p.value for p in svc.catalog.products())
            raise invalid(message, **exc.details) from None
        async with svc.sessions() as session:
            customer = await session.get(Customer, body.customer_id)
            if customer is None:
                raise invalid(f"no customer {body.customer_id!r}", field="customer_id")
            need = await session.get(Need, body.need_id)
            if need is None or need.customer_id != customer.id:
                raise invalid(
                    "an opportunity needs a recorded need of this customer", field="need_id", need_id=body.need_id
                )
            owner = await session.get(Employee, body.owner_id)
            if owner is None:
                raise invalid(f"no employee {body.owner_id!r}", field="owner_id")
            if not owner.active:
                raise invalid(f"employee {body.owner_id} is inactive", field="owner_id")
            if body.campaign_id is not None:  # 404 unknown; 409 unless the latest prequalification qualified
                await require_prequalified(session, body.campaign_id, customer.id)
        opportunity_id = resource_id("opp", who.id, key)
        wf_input = OpportunityInput(
            opportunity_id=opportunity_id,
            customer_id=customer.id,
            owner_id=owner.id,
            need_id=need.id,
            product=body.product,
            amount=body.amount,
            referral_id=body.referral_id,
            campaign_id=body.campaign_id,
            opened_by=owner.id,
            opened_via=who.name,
            process=process,
        )
        # Within the deadline, else 503 naming the id: repeated with the same key, the
        # start lands on the same workflow and update (workflows/starts.py) and answers 201.
        await answered(
            svc,
            svc.starts.open_opportunity(wf_input),
            workflow_id=opportunity_workflow_id(opportunity_id),
            about={"id": opportunity_id},
        )
        return await read_opportunity(svc, opportunity_id)

    return await idempotent(request, svc, who, key, 201, create)


@router.get("/{opportunity_id}", response_model=OpportunityOut)
async def get_opportunity(opportunity_id: str, svc: ServicesDep, who: CrmWriter):
    return await read_opportunity(svc, opportunity_id)


@router.post("/{opportunity_id}/advance", response_model=OpportunityOut)
async def advance(
    opportunity_id: str, body: Advance, request: Request, svc: ServicesDep, who: CrmWriter, key: IdempotencyKey = None
):
    actor_id_for(who, body.actor_id)  # like the scope: before anything, never a key's stored answer

    async def run() -> OpportunityOut:
        actor = await _existing(svc, opportunity_id, who, body.actor_id)
        cmd = AdvanceCommand(actor=actor, to_stage=body.to_stage, evidence=body.evidence)
        await update_opportunity(
            svc,
            opportunity_id,
            OpportunityWorkflow.advance,
            cmd,
            update_id=keyed_update_id(who.id, key),
            result_type=OpportunityAnswer,
        )
        return await read_opportunity(svc, opportunity_id)

    return await idempotent(request, svc, who, key, 200, run)


@router.post("/{opportunity_id}/close-lost", response_model=OpportunityOut)
async def close_lost(
    opportunity_id: str, body: CloseLost, request: Request, svc: ServicesDep, who: CrmWriter, key: IdempotencyKey = None
):
    actor_id_for(who, body.actor_id)  # like the scope: before anything, never a key's stored answer

    async def run() -> OpportunityOut:
        actor = await _existing(svc, opportunity_id, who, body.actor_id)
        await update_opportunity(
            svc,
            opportunity_id,
            OpportunityWorkflow.close_lost,
            CloseLostCommand(actor=actor, reason=body.reason),
            update_id=keyed_update_id(who.id, key),
            result_type=OpportunityAnswer,
        )
        return await read_opportunity(svc, opportunity_id)

    return await idempotent(request, svc, who, key, 200, run)


@router.post("/{opportunity_id}/resend-signature", response_model=OpportunityOut)
async def resend_signature(
    opportunity_id: str, body: ActorOnly, request: Request, svc: ServicesDep, who: CrmWriter, key: IdempotencyKey = None
):
    actor_id_for(who, body.actor_id)  # like the scope: before anything, never a key's stored answer

    async def run() -> OpportunityOut:
        actor = await _existing(svc, opportunity_id, who, body.actor_id)
        await update_opportunity(
            svc,
            opportunity_id,
            OpportunityWorkflow.resend_signature,
            ResendSignatureCommand(actor=actor),
            update_id=keyed_update_id(who.id, key),
            result_type=OpportunityAnswer,
        )
        return await read_opportunity(svc, opportunity_id)

    return await idempotent(request, svc, who, key, 200, run)
