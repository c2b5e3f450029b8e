"""Reports for managers (scope `reports:read`): referral analytics and the pipeline.

Every report is SQL over the system of record (store/reports.py documents what each
number counts), never a workflow query, so it costs the same however many workflows run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ReportReader, ServicesDep
from api.schemas import (
    AgeBandCount,
    OldestOpenReferral,
    OpportunityPipeline,
    PipelineReportOut,
    ProductStageCount,
    ReferralCounts,
    ReferralPipeline,
    ReferrerRef,
    ReferrerReportItem,
    ReferrerReportOut,
    StatusAgeCount,
)
from store.reports import Counts, pipeline_report, referrer_report

router = APIRouter(prefix="/v1/reports", tags=["reports"])


def _counts(c: Counts) -> dict:
    return {
        "referrals": c.referrals,
        "decided": c.decided,
        "converted": c.converted,
        "conversion_rate": c.conversion_rate,
    }


@router.get("/referrers", response_model=ReferrerReportOut)
async def referrers(
    svc: ServicesDep,
    who: ReportReader,
    window_days: Annotated[
        int | None,
        Query(ge=1, le=3650, description="Days back from now; default: NEEDFLOW_REFERRER_WINDOW_DAYS (90)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
):
    """Conversion by referrer and referrer scores, top referrers first.

    One item per referrer who made a referral created within the window: `referrals`
    made in the window, `decided` / `converted` within the window (the referrals the
    referrer score counts), `conversion_rate` = converted / decided (null when none was
    decided), `referrer_score` (domain/scoring.py, from these counts and the bank's) and
    `cross_lob` (referrals that went to an assignee of another line of business).
    `bank` counts the same over every referrer. Ordered by referrer score, converted,
    referrals (descending), then referrer id.
    """
    days = window_days or svc.settings.referrer_window_days
    async with svc.sessions() as session:
        report = await referrer_report(session, now=datetime.now(UTC), window_days=days, limit=limit)
    return ReferrerReportOut(
        window_days=report.window_days,
        bank=ReferralCounts(**_counts(report.bank)),
        items=[
            ReferrerReportItem(
                referrer=ReferrerRef(type=r.referrer_type, id=r.referrer_id, name=r.name),  # type: ignore[arg-type]
                referrer_score=r.referrer_score,
                cross_lob=r.cross_lob,
                **_counts(r),
            )
            for r in report.items
        ],
    )


@router.get("/pipeline", response_model=PipelineReportOut)
async def pipeline(svc: ServicesDep, who: ReportReader):
    """Referrals by status and, the open ones, by age band; opportunities by product and stage.

    Open referrals are `assigned`, `unassigned` and `accepted`; their age is now minus
    `created_at`, banded `<1d`, `1-7d`, `7-30d`, `>=30d` (lower bound inclusive). Decided
    referrals count in `by_status` only. `oldest_open` is the open referral waiting
    longest (null when none is open). Opportunities: every one by product and stage
    (`closed_won` / `closed_lost` hold the decided ones) with the sum of their amounts,
    and by status.
    """
    async with svc.sessions() as session:
        report = await pipeline_report(session, now=datetime.now(UTC))
    oldest = report.oldest_open
    return PipelineReportOut(
        referrals=ReferralPipeline(
            by_status=report.referrals_by_status,
            by_age_band=[AgeBandCount(band=b, open=n) for b, n in report.open_by_band.items()],  # type: ignore[arg-type]
            by_status_and_age=[
                StatusAgeCount(status=s, band=b, count=n)  # type: ignore[arg-type]
                for s, b, n in report.open_by_status_and_band
            ],
            open_total=report.open_total,
            oldest_open=(
                OldestOpenReferral(
                    id=oldest.id,
                    age_hours=oldest.age_hours,
                    status=oldest.status,  # type: ignore[arg-type]
                    assignee_id=oldest.assignee_id,
                )
                if oldest
                else None
            ),
        ),
        opportunities=OpportunityPipeline(
            by_product_and_stage=[
                ProductStageCount(product=p.product, stage=p.stage, count=p.count, amount=p.amount)
                for p in report.opportunities_by_product_and_stage
            ],
            by_status=report.opportunities_by_status,
        ),
    )
