"""Report queries: referral analytics and the sales pipeline, as SQL over the store.

Reports read the system of record (the rows the workflows' activities keep), never the
workflows themselves. On PostgreSQL each report reads one consistent snapshot
(`_snapshot`: REPEATABLE READ), so its numbers add up even while referrals are being
decided; SQLite (pysqlite starts no transaction for reads) gives each query its own.

Referrers (`referrer_report`)
-----------------------------
The window is the `window_days` days before `now` (`since = now - window_days`):

- `referrals`: referrals the referrer made that were created within the window;
- `decided`, `converted`: the referrer's referrals *decided* within the window
  (`decided_at >= since`; converted + closed = decided) — exactly the referrals the
  referrer score counts, so `referrer_score` is the documented formula
  (domain/scoring.py) of these two numbers and the bank's `decided` / `converted`;
- `conversion_rate`: converted / decided, or null when nothing was decided;
- `referrer_score`: `store.queries.referrer_scores` over the same window (computed from
  these counts, which are the ones it counts);
- `cross_lob`: of the referrals created within the window, how many went to an assignee
  whose line of business differs from the referrer's (the referrer's line of business as
  recorded on the referral when it was made; referrers without one — partners,
  customers — and referrals without an assignee count 0).

A referrer appears when they made at least one referral created within the window.
Rows are ordered top referrers first: referrer score, then converted, then referrals
(all descending), then referrer id and type.

The bank row counts the same way over every referrer: `referrals` created within the
window, `decided` / `converted` decided within it.

Pipeline (`pipeline_report`)
----------------------------
Referrals by status (all of them), and the open ones (`assigned`, `unassigned`,
`accepted`) by age band, where age = now - created_at. The bands (`AGE_BANDS`), lower
bound inclusive, upper bound exclusive:

    <1d     age < 1 day
    1-7d    1 day  <= age < 7 days
    7-30d   7 days <= age < 30 days
    >=30d   age >= 30 days

A referral created "in the future" (clock skew) counts as `<1d`. Decided referrals
(`converted`, `closed`) count in `by_status` only.

Opportunities by product and stage (every opportunity: the stages `closed_won` and
`closed_lost` hold the decided ones), with the count and the sum of their amounts
(opportunities without an amount add 0), and by status (`open`, `won`, `lost`).

`owner_ids` (a team: the managers' dashboard) narrows the whole report to those
employees: the referrals assigned to them and the opportunities they own.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import and_, case, func, literal, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from domain.referral import OPEN_STATUSES
from domain.scoring import referrer_score
from store.models import Employee, Opportunity, Referral

#: (upper bound exclusive, band) of an open referral's age; ages at or above the last
#: bound are `TOP_AGE_BAND`. The module docstring documents them: change both together.
AGE_BANDS: tuple[tuple[timedelta, str], ...] = (
    (timedelta(days=1), "<1d"),
    (timedelta(days=7), "1-7d"),
    (timedelta(days=30), "7-30d"),
)
TOP_AGE_BAND = ">=30d"
BAND_NAMES: tuple[str, ...] = (*(band for _, band in AGE_BANDS), TOP_AGE_BAND)
#: Every referral status a row may hold; `by_status` lists each, 0 when none.
REFERRAL_STATUSES: tuple[str, ...] = ("assigned", "unassigned", "accepted", "converted", "closed")
OPPORTUNITY_STATUSES: tuple[str, ...] = ("open", "won", "lost")


def age_band(age: timedelta) -> str:
    """The band of an open referral of this age (module docstring)."""
    for bound, band in AGE_BANDS:
        if age < bound:
            return band
    return TOP_AGE_BAND


def _rate(converted: int, decided: int) -> float | None:
    return converted / decided if decided else None


async def _snapshot(session: AsyncSession) -> None:
    """On PostgreSQL, read the whole report from one snapshot (before the first query)."""
    if session.in_transaction() or session.bind.dialect.name != "postgresql":
        return  # the caller's transaction decides; SQLite reads are not snapshotted
    await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


# ---------------------------------------------------------------- referrers


@dataclass
class Counts:
    referrals: int
    decided: int
    converted: int

    @property
    def conversion_rate(self) -> float | None:
        return _rate(self.converted, self.decided)


@dataclass
class ReferrerRow(Counts):
    referrer_type: str
    referrer_id: str
    name: str | None
    referrer_score: int
    cross_lob: int


@dataclass
class ReferrerReport:
    window_days: int
    since: datetime
    bank: Counts
    items: list[ReferrerRow]


async def referrer_report(
    session: AsyncSession,
    *,
    now: datetime,
    window_days: int,
    limit: int | None = None,
    employee_ids: Sequence[str] | None = None,
) -> ReferrerReport:
    """Conversion, scores and cross-line-of-business referrals per referrer (module
    docstring); `employee_ids`: only those employees' rows (a manager's team), scored
    against the whole bank as ever."""
    await _snapshot(session)
    since = now - timedelta(days=window_days)
    created = Referral.created_at >= since
    decided = and_(Referral.decided_at.is_not(None), Referral.decided_at >= since)
    converted = and_(decided, Referral.status == "converted")

    def count(cond):  # noqa: ANN001, ANN202
        return func.count().filter(cond)  # COUNT(*) FILTER (WHERE ...): cheaper than SUM(CASE ...)

    assignee = aliased(Employee)
    cross = and_(
        created,
        Referral.referrer_line_of_business.is_not(None),
        assignee.line_of_business != Referral.referrer_line_of_business,
    )
    n_referrals = count(created)
    mine = (
        and_(Referral.referrer_type == "employee", Referral.referrer_id.in_(employee_ids))
        if employee_ids is not None
        else true()
    )
    rows = (
        await (await session.connection()).execute(  # Core rows: tens of thousands at bank scale
            select(
                Referral.referrer_type,
                Referral.referrer_id,
                n_referrals,
                count(decided),
                count(converted),
                count(cross),
            )
            .outerjoin(assignee, assignee.id == Referral.assignee_id)
            .where(or_(created, decided), mine)
            .group_by(Referral.referrer_type, Referral.referrer_id)
        )
    ).all()
    if employee_ids is None:
        # Every referrer's row is here: the bank is their sum (one scan, not two).
        bank = Counts(*(sum(int(r[i]) for r in rows) for i in (2, 3, 4)))
    else:
        bank_row = (
            await session.execute(select(count(created), count(decided), count(converted)).where(or_(created, decided)))
        ).one()
        bank = Counts(*(int(n) for n in bank_row))
    # A referrer appears when they made a referral created within the window.
    rows = [r for r in rows if r[2] > 0]

    # `decided` / `converted` here are exactly what `referrer_scores` counts over the same
    # window (and `bank` its bank totals): score each row from them, with no query per
    # referrer. At bank scale a window holds tens of thousands of referrers but only a few
    # hundred distinct (decided, converted) pairs: each pair is scored once, and only the
    # rows kept (`limit`) become ReferrerRows with their names.
    score = functools.cache(
        lambda dec, conv: referrer_score(conv, dec, bank_converted=bank.converted, bank_decided=bank.decided)
    )
    # Negated counts sort top referrers first in plain tuple order (no key function).
    order = (
        (-score(int(dec), int(conv)), -int(conv), -int(n), rid, rtype, int(dec), int(xlob))
        for rtype, rid, n, dec, conv, xlob in rows
    )
    ranked = [
        (-s, -conv, -n, rid, rtype, dec, xlob)
        for s, conv, n, rid, rtype, dec, xlob in (sorted(order) if limit is None else heapq.nsmallest(limit, order))
    ]
    staff = {r[3] for r in ranked if r[4] == "employee"}
    names = (
        dict((await session.execute(select(Employee.id, Employee.name).where(Employee.id.in_(staff)))).all())
        if staff
        else {}
    )
    items = [
        ReferrerRow(
            referrals=n,
            decided=dec,
            converted=conv,
            referrer_type=rtype,
            referrer_id=rid,
            name=names.get(rid) if rtype == "employee" else None,
            referrer_score=s,
            cross_lob=xlob,
        )
        for s, conv, n, rid, rtype, dec, xlob in ranked
    ]
    return ReferrerReport(window_days=window_days, since=since, bank=bank, items=items)


# ---------------------------------------------------------------- pipeline


@dataclass
class OldestOpen:
    id: str
    age_hours: float
    status: str
    assignee_id: str | None


@dataclass
class ProductStage:
    product: str
    stage: str
    count: int
    amount: Decimal


@dataclass
class PipelineReport:
    referrals_by_status: dict[str, int]
    #: band -> open referrals, every band, in `BAND_NAMES` order
    open_by_band: dict[str, int]
    #: (status, band, count) for every open status and band
    open_by_status_and_band: list[tuple[str, str, int]]
    open_total: int
    oldest_open: OldestOpen | None
    opportunities_by_product_and_stage: list[ProductStage]
    opportunities_by_status: dict[str, int]


def _band_case(now: datetime):  # noqa: ANN202
    """A SQL CASE giving the age band of `Referral.created_at` (thresholds computed here)."""
    return case(
        *((Referral.created_at > now - bound, literal(band)) for bound, band in AGE_BANDS),
        else_=literal(TOP_AGE_BAND),
    )


async def pipeline_report(
    session: AsyncSession, *, now: datetime, owner_ids: Sequence[str] | None = None
) -> PipelineReport:
    """Referrals by status and age band, opportunities by product and stage (module docstring)."""
    await _snapshot(session)
    mine = Referral.assignee_id.in_(owner_ids) if owner_ids is not None else true()
    owned = Opportunity.owner_id.in_(owner_ids) if owner_ids is not None else true()
    by_status = dict.fromkeys(REFERRAL_STATUSES, 0)
    for status, n in await session.execute(select(Referral.status, func.count()).where(mine).group_by(Referral.status)):
        by_status[status] = int(n)

    is_open = and_(Referral.status.in_(OPEN_STATUSES), mine)
    # Band in a subquery, grouped outside it: PostgreSQL cannot match a GROUP BY on a CASE
    # whose bound thresholds are separate parameters.
    banded = select(Referral.status.label("status"), _band_case(now).label("band")).where(is_open).subquery()
    cells = {
        (status, band): int(n)
        for status, band, n in await session.execute(
            select(banded.c.status, banded.c.band, func.count()).group_by(banded.c.status, banded.c.band)
        )
    }
    by_status_and_band = [(s, b, cells.get((s, b), 0)) for s in OPEN_STATUSES for b in BAND_NAMES]
    by_band = {b: sum(n for (_, band), n in cells.items() if band == b) for b in BAND_NAMES}

    oldest = (
        await session.execute(
            select(Referral.id, Referral.created_at, Referral.status, Referral.assignee_id)
            .where(is_open)
            .order_by(Referral.created_at, Referral.id)
            .limit(1)
        )
    ).first()
    oldest_open = (
        OldestOpen(
            id=oldest.id,
            age_hours=round((now - oldest.created_at).total_seconds() / 3600, 2),
            status=oldest.status,
            assignee_id=oldest.assignee_id,
        )
        if oldest
        else None
    )

    # One scan for both: by (product, stage, status), added up here both ways.
    cells: dict[tuple[str, str], tuple[int, Decimal]] = {}
    opp_status = dict.fromkeys(OPPORTUNITY_STATUSES, 0)
    for p, s, status, n, amount in await session.execute(
        select(Opportunity.product, Opportunity.stage, Opportunity.status, func.count(), func.sum(Opportunity.amount))
        .where(owned)
        .group_by(Opportunity.product, Opportunity.stage, Opportunity.status)
    ):
        count, total = cells.get((p, s), (0, Decimal(0)))
        cells[(p, s)] = (count + int(n), total + Decimal(str(amount or 0)))
        opp_status[status] = opp_status.get(status, 0) + int(n)
    product_stage = [
        ProductStage(product=p, stage=s, count=n, amount=total.quantize(Decimal("0.01")))
        for (p, s), (n, total) in sorted(cells.items())
    ]

    return PipelineReport(
        referrals_by_status=by_status,
        open_by_band=by_band,
        open_by_status_and_band=by_status_and_band,
        open_total=sum(by_band.values()),
        oldest_open=oldest_open,
        opportunities_by_product_and_stage=product_stage,
        opportunities_by_status=opp_status,
    )
