"""Campaigns (seed 002): goals that don't push one product onto the wrong customer, and
the prequalification a customer must pass before a campaign opportunity is opened for
them. Pure: pydantic models and functions over plain facts, no I/O.

Goals. A campaign's goal is one of three metrics, never a count of one product's sales
(Jamie: "keeping goals specific to new households, cross-sell ratios, or general product
lines will provide your staff the flexibility of choosing products that are the right fit
for customers"):

- `new_households` (a count): households whose first won opportunity is one of the
  campaign's;
- `cross_sell_ratio` (a fraction 0–1): of the campaign's won opportunities, the share whose
  customer already held another product;
- `product_line_units` (a count, with its `line_of_business`): the campaign's won
  opportunities in products of that line (`PRODUCT_LINES`).

How each is computed over the store is defined once, in `store/campaigns.py`.

Prequalification rules are data: the campaign carries them (`prequalification[]`), they
are validated here when it is created and again whenever they are read back, and all must
hold. Each rule is exactly one of:

- `{has_need: kind}`: the customer has a recorded need of that kind;
- `{has_product: product}`: the customer holds the product ("held" = a won opportunity in
  it);
- `{lacks_product: product}`: the customer does not hold the product;
- `{state_in: [..]}`: the customer's state is one of these (compared as routing compares
  places: case-insensitively, whitespace collapsed); a customer with no state fails it.

`prequalify` evaluates them over `CustomerFacts` and says, for every rule, whether it
passed and why; `check_campaign_opening` is the rule for opening a campaign opportunity:
the customer's latest prequalification for the campaign must be qualified.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from domain.opportunity import TransitionRefused
from domain.routing import place_key
from domain.types import LineOfBusiness, Product
from domain.validation import Label, Place

Metric = Literal["new_households", "cross_sell_ratio", "product_line_units"]
METRICS: tuple[str, ...] = ("new_households", "cross_sell_ratio", "product_line_units")

#: The products of each line of business: what `product_line_units` counts.
PRODUCT_LINES: dict[LineOfBusiness, frozenset[Product]] = {
    LineOfBusiness.retail: frozenset({Product.checking, Product.savings, Product.credit_card, Product.personal_loan}),
    LineOfBusiness.mortgage: frozenset({Product.mortgage}),
    LineOfBusiness.wealth: frozenset({Product.wealth}),
    LineOfBusiness.insurance: frozenset({Product.insurance}),
}

#: A need's kind (`buy_home`) and a state, as the API takes them (domain/validation.py).
NeedKind = Label

_NOT_A_PUSH_GOAL = (
    "a campaign goal is never a count of one product's sales: choose new_households, cross_sell_ratio, "
    "or product_line_units with a line_of_business"
)


class CampaignGoal(BaseModel):
    """What the campaign aims at. `target` > 0: a count (a whole number) for
    `new_households` and `product_line_units`, a fraction 0–1 for `cross_sell_ratio`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Metric
    target: Decimal = Field(gt=0, max_digits=12, decimal_places=4)
    #: Only for `product_line_units`, which it requires: the line whose products count.
    line_of_business: LineOfBusiness | None = Field(default=None, validate_default=True)
    #: Never accepted: a goal that counts one product's sales pushes that product.
    product: SkipJsonSchema[Any] = Field(default=None, exclude=True)

    @field_validator("metric", mode="before")
    @classmethod
    def _non_push_metric(cls, v: object) -> object:
        if v not in METRICS:
            raise ValueError(f"{v!r} is not a campaign goal; {_NOT_A_PUSH_GOAL}")
        return v

    @field_validator("product", mode="before")
    @classmethod
    def _no_product(cls, v: object) -> object:
        raise ValueError(_NOT_A_PUSH_GOAL)

    @field_validator("target")
    @classmethod
    def _target(cls, v: Decimal, info: ValidationInfo) -> Decimal:
        metric = info.data.get("metric")
        if metric == "cross_sell_ratio" and v > 1:
            raise ValueError(f"a cross_sell_ratio target is a fraction between 0 and 1, not {v}")
        if metric in ("new_households", "product_line_units") and v != v.to_integral_value():
            raise ValueError(f"a {metric} target is a count: a whole number, not {v}")
        return v

    @field_validator("line_of_business")
    @classmethod
    def _line(cls, v: LineOfBusiness | None, info: ValidationInfo) -> LineOfBusiness | None:
        metric = info.data.get("metric")
        if metric == "product_line_units" and v is None:
            raise ValueError("a product_line_units goal needs a line_of_business: the line whose products count")
        if v is not None and metric is not None and metric != "product_line_units":
            raise ValueError(f"only a product_line_units goal names a line_of_business, not {metric}")
        return v

    def target_value(self) -> int | float:
        """The target as the API shows it: a count, or a fraction."""
        return float(self.target) if self.metric == "cross_sell_ratio" else int(self.target)


class PrequalificationRule(BaseModel):
    """One rule: exactly one of its four fields is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    has_need: NeedKind | None = None
    has_product: Product | None = None
    lacks_product: Product | None = None
    state_in: list[Place] | None = Field(default=None, min_length=1, max_length=100)

    @field_validator("state_in", mode="before")
    @classmethod
    def _no_booleans(cls, v: object) -> object:
        if isinstance(v, list):
            for i, item in enumerate(v):
                if not isinstance(item, str):
                    raise ValueError(f'item #{i + 1} is {item!r}: states are text, such as "NY"')
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> PrequalificationRule:
        given = [name for name in RULE_KINDS if getattr(self, name) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"a rule is exactly one of {', '.join(RULE_KINDS)} (found: {found})")
        return self

    def as_data(self) -> dict[str, Any]:
        """The rule as written: `{"has_need": "buy_home"}`."""
        return self.model_dump(mode="json", exclude_none=True)


RULE_KINDS: tuple[str, ...] = ("has_need", "has_product", "lacks_product", "state_in")


def check_rules(rules: Sequence[PrequalificationRule]) -> None:
    """Rules that could never all hold are refused: a product both required and excluded.
    Raises `RuleConflict` with the later rule's index (from 0, as the API's field paths
    count: `prequalification.2`)."""
    required: dict[Product, int] = {}
    excluded: dict[Product, int] = {}
    for i, rule in enumerate(rules):
        if rule.has_product is not None:
            required.setdefault(rule.has_product, i)
            if rule.has_product in excluded:
                raise RuleConflict(
                    i, f"has_product {rule.has_product.value} contradicts prequalification.{excluded[rule.has_product]}"
                )
        if rule.lacks_product is not None:
            excluded.setdefault(rule.lacks_product, i)
            if rule.lacks_product in required:
                raise RuleConflict(
                    i,
                    f"lacks_product {rule.lacks_product.value} contradicts prequalification.{required[rule.lacks_product]}",
                )


class RuleConflict(ValueError):
    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


class Campaign(BaseModel):
    """A campaign as the store keeps it and the rules read it."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    starts_on: date
    ends_on: date
    goal: CampaignGoal
    prequalification: tuple[PrequalificationRule, ...]


# ---------------------------------------------------------------- prequalification


@dataclass(frozen=True)
class CustomerFacts:
    """What prequalification reads about a customer, as plain facts."""

    #: The kinds of the customer's recorded needs.
    need_kinds: frozenset[str]
    #: The products the customer holds: those of their won opportunities.
    products_held: frozenset[Product]
    state: str | None


class Reason(BaseModel):
    """One rule's outcome: the rule as written, whether it held, and why, for a person."""

    rule: dict[str, Any]
    passed: bool
    message: str


class PrequalificationOutcome(BaseModel):
    qualified: bool
    reasons: list[Reason]


def _held(products: Iterable[Product]) -> str:
    names = sorted(p.value for p in products)
    return ", ".join(names) if names else "no product"


def evaluate_rule(rule: PrequalificationRule, facts: CustomerFacts) -> Reason:
    """Whether one rule holds for the customer, and a sentence saying why."""
    if rule.has_need is not None:
        passed = rule.has_need in facts.need_kinds
        message = (
            f"has a recorded need {rule.has_need!r}"
            if passed
            else f"has no recorded need {rule.has_need!r} (needs on record: "
            f"{', '.join(sorted(facts.need_kinds)) or 'none'})"
        )
    elif rule.has_product is not None:
        product = rule.has_product.value
        passed = rule.has_product in facts.products_held
        message = f"holds {product}" if passed else f"does not hold {product} (holds {_held(facts.products_held)})"
    elif rule.lacks_product is not None:
        product = rule.lacks_product.value
        passed = rule.lacks_product not in facts.products_held
        message = f"does not hold {product}" if passed else f"already holds {product}"
    else:
        states = rule.state_in or ()
        listed = ", ".join(states)
        if facts.state is None or not facts.state.strip():
            passed, message = False, f"has no state on record (the campaign is for {listed})"
        else:
            passed = place_key(facts.state) in {place_key(s) for s in states}
            message = (
                f"lives in {facts.state}, one of {listed}" if passed else f"lives in {facts.state}, not in {listed}"
            )
    return Reason(rule=rule.as_data(), passed=passed, message=message)


def prequalify(rules: Sequence[PrequalificationRule], facts: CustomerFacts) -> PrequalificationOutcome:
    """Every rule's outcome, in the campaign's order; qualified when all hold."""
    reasons = [evaluate_rule(rule, facts) for rule in rules]
    return PrequalificationOutcome(qualified=all(r.passed for r in reasons), reasons=reasons)


# ---------------------------------------------------------------- opening a campaign opportunity


@dataclass(frozen=True)
class LatestPrequalification:
    """The customer's latest prequalification for a campaign, as recorded."""

    id: str
    qualified: bool
    reasons: list[dict[str, Any]]
    at: datetime


def check_campaign_opening(campaign_id: str, customer_id: str, latest: LatestPrequalification | None) -> None:
    """A campaign opportunity opens only for a customer whose latest prequalification for
    the campaign qualified; otherwise `TransitionRefused` (409) saying why."""
    if latest is None:
        raise TransitionRefused(
            f"customer {customer_id} has not been prequalified for campaign {campaign_id}: "
            f"prequalify them first (POST /v1/campaigns/{campaign_id}/prequalify)",
            campaign_id=campaign_id,
            customer_id=customer_id,
            prequalification_id=None,
        )
    if not latest.qualified:
        failed = [r for r in latest.reasons if not r.get("passed")]
        why = "; ".join(str(r.get("message")) for r in failed)
        raise TransitionRefused(
            f"customer {customer_id}'s latest prequalification for campaign {campaign_id} "
            f"({latest.at.isoformat()}) did not qualify: {why}",
            campaign_id=campaign_id,
            customer_id=customer_id,
            prequalification_id=latest.id,
            failed=failed,
        )
