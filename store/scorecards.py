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

- "their customers", `customers`: `_customers_of`, `_opportunity_figures`;
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

from sqlalchemy import ColumnElement, Subquery, and_, case, exists, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from domain.customer_health import month_bounds
from store.models import CustomerSignal, Employee, Opportunity, ProcessedEvent, Referral
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
    """Which employees the report is about, as a condition on an employee id column."""

    employee_ids: tuple[str, ...] | None
    manager_id: str | None

    def on(self, column: ColumnElement[str]) -> ColumnElement[bool]:
        conds: list[ColumnElement[bool]] = []
        if self.employee_ids is not None:
            conds.append(column.in_(self.employee_ids))
        if self.manager_id is not None:
            conds.append(column.in_(select(Employee.id).where(Employee.manager_id == self.manager_id)))
        return and_(true(), *conds)


async def scorecards(
    session: AsyncSession,
    *,
    period: date,
    employee_ids: list[str] | None = None,
    manager_id: str | None = None,
) -> list[Scorecard]:
    """The scorecards of month `period` (its first day), one per employee in scope, by
    name then id (module docstring)."""
    await _snapshot(session)
    start, end = month_bounds(period)
    scope = _Scope(tuple(employee_ids) if employee_ids is not None else None, manager_id)

    employees = (
        await session.execute(
            select(Employee.id, Employee.name, Employee.active)
            .where(scope.on(Employee.id))
            .order_by(Employee.name, Employee.id)
        )
    ).all()
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
    """Opportunities of the employees in scope won before `end`."""
    return and_(Opportunity.status == "won", Opportunity.closed_at < end, scope.on(Opportunity.owner_id))


def _customers_of(scope: _Scope, end: datetime) -> Subquery:
    """(owner_id, customer_id), distinct: "their customers" — customers of opportunities
    they own that were won by the end of P."""
    return (
        select(Opportunity.owner_id.label("owner_id"), Opportunity.customer_id.label("customer_id"))
        .where(_won_by(scope, end))
        .distinct()
        .subquery("customers_of")
    )


async def _opportunity_figures(
    session: AsyncSession, scope: _Scope, start: datetime, end: datetime
) -> dict[str, tuple]:
    """owner -> (`customers`, `units`, `amount`): `customers` counts their customers
    (`_customers_of`: the same `_won_by` rows); `units`, `amount`: their opportunities
    won within P, and the sum of their amounts (one without an amount adds 0)."""
    in_p = Opportunity.closed_at >= start
    rows = await session.execute(
        select(
            Opportunity.owner_id,
            func.count(Opportunity.customer_id.distinct()),
            _count(in_p),
            func.coalesce(func.sum(case((in_p, func.coalesce(Opportunity.amount, 0)), else_=0)), 0),
        )
        .where(_won_by(scope, end))
        .group_by(Opportunity.owner_id)
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
    customers_of = _customers_of(scope, end)
    ranked = (
        select(
            CustomerSignal.customer_id.label("customer_id"),
            CustomerSignal.data["score"].as_integer().label("score"),
            func.row_number()
            .over(
                partition_by=CustomerSignal.customer_id,
                order_by=(
                    CustomerSignal.occurred_at.desc(),
                    ProcessedEvent.processed_at.desc(),
                    CustomerSignal.event_id.desc(),
                ),
            )
            .label("rank"),
        )
        .join(ProcessedEvent, ProcessedEvent.id == CustomerSignal.event_id)
        .where(
            CustomerSignal.type == "nps.response",
            CustomerSignal.occurred_at >= start,
            CustomerSignal.occurred_at < end,
            CustomerSignal.customer_id.in_(select(Opportunity.customer_id).where(_won_by(scope, end))),
        )
        .subquery("ranked")
    )
    rows = await session.execute(
        select(
            customers_of.c.owner_id,
            _count(ranked.c.score >= PROMOTER_MIN),
            _count(ranked.c.score <= DETRACTOR_MAX),
            func.count(),
        )
        .join(ranked, and_(ranked.c.customer_id == customers_of.c.customer_id, ranked.c.rank == 1))
        .group_by(customers_of.c.owner_id)
    )
    return {owner: (int(p), int(d), int(n)) for owner, p, d, n in rows}


async def _active_counts(session: AsyncSession, scope: _Scope, end: datetime, period: str) -> dict[str, int]:
    """owner -> the numerator of `active_customer_share`: their customers with an
    `account.activity` for `period` P (any product) and `transactions` > 0; the share is
    that ÷ their customers, null if they have none (`share`)."""
    customers_of = _customers_of(scope, end)
    active = exists().where(
        CustomerSignal.customer_id == customers_of.c.customer_id,
        CustomerSignal.type == "account.activity",
        CustomerSignal.data["period"].as_string() == period,
        CustomerSignal.data["transactions"].as_integer() > 0,
    )
    rows = await session.execute(
        select(customers_of.c.owner_id, func.count()).where(active).group_by(customers_of.c.owner_id)
    )
    return {owner: int(n) for owner, n in rows}


async def _payment_counts(
    session: AsyncSession, scope: _Scope, start: datetime, end: datetime
) -> dict[str, tuple[int, int]]:
    """owner -> (on time, all) of `on_time_payment_share`: `mortgage.payment`s whose
    `due_date` is within P, on mortgages they own, paid on or before the due date, ÷ all
    of those; null if none (`share`). Dates are calendar dates: the first ten characters
    of each, as domain/customer_health.calendar_date reads them."""
    due = func.substr(CustomerSignal.data["due_date"].as_string(), 1, 10)
    paid = func.substr(CustomerSignal.data["paid_date"].as_string(), 1, 10)
    rows = await session.execute(
        select(Opportunity.owner_id, _count(paid <= due), func.count())
        .select_from(CustomerSignal)
        .join(Opportunity, Opportunity.id == CustomerSignal.data["opportunity_id"].as_string())
        .where(
            CustomerSignal.type == "mortgage.payment",
            due >= f"{start:%Y-%m-%d}",
            due < f"{end:%Y-%m-%d}",
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
