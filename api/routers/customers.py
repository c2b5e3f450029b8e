"""Customers, their needs and interactions, and the customer journey."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

from fastapi import APIRouter, Request

from api.deps import CrmWriter, IdempotencyKey, ReportReader, ServicesDep
from api.errors import invalid, not_found
from api.idempotency import idempotent, keyed_done
from api.routers.referrals import referral_context
from api.schemas import (
    CustomerCreate,
    CustomerOut,
    InteractionCreate,
    InteractionOut,
    JourneyOut,
    NeedCreate,
    NeedOut,
)
from api.views import customer_out, interaction_out, journey_out, need_out
from domain.ids import resource_id
from store.audit import customer_review
from store.models import Customer, Employee, Household, Interaction, Need
from store.queries import customer_journey, referral_records

router = APIRouter(prefix="/v1/customers", tags=["customers"])

T = TypeVar("T")


@router.post("", status_code=201, response_model=CustomerOut)
async def create_customer(
    body: CustomerCreate, request: Request, svc: ServicesDep, who: CrmWriter, key: IdempotencyKey = None
):
    async def create() -> CustomerOut:
        customer_id = resource_id("cus", who.id, key)
        async with svc.sessions.begin() as session:
            if (done := await keyed_done(session, Customer, customer_id, key)) is not None:
                return customer_out(done)
            if body.household_id:
                if await session.get(Household, body.household_id) is None:
                    raise invalid(f"no household {body.household_id!r}", field="household_id")
                household_id = body.household_id
            else:
                household_id = resource_id("hh", who.id, key)
                session.add(Household(id=household_id, name=f"{body.name} household"))
                await session.flush()
            customer = Customer(id=customer_id, household_id=household_id, **body.model_dump(exclude={"household_id"}))
            session.add(customer)
            await session.flush()
            return customer_out(customer)  # inside the transaction: no answer, no row

    return await idempotent(request, svc, who, key, 201, create)


@router.get("/{customer_id}", response_model=CustomerOut)
async def get_customer(customer_id: str, svc: ServicesDep, who: CrmWriter):
    async with svc.sessions() as session:
        customer = await session.get(Customer, customer_id)
    if customer is None:
        raise not_found("customer", customer_id)
    return customer_out(customer)


@router.post("/{customer_id}/needs", status_code=201, response_model=NeedOut)
async def record_need(
    customer_id: str, body: NeedCreate, request: Request, svc: ServicesDep, who: CrmWriter, key: IdempotencyKey = None
):
    async def create() -> NeedOut:
        need_id = resource_id("need", who.id, key)
        async with svc.sessions.begin() as session:
            if (done := await keyed_done(session, Need, need_id, key)) is not None:
                return need_out(done)
            if await session.get(Customer, customer_id) is None:
                raise not_found("customer", customer_id)
            if await session.get(Employee, body.recorded_by) is None:
                raise invalid(f"no employee {body.recorded_by!r}", field="recorded_by")
            need = Need(id=need_id, customer_id=customer_id, recorded_at=datetime.now(UTC), **body.model_dump())
            session.add(need)
            await session.flush()
            return need_out(need)

    return await idempotent(request, svc, who, key, 201, create)


@router.post("/{customer_id}/interactions", status_code=201, response_model=InteractionOut)
async def log_interaction(
    customer_id: str,
    body: InteractionCreate,
    request: Request,
    svc: ServicesDep,
    who: CrmWriter,
    key: IdempotencyKey = None,
):
    async def create() -> InteractionOut:
        interaction_id = resource_id("int", who.id, key)
        async with svc.sessions.begin() as session:
            if (done := await keyed_done(session, Interaction, interaction_id, key)) is not None:
                return interaction_out(done)
            if await session.get(Customer, customer_id) is None:
                raise not_found("customer", customer_id)
            if body.employee_id and await session.get(Employee, body.employee_id) is None:
                raise invalid(f"no employee {body.employee_id!r}", field="employee_id")
            now = datetime.now(UTC)
            interaction = Interaction(
                id=interaction_id,
                customer_id=customer_id,
                channel=body.channel.value,
                employee_id=body.employee_id,
                summary=body.summary,
                occurred_at=body.occurred_at or now,
                recorded_at=now,
            )
            session.add(interaction)
            await session.flush()
            return interaction_out(interaction)

    return await idempotent(request, svc, who, key, 201, create)


@router.get("/{customer_id}/journey", response_model=JourneyOut)
async def journey(customer_id: str, svc: ServicesDep, who: ReportReader):
    async with svc.sessions() as session:
        j = await customer_journey(session, customer_id)
        if j is None:
            raise not_found("customer", customer_id)
        referrals = await referral_records(session, j.referrals, **referral_context(svc))
        review = await customer_review(session, svc.catalog, customer_id)
    return journey_out(j, referrals, review)
