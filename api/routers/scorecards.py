"""GET /v1/reports/scorecards (scope `reports:read`): each employee's month, as SQL over
the store. store/scorecards.py defines every figure, once, where it computes it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ReportReader, ServicesDep
from api.errors import invalid
from api.paging import read_cursor, write_cursor
from api.schemas import ScorecardItem, ScorecardsOut
from domain.customer_health import parse_period
from store.scorecards import scorecards

router = APIRouter(prefix="/v1/reports", tags=["reports"])

#: Employees per page, by default and at most: a page is what the 300 ms budget holds at
#: bank scale (bench/bench_bank_scale.py).
PAGE = 100
PAGE_MAX = 1000


@router.get("/scorecards", response_model=ScorecardsOut)
async def scorecards_report(
    svc: ServicesDep,
    who: ReportReader,
    period: Annotated[
        str | None, Query(description="The UTC month, YYYY-MM; default: the current one.", max_length=7)
    ] = None,
    employee_id: Annotated[
        list[str] | None, Query(description="Only these employees (repeat the parameter).", max_length=500)
    ] = None,
    manager_id: Annotated[
        str | None, Query(min_length=1, max_length=64, description="Only their direct reports.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX, description="Employees per page.")] = PAGE,
    after: Annotated[
        str | None, Query(max_length=400, description="The `next` of the previous page: the page after it.")
    ] = None,
):
    """One item per employee for the UTC month `period`: `customers`, `units`, `amount`,
    `nps`, `active_customer_share`, `on_time_payment_share`, `referrals_made`,
    `referrals_converted`, `cross_lob_referrals` — each defined in store/scorecards.py
    (spec/API.md, "Reports and review"). Every employee, inactive ones too, by name then
    id, `limit` a page; `next` (null on the last page) is the `after` of the next one."""
    text = period if period is not None else f"{datetime.now(UTC):%Y-%m}"
    try:
        first_day = parse_period(text)
    except ValueError as exc:
        raise invalid(f"query.period: {exc}", field="query.period") from None
    resume = read_cursor(after, 2) if after is not None else None
    async with svc.sessions() as session:
        items = await scorecards(
            session,
            period=first_day,
            employee_ids=employee_id,
            manager_id=manager_id,
            after=(resume[0], resume[1]) if resume else None,
            limit=limit + 1,  # one more than a page: is there a next one?
        )
    page = items[:limit]
    return ScorecardsOut(
        period=f"{first_day:%Y-%m}",
        items=[ScorecardItem.model_validate(i, from_attributes=True) for i in page],
        next=write_cursor(page[-1].name, page[-1].employee_id) if len(items) > limit else None,
    )
