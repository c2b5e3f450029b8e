"""`POST /v1/imports` (admin): a bank's book of business from its old CRM.

All or nothing: the whole book is checked first (domain/imports.py: every problem, with
its path) and a 422 writes nothing; then the store writes it in chunks (store/imports.py),
and every open imported opportunity gets its workflow, resumed at its last checkpoint's
stage (workflows/opportunity.py, `OpportunityInput.imported`). Imported ids derive from
(source, kind, external id), so the same import again is all `unchanged`; it also starts
any workflow a failed earlier import did not get to.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel

from api.deps import Admin, ServicesDep
from api.errors import ApiError, refused
from api.workflows import answered
from domain.ids import opportunity_workflow_id
from domain.imports import KINDS, Resume, check, parse
from domain.opportunity import OpportunityInput
from store import imports as store

router = APIRouter(prefix="/v1/imports", tags=["imports"])

#: Workflows started at once while resuming open opportunities.
STARTS_AT_ONCE = 32


class ImportOut(BaseModel):
    created: dict[str, int]
    unchanged: dict[str, int]
    #: {kind: {external_id: id}}.
    ids: dict[str, dict[str, str]]


def _refused(problems: list[Any]) -> ApiError:
    return refused([p.as_dict() for p in problems], prefix="nothing was imported: ", whole="the import")


@router.post("", response_model=ImportOut)
async def import_book(body: Annotated[dict[str, Any], Body()], svc: ServicesDep, who: Admin) -> ImportOut:
    book, problems = parse(body)
    if book is None:
        raise _refused(problems)
    async with svc.sessions() as session:
        known, campaigns = await store.known(session, book)
    plan, more = check(book, svc.catalog, known, campaigns)
    problems += more
    if problems:
        raise _refused(problems)
    outcome = await store.write(svc.sessions, svc.catalog, plan)

    gate = asyncio.Semaphore(STARTS_AT_ONCE)

    async def resume(r: Resume) -> None:
        async with gate:
            opening = svc.starts.open_opportunity(
                OpportunityInput(
                    opportunity_id=r.opportunity_id,
                    customer_id=r.customer_id,
                    owner_id=r.owner_id,
                    need_id=r.need_id,
                    product=r.product,
                    amount=r.amount,
                    campaign_id=r.campaign_id,
                    opened_by=r.owner_id,
                    opened_via=who.name,
                    process=r.process,
                    imported=r.imported,
                )
            )
            # Within the deadline: a 503 names it, and the same import again resumes it.
            await answered(
                svc, opening, workflow_id=opportunity_workflow_id(r.opportunity_id), about={"id": r.opportunity_id}
            )

    await asyncio.gather(*(resume(r) for r in plan.resume if r.opportunity_id in outcome.open_opportunities))
    return ImportOut(
        created=outcome.created,
        unchanged=outcome.unchanged,
        ids={kind: ids for kind, ids in plan.ids.items() if kind in KINDS},
    )
