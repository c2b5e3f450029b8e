"""Referral routing: rules as data, first match wins, least-loaded, round-robin ties."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from domain.routing import (
    DEFAULT_ROUTING_RULES,
    Candidate,
    ReferralFacts,
    RoutingRules,
    RoutingRulesError,
    Team,
    _admits,
    load_routing_rules,
    reachable,
    route,
)
from domain.types import LineOfBusiness, Product, Role

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
DEFAULT = load_routing_rules()


def cand(
    employee_id: str,
    *,
    products: tuple[str, ...] = ("mortgage",),
    states: tuple[str, ...] = ("ON",),
    cities: tuple[str, ...] = (),
    role: Role = Role.advisor,
    lob: LineOfBusiness = LineOfBusiness.retail,
    capacity: int = 10,
    load: int = 0,
    last: datetime | None = None,
) -> Candidate:
    return Candidate(
        employee_id=employee_id,
        role=role,
        line_of_business=lob,
        products=frozenset(Product(p) for p in products),
        cities=frozenset(cities),
        states=frozenset(states),
        capacity=capacity,
        open_load=load,
        last_assigned_at=last,
    )


def facts(**kw: Any) -> ReferralFacts:
    base: dict[str, Any] = {
        "expressed_interest": Product.mortgage,
        "city": "Toronto",
        "state": "ON",
        "value": Decimal("500000"),
        "referrer_type": "employee",
        "referrer_line_of_business": LineOfBusiness.wealth,
    }
    return ReferralFacts(**(base | kw))


def rules(*rule_list: dict[str, Any], fallback: str = "unassigned-referrals") -> RoutingRules:
    return RoutingRules.model_validate({"version": 1, "fallback_queue": fallback, "rules": list(rule_list)})


# --- the shipped rules ----------------------------------------------------------------


def test_default_rules_route_by_interest_and_state() -> None:
    team = [
        cand("savings-on", products=("savings",)),
        cand("mortgage-qc", states=("QC",)),
        cand("mortgage-on", load=7),
    ]
    d = route(DEFAULT, facts(), team)
    assert (d.assignee_id, d.queue, d.rule) == ("mortgage-on", None, "product-in-territory")
    assert d.reason == "rule 'product-in-territory' (#1): least open work (7 of capacity 10) among 1 eligible in ON"

    d = route(DEFAULT, facts(expressed_interest=Product.savings), team)
    assert d.assignee_id == "savings-on"
    d = route(DEFAULT, facts(state="QC", city="Montréal"), team)
    assert d.assignee_id == "mortgage-qc"


def test_city_is_preferred_only_when_someone_available_lists_it() -> None:
    team = [cand("toronto", cities=("Toronto",), load=5), cand("anywhere-on", load=0)]
    # Someone lists Toronto: only they are considered, though busier.
    d = route(DEFAULT, facts(city="  toronto "), team)
    assert d.assignee_id == "toronto"
    assert (
        d.reason == "rule 'product-in-territory' (#1): least open work (5 of capacity 10) among 1 eligible in toronto"
    )
    # Nobody lists Ottawa: the whole state, least loaded first.
    assert route(DEFAULT, facts(city="Ottawa"), team).assignee_id == "anywhere-on"
    # No city on the referral: the whole state.
    assert route(DEFAULT, facts(city=None), team).assignee_id == "anywhere-on"
    # The Toronto employee is full: the state colleague takes it rather than nobody.
    team[0].open_load = 10
    assert route(DEFAULT, facts(), team).assignee_id == "anywhere-on"


def test_places_compare_case_insensitively() -> None:
    team = [cand("a", states=("on",), cities=("north  york",))]
    d = route(DEFAULT, facts(state="ON", city="North York"), team)
    assert d.assignee_id == "a"


def test_referral_without_state_falls_back() -> None:
    d = route(DEFAULT, facts(state=None, city=None), [cand("a")])
    assert (d.assignee_id, d.queue, d.rule) == (None, "unassigned-referrals", None)
    assert d.reason == (
        "rule 'product-in-territory' (#1) matched but nobody is eligible (the referral has no state); "
        "sent to the fallback queue 'unassigned-referrals'"
    )


# --- choosing within a pool ---------------------------------------------------------------


def test_least_loaded_wins() -> None:
    team = [cand("busy", load=6), cand("idle", load=1), cand("middle", load=3)]
    assert route(DEFAULT, facts(), team).assignee_id == "idle"


def test_ties_go_round_robin() -> None:
    # Equal load; b was never assigned, c longest ago, a most recently.
    team = {
        "a": cand("a", last=T0 - timedelta(hours=1)),
        "b": cand("b"),
        "c": cand("c", last=T0 - timedelta(hours=3)),
    }
    seen = []
    for i in range(4):
        d = route(DEFAULT, facts(), list(team.values()))
        assert d.assignee_id is not None
        seen.append(d.assignee_id)
        # The recipient works it and closes it at once: load back to where it was.
        team[d.assignee_id].last_assigned_at = T0 + timedelta(minutes=i)
    assert seen == ["b", "c", "a", "b"]
    assert d.reason == (
        "rule 'product-in-territory' (#1): least open work (0 of capacity 10) among 3 eligible in ON; "
        "3 tied, least recently assigned first"
    )


def test_assignments_spread_load_then_rotate() -> None:
    team = {eid: cand(eid) for eid in ("x", "y", "z")}
    seen = []
    for i in range(4):
        d = route(DEFAULT, facts(), list(team.values()))
        assert d.assignee_id is not None
        seen.append(d.assignee_id)
        team[d.assignee_id].open_load += 1
        team[d.assignee_id].last_assigned_at = T0 + timedelta(minutes=i)
    assert seen == ["x", "y", "z", "x"]
    assert [team[e].open_load for e in "xyz"] == [2, 1, 1]


def test_capacity_is_respected() -> None:
    team = [cand("full", load=4, capacity=4), cand("none", capacity=0), cand("room", load=8, capacity=9)]
    assert route(DEFAULT, facts(), team).assignee_id == "room"
    team[2].open_load = 9
    d = route(DEFAULT, facts(), team)
    assert (d.assignee_id, d.queue) == (None, "unassigned-referrals")
    assert d.reason == (
        "rule 'product-in-territory' (#1) matched but nobody is eligible (3 in the pool, 0 excluded, 3 at capacity); "
        "sent to the fallback queue 'unassigned-referrals'"
    )


def test_never_back_to_one_who_rejected() -> None:
    team = [cand("rejected", load=0), cand("next", load=5)]
    assert route(DEFAULT, facts(), team, exclude={"rejected"}).assignee_id == "next"
    d = route(DEFAULT, facts(), team, exclude={"rejected", "next"})
    assert (d.assignee_id, d.queue) == (None, "unassigned-referrals")
    assert d.reason == (
        "rule 'product-in-territory' (#1) matched but nobody is eligible (2 in the pool, 2 excluded, 0 at capacity); "
        "sent to the fallback queue 'unassigned-referrals'"
    )


# --- rules ------------------------------------------------------------------------------


def test_first_matching_rule_decides() -> None:
    r = rules(
        {
            "name": "mortgages-to-brokers",
            "match": {"expressed_interest": ["mortgage"]},
            "pool": {"roles": ["mortgage_broker"], "territory": "any"},
        },
        {"name": "everyone", "pool": {"territory": "referral_state"}},
    )
    team = [cand("advisor", load=0), cand("broker", role=Role.mortgage_broker, states=("BC",), load=9)]
    d = route(r, facts(), team)
    assert (d.assignee_id, d.rule) == ("broker", "mortgages-to-brokers")
    # Territory `any`: no place to name.
    assert d.reason == "rule 'mortgages-to-brokers' (#1): least open work (9 of capacity 10) among 1 eligible"
    # A savings referral does not match the first rule.
    team.append(cand("saver", products=("savings",)))
    d = route(r, facts(expressed_interest=Product.savings), team)
    assert (d.assignee_id, d.rule) == ("saver", "everyone")


def test_value_range_matching() -> None:
    r = rules(
        {"name": "jumbo", "match": {"min_value": 1_000_000}, "queue": "jumbo-desk"},
        {"name": "small", "match": {"max_value": 49_999.99}, "queue": "small-desk"},
        {"name": "mid", "match": {"min_value": 50_000, "max_value": 999_999.99}, "queue": "mid-desk"},
        {"name": "rest", "pool": {"territory": "any"}},
    )
    queue = lambda v: route(r, facts(value=v), []).queue  # noqa: E731
    assert queue(Decimal("1000000")) == "jumbo-desk"  # bounds are inclusive
    assert queue(Decimal("49999.99")) == "small-desk"
    assert queue(Decimal("50000")) == "mid-desk"
    assert queue(Decimal("999999.99")) == "mid-desk"
    # No value: no value rule applies; the pool is empty, so the fallback queue.
    d = route(r, facts(value=None), [])
    assert (d.queue, d.rule) == ("unassigned-referrals", None)
    assert d.reason == (
        "rule 'rest' (#4) matched but nobody is eligible (0 in the pool, 0 excluded, 0 at capacity); "
        "sent to the fallback queue 'unassigned-referrals'"
    )


def test_referrer_line_of_business_city_and_state_matching() -> None:
    r = rules(
        {"name": "from-wealth", "match": {"referrer_lines_of_business": ["wealth"]}, "queue": "wealth-desk"},
        {"name": "toronto", "match": {"cities": ["TORONTO"], "states": ["on"]}, "queue": "toronto-desk"},
        {"name": "quebec", "match": {"states": ["QC"]}, "queue": "quebec-desk"},
    )
    assert route(r, facts(), []).queue == "wealth-desk"
    assert route(r, facts(referrer_line_of_business=LineOfBusiness.retail), []).queue == "toronto-desk"
    partner = facts(referrer_type="partner", referrer_line_of_business=None)
    assert route(r, partner, []).queue == "toronto-desk"
    assert route(r, partner.model_copy(update={"city": "Ottawa"}), []).queue == "unassigned-referrals"
    assert route(r, partner.model_copy(update={"state": "qc", "city": None}), []).queue == "quebec-desk"


def test_empty_pool_falls_through_to_next_rule() -> None:
    r = rules(
        {
            "name": "specialists",
            "match": {"expressed_interest": ["mortgage"]},
            "pool": {"roles": ["mortgage_broker"], "lines_of_business": ["mortgage"], "products": ["mortgage"]},
        },
        {"name": "generalists", "pool": {"territory": "referral_state"}},
    )
    broker = cand("broker", role=Role.mortgage_broker, lob=LineOfBusiness.mortgage, load=3, capacity=3)
    team = [broker, cand("generalist", load=8)]
    d = route(r, facts(), team)
    assert (d.assignee_id, d.rule) == ("generalist", "generalists")
    broker.open_load = 2
    assert route(r, facts(), team).assignee_id == "broker"


def test_pool_product_list_matches_any_listed_product() -> None:
    r = rules({"name": "lenders", "pool": {"products": ["mortgage", "personal_loan"], "territory": "any"}})
    team = [cand("loans", products=("personal_loan",), states=("BC",)), cand("cards", products=("credit_card",))]
    assert route(r, facts(expressed_interest=Product.wealth), team).assignee_id == "loans"


def test_fallback_queue_when_no_rule_matches() -> None:
    r = rules(
        {"name": "insurance-only", "match": {"expressed_interest": ["insurance"]}, "queue": "ins"}, fallback="triage"
    )
    d = route(r, facts(), [cand("a")])
    assert d.model_dump() == {
        "assignee_id": None,
        "queue": "triage",
        "rule": None,
        "reason": "no rule matched; sent to the fallback queue 'triage'",
    }


# --- loading rules files --------------------------------------------------------------------


def test_shipped_file_and_its_commented_examples_are_valid() -> None:
    assert DEFAULT.fallback_queue == "unassigned-referrals"
    assert [r.name for r in DEFAULT.rules] == ["product-in-territory"]
    pool = DEFAULT.rules[0].pool
    assert pool is not None
    assert (pool.products, pool.territory) == ("referral", "referral_state_and_city_if_listed")
    # Uncommenting the examples gives a valid file whose rules come first.
    text = DEFAULT_ROUTING_RULES.read_text()
    body = text[text.index("rules:") :]
    uncommented = re.sub(r"(?m)^  # ( *[-a-z])", r"  \1", body)
    raw = yaml.safe_load(text[: text.index("rules:")] + uncommented)
    with_examples = RoutingRules.model_validate(raw)
    assert [r.name for r in with_examples.rules] == [
        "large-mortgages-to-brokers",
        "quebec-insurance-desk",
        "product-in-territory",
    ]


def _write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


GOOD_RULE = {"name": "ok", "pool": {"products": "referral", "territory": "referral_state"}}


@pytest.mark.parametrize(
    ("bad_rule", "where", "message"),
    [
        (
            {"name": "big", "match": {"min_value": 10, "max_value": 5}, "queue": "q"},
            "rule 'big' (#2), field 'match.max_value'",
            "max_value 5 is below min_value 10",
        ),
        (
            {"name": "both", "pool": {}, "queue": "q"},
            "rule 'both' (#2), field 'queue'",
            "exactly one of 'pool' (employees) or 'queue'",
        ),
        ({"name": "neither"}, "rule 'neither' (#2), field 'queue'", "exactly one of 'pool' (employees) or 'queue'"),
        (
            {"name": "where", "pool": {"territory": "country"}},
            "rule 'where' (#2), field 'pool.territory'",
            "'referral_state_and_city_if_listed'",
        ),
        (
            {"name": "what", "pool": {"products": ["mortgage", "boat"]}},
            "rule 'what' (#2), field 'pool.products'",
            "item #2 'boat' is not a product",
        ),
        (
            {"name": "typo", "match": {"city": ["Toronto"]}, "queue": "q"},
            "rule 'typo' (#2), field 'match.city'",
            "Extra inputs are not permitted",
        ),
        (
            {"name": "ontario", "match": {"states": [True]}, "queue": "q"},
            "rule 'ontario' (#2), field 'match.states'",
            "put codes such as ON or NO in quotes",
        ),
        (
            {"name": "interest", "match": {"expressed_interest": ["yacht"]}, "queue": "q"},
            "rule 'interest' (#2), field 'match.expressed_interest.0'",
            "Input should be 'mortgage'",
        ),
        ({"name": "q", "queue": "Bad Queue"}, "rule 'q' (#2), field 'queue'", "String should match pattern"),
        ({"match": {}, "queue": "q"}, "rule #2, field 'name'", "Field required"),
        ({"name": "ok", "queue": "q"}, "field 'rules'", "rule name 'ok' is used by #1 and #2"),
    ],
)
def test_invalid_rule_names_file_rule_and_field(
    tmp_path: Path, bad_rule: dict[str, Any], where: str, message: str
) -> None:
    path = _write(tmp_path, {"version": 1, "fallback_queue": "f", "rules": [GOOD_RULE, bad_rule]})
    with pytest.raises(RoutingRulesError) as exc:
        load_routing_rules(path)
    text = str(exc.value)
    assert text.startswith(f"{path}: {where}: "), text
    assert message in text, text


def test_unquoted_ontario_in_yaml_is_explained(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "version: 1\nfallback_queue: f\nrules:\n  - name: on\n    match: {states: [ON]}\n    queue: q\n"
    )
    with pytest.raises(RoutingRulesError) as exc:
        load_routing_rules(path)
    assert str(exc.value).splitlines() == [
        f"{path}: rule #1, field 'name': Value error, the name was read as True: "
        "put names such as on, yes or no in quotes",
        f"{path}: rule #1, field 'match.states': Value error, item #1 was read as True: "
        "put codes such as ON or NO in quotes",
    ]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"version": 1, "rules": [GOOD_RULE]}, "field 'fallback_queue': Field required"),
        ({"version": 1, "fallback_queue": "f", "rules": []}, "field 'rules': List should have at least 1 item"),
        ("rules: [unclosed", "cannot read routing rules"),
        ("- just\n- a list\n", "routing rules: Input should be a valid dictionary"),
    ],
)
def test_invalid_file_names_file(tmp_path: Path, doc: Any, message: str) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(RoutingRulesError) as exc:
        load_routing_rules(path)
    assert str(exc.value).startswith(f"{path}: ") and message in str(exc.value), str(exc.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RoutingRulesError, match="nowhere.yaml: cannot read routing rules"):
        load_routing_rules(tmp_path / "nowhere.yaml")


def test_the_api_refuses_to_start_on_invalid_routing_rules(tmp_path: Path) -> None:
    """A bank's typo stops the service at start, saying where, not at the first referral."""
    from api.app import create_app
    from tests.helpers import IsolatedSettings

    bad = tmp_path / "routing.yaml"
    bad.write_text("version: 1\nfallback_queue: q\nrules:\n  - name: brokers\n    pool: {territory: everywhere}\n")
    with pytest.raises(RoutingRulesError) as err:
        create_app(IsolatedSettings(routing_rules=bad, database_url="sqlite:///:memory:"))
    assert str(err.value).startswith(f"{bad}: rule 'brokers' (#1), field 'pool.territory': "), str(err.value)


def test_reachable_is_everyone_a_matching_rule_could_pick() -> None:
    """The service reads open work only for these; routing them gives the same answer."""
    team = [
        cand("broker-on", role=Role.mortgage_broker, load=3),
        cand("advisor-on", load=0),
        cand("broker-qc", role=Role.mortgage_broker, states=("QC",)),
        cand("savings-on", products=("savings",)),
    ]
    specialists_then_all = rules(
        {"name": "big", "match": {"min_value": 1_000_000}, "pool": {"roles": ["mortgage_broker"]}},
        {"name": "all", "pool": {"products": "referral"}},
    )
    near = reachable(specialists_then_all, facts(), team)
    assert [c.employee_id for c in near] == ["broker-on", "advisor-on"]
    assert route(specialists_then_all, facts(), near) == route(specialists_then_all, facts(), team)
    big = facts(value=Decimal("2000000"))
    assert [c.employee_id for c in reachable(specialists_then_all, big, team)] == ["broker-on", "advisor-on"]

    # A matching queue rule ends routing: nobody after it is reachable.
    queue_first = rules({"name": "desk", "queue": "mortgage-desk"}, {"name": "all", "pool": {"products": "referral"}})
    assert reachable(queue_first, facts(), team) == []
    # A territory pool reaches nobody for a referral with no state.
    assert reachable(DEFAULT, facts(state=None), team) == []


def test_the_indexed_team_reaches_exactly_whom_a_scan_of_everyone_admits() -> None:
    """`Team` reads, per pool, only the bucket of the referral's state or the pool's one
    product: over random banks, pools and referrals it finds exactly whom a scan of every
    employee with the same filters finds, in team order, and routing the reachable few
    decides as routing all. (Which rules apply, and the filters themselves, are the other
    tests'.)"""
    rng = random.Random(10)
    products, states = list(Product), ["ON", "QC", "BC", "NY"]

    def random_pool() -> dict[str, Any]:
        pool: dict[str, Any] = {"territory": rng.choice(["referral_state", "referral_state_and_city_if_listed", "any"])}
        if rng.random() < 0.5:
            pool["products"] = [p.value for p in rng.sample(products, k=rng.randint(1, 2))]
        if rng.random() < 0.3:
            pool["roles"] = [rng.choice(list(Role)).value]
        if rng.random() < 0.3:
            pool["lines_of_business"] = [rng.choice(list(LineOfBusiness)).value]
        return pool

    for case in range(200):
        people = [
            cand(
                f"e{i:03d}",
                products=tuple(p.value for p in rng.sample(products, k=rng.randint(0, 3))),
                states=tuple(rng.sample(states, k=rng.randint(0, 2))),
                cities=("Toronto",) if rng.random() < 0.2 else (),
                role=rng.choice(list(Role)),
                lob=rng.choice(list(LineOfBusiness)),
                capacity=rng.randint(1, 4),
                load=rng.randint(0, 4),
            )
            for i in range(rng.randint(0, 60))
        ]
        bank = rules(*({"name": f"r{n}", "pool": random_pool()} for n in range(rng.randint(1, 3))))
        referral = facts(expressed_interest=rng.choice(products), state=rng.choice([*states, None]))
        admitted = [f for rule in bank.rules if (f := _admits(rule.pool, referral)) is not None]
        scanned = [c for c in people if any(f(c) for f in admitted)]

        near = reachable(bank, referral, Team(people))
        assert near == scanned, f"case {case}"
        excluded = frozenset(c.employee_id for c in people if rng.random() < 0.1)
        assert route(bank, referral, near, excluded) == route(bank, referral, people, excluded), f"case {case}"
