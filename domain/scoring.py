"""Referral scores: lead score, referrer score and priority. Pure and deterministic.

Every formula below is the one the service, the reports and the API use.

Lead features
-------------
A referral is described by seven features (`LeadFeatures.from_facts`); a missing fact is
the value `unknown`:

- `expressed_interest`: the product (`mortgage`, ...);
- `value_band`: `<50k` (value < 50,000), `50k-250k` (50,000 <= value < 250,000),
  `250k-1M` (250,000 <= value < 1,000,000), `>=1M` (value >= 1,000,000), or `unknown`;
- `city`, `state`: case-folded, whitespace collapsed (as routing compares them);
- `referrer_type`: `employee`, `partner` or `customer`;
- `referrer_line_of_business`: the referring employee's line of business;
- `source`: the channel the referral came through (e.g. `branch`, `app`, `api`),
  case-folded; callers without a channel pass the referrer type.

Lead score (1-99)
-----------------
Naive Bayes over past decided referrals (converted = won, closed = lost), in the spirit of
Odoo's predictive lead scoring. `LeadModel` keeps, per feature f and value v, the counts
won[f][v] and lost[f][v], and the totals W (won) and L (lost). For a referral with values
v_f:

    prior log-odds   = ln((W + 3) / (L + 7))
    V_f              = (number of distinct values of f seen so far) + 1   # +1: unseen
    P(v_f | won)     = (won[f][v_f] + 1) / (W + V_f)                       # Laplace
    P(v_f | lost)    = (lost[f][v_f] + 1) / (L + V_f)
    llr_f            = ln(P(v_f | won) / P(v_f | lost))
    log-odds         = prior log-odds + sum over f of llr_f
    p                = 1 / (1 + exp(-log-odds))
    lead score       = min(99, max(1, floor(100 * p + 0.5)))               # half up

The prior is a pseudo-count of 3 won and 7 lost referrals (30 %), blended with the bank's
own totals: a bank with no history scores every referral 30, and as outcomes accumulate
its own conversion rate takes over. Add-one smoothing keeps a value never seen (or seen
only as won, or only as lost) finite.

Factors: the (at most) 3 features with the largest |llr_f| (ties in feature order above),
each with `effect` `raises` (llr_f > 0) or `lowers` (llr_f < 0) and `weight` =
|llr_f| in nats, rounded to 3 decimals. Features whose weight rounds to 0 are left out, so
with no history at all `factors` is empty: nothing moved the score off the prior.

Referrer score (0-100)
----------------------
From the referrer's referrals decided within the window (converted + closed = decided),
shrunk toward the bank-wide rate so that a referrer with few referrals sits near it:

    bank_rate       = bank_converted / bank_decided, or 0.30 when bank_decided = 0
    referrer score  = floor(100 * (converted + k * bank_rate) / (decided + k) + 0.5)

with k = 5 by default: k is the number of bank-average referrals every referrer is
assumed to have made already. With a bank rate of 30 %, 1 of 1 converted scores 42;
50 of 50 scores 94.

Priority
--------
    age_points = min(100, 100 * max(age, 0) / sla)     # sla: the acceptance SLA
    priority   = round(0.6 * lead score + 0.25 * referrer score + 0.15 * age_points, 2)

A referral that has waited a whole SLA gains 15 points, so old referrals rise and none
starves; the result lies between 0.6 and 99.4.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from domain.routing import ReferralFacts, place_key

UNKNOWN = "unknown"
PRIOR_WON = 3.0
PRIOR_LOST = 7.0
#: The conversion rate assumed when a bank has decided no referral yet (PRIOR_WON / total).
PRIOR_RATE = PRIOR_WON / (PRIOR_WON + PRIOR_LOST)
TOP_FACTORS = 3
#: (upper bound exclusive, band); values at or above the last bound are `>=1M`.
VALUE_BANDS: tuple[tuple[Decimal, str], ...] = (
    (Decimal(50_000), "<50k"),
    (Decimal(250_000), "50k-250k"),
    (Decimal(1_000_000), "250k-1M"),
)
TOP_BAND = ">=1M"
LEAD_WEIGHT, REFERRER_WEIGHT, AGE_WEIGHT = 0.6, 0.25, 0.15


def value_band(value: Decimal | None) -> str:
    """The band of a referral value (module docstring)."""
    if value is None:
        return UNKNOWN
    for bound, band in VALUE_BANDS:
        if value < bound:
            return band
    return TOP_BAND


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


@dataclass(frozen=True, slots=True)
class LeadFeatures:
    """A referral as the lead model sees it: one string value per feature."""

    expressed_interest: str
    value_band: str
    city: str
    state: str
    referrer_type: str
    referrer_line_of_business: str
    source: str

    @classmethod
    def from_facts(cls, facts: ReferralFacts, source: str) -> LeadFeatures:
        """Extract the features of a referral; `source` is its channel (module docstring)."""
        return cls(
            expressed_interest=facts.expressed_interest.value,
            value_band=value_band(facts.value),
            city=place_key(facts.city) if facts.city else UNKNOWN,
            state=place_key(facts.state) if facts.state else UNKNOWN,
            referrer_type=facts.referrer_type,
            referrer_line_of_business=(
                facts.referrer_line_of_business.value if facts.referrer_line_of_business else UNKNOWN
            ),
            source=source.strip().casefold() or UNKNOWN,
        )

    def values(self) -> tuple[str, ...]:
        """The values, in `FEATURES` order."""
        return (
            self.expressed_interest,
            self.value_band,
            self.city,
            self.state,
            self.referrer_type,
            self.referrer_line_of_business,
            self.source,
        )


#: Feature names, in the order ties between factors are broken.
FEATURES: tuple[str, ...] = tuple(f.name for f in fields(LeadFeatures))


class Factor(BaseModel):
    """A feature value that moved the lead score, and how much (|llr| in nats)."""

    model_config = ConfigDict(frozen=True)

    feature: str
    value: str
    effect: Literal["raises", "lowers"]
    weight: float


class LeadScore(BaseModel):
    """A lead score with the factors that drove it, strongest first."""

    model_config = ConfigDict(frozen=True)

    score: int
    factors: list[Factor]


class LeadModel:
    """Won/lost counts per feature value: a naive-Bayes lead scorer (module docstring)."""

    __slots__ = ("won", "lost", "_counts")

    def __init__(self) -> None:
        self.won = 0
        self.lost = 0
        # feature -> value -> [won, lost]
        self._counts: dict[str, dict[str, list[int]]] = {f: {} for f in FEATURES}

    @classmethod
    def from_outcomes(cls, outcomes: Iterable[tuple[LeadFeatures, bool]]) -> LeadModel:
        """A model of these past outcomes (`True`: converted)."""
        model = cls()
        for features, won in outcomes:
            model.add(features, won)
        return model

    def add(self, features: LeadFeatures, won: bool) -> None:
        """Count one more decided referral."""
        side = 0 if won else 1
        if won:
            self.won += 1
        else:
            self.lost += 1
        for name, value in zip(FEATURES, features.values(), strict=False):
            counts = self._counts[name].get(value)
            if counts is None:
                counts = self._counts[name][value] = [0, 0]
            counts[side] += 1

    def counts(self, feature: str, value: str) -> tuple[int, int]:
        """(won, lost) referrals seen with this feature value."""
        won, lost = self._counts[feature].get(value, (0, 0))
        return won, lost

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: `{"won": W, "lost": L, "counts": {feature: {value: [won, lost]}}}`."""
        return {
            "won": self.won,
            "lost": self.lost,
            "counts": {f: {v: list(c) for v, c in sorted(vals.items())} for f, vals in self._counts.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LeadModel:
        """Rebuild a model from `to_dict`'s form (or a table of counts); checks it adds up."""
        model = cls()
        model.won, model.lost = int(data["won"]), int(data["lost"])
        if model.won < 0 or model.lost < 0:
            raise ValueError("lead model: totals must not be negative")
        for feature, values in data.get("counts", {}).items():
            if feature not in model._counts:
                raise ValueError(f"lead model: unknown feature {feature!r}; features are {list(FEATURES)}")
            for value, (won, lost) in values.items():
                if won < 0 or lost < 0:
                    raise ValueError(f"lead model: feature {feature!r} value {value!r}: negative count")
                model._counts[feature][str(value)] = [int(won), int(lost)]
        for feature, values in model._counts.items():
            won = sum(c[0] for c in values.values())
            lost = sum(c[1] for c in values.values())
            if (won, lost) != (model.won, model.lost):
                raise ValueError(
                    f"lead model: feature {feature!r} counts {won} won / {lost} lost, "
                    f"but the totals are {model.won} won / {model.lost} lost"
                )
        return model

    def score(self, features: LeadFeatures) -> LeadScore:
        """The lead score (1-99) of a referral, with its top factors (module docstring)."""
        w_total, l_total = self.won, self.lost
        log_odds = math.log((w_total + PRIOR_WON) / (l_total + PRIOR_LOST))
        moved: list[tuple[float, int, str, str, float]] = []
        for i, (name, value) in enumerate(zip(FEATURES, features.values(), strict=False)):
            seen = self._counts[name]
            vocabulary = len(seen) + 1
            won, lost = seen.get(value, (0, 0))
            llr = math.log((won + 1) * (l_total + vocabulary) / ((lost + 1) * (w_total + vocabulary)))
            log_odds += llr
            if round(abs(llr), 3):
                moved.append((-abs(llr), i, name, value, llr))
        if log_odds >= 0:
            p = 1.0 / (1.0 + math.exp(-log_odds))
        else:
            e = math.exp(log_odds)
            p = e / (1.0 + e)
        moved.sort()
        factors = [
            Factor(feature=name, value=value, effect="raises" if llr > 0 else "lowers", weight=round(-neg, 3))
            for neg, _, name, value, llr in moved[:TOP_FACTORS]
        ]
        return LeadScore(score=min(99, max(1, _half_up(100.0 * p))), factors=factors)


def referrer_score(converted: int, decided: int, bank_converted: int, bank_decided: int, k: float = 5.0) -> int:
    """How often a referrer's referrals convert, 0-100, shrunk toward the bank's rate."""
    if not 0 <= converted <= decided or not 0 <= bank_converted <= bank_decided:
        raise ValueError("need 0 <= converted <= decided, for the referrer and for the bank")
    if k <= 0:
        raise ValueError("k must be positive")
    bank_rate = bank_converted / bank_decided if bank_decided else PRIOR_RATE
    return _half_up(100.0 * (converted + k * bank_rate) / (decided + k))


def priority(lead_score: int, referrer_score: int, age: timedelta, sla: timedelta) -> float:
    """The order a recipient works their referrals in, highest first (module docstring)."""
    if sla <= timedelta(0):
        raise ValueError("the SLA must be positive")
    age_points = min(100.0, 100.0 * max(age, timedelta(0)) / sla)
    return round(LEAD_WEIGHT * lead_score + REFERRER_WEIGHT * referrer_score + AGE_WEIGHT * age_points, 2)
