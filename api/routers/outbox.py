"""GET /v1/outbox (admin): every e-mail needflow sent or would send, newest first.

Admin only: messages carry customers' contact details (and, soon, their signing links).

With no NEEDFLOW_SMTP_URL configured (the embedded default) this is where messages go
(they stay `pending`); with SMTP they are listed too, with their delivery: `status`
(domain/mail.py), `attempts`, `last_error`, `next_attempt_at`, and the time they were
handed over (`sent_at`). `?status=failed` (or `unknown`) lists those that need a person.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from api.deps import Admin, ServicesDep
from api.schemas import OutboxList
from api.views import outbox_item
from domain.mail import MailStatus
from store.models import Notification

router = APIRouter(prefix="/v1/outbox", tags=["outbox"])


@router.get("", response_model=OutboxList)
async def list_outbox(
    svc: ServicesDep,
    who: Admin,
    to_employee_id: Annotated[str | None, Query(max_length=64)] = None,
    to: Annotated[str | None, Query(max_length=320, description="the recipient's e-mail address")] = None,
    status: Annotated[MailStatus | None, Query(description="the messages in this delivery status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
):
    query = select(Notification).order_by(Notification.created_at.desc(), Notification.id).limit(limit)
    if to_employee_id:
        query = query.where(Notification.to_employee_id == to_employee_id)
    if to:
        query = query.where(Notification.to_address == to)
    if status:
        query = query.where(Notification.status == status)
    async with svc.sessions() as session:
        rows = list(await session.scalars(query))
    return OutboxList(items=[outbox_item(n) for n in rows])
