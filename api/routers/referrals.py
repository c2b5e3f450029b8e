"""Referrals: create one (its workflow scores, routes and notifies before we answer),
read it, and command it; an employee's open referrals in priority order.

Every command is an Update on the referral's workflow; its validator (domain/referral.py)
is the only place the lifecycle's rules are checked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.actors import actor_id_for, resolve_actor
from api.deps import CrmWriter, IdempotencyKey, Principal, Services, ServicesDep
from api.errors import invalid, not_found
from api.idempotency import idempotent
from api.schemas import ActorOnly, CloseReferral, Convert, Reassign, ReferralCreate, ReferralList, ReferralOut, Reject
from api.views import referral_out
from api.workflows import answered, run_update
from domain.ids import keyed_update_id, referral_workflow_id, resource_id
from domain.opportunity import Actor
from domain.referral import (
    WORKING_STATUSES,
    AcceptCommand,
    CloseCommand,
    ConvertCommand,
    NeedSpec,
    Prospect,
    ReassignCommand,
    ReferralAnswer,
    ReferralInput,
    ReferralSla,
    Referrer,
    RejectCommand,
)
from domain.types import LineOfBusiness, Product
from store.models import Customer, Employee, Referral
from store.queries import referral_records
from workflows.referral import ReferralWorkflow

router = APIRouter(tags=["referrals"])


def referral_context(svc: Services) -> dict[str, Any]:
    """What a referral's priority and referrer score are computed with (domain/scoring.py)."""
    return {
        "now": datetime.now(UTC),
        "window": timedelta(days=svc.settings.referrer_window_days),
        "accept_sla": timedelta(seconds=svc.settings.referral_accept_sla),
    }


async def read_referral(svc: Services, referral_id: str) -> ReferralOut:
    async with svc.sessions() as session:
        row = await session.get(Referral, referral_id)
        if row is None:
            raise not_found("referral", referral_id)
        [rec] = await referral_records(session, [row], **referral_context(svc))
    return referral_out(rec)


@router.post("/v1/referrals", status_code=201, response_model=ReferralOut)
async def create_referral(
    body: ReferralCreate, request: Request, svc: ServicesDep, who: CrmWriter, key: IdempotencyKey = None
):
    async def create() -> ReferralOut:
        if (body.customer_id is None) == (body.prospect is None):
            raise invalid("give exactly one of customer_id and prospect", field="customer_id")
        referrer_lob = None
        city = state = None
        async with svc.sessions() as session:
            if body.referrer.type == "employee":
                employee = await session.get(Employee, body.referrer.id)
                if employee is None:
                    raise invalid(f"no employee {body.referrer.id!r}", field="referrer.id")
                referrer_lob = LineOfBusiness(employee.line_of_business)
            elif body.referrer.type == "customer" and await session.get(Customer, body.referrer.id) is None:
                raise invalid(f"no customer {body.referrer.id!r}", field="referrer.id")
            if body.customer_id is not None:
                customer = await session.get(Customer, body.customer_id)
                if customer is None:
                    raise invalid(f"no customer {body.customer_id!r}", field="customer_id")
                city, state = customer.city, customer.state
            else:
                assert body.prospect is not None
                city, state = body.prospect.city, body.prospect.state
        referral_id = resource_id("ref", who.id, key)
        wf_input = ReferralInput(
            referral_id=referral_id,
            referrer=Referrer(type=body.referrer.type, id=body.referrer.id),
            referrer_line_of_business=referrer_lob,
            customer_id=body.customer_id,
            prospect=Prospect(**body.prospect.model_dump()) if body.prospect else None,
            expressed_interest=body.expressed_interest,
            value=body.value,
            notes=body.notes,
            city=city,
            state=state,
            source=body.source or body.referrer.type,
            created_via=who.name,
            rules=svc.routing_rules,
            sla=ReferralSla(
                accept_seconds=svc.settings.referral_accept_sla, followup_seconds=svc.settings.referral_followup_sla
            ),
        )
        # Within the deadline, else 503 naming the id: repeated with the same key, the
        # start lands on the same workflow and update (workflows/starts.py) and answers 201.
        await answered(
            svc,
            svc.starts.open_referral(wf_input),
            workflow_id=referral_workflow_id(referral_id),
            about={"id": referral_id},
        )
        return await read_referral(svc, referral_id)

    return await idempotent(request, svc, who, key, 201, create)


@router.get("/v1/referrals/{referral_id}", response_model=ReferralOut)
async def get_referral(referral_id: str, svc: ServicesDep, who: CrmWriter):
    return await read_referral(svc, referral_id)


Make = Callable[[AsyncSession, Referral, Actor], Awaitable[Any]]


async def _command(
    svc: Services, referral_id: str, actor_id: str | None, update: Any, make: Make, *, key: str | None, who: Principal
) -> ReferralOut:
    async with svc.sessions() as session:
        row = await session.get(Referral, referral_id)
        if row is None:
            raise not_found("referral", referral_id)
        cmd = await make(session, row, await resolve_actor(session, who, actor_id))
    await run_update(
        svc,
        referral_workflow_id(referral_id),
        update,
        cmd,
        update_id=keyed_update_id(who.id, key),
        result_type=ReferralAnswer,
        closed_message="this referral is converted or closed; nothing more can happen to it",
        about={"id": referral_id},
    )
    return await read_referral(svc, referral_id)


@router.post("/v1/referrals/{referral_id}/accept", response_model=ReferralOut)
async def accept(
    referral_id: str, body: ActorOnly, request: Request, svc: ServicesDep, who: CrmWriter, key: IdempotencyKey = None
):
    actor_id_for(who, body.actor_id)  # like the scope: before anything, never a key's stored answer

    async def make(session: AsyncSession, row: Referral, actor: Actor) -> AcceptCommand:
        return AcceptCommand(actor=actor)

    return await idempotent(
        request,
        svc,
        who,
        key,
        200,
        lambda: _command(svc, referral_id, body.actor_id, ReferralWorkflow.accept, make, key=key, who=who),
    )


@router.post("/v1/referrals/{referral_id}/reject", response_model=ReferralOut)
async def reject(
    referral_id: str, body: Reject, request: Request, svc: ServicesDep, who: CrmWriter, key: IdempotencyKey = None
):
    actor_id_for(who, body.actor_id)  # like the scope: before anything, never a key's stored answer

    async def make(session: AsyncSession, row: Referral, actor: Actor) -> RejectCommand:
        return RejectCommand(actor=actor, reason=body.reason)

    return await idempotent(
        request,
        svc,
        who,
        key,
        200,
        lambda: _command(svc, referral_id, body.actor_id, ReferralWorkflow.reject, make, key=key, who=who),
    )


@router.post("/v1/referrals/{referral_id}/reassign", response_model=ReferralOut)
async def reassign(
    referral_id: str, body: Reassign, request: Request, svc: ServicesDep, who: CrmWriter, key: IdempotencyKey = None
):
    actor_id_for(who, body.actor_id)  # like the scope: before anything, never a key's stored answer

    async def make(session: AsyncSession, row: Referral, actor: Actor) -> ReassignCommand:
        target = await session.get(Employee, body.to_employee_id)
        if target is None:
            raise invalid(f"no employee {body.to_employee_id!r}", field="to_employee_id")
        if not target.active:  # one who left the bank gets no work, by hand or by routing
            raise invalid(f"employee {body.to_employee_id} is inactive", field="to_employee_id")
        return ReassignCommand(actor=actor, to_employee_id=body.to_employee_id, reason=body.reason)

    return await idempotent(
        request,
        svc,
        who,
        key,
        200,
        lambda: _command(svc, referral_id, body.actor_id, ReferralWorkflow.reassign, make, key=key, who=who),
    )


@router.post("/v1/referrals/{referral_id}/convert", response_model=ReferralOut)
async def convert(
    referral_id: str, body: Convert, request: Request, svc: ServicesDep, who: CrmWriter, key: IdempotencyKey = None
):
    actor_id_for(who, body.actor_id)  # like the scope: before anything, never a key's stored answer

    async def make(session: AsyncSession, row: Referral, actor: Actor) -> ConvertCommand:
        # The product's current process; None is refused by the workflow's validator (409).
        process = svc.catalog.latest(Product(row.expressed_interest))
        return ConvertCommand(actor=actor, amount=body.amount, need=NeedSpec(**body.need.model_dump()), process=process)

    return await idempotent(
        request,
        svc,
        who,
        key,
        200,
        lambda: _command(svc, referral_id, body.actor_id, ReferralWorkflow.convert, make, key=key, who=who),
    )


@router.post("/v1/referrals/{referral_id}/close", response_model=ReferralOut)
async def close(
    referral_id: str,
    body: CloseReferral,
    request: Request,
    svc: ServicesDep,
    who: CrmWriter,
    key: IdempotencyKey = None,
):
    actor_id_for(who, body.actor_id)  # like the scope: before anything, never a key's stored answer

    async def make(session: AsyncSession, row: Referral, actor: Actor) -> CloseCommand:
        return CloseCommand(actor=actor, reason=body.reason)

    return await idempotent(
        request,
        svc,
        who,
        key,
        200,
        lambda: _command(svc, referral_id, body.actor_id, ReferralWorkflow.close, make, key=key, who=who),
    )


@router.get("/v1/employees/{employee_id}/referrals", response_model=ReferralList, tags=["employees"])
async def employee_referrals(employee_id: str, svc: ServicesDep, who: CrmWriter):
    """The employee's open referrals (assigned or accepted), highest priority first."""
    async with svc.sessions() as session:
        if await session.get(Employee, employee_id) is None:
            raise not_found("employee", employee_id)
        rows = list(
            await session.scalars(
                select(Referral).where(Referral.assignee_id == employee_id, Referral.status.in_(WORKING_STATUSES))
            )
        )
        recs = await referral_records(session, rows, **referral_context(svc))
    recs.sort(key=lambda r: (-r.priority, r.referral.created_at, r.referral.id))
    return ReferralList(items=[referral_out(r) for r in recs])
