"""GET /v1/reports/scorecards (scope `reports:read`): each employee's month, as SQL over
the store. store/scorecards.py defines every figure, once, where it computes it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ReportReader, ServicesDep
from api.errors import invalid
from api.schemas import ScorecardItem, ScorecardsOut
from domain.customer_health import parse_period
from store.scorecards import scorecards

router = APIRouter(prefix="/v1/reports", tags=["reports"])


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
):
    """One item per employee for the UTC month `period`: `customers`, `units`, `amount`,
    `nps`, `active_customer_share`, `on_time_payment_share`, `referrals_made`,
    `referrals_converted`, `cross_lob_referrals` — each defined in store/scorecards.py
    (spec/API.md, "Reports and review"). Every employee, inactive ones too, by name."""
    text = period if period is not None else f"{datetime.now(UTC):%Y-%m}"
    try:
        first_day = parse_period(text)
    except ValueError as exc:
        raise invalid(f"query.period: {exc}", field="query.period") from None
    async with svc.sessions() as session:
        items = await scorecards(session, period=first_day, employee_ids=employee_id, manager_id=manager_id)
    return ScorecardsOut(
        period=f"{first_day:%Y-%m}",
        items=[ScorecardItem.model_validate(i, from_attributes=True) for i in items],
    )
