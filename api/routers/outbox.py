"""GET /v1/outbox: every e-mail needflow sent or would send, newest first.

With no NEEDFLOW_SMTP_URL configured (the embedded default) this is where messages go;
with SMTP they are listed too, with the time they were handed over (`sent_at`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from api.deps import ReportReader, ServicesDep
from api.schemas import OutboxList
from api.views import outbox_item
from store.models import Notification

router = APIRouter(prefix="/v1/outbox", tags=["outbox"])


@router.get("", response_model=OutboxList)
async def list_outbox(
    svc: ServicesDep,
    who: ReportReader,
    to_employee_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
):
    query = select(Notification).order_by(Notification.created_at.desc(), Notification.id).limit(limit)
    if to_employee_id:
        query = query.where(Notification.to_employee_id == to_employee_id)
    async with svc.sessions() as session:
        rows = list(await session.scalars(query))
    return OutboxList(items=[outbox_item(n) for n in rows])
