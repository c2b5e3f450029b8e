"""Referral routing: the bank's rules, as data, pick who receives a new referral.

A rules file (YAML, `rules/routing.yaml` by default) is validated at load; a malformed
file stops the loader with a message naming the file, the rule (name and #position) and
the field, rendered by `domain.validation` in the same form as a process file's. `route` is pure and deterministic: the caller passes the referral's facts, the
candidate employees with their current open work, and who may not receive it.

Semantics of `route`:

1. Rules are tried in file order; a rule applies when every condition its `match` sets
   holds (an empty `match` applies to every referral). Cities and states compare
   case-insensitively with whitespace collapsed. A value range is inclusive at both ends,
   and a rule that sets one never applies to a referral without a value; likewise a rule
   naming cities, states or referrer lines of business never applies when the referral
   lacks that fact.
2. A rule with a `queue` sends the referral to that queue: nobody is assigned.
3. A rule with a `pool` keeps the candidates that have one of its `roles` and
   `lines_of_business` (when given), list one of its `products` (`referral`: the
   referral's expressed interest) and fit its `territory`:
   - `referral_state`: the candidate lists the referral's state;
   - `referral_state_and_city_if_listed`: as above, and when any *eligible* candidate
     lists the referral's city, only those who do;
   - `any`: no territory condition.
   A referral without a state has no candidate under the first two territories.
   Eligible means, in addition, not in `exclude` (those who rejected the referral or let
   its acceptance SLA lapse: it never goes back to them) and under capacity
   (`open_load < capacity`). Among the eligible, the least open work wins; ties go to
   the least recently assigned (never assigned first), then the smallest employee id.
   Because each assignment raises the winner's load and stamps `last_assigned_at`,
   equally loaded colleagues take turns: ties are round-robin.
4. A rule whose pool has nobody eligible does not decide: routing falls through to the
   next rule, so a bank can write "specialists first, then generalists".
5. When no rule places the referral, it goes to `fallback_queue`, unassigned (the
   service then tells the managers).

Candidates are plain slotted dataclasses, not pydantic models: `route` reads thousands
of them per call and must stay well under a millisecond for a thousand.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from domain.types import LineOfBusiness, Product, Role
from domain.validation import ItemList, describe_errors, file_message

#: The rules shipped with needflow.
DEFAULT_ROUTING_RULES = Path(__file__).resolve().parent.parent / "rules" / "routing.yaml"

ReferrerType = Literal["employee", "partner", "customer"]
Territory = Literal["referral_state", "referral_state_and_city_if_listed", "any"]
_QUEUE_NAME = r"^[a-z][a-z0-9_-]*$"


class RoutingRulesError(ValueError):
    """A routing rules file that cannot be used; the message says where and why."""


def place_key(place: str) -> str:
    """The comparison key of a city or state: case-folded, whitespace collapsed."""
    return " ".join(place.split()).casefold()


class RuleMatch(BaseModel):
    """When a rule applies: every condition given must hold; none given, always."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    expressed_interest: tuple[Product, ...] | None = Field(default=None, min_length=1)
    cities: tuple[str, ...] | None = Field(default=None, min_length=1)
    states: tuple[str, ...] | None = Field(default=None, min_length=1)
    referrer_lines_of_business: tuple[LineOfBusiness, ...] | None = Field(default=None, min_length=1)
    min_value: Decimal | None = Field(default=None, ge=0)
    max_value: Decimal | None = Field(default=None, ge=0)

    _city_keys: frozenset[str] | None = PrivateAttr(default=None)
    _state_keys: frozenset[str] | None = PrivateAttr(default=None)

    @field_validator("cities", "states", mode="before")
    @classmethod
    def _no_yaml_booleans(cls, v: object) -> object:
        """Refuse YAML's booleans where a place belongs (unquoted `ON`, `NO`, `YES`)."""
        if isinstance(v, list):
            for i, item in enumerate(v):
                if isinstance(item, bool):
                    raise ValueError(f"item #{i + 1} was read as {item!r}: put codes such as ON or NO in quotes")
        return v

    @field_validator("max_value")
    @classmethod
    def _range(cls, v: Decimal | None, info: ValidationInfo) -> Decimal | None:
        low = info.data.get("min_value")
        if v is not None and low is not None and low > v:
            raise ValueError(f"max_value {v} is below min_value {low}")
        return v

    def model_post_init(self, context: object) -> None:
        if self.cities is not None:
            self._city_keys = frozenset(place_key(c) for c in self.cities)
        if self.states is not None:
            self._state_keys = frozenset(place_key(s) for s in self.states)

    def applies(self, facts: ReferralFacts) -> bool:
        """Whether every condition holds for this referral."""
        if self.expressed_interest is not None and facts.expressed_interest not in self.expressed_interest:
            return False
        if self._city_keys is not None and (facts.city is None or place_key(facts.city) not in self._city_keys):
            return False
        if self._state_keys is not None and (facts.state is None or place_key(facts.state) not in self._state_keys):
            return False
        if self.referrer_lines_of_business is not None and (
            facts.referrer_line_of_business not in self.referrer_lines_of_business
        ):
            return False
        if self.min_value is not None or self.max_value is not None:
            if facts.value is None:
                return False
            if self.min_value is not None and facts.value < self.min_value:
                return False
            if self.max_value is not None and facts.value > self.max_value:
                return False
        return True


class Pool(BaseModel):
    """The employees a rule chooses among (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: tuple[Role, ...] | None = Field(default=None, min_length=1)
    lines_of_business: tuple[LineOfBusiness, ...] | None = Field(default=None, min_length=1)
    #: `referral`: the referral's expressed interest; or candidates listing any of these.
    products: Literal["referral"] | tuple[Product, ...] = "referral"
    territory: Territory = "referral_state"

    @field_validator("products", mode="before")
    @classmethod
    def _products(cls, v: object) -> object:
        if v == "referral":
            return v
        if not isinstance(v, list | tuple) or not v:
            raise ValueError("write 'referral' (the referral's expressed interest) or a list of products")
        allowed = {p.value for p in Product}
        for i, item in enumerate(v):
            if item not in allowed:
                raise ValueError(f"item #{i + 1} {item!r} is not a product; products are {sorted(allowed)}")
        return tuple(Product(p) for p in v)


class RoutingRule(BaseModel):
    """One rule: when `match` applies, a `pool` of employees or a `queue` (exactly one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    match: RuleMatch = RuleMatch()
    pool: Pool | None = None
    queue: str | None = Field(default=None, pattern=_QUEUE_NAME, validate_default=True)

    @field_validator("name", mode="before")
    @classmethod
    def _name_not_yaml_boolean(cls, v: object) -> object:
        if isinstance(v, bool):
            raise ValueError(f"the name was read as {v!r}: put names such as on, yes or no in quotes")
        return v

    @field_validator("queue")
    @classmethod
    def _pool_xor_queue(cls, v: str | None, info: ValidationInfo) -> str | None:
        if "pool" not in info.data:  # the pool itself is invalid: that error suffices
            return v
        if (info.data["pool"] is None) == (v is None):
            raise ValueError("a rule needs exactly one of 'pool' (employees) or 'queue'")
        return v


class RoutingRules(BaseModel):
    """A bank's routing rules, tried in order; the first that places a referral wins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    fallback_queue: str = Field(pattern=_QUEUE_NAME)
    rules: tuple[RoutingRule, ...] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: tuple[RoutingRule, ...]) -> tuple[RoutingRule, ...]:
        seen: dict[str, int] = {}
        for i, rule in enumerate(rules, 1):
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used by #{seen[rule.name]} and #{i}")
            seen[rule.name] = i
        return rules


#: How a rules file's messages name a rule: by name and position.
RULES = ItemList(field="rules", noun="rule", name_field="name")


def load_routing_rules(path: Path = DEFAULT_ROUTING_RULES) -> RoutingRules:
    """Read and validate a rules file; `RoutingRulesError` names file, rule and field."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RoutingRulesError(file_message(path, (), f"cannot read routing rules: {exc}")) from exc
    try:
        return RoutingRules.model_validate(raw)
    except ValidationError as exc:
        raise RoutingRulesError(describe_errors(path, raw, exc, items=RULES, whole="routing rules")) from exc


class ReferralFacts(BaseModel):
    """What routing and scoring know about a referral."""

    model_config = ConfigDict(frozen=True)

    expressed_interest: Product
    city: str | None = None
    state: str | None = None
    value: Decimal | None = Field(default=None, ge=0)
    referrer_type: ReferrerType
    referrer_line_of_business: LineOfBusiness | None = None


@dataclass(slots=True)
class Candidate:
    """An employee who might receive a referral, with their open work now.

    `products`, `cities` and `states` accept any iterable; they are stored as frozensets,
    places as `place_key`s. `open_load` and `last_assigned_at` may be updated in place.
    """

    employee_id: str
    role: Role
    line_of_business: LineOfBusiness
    products: frozenset[Product]
    cities: frozenset[str]
    states: frozenset[str]
    capacity: int
    open_load: int = 0
    last_assigned_at: datetime | None = None

    def __post_init__(self) -> None:
        self.products = frozenset(self.products)
        self.cities = frozenset(place_key(c) for c in self.cities)
        self.states = frozenset(place_key(s) for s in self.states)


class RoutingDecision(BaseModel):
    """Who receives the referral, or the queue it waits in, and why."""

    model_config = ConfigDict(frozen=True)

    assignee_id: str | None
    #: The queue the referral waits in when nobody is assigned.
    queue: str | None
    #: The rule that decided; None when the referral fell back.
    rule: str | None
    reason: str


def _rank(c: Candidate) -> tuple[int, bool, datetime | int, str]:
    # Never assigned first; the 0 is only ever compared with another never-assigned 0.
    return (c.open_load, c.last_assigned_at is not None, c.last_assigned_at or 0, c.employee_id)


@dataclass(frozen=True, slots=True)
class _Filter:
    """The static half of a pool for one referral: whom it admits, before exclusions,
    capacity and load. `state` and `products` also say which of a `Team`'s buckets can
    hold anyone it admits."""

    products: tuple[Product, ...]
    state: str | None
    roles: tuple[Role, ...] | None
    lobs: tuple[LineOfBusiness, ...] | None

    def __call__(self, c: Candidate) -> bool:
        if len(self.products) == 1:
            if self.products[0] not in c.products:
                return False
        elif c.products.isdisjoint(self.products):
            return False
        if self.state is not None and self.state not in c.states:
            return False
        if self.roles is not None and c.role not in self.roles:
            return False
        return self.lobs is None or c.line_of_business in self.lobs


def _admits(pool: Pool, facts: ReferralFacts) -> _Filter | None:
    """The pool's filter for this referral; None when it can admit nobody (a territory
    pool, no state)."""
    products = (facts.expressed_interest,) if pool.products == "referral" else pool.products
    state = None
    if pool.territory != "any":
        if facts.state is None:
            return None
        state = place_key(facts.state)
    return _Filter(products=products, state=state, roles=pool.roles, lobs=pool.lines_of_business)


class Team:
    """The candidates routing chooses among, indexed by the states and the products they
    list, so that `reachable` reads, for each pool, only the smaller of the buckets that can
    hold anyone it admits (the referral's state, the pool's one product) instead of the
    whole bank: built once per read of the employees (the service caches it)."""

    __slots__ = ("_by_product", "_by_state", "members")

    def __init__(self, members: Iterable[Candidate]) -> None:
        self.members: tuple[Candidate, ...] = tuple(members)
        by_state: dict[str, list[int]] = {}
        by_product: dict[Product, list[int]] = {}
        for i, c in enumerate(self.members):
            for state in c.states:
                by_state.setdefault(state, []).append(i)
            for product in c.products:
                by_product.setdefault(product, []).append(i)
        self._by_state = by_state
        self._by_product = by_product

    def positions(self, f: _Filter) -> Sequence[int]:
        """Where anyone `f` admits can be: a superset, in team order."""
        buckets: list[Sequence[int]] = []
        if f.state is not None:
            buckets.append(self._by_state.get(f.state, ()))
        if len(f.products) == 1:
            buckets.append(self._by_product.get(f.products[0], ()))
        return min(buckets, key=len) if buckets else range(len(self.members))


def reachable(rules: RoutingRules, facts: ReferralFacts, team: Team | Iterable[Candidate]) -> list[Candidate]:
    """Everyone a rule that matches this referral could pick, whatever their load, in team
    order: the only employees whose open work routing needs to know. Rules after a queue
    rule that matches are never reached."""
    filters = []
    for rule in rules.rules:
        if not rule.match.applies(facts):
            continue
        if rule.queue is not None:
            break
        assert rule.pool is not None
        admits = _admits(rule.pool, facts)
        if admits is not None:
            filters.append(admits)
    if not filters:
        return []
    team = team if isinstance(team, Team) else Team(team)
    members = team.members
    found: set[int] = set()
    for f in filters:
        found.update(i for i in team.positions(f) if f(members[i]))
    return [members[i] for i in sorted(found)]


def _pick(
    pool: Pool, facts: ReferralFacts, candidates: Iterable[Candidate], exclude: set[str] | frozenset[str]
) -> tuple[Candidate | None, str]:
    """The pool's winner, with what the reason should say about it (or about nobody)."""
    admits = _admits(pool, facts)
    if admits is None:
        return None, "the referral has no state"
    city = None
    if pool.territory == "referral_state_and_city_if_listed" and facts.city is not None:
        city = place_key(facts.city)
    state = None if pool.territory == "any" else facts.state

    in_pool = excluded = full = 0
    eligible: list[Candidate] = []
    in_city: list[Candidate] = []
    for c in candidates:
        if not admits(c):
            continue
        in_pool += 1
        if c.employee_id in exclude:
            excluded += 1
            continue
        if c.open_load >= c.capacity:
            full += 1
            continue
        eligible.append(c)
        if city is not None and city in c.cities:
            in_city.append(c)

    if not eligible:
        return None, f"{in_pool} in the pool, {excluded} excluded, {full} at capacity"
    chosen = in_city or eligible
    best = min(chosen, key=_rank)
    tied = sum(1 for c in chosen if c.open_load == best.open_load)
    shown = facts.city if in_city else facts.state if state is not None else None
    where = f"in {' '.join(shown.split())}" if shown else ""
    why = (
        f"least open work ({best.open_load} of capacity {best.capacity}) among {len(chosen)} eligible {where}".rstrip()
    )
    if tied > 1:
        why += f"; {tied} tied, least recently assigned first"
    return best, why


def route(
    rules: RoutingRules,
    facts: ReferralFacts,
    candidates: Iterable[Candidate],
    exclude: set[str] | frozenset[str] = frozenset(),
) -> RoutingDecision:
    """Pick the referral's recipient by the first rule that places it (module docstring)."""
    pool_candidates = candidates if isinstance(candidates, list | tuple) else list(candidates)
    passed: list[str] = []
    for i, rule in enumerate(rules.rules, 1):
        if not rule.match.applies(facts):
            continue
        label = f"rule {rule.name!r} (#{i})"
        if rule.queue is not None:
            reason = f"{label}: sent to queue {rule.queue!r}"
            return RoutingDecision(assignee_id=None, queue=rule.queue, rule=rule.name, reason=reason)
        assert rule.pool is not None
        best, why = _pick(rule.pool, facts, pool_candidates, exclude)
        if best is not None:
            return RoutingDecision(assignee_id=best.employee_id, queue=None, rule=rule.name, reason=f"{label}: {why}")
        passed.append(f"{label} matched but nobody is eligible ({why})")
    head = "; ".join(passed) if passed else "no rule matched"
    return RoutingDecision(
        assignee_id=None,
        queue=rules.fallback_queue,
        rule=None,
        reason=f"{head}; sent to the fallback queue {rules.fallback_queue!r}",
    )
