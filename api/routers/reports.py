"""Reports for managers (scope `reports:read`): referral analytics and the pipeline.

Every report is SQL over the system of record (store/reports.py documents what each
number counts), never a workflow query, so it costs the same however many workflows run.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ReportReader, ServicesDep
from api.errors import invalid
from api.paging import read_cursor, write_cursor
from api.schemas import (
    AgeBandCount,
    OldestOpenReferral,
    OpportunityPipeline,
    PipelineReportOut,
    PracticeAuditItem,
    PracticeAuditOut,
    ProductStageCount,
    ReferralCounts,
    ReferralPipeline,
    ReferrerRef,
    ReferrerReportItem,
    ReferrerReportOut,
    StatusAgeCount,
)
from domain.types import Product
from store.audit import RULES, AuditKey, practice_audit
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


#: The practice audit's page size, by default and at most.
AUDIT_PAGE = 1000
AUDIT_PAGE_MAX = 5000


def _audit_place(key: AuditKey) -> str:
    at, opportunity_id, rule = key
    return write_cursor(at.isoformat(), opportunity_id, rule)


def _audit_key(after: str) -> AuditKey:
    at, opportunity_id, rule = read_cursor(after, 3)
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None or rule not in RULES:
        raise invalid("'after' is not the 'next' of a page of this report", field="query.after")
    return when, opportunity_id, rule


@router.get("/practice-audit", response_model=PracticeAuditOut)
async def practice_audit_report(
    svc: ServicesDep,
    who: ReportReader,
    from_: Annotated[date | None, Query(alias="from", description="First day (UTC) of opened_at, included.")] = None,
    to: Annotated[date | None, Query(description="Last day (UTC) of opened_at, included.")] = None,
    owner_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    product: Product | None = None,
    limit: Annotated[int, Query(ge=1, le=AUDIT_PAGE_MAX, description="Items per page.")] = AUDIT_PAGE,
    after: Annotated[
        str | None, Query(max_length=400, description="The `next` of the previous page: the page after it.")
    ] = None,
):
    """Sales-practice exceptions: one item per opportunity and rule it breaks.

    The rules (`consent_missing`, `need_after_opportunity`, `stage_out_of_order`,
    `evidence_missing`, `campaign_not_prequalified`) are defined, and written once, in
    store/audit.py; they read the store only, so imported and live records are judged
    alike. Ordered by opened_at, then opportunity id, then rule name, `limit` items a
    page; `next` (null on the last page) is the `after` that fetches the page after.
    """
    if from_ is not None and to is not None and to < from_:
        raise invalid(f"'to' ({to}) is before 'from' ({from_})", field="query.to")
    resume = _audit_key(after) if after is not None else None
    async with svc.sessions() as session:
        items = await practice_audit(
            session,
            svc.catalog,
            opened_from=from_,
            opened_to=to,
            owner_id=owner_id,
            product=product.value if product else None,
            after=resume,
            limit=limit + 1,  # one more than a page: is there a next one?
        )
    page = items[:limit]
    return PracticeAuditOut(
        items=[PracticeAuditItem.model_validate(i, from_attributes=True) for i in page],
        next=_audit_place(page[-1].key) if len(items) > limit else None,
    )
