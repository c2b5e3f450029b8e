"""Consents given in branch, and the withdrawal of any consent.

A branch consent is recorded by the employee who witnessed it (the actor, as the key
acts for them: api/actors.py) with the document the customer signed; SMS and
e-signature consents are recorded by their opportunity's workflow instead. A withdrawn
consent stays on record, marked with when, why and by whom: the journey shows both.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from sqlalchemy import update

from api.actors import actor_id_for, resolve_actor
from api.deps import CrmWriter, IdempotencyKey, ServicesDep
from api.errors import invalid, invalid_transition, not_found
from api.idempotency import idempotent, keyed_done
from api.schemas import BranchConsentCreate, ConsentOut, ConsentWithdraw
from api.views import consent_out
from domain.ids import resource_id
from domain.types import ConsentChannel
from store.audit_findings import consent_affects, judge
from store.models import Consent, Customer, Opportunity

router = APIRouter(tags=["consents"])


@router.post("/v1/customers/{customer_id}/consents", status_code=201, response_model=ConsentOut)
async def record_branch_consent(
    customer_id: str,
    body: BranchConsentCreate,
    request: Request,
    svc: ServicesDep,
    who: CrmWriter,
    key: IdempotencyKey = None,
):
    actor_id_for(who, body.actor_id)  # like the scope: before anything, never a key's stored answer

    async def create() -> ConsentOut:
        consent_id = resource_id("con", who.id, key)
        async with svc.sessions.begin() as session:
            if (done := await keyed_done(session, Consent, consent_id, key)) is not None:
                return consent_out(done)  # an earlier attempt committed it, then failed to answer
            if await session.get(Customer, customer_id) is None:
                raise not_found("customer", customer_id)
            if body.opportunity_id is not None:
                opp = await session.get(Opportunity, body.opportunity_id)
                if opp is None or opp.customer_id != customer_id:
                    raise invalid(
                        f"customer {customer_id} has no opportunity {body.opportunity_id!r}", field="opportunity_id"
                    )
                if opp.product != body.product.value:
                    raise invalid(
                        f"opportunity {opp.id} is for {opp.product}, not {body.product.value}", field="product"
                    )
            witness = await resolve_actor(session, who, body.actor_id)
            consent = Consent(
                id=consent_id,
                customer_id=customer_id,
                opportunity_id=body.opportunity_id,
                product=body.product.value,
                channel=ConsentChannel.branch.value,
                evidence=dict(body.evidence),
                granted_at=datetime.now(UTC),
                actor=witness.id,
                via=witness.via,
            )
            session.add(consent)
            await judge(session, svc.catalog, *consent_affects(customer_id, body.product.value))
            return consent_out(consent)  # inside the transaction: no answer, no row

    return await idempotent(request, svc, who, key, 201, create)


@router.post("/v1/consents/{consent_id}/withdraw", response_model=ConsentOut)
async def withdraw_consent(
    consent_id: str,
    body: ConsentWithdraw,
    request: Request,
    svc: ServicesDep,
    who: CrmWriter,
    key: IdempotencyKey = None,
):
    """Withdraw a consent, once: withdrawing it again is 409 and keeps the first
    withdrawal as it was. The one conditional update decides, so two racing withdrawals
    cannot both succeed."""
    actor_id_for(who, body.actor_id)  # like the scope: before anything, never a key's stored answer

    async def withdraw() -> ConsentOut:
        async with svc.sessions.begin() as session:
            consent = await session.get(Consent, consent_id)
            if consent is None:
                raise not_found("consent", consent_id)
            actor = await resolve_actor(session, who, body.actor_id)
            done = await session.execute(
                update(Consent)
                .where(Consent.id == consent_id, Consent.withdrawn_at.is_(None))
                .values(withdrawn_at=datetime.now(UTC), withdrawn_reason=body.reason, withdrawn_by=actor.id)
                .execution_options(synchronize_session=False)
            )
            if done.rowcount == 0:
                await session.refresh(consent)
                raise invalid_transition(
                    f"consent {consent_id} was withdrawn already",
                    withdrawn_at=consent.withdrawn_at.isoformat() if consent.withdrawn_at else None,
                )
            await judge(session, svc.catalog, *consent_affects(consent.customer_id, consent.product))
            await session.refresh(consent)
            return consent_out(consent)

    return await idempotent(request, svc, who, key, 200, withdraw)
