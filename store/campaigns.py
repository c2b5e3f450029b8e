"""Campaign queries: what prequalification reads about a customer, the latest
prequalification, and a campaign's progress against its goal — each metric defined here,
once, as SQL over the store (domain/campaigns.py holds the goals and rules themselves).

Terms:

- A customer **holds** a product when they have a won opportunity in it.
- An opportunity is **won at** its `closed_at` (the checkpoint that won it; every decided
  row has one: migration 0014's CHECK).
- The campaign's **won opportunities**: opportunities whose `campaign_id` is the campaign
  and whose status is `won` — whenever they were won (the campaign's dates do not bound
  them: only a prequalified customer's opportunity carries the campaign at all).

Progress (`campaign_progress`), by the goal's metric:

- `new_households`: households whose first won opportunity (the earliest won at; the
  smallest opportunity id among equal times) is a won opportunity of this campaign. A
  count.
- `cross_sell_ratio`: of the campaign's won opportunities, the share whose customer already
  held another product — a won opportunity in a different product, won strictly before
  this one was won. A fraction 0–1; 0 while the campaign has no won opportunity.
- `product_line_units`: the campaign's won opportunities whose product is in the goal's
  line of business (`domain.campaigns.PRODUCT_LINES`). A count.

Every figure reads the campaign's own opportunities (and, for the first two, what their
households and customers held), so one campaign's progress never counts another's sales.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from domain.campaigns import PRODUCT_LINES, CampaignGoal, CustomerFacts, LatestPrequalification
from domain.types import LineOfBusiness, OpportunityStatus, Product
from store.models import Customer, Need, Opportunity, Prequalification

WON = OpportunityStatus.won.value
_PRODUCTS = frozenset(p.value for p in Product)


def won_at(opp: type[Opportunity]) -> ColumnElement:
    """When a won opportunity was won (see the module docstring)."""
    return opp.closed_at


async def customer_facts(session: AsyncSession, customer: Customer) -> CustomerFacts:
    """What the prequalification rules read: the kinds of the customer's needs, the
    products they hold, their state."""
    kinds = await session.scalars(select(Need.kind).where(Need.customer_id == customer.id).distinct())
    held = await session.scalars(
        select(Opportunity.product).where(Opportunity.customer_id == customer.id, Opportunity.status == WON).distinct()
    )
    return CustomerFacts(
        need_kinds=frozenset(kinds),
        products_held=frozenset(Product(p) for p in held if p in _PRODUCTS),
        state=customer.state,
    )


async def latest_prequalification(
    session: AsyncSession, campaign_id: str, customer_id: str
) -> LatestPrequalification | None:
    """The customer's latest prequalification for the campaign (the last `at`; the
    largest id among equal times), or None."""
    row = await session.scalar(
        select(Prequalification)
        .where(Prequalification.campaign_id == campaign_id, Prequalification.customer_id == customer_id)
        .order_by(Prequalification.at.desc(), Prequalification.id.desc())
        .limit(1)
    )
    if row is None:
        return None
    return LatestPrequalification(id=row.id, qualified=row.qualified, reasons=list(row.reasons), at=row.at)


@dataclass(frozen=True)
class Progress:
    metric: str
    value: int | float
    target: int | float
    #: The campaign's won opportunities (what `cross_sell_ratio` divides by).
    won: int


def _campaign_won(opp: type[Opportunity], campaign_id: str) -> ColumnElement[bool]:
    return and_(opp.campaign_id == campaign_id, opp.status == WON)


async def _won_count(session: AsyncSession, campaign_id: str) -> int:
    return (
        await session.scalar(
            select(func.count()).select_from(Opportunity).where(_campaign_won(Opportunity, campaign_id))
        )
        or 0
    )


async def new_households(session: AsyncSession, campaign_id: str) -> int:
    """Households whose first won opportunity is a won opportunity of this campaign."""
    opp, cust = aliased(Opportunity), aliased(Customer)
    earlier, earlier_cust = aliased(Opportunity), aliased(Customer)
    has_earlier = (
        select(earlier.id)
        .join(earlier_cust, earlier_cust.id == earlier.customer_id)
        .where(
            earlier_cust.household_id == cust.household_id,
            earlier.status == WON,
            or_(
                won_at(earlier) < won_at(opp),
                and_(won_at(earlier) == won_at(opp), earlier.id < opp.id),
            ),
        )
        .exists()
    )
    query = (
        select(func.count(func.distinct(cust.household_id)))
        .select_from(opp)
        .join(cust, cust.id == opp.customer_id)
        .where(_campaign_won(opp, campaign_id), ~has_earlier)
    )
    return await session.scalar(query) or 0


async def cross_sold(session: AsyncSession, campaign_id: str) -> int:
    """The campaign's won opportunities whose customer already held another product: a
    won opportunity in a different product, won strictly before this one."""
    opp, other = aliased(Opportunity), aliased(Opportunity)
    held_other = (
        select(other.id)
        .where(
            other.customer_id == opp.customer_id,
            other.status == WON,
            other.product != opp.product,
            won_at(other) < won_at(opp),
        )
        .exists()
    )
    query = select(func.count()).select_from(opp).where(_campaign_won(opp, campaign_id), held_other)
    return await session.scalar(query) or 0


async def product_line_units(session: AsyncSession, campaign_id: str, line: LineOfBusiness) -> int:
    """The campaign's won opportunities in products of the line of business."""
    products = sorted(p.value for p in PRODUCT_LINES[line])
    query = (
        select(func.count())
        .select_from(Opportunity)
        .where(_campaign_won(Opportunity, campaign_id), Opportunity.product.in_(products))
    )
    return await session.scalar(query) or 0


async def campaign_progress(session: AsyncSession, campaign_id: str, goal: CampaignGoal) -> Progress:
    """The campaign's progress against its goal, by the goal's metric."""
    won = await _won_count(session, campaign_id)
    value: int | float
    if goal.metric == "new_households":
        value = await new_households(session, campaign_id)
    elif goal.metric == "cross_sell_ratio":
        value = (await cross_sold(session, campaign_id)) / won if won else 0.0
    else:
        assert goal.line_of_business is not None  # the goal's validation requires it
        value = await product_line_units(session, campaign_id, goal.line_of_business)
    return Progress(metric=goal.metric, value=value, target=goal.target_value(), won=won)
