"""Lead score, referrer score and priority, checked against the formulas documented in
domain/scoring.py, computed here by hand."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from domain.routing import ReferralFacts
from domain.scoring import FEATURES, LeadFeatures, LeadModel, priority, referrer_score, value_band
from domain.types import LineOfBusiness, Product


def feats(**kw: str) -> LeadFeatures:
    base = {
        "expressed_interest": "mortgage",
        "value_band": "250k-1M",
        "city": "toronto",
        "state": "on",
        "referrer_type": "employee",
        "referrer_line_of_business": "wealth",
        "source": "branch",
    }
    return LeadFeatures(**(base | kw))


MORTGAGE_FROM_WEALTH = feats()
SAVINGS_FROM_PARTNER = feats(
    expressed_interest="savings",
    value_band="<50k",
    referrer_type="partner",
    referrer_line_of_business="unknown",
    source="app",
)


#: The features in the order the module docstring lists them (the order ties are broken in).
DOCUMENTED_FEATURES = (
    "expressed_interest",
    "value_band",
    "city",
    "state",
    "referrer_type",
    "referrer_line_of_business",
    "source",
)


class ByHand:
    """The lead score exactly as domain/scoring.py's docstring writes it, computed here from
    plain counts of the outcomes: the reference the model is checked against."""

    def __init__(self, outcomes: Iterable[tuple[LeadFeatures, bool]]) -> None:
        self.won_total = self.lost_total = 0
        self.won: dict[str, Counter[str]] = {f: Counter() for f in DOCUMENTED_FEATURES}
        self.lost: dict[str, Counter[str]] = {f: Counter() for f in DOCUMENTED_FEATURES}
        for features, won in outcomes:
            self.won_total += won
            self.lost_total += not won
            for f in DOCUMENTED_FEATURES:
                (self.won if won else self.lost)[f][getattr(features, f)] += 1

    def score(self, referral: LeadFeatures) -> tuple[int, list[tuple[str, str, str, float]]]:
        """(score, factors as (feature, value, effect, weight))."""
        w, lo = self.won_total, self.lost_total
        log_odds = math.log((w + 3) / (lo + 7))
        llrs = []
        for f in DOCUMENTED_FEATURES:
            v = getattr(referral, f)
            vocabulary = len(set(self.won[f]) | set(self.lost[f])) + 1
            p_won = (self.won[f][v] + 1) / (w + vocabulary)
            p_lost = (self.lost[f][v] + 1) / (lo + vocabulary)
            llr = math.log(p_won / p_lost)
            log_odds += llr
            llrs.append((f, v, llr))
        p = 1 / (1 + math.exp(-log_odds))
        score = min(99, max(1, math.floor(100 * p + 0.5)))
        # Strongest first; Python's sort is stable, so ties keep the documented feature order.
        moved = sorted((x for x in llrs if round(abs(x[2]), 3)), key=lambda x: -abs(x[2]))[:3]
        return score, [(f, v, "raises" if llr > 0 else "lowers", round(abs(llr), 3)) for f, v, llr in moved]


def scored(model: LeadModel, referral: LeadFeatures) -> tuple[int, list[tuple[str, str, str, float]]]:
    s = model.score(referral)
    return s.score, [(x.feature, x.value, x.effect, x.weight) for x in s.factors]


def test_features_are_the_documented_ones_in_order() -> None:
    assert FEATURES == DOCUMENTED_FEATURES


def trained_outcomes() -> list[tuple[LeadFeatures, bool]]:
    return (
        [(MORTGAGE_FROM_WEALTH, True)] * 40
        + [(MORTGAGE_FROM_WEALTH, False)] * 10
        + [(SAVINGS_FROM_PARTNER, True)] * 5
        + [(SAVINGS_FROM_PARTNER, False)] * 45
        + [(feats(city="ottawa", expressed_interest="checking"), False)] * 20
    )


def trained() -> LeadModel:
    """Mortgages referred by wealth advisors mostly convert; partners' savings mostly do not."""
    return LeadModel.from_outcomes(trained_outcomes())


# --- features -----------------------------------------------------------------------------


def test_features_from_facts() -> None:
    facts = ReferralFacts(
        expressed_interest=Product.mortgage,
        city=" North  York",
        state="ON",
        value=Decimal("500000"),
        referrer_type="employee",
        referrer_line_of_business=LineOfBusiness.wealth,
    )
    assert LeadFeatures.from_facts(facts, "Branch") == LeadFeatures(
        expressed_interest="mortgage",
        value_band="250k-1M",
        city="north york",
        state="on",
        referrer_type="employee",
        referrer_line_of_business="wealth",
        source="branch",
    )
    prospect = ReferralFacts(expressed_interest=Product.savings, referrer_type="customer")
    f = LeadFeatures.from_facts(prospect, "customer")
    assert (f.value_band, f.city, f.state, f.referrer_line_of_business) == ("unknown",) * 4


@pytest.mark.parametrize(
    ("value", "band"),
    [
        (None, "unknown"),
        ("0", "<50k"),
        ("49999.99", "<50k"),
        ("50000", "50k-250k"),
        ("249999", "50k-250k"),
        ("250000", "250k-1M"),
        ("999999.99", "250k-1M"),
        ("1000000", ">=1M"),
        ("25000000", ">=1M"),
    ],
)
def test_value_bands(value: str | None, band: str) -> None:
    assert value_band(None if value is None else Decimal(value)) == band


# --- lead score ------------------------------------------------------------------------------


def test_no_history_scores_the_prior_with_no_factors() -> None:
    empty = LeadModel()
    for f in (MORTGAGE_FROM_WEALTH, SAVINGS_FROM_PARTNER, feats(city="nowhere")):
        s = empty.score(f)
        assert (s.score, s.factors) == (30, [])  # 100 * 3 / (3 + 7)


def test_hand_computed_lead_score() -> None:
    won = feats()
    lost = feats(
        expressed_interest="savings",
        value_band="<50k",
        referrer_type="partner",
        referrer_line_of_business="unknown",
        source="app",
    )
    model = LeadModel.from_outcomes([(won, True), (won, True), (lost, False)])
    # W = 2, L = 1. Every feature but city and state has 2 seen values (V = 3) and the referral
    # has the won value: (2+1)/(2+3) / ((0+1)/(1+3)) = 2.4. City: Ottawa unseen, toronto seen
    # (V = 2): (1/4) / (1/3) = 0.75. State: 'on' seen 2 won 1 lost (V = 2): (3/4) / (2/3) = 1.125.
    referral = feats(city="ottawa")
    log_odds = math.log((2 + 3) / (1 + 7)) + 5 * math.log(2.4) + math.log(0.75) + math.log(1.125)
    p = 1 / (1 + math.exp(-log_odds))
    expected = math.floor(100 * p + 0.5)
    assert expected == 98  # p = 41.9904 / 42.9904
    s = model.score(referral)
    assert s.score == expected
    # Five features tie at ln 2.4; ties keep the documented feature order.
    assert [(f.feature, f.value, f.effect, f.weight) for f in s.factors] == [
        ("expressed_interest", "mortgage", "raises", round(math.log(2.4), 3)),
        ("value_band", "250k-1M", "raises", round(math.log(2.4), 3)),
        ("referrer_type", "employee", "raises", round(math.log(2.4), 3)),
    ]


def test_converting_profile_scores_higher_and_says_why() -> None:
    model = trained()
    good, bad = model.score(MORTGAGE_FROM_WEALTH), model.score(SAVINGS_FROM_PARTNER)
    hand = ByHand(trained_outcomes())
    assert scored(model, MORTGAGE_FROM_WEALTH) == hand.score(MORTGAGE_FROM_WEALTH)
    assert scored(model, SAVINGS_FROM_PARTNER) == hand.score(SAVINGS_FROM_PARTNER)
    assert good.score > 70 > 30 > bad.score
    assert good.factors[0].effect == "raises"
    assert good.factors[0].feature in {
        "expressed_interest",
        "referrer_line_of_business",
        "referrer_type",
        "value_band",
        "source",
    }
    assert all(f.effect == "lowers" for f in bad.factors)
    assert len(good.factors) == len(bad.factors) == 3
    # The weights are |llr| in nats, strongest first.
    assert [f.weight for f in good.factors] == sorted((f.weight for f in good.factors), reverse=True)


def test_top_factor_names_the_feature_that_differs() -> None:
    # Only the product tells won from lost.
    model = LeadModel.from_outcomes(
        [(feats(expressed_interest="mortgage"), True)] * 30 + [(feats(expressed_interest="savings"), False)] * 30
    )
    top = model.score(feats(expressed_interest="mortgage")).factors[0]
    assert (top.feature, top.value, top.effect) == ("expressed_interest", "mortgage", "raises")
    top = model.score(feats(expressed_interest="savings")).factors[0]
    assert (top.feature, top.value, top.effect) == ("expressed_interest", "savings", "lowers")
    # (31/32) / (1/32) either way: weight ln 31, and nothing else moves the score.
    assert [(f.feature, f.weight) for f in model.score(feats(expressed_interest="savings")).factors] == [
        ("expressed_interest", round(math.log(31), 3))
    ]


def test_laplace_keeps_unseen_and_one_sided_values_finite() -> None:
    only_won = LeadModel.from_outcomes([(feats(), True)] * 10)
    hand = ByHand([(feats(), True)] * 10)
    assert only_won.counts("expressed_interest", "wealth") == (0, 0)
    for f in (feats(), feats(expressed_interest="wealth", city="halifax", state="ns")):
        s = only_won.score(f)
        assert scored(only_won, f) == hand.score(f)
        assert all(math.isfinite(x.weight) for x in s.factors)
    # Seen only as won: every llr is ln((10+1)/(10+2) / ((0+1)/(0+2))) = ln(11/6); the prior is ln(13/7).
    expected = math.floor(100 / (1 + math.exp(-(math.log(13 / 7) + 7 * math.log(11 / 6)))) + 0.5)
    assert only_won.score(feats()).score == expected == 99  # p = 0.9923
    # Unseen product: (0+1)/(10+2) over (0+1)/(0+2) = 1/6.
    unseen = next(
        x for x in only_won.score(feats(expressed_interest="wealth")).factors if x.feature == "expressed_interest"
    )
    assert (unseen.effect, unseen.weight) == ("lowers", round(abs(math.log(1 / 6)), 3))


def test_scores_stay_within_1_and_99() -> None:
    assert LeadModel.from_outcomes([(feats(), True)] * 10_000).score(feats()).score == 99
    assert LeadModel.from_outcomes([(feats(), False)] * 10_000).score(feats()).score == 1
    rng = random.Random(3)
    choices: dict[str, list[str]] = {
        "expressed_interest": [p.value for p in Product],
        "value_band": ["<50k", "50k-250k", "250k-1M", ">=1M", "unknown"],
        "city": ["toronto", "ottawa", "montreal", "unknown"],
        "state": ["on", "qc", "unknown"],
        "referrer_type": ["employee", "partner", "customer"],
        "referrer_line_of_business": ["retail", "mortgage", "wealth", "insurance", "unknown"],
        "source": ["branch", "app", "call"],
    }
    draw = lambda: LeadFeatures(**{k: rng.choice(v) for k, v in choices.items()})  # noqa: E731
    outcomes = [(draw(), rng.random() < 0.2) for _ in range(2_000)]
    model, hand = LeadModel.from_outcomes(outcomes), ByHand(outcomes)
    for _ in range(500):
        referral = draw()
        assert 1 <= model.score(referral).score <= 99
        assert scored(model, referral) == hand.score(referral)


def test_incremental_and_serialised_models_score_the_same() -> None:
    batch = trained()
    step = LeadModel()
    for f, won in trained_outcomes():
        step.add(f, won)
    data = json.loads(json.dumps(batch.to_dict()))
    assert data == step.to_dict()
    assert (data["won"], data["lost"]) == (45, 75)
    assert data["counts"]["city"] == {"ottawa": [0, 20], "toronto": [45, 55]}
    reloaded = LeadModel.from_dict(data)
    hand = ByHand(trained_outcomes())
    for f in (MORTGAGE_FROM_WEALTH, SAVINGS_FROM_PARTNER, feats(state="bc")):
        assert reloaded.score(f) == batch.score(f) == step.score(f)
        assert scored(reloaded, f) == hand.score(f)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"won": 1, "lost": 0, "counts": {"colour": {"red": [1, 0]}}}, "unknown feature 'colour'"),
        (
            {"won": 2, "lost": 0, "counts": {"city": {"a": [1, 0]}}},
            "feature 'expressed_interest' counts 0 won / 0 lost, but the totals are 2 won / 0 lost",
        ),
        ({"won": 0, "lost": 0, "counts": {"city": {"a": [-1, 1]}}}, "negative count"),
    ],
)
def test_inconsistent_counts_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LeadModel.from_dict(data)


# --- referrer score ---------------------------------------------------------------------------


def test_referrer_score_hand_computed_and_shrunk() -> None:
    # Bank rate 30/100 = 0.3, k = 5.
    assert referrer_score(1, 1, 30, 100) == math.floor(100 * (1 + 5 * 0.3) / (1 + 5) + 0.5) == 42
    assert referrer_score(50, 50, 30, 100) == math.floor(100 * (50 + 1.5) / 55 + 0.5) == 94
    assert referrer_score(0, 0, 30, 100) == 30  # no decided referrals: the bank rate
    assert referrer_score(0, 20, 30, 100) == math.floor(100 * 1.5 / 25 + 0.5) == 6
    # A bank with no history: the 30 % prior.
    assert referrer_score(0, 0, 0, 0) == 30
    assert referrer_score(3, 4, 0, 0, k=2) == math.floor(100 * (3 + 0.6) / 6 + 0.5) == 60
    # A bank rate of 0.8 lifts a newcomer.
    assert referrer_score(0, 0, 80, 100) == 80


def test_referrer_score_bounds_and_inputs() -> None:
    assert referrer_score(0, 1000, 0, 1000) == 0
    assert referrer_score(1000, 1000, 1000, 1000) == 100
    for bad in [(2, 1, 0, 0), (-1, 1, 0, 0), (0, 0, 5, 4)]:
        with pytest.raises(ValueError):
            referrer_score(*bad)
    with pytest.raises(ValueError):
        referrer_score(1, 1, 1, 1, k=0)


# --- priority ----------------------------------------------------------------------------------


def test_priority_hand_computed() -> None:
    sla = timedelta(hours=48)
    assert priority(70, 40, timedelta(hours=12), sla) == 0.6 * 70 + 0.25 * 40 + 0.15 * 25 == 55.75
    # Past the SLA the age counts 100, no more.
    assert priority(70, 40, timedelta(days=30), sla) == round(0.6 * 70 + 0.25 * 40 + 0.15 * 100, 2) == 67.0
    assert priority(1, 0, timedelta(0), sla) == 0.6
    assert priority(99, 100, sla, sla) == 99.4
    # A clock a little behind counts as age zero.
    assert priority(50, 50, timedelta(seconds=-5), sla) == priority(50, 50, timedelta(0), sla)
    assert priority(33, 17, timedelta(hours=7), sla) == round(0.6 * 33 + 0.25 * 17 + 0.15 * 100 * 7 / 48, 2)


def test_priority_is_monotone_in_each_input() -> None:
    sla = timedelta(hours=24)
    ages = [timedelta(hours=h) for h in (0, 1, 6, 12, 23, 24, 48)]
    for ref in (0, 50, 100):
        for age in ages:
            row = [priority(lead, ref, age, sla) for lead in range(1, 100)]
            assert row == sorted(row) and row[0] < row[-1]
    for lead in (1, 50, 99):
        for age in ages:
            row = [priority(lead, ref, age, sla) for ref in range(101)]
            assert row == sorted(row) and row[0] < row[-1]
        row = [priority(lead, 50, age, sla) for age in ages]
        assert row == sorted(row) and row[0] < row[-1]
    with pytest.raises(ValueError):
        priority(50, 50, timedelta(hours=1), timedelta(0))
