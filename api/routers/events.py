"""POST /v1/events: backend systems tell needflow what happened.

An opportunity's event is applied by its workflow as an Update whose id is the event
id, so Temporal itself de-duplicates a repeat; the store's processed_events answer a
later repeat as `duplicate` without asking the workflow. Concurrent copies (a sender
retrying before its first try answered) race for the event's claim (`EventClaim`): the
one that claims it answers `applied`, every other copy asks the workflow too (so the
event is applied even if the claimant died before asking) and answers `duplicate`, and
a copy with another body or subject `409 conflict`. A claim whose update the workflow
refused is released: the id was not used. A workflow that does not answer within the
deadline is 503 naming the event (api/workflows.py); the claim stays, so the same event
sent again asks the same update (its id is the event's) and answers `duplicate` with the
opportunity once the workflow has taken it, or 409 (releasing the claim) if it refused.
Customer events (NPS, account activity, payments) are scorecard inputs: checked by the
rules of domain/customer_health.py and recorded once each.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from api.deps import EventWriter, Services, ServicesDep
from api.errors import ApiError, field_path, invalid, not_found, refused
from api.routers.opportunities import read_opportunity
from api.schemas import EventIn, EventOut
from api.workflows import update_opportunity
from domain.customer_health import (
    MortgageFacts,
    Problem,
    activity_problems,
    payment_date_problems,
    payment_mortgage_problems,
    signal_facts,
)
from domain.events import EVENT_DATA
from domain.ids import event_update_id
from domain.opportunity import EventCommand, EventResult, event_body_sha256
from domain.types import EventType
from observability.metrics import counts_events
from store.models import Customer, CustomerSignal, EventClaim, Opportunity, ProcessedEvent
from workflows.opportunity import OpportunityWorkflow

router = APIRouter(prefix="/v1/events", tags=["events"])


def _accepted(out: EventOut) -> JSONResponse:
    return JSONResponse(jsonable_encoder(out), status_code=202)


@router.post("", status_code=202, response_model=EventOut)
@counts_events  # needflow_events_total{type, result} (observability/names.py)
async def receive_event(body: EventIn, svc: ServicesDep, who: EventWriter):
    data_model, subject_field = EVENT_DATA[body.type]
    subject = getattr(body, subject_field)
    if not subject:
        raise invalid(f"a {body.type.value!r} event needs {subject_field}", field=subject_field)
    try:
        data = data_model.model_validate(body.data).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        raise refused(
            [{"field": field_path(("data", *e["loc"])), "message": e["msg"], "type": e["type"]} for e in exc.errors()]
        ) from None
    if problems := _data_problems(body, data):
        raise _invalid_data(problems)

    async with svc.sessions() as session:
        seen = await session.get(ProcessedEvent, body.id)
    if seen is not None:
        return _accepted(await _duplicate(svc, body, subject, data, seen))

    if subject_field == "customer_id":
        return _accepted(await _customer_event(svc, body, subject, data))

    async with svc.sessions() as session:
        if await session.get(Opportunity, subject) is None:
            raise not_found("opportunity", subject)
    claimed = await _claim(svc, body, subject, data)
    cmd = EventCommand(event_id=body.id, type=body.type, occurred_at=body.occurred_at, data=data, source=who.name)
    try:
        result: EventResult = await update_opportunity(
            svc,
            subject,
            OpportunityWorkflow.apply_event,
            cmd,
            update_id=event_update_id(body.id),
            result_type=EventResult,
            about={"id": body.id, "opportunity_id": subject},
        )
    except ApiError as exc:
        # Refused: nothing was applied, the id stays free. Also when this is a copy: the
        # claimant's own wait may have ended in a 503 before the refusal came.
        if exc.status == 409:
            await _release(svc, body.id, event_body_sha256(body.type.value, data))
        raise
    answer = result.result if claimed else "duplicate"
    return _accepted(EventOut(id=body.id, result=answer, opportunity=await read_opportunity(svc, subject)))


async def _claim(svc: Services, body: EventIn, subject: str, data: dict) -> bool:
    """Claim the event's id for this delivery: True when it is the first; False for a
    copy of the same event; 409 for another event under the same id (module docstring)."""
    digest = event_body_sha256(body.type.value, data)
    try:
        async with svc.sessions.begin() as session:
            session.add(EventClaim(id=body.id, type=body.type.value, subject_id=subject, body_sha256=digest))
        return True
    except IntegrityError:
        async with svc.sessions() as session:
            claim = await session.get(EventClaim, body.id)
        if claim is None:  # released (refused) meanwhile: this copy is asked afresh
            return await _claim(svc, body, subject, data)
        if (claim.type, claim.subject_id, claim.body_sha256) != (body.type.value, subject, digest):
            raise _conflict(body.id, claim.type, claim.subject_id) from None
        return False


async def _release(svc: Services, event_id: str, digest: str) -> None:
    """Free a refused event's id: its claim, if it is this event's (a corrected event that
    claimed the id meanwhile keeps it)."""
    async with svc.sessions.begin() as session:
        await session.execute(delete(EventClaim).where(EventClaim.id == event_id, EventClaim.body_sha256 == digest))


def _conflict(event_id: str, used_type: str, used_subject: str) -> ApiError:
    return ApiError(
        409,
        "conflict",
        f"event id {event_id!r} was already used for another event ({used_type} on {used_subject})",
        {"id": event_id},
    )


async def _duplicate(svc: Services, body: EventIn, subject: str, data: dict, seen: ProcessedEvent) -> EventOut:
    """The same id again: a duplicate if it is the same event, a conflict if it is another."""
    if (seen.type, seen.subject_id, seen.body_sha256) != (
        body.type.value,
        subject,
        event_body_sha256(body.type.value, data),
    ):
        raise _conflict(body.id, seen.type, seen.subject_id)
    if seen.type in {t.value for t, (_, f) in EVENT_DATA.items() if f == "customer_id"}:
        return EventOut(id=body.id, result="duplicate", customer_id=seen.subject_id)
    return EventOut(id=body.id, result="duplicate", opportunity=await read_opportunity(svc, seen.subject_id))


def _invalid_data(problems: list[Problem]) -> ApiError:
    """422 naming every field refused by the rules of domain/customer_health.py."""
    return refused([{"field": field, "message": message} for field, message in problems])


def _data_problems(body: EventIn, data: dict) -> list[Problem]:
    """The rules of domain/customer_health.py that need nothing from the store."""
    now = datetime.now(UTC)
    if body.type is EventType.account_activity:
        return activity_problems(data, occurred_at=body.occurred_at, now=now)
    if body.type is EventType.mortgage_payment:
        return payment_date_problems(data, occurred_at=body.occurred_at, now=now)
    return []


async def _customer_event(svc: Services, body: EventIn, customer_id: str, data: dict) -> EventOut:
    """Record a customer-health event once: the customer must exist (404) and, for a
    payment, the mortgage be hers (422, domain/customer_health.py); a refused event writes
    nothing. A copy racing this one is answered as the same id again (`_duplicate`)."""
    digest = event_body_sha256(body.type.value, data)
    try:
        async with svc.sessions.begin() as session:
            if await session.get(Customer, customer_id) is None:
                raise not_found("customer", customer_id)
            if body.type is EventType.mortgage_payment:
                opp = await session.get(Opportunity, data["opportunity_id"])
                facts = (
                    MortgageFacts(opp.id, opp.customer_id, opp.product, opp.status, opp.opened_at, opp.closed_at)
                    if opp is not None
                    else None
                )
                if refused := payment_mortgage_problems(data, customer_id=customer_id, mortgage=facts):
                    raise _invalid_data(refused)
            session.add(ProcessedEvent(id=body.id, type=body.type.value, subject_id=customer_id, body_sha256=digest))
            await session.flush()
            health = signal_facts(body.type.value, data, body.occurred_at)
            session.add(
                CustomerSignal(
                    event_id=body.id,
                    customer_id=customer_id,
                    type=body.type.value,
                    data=data,
                    occurred_at=body.occurred_at,
                    month=health.month,
                    score=health.score,
                    transactions=health.transactions,
                    opportunity_id=health.opportunity_id,
                    on_time=health.on_time,
                )
            )
    except IntegrityError:
        async with svc.sessions() as session:
            seen = await session.get(ProcessedEvent, body.id)
        if seen is None:
            raise
        return await _duplicate(svc, body, customer_id, data, seen)
    return EventOut(id=body.id, result="applied", customer_id=customer_id)
