"""Scorecards (`GET /v1/reports/scorecards?period=YYYY-MM`): one item per employee for a
UTC month P, as SQL over the store (six grouped queries, whatever the number of
employees). spec/API.md ("Reports and review") defines the figures; the code computing
each one quotes its definition once, in its docstring.

P is [first instant of the month, first instant of the next) in UTC. An opportunity is
won at its `closed_at` (the time its `closed_won` checkpoint was entered); "their" is
its current `owner_id`. Customer-health events are the `customer_signals` rows the
events API recorded after the checks of domain/customer_health.py; an event's time is
its `occurred_at`.

Where each figure is defined (in the docstring of the function computing it, quoting
spec/API.md) — nowhere else:

- "their customers", `customers`: `_won_by`, `_opportunity_figures`;
- `units`, `amount`: `_opportunity_figures`;
- `nps`: `_nps_counts` (who counts) and `nps_score` (the formula and its rounding);
- `active_customer_share`: `_active_counts` ÷ `customers` (`share`);
- `on_time_payment_share`: `_payment_counts` (`share`);
- `referrals_made`, `referrals_converted`, `cross_lob_referrals`: `_referral_counts`.

Every employee gets an item, inactive ones too (their past months still count), ordered
by name then id; `employee_ids` / `manager_id` narrow the list to those employees / that
manager's direct reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import ColumnElement, and_, case, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from domain.customer_health import month_bounds
from store.models import CustomerSignal, Employee, Opportunity, Referral
from store.reports import _snapshot

#: NPS: a latest score at or above this is a promoter, at or below `DETRACTOR_MAX` a detractor.
PROMOTER_MIN = 9
DETRACTOR_MAX = 6


@dataclass
class Scorecard:
    employee_id: str
    name: str
    active: bool
    customers: int
    units: int
    amount: Decimal
    nps: float | None
    active_customer_share: float | None
    on_time_payment_share: float | None
    referrals_made: int
    referrals_converted: int
    cross_lob_referrals: int


def nps_score(promoters: int, detractors: int, responders: int) -> float | None:
    """100 × (promoters − detractors) ÷ responders, one decimal (half away from zero);
    None when no one responded."""
    if not responders:
        return None
    value = Decimal(100 * (promoters - detractors)) / Decimal(responders)
    return float(value.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def share(part: int, whole: int) -> float | None:
    """part ÷ whole as a fraction 0–1; None when whole is 0."""
    return part / whole if whole else None


def _count(cond: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)


@dataclass(frozen=True)
class _Scope:
    """Which employees the figures are computed for: these ids (None: every employee), as
    a list of values rather than a subquery, so the planner knows how few they are."""

    employee_ids: tuple[str, ...] | None

    def on(self, column: ColumnElement[str]) -> ColumnElement[bool]:
        return column.in_(self.employee_ids) if self.employee_ids is not None else true()


#: (name, id) of the last employee of a page: where the next page starts.
ScorecardKey = tuple[str, str]


async def scorecards(
    session: AsyncSession,
    *,
    period: date,
    employee_ids: list[str] | None = None,
    manager_id: str | None = None,
    after: ScorecardKey | None = None,
    limit: int | None = None,
) -> list[Scorecard]:
    """The scorecards of month `period` (its first day), one per employee in scope, by
    name then id (module docstring): the first `limit` (all: None) after `after`."""
    await _snapshot(session)
    start, end = month_bounds(period)
    chosen = select(Employee.id, Employee.name, Employee.active)
    if employee_ids is not None:
        chosen = chosen.where(Employee.id.in_(employee_ids))
    if manager_id is not None:
        chosen = chosen.where(Employee.manager_id == manager_id)
    if after is not None:
        chosen = chosen.where(or_(Employee.name > after[0], and_(Employee.name == after[0], Employee.id > after[1])))
    employees = (await session.execute(chosen.order_by(Employee.name, Employee.id).limit(limit))).all()
    everyone = employee_ids is None and manager_id is None and after is None and limit is None
    scope = _Scope(None if everyone else tuple(e.id for e in employees))
    opp = await _opportunity_figures(session, scope, start, end)
    nps = await _nps_counts(session, scope, start, end)
    active = await _active_counts(session, scope, end, f"{period:%Y-%m}")
    pay = await _payment_counts(session, scope, start, end)
    refs = await _referral_counts(session, scope, start, end)

    items = []
    for emp_id, name, is_active in employees:
        customers, units, amount = opp.get(emp_id, (0, 0, Decimal(0)))
        made, converted, cross = refs.get(emp_id, (0, 0, 0))
        on_time, payments = pay.get(emp_id, (0, 0))
        items.append(
            Scorecard(
                employee_id=emp_id,
                name=name,
                active=bool(is_active),
                customers=customers,
                units=units,
                amount=amount,
                nps=nps_score(*nps.get(emp_id, (0, 0, 0))),
                active_customer_share=share(active.get(emp_id, 0), customers),
                on_time_payment_share=share(on_time, payments),
                referrals_made=made,
                referrals_converted=converted,
                cross_lob_referrals=cross,
            )
        )
    return items


def _won_by(scope: _Scope, end: datetime) -> ColumnElement[bool]:
    """Opportunities of the employees in scope won before `end`. "Their customers" are the
    distinct customers of these rows: customers of opportunities they own that were won
    by the end of P."""
    return and_(Opportunity.status == "won", Opportunity.closed_at < end, scope.on(Opportunity.owner_id))


async def _opportunity_figures(
    session: AsyncSession, scope: _Scope, start: datetime, end: datetime
) -> dict[str, tuple]:
    """owner -> (`customers`, `units`, `amount`): `customers` counts their customers
    (the distinct customers of the same `_won_by` rows); `units`, `amount`: their opportunities
    won within P, and the sum of their amounts (one without an amount adds 0).

    Grouped by (owner, customer) first, then by owner: in the order of the won-by-owner
    index, so neither grouping sorts (a COUNT(DISTINCT) would sort every won row)."""
    in_p = Opportunity.closed_at >= start
    pairs = (
        select(
            Opportunity.owner_id.label("owner_id"),
            _count(in_p).label("units"),
            func.coalesce(func.sum(case((in_p, func.coalesce(Opportunity.amount, 0)), else_=0)), 0).label("amount"),
        )
        .where(_won_by(scope, end))
        .group_by(Opportunity.owner_id, Opportunity.customer_id)
        .subquery("pairs")
    )
    rows = await session.execute(
        select(pairs.c.owner_id, func.count(), func.sum(pairs.c.units), func.sum(pairs.c.amount)).group_by(
            pairs.c.owner_id
        )
    )
    return {
        owner: (int(customers), int(units), Decimal(str(amount)).quantize(Decimal("0.01")))
        for owner, customers, units, amount in rows
    }


async def _nps_counts(
    session: AsyncSession, scope: _Scope, start: datetime, end: datetime
) -> dict[str, tuple[int, int, int]]:
    """owner -> (promoters, detractors, responders): of their customers with an
    `nps.response` occurring within P, each one's latest score within P (latest
    `occurred_at`, then the one received last) — 9–10 a promoter, 0–6 a detractor."""
    # Their customers (owner, customer) meet the month's responses first, in one hash
    # join, and only those responses are ranked: a page of employees ranks its own.
    customers = (
        select(Opportunity.owner_id.label("owner_id"), Opportunity.customer_id.label("customer_id"))
        .where(_won_by(scope, end))
        .distinct()
        .subquery("customers")
    )
    ranked = (
        select(
            customers.c.owner_id,
            CustomerSignal.score.label("score"),
            func.row_number()
            .over(
                partition_by=(customers.c.owner_id, CustomerSignal.customer_id),
                order_by=(
                    CustomerSignal.occurred_at.desc(),
                    CustomerSignal.received_at.desc(),
                    CustomerSignal.event_id.desc(),
                ),
            )
            .label("rank"),
        )
        .join(customers, customers.c.customer_id == CustomerSignal.customer_id)
        .where(
            CustomerSignal.type == "nps.response",
            CustomerSignal.occurred_at >= start,
            CustomerSignal.occurred_at < end,
        )
        .subquery("ranked")
    )
    theirs = select(ranked.c.owner_id, ranked.c.score).where(ranked.c.rank == 1).subquery("theirs")
    rows = await session.execute(
        select(
            theirs.c.owner_id,
            _count(theirs.c.score >= PROMOTER_MIN),
            _count(theirs.c.score <= DETRACTOR_MAX),
            func.count(),
        ).group_by(theirs.c.owner_id)
    )
    return {owner: (int(p), int(d), int(n)) for owner, p, d, n in rows}


async def _active_counts(session: AsyncSession, scope: _Scope, end: datetime, period: str) -> dict[str, int]:
    """owner -> the numerator of `active_customer_share`: their customers with an
    `account.activity` for `period` P (any product) and `transactions` > 0; the share is
    that ÷ their customers, null if they have none (`share`)."""
    active = (
        select(CustomerSignal.customer_id)
        .where(
            CustomerSignal.type == "account.activity",
            CustomerSignal.month == period,
            CustomerSignal.transactions > 0,
        )
        .distinct()
        .subquery("active")
    )
    theirs = (
        select(Opportunity.owner_id.label("owner_id"), Opportunity.customer_id.label("customer_id"))
        .join(active, active.c.customer_id == Opportunity.customer_id)
        .where(_won_by(scope, end))
        .distinct()
        .subquery("theirs")
    )
    rows = await session.execute(select(theirs.c.owner_id, func.count()).group_by(theirs.c.owner_id))
    return {owner: int(n) for owner, n in rows}


async def _payment_counts(
    session: AsyncSession, scope: _Scope, start: datetime, end: datetime
) -> dict[str, tuple[int, int]]:
    """owner -> (on time, all) of `on_time_payment_share`: `mortgage.payment`s whose
    `due_date` is within P, on mortgages they own, paid on or before the due date, ÷ all
    of those; null if none (`share`). Dates are calendar dates, as
    domain/customer_health.calendar_date reads them: `signal_facts` recorded each
    payment's month (its due date's) and whether it was `on_time`."""
    rows = await session.execute(
        select(Opportunity.owner_id, _count(CustomerSignal.on_time.is_(True)), func.count())
        .select_from(CustomerSignal)
        .join(Opportunity, Opportunity.id == CustomerSignal.opportunity_id)
        .where(
            CustomerSignal.type == "mortgage.payment",
            CustomerSignal.month == f"{start:%Y-%m}",
            Opportunity.product == "mortgage",
            scope.on(Opportunity.owner_id),
        )
        .group_by(Opportunity.owner_id)
    )
    return {owner: (int(on_time), int(n)) for owner, on_time, n in rows}


async def _referral_counts(
    session: AsyncSession, scope: _Scope, start: datetime, end: datetime
) -> dict[str, tuple[int, int, int]]:
    """employee -> (`referrals_made`, `referrals_converted`, `cross_lob_referrals`):
    referrals they made created within P; referrals they made converted within P; of the
    made, those whose assignee's line of business differs from theirs (as recorded on the
    referral, else their current one; unassigned: not cross-line)."""
    assignee = aliased(Employee)
    referrer = aliased(Employee)
    made = and_(Referral.created_at >= start, Referral.created_at < end)
    converted = and_(Referral.status == "converted", Referral.decided_at >= start, Referral.decided_at < end)
    theirs = func.coalesce(Referral.referrer_line_of_business, referrer.line_of_business)
    cross = and_(made, assignee.line_of_business.is_not(None), assignee.line_of_business != theirs)
    rows = await session.execute(
        select(Referral.referrer_id, _count(made), _count(converted), _count(cross))
        .outerjoin(assignee, assignee.id == Referral.assignee_id)
        .outerjoin(referrer, referrer.id == Referral.referrer_id)
        .where(Referral.referrer_type == "employee", or_(made, converted), scope.on(Referral.referrer_id))
        .group_by(Referral.referrer_id)
    )
    return {emp: (int(m), int(c), int(x)) for emp, m, c, x in rows}
