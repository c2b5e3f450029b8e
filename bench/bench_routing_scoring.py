"""Score and route 10,000 referrals against 1,000 employees; print the cost per referral.

The issue's budget: routing plus scoring under 5 ms per referral. Everything is seeded
(`random.Random(7)`), so two runs do the same work; only the timings differ.

    .venv/bin/python bench/bench_routing_scoring.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections import Counter, deque
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domain.routing import Candidate, ReferralFacts, load_routing_rules, route  # noqa: E402
from domain.scoring import LeadFeatures, LeadModel, priority, referrer_score  # noqa: E402
from domain.types import LineOfBusiness, Product, Role  # noqa: E402

EMPLOYEES = 1_000
PAST_OUTCOMES = 20_000
REFERRALS = 10_000
BUDGET_MS = 5.0
SLA = timedelta(hours=48)
T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)

PLACES = {
    "ON": ["Toronto", "Ottawa", "Hamilton", "London"],
    "QC": ["Montréal", "Québec", "Laval"],
    "BC": ["Vancouver", "Victoria", "Surrey"],
    "AB": ["Calgary", "Edmonton"],
    "MB": ["Winnipeg"],
    "NS": ["Halifax"],
    "NY": ["New York", "Buffalo", "Albany"],
    "CA": ["Los Angeles", "San Francisco", "San Diego"],
    "TX": ["Houston", "Austin", "Dallas"],
    "IL": ["Chicago", "Springfield"],
}
STATES = list(PLACES)
PRODUCTS = list(Product)
LOBS = list(LineOfBusiness)
ROLES = [Role.advisor, Role.banker, Role.mortgage_broker, Role.insurance_agent]
SOURCES = ["branch", "app", "call", "email", "meeting"]
#: Conversion odds the synthetic history is drawn from (the model must rediscover them).
PRODUCT_RATE = {
    Product.mortgage: 0.45,
    Product.wealth: 0.4,
    Product.insurance: 0.3,
    Product.checking: 0.35,
    Product.savings: 0.2,
    Product.credit_card: 0.15,
    Product.personal_loan: 0.25,
}


def employees(rng: random.Random) -> list[Candidate]:
    team = []
    for i in range(EMPLOYEES):
        state = rng.choice(STATES)
        cities = rng.sample(PLACES[state], k=rng.randint(0, min(2, len(PLACES[state]))))
        capacity = rng.randint(5, 40)
        team.append(
            Candidate(
                employee_id=f"emp-{i:04d}",
                role=rng.choice(ROLES),
                line_of_business=rng.choice(LOBS),
                products=frozenset(rng.sample(PRODUCTS, k=rng.randint(1, 3))),
                cities=frozenset(cities),
                states=frozenset([state] + ([rng.choice(STATES)] if rng.random() < 0.1 else [])),
                capacity=capacity,
                open_load=rng.randint(0, capacity // 2),
                last_assigned_at=None if rng.random() < 0.3 else T0 - timedelta(minutes=rng.randint(1, 10_000)),
            )
        )
    return team


def referral(rng: random.Random) -> tuple[ReferralFacts, str, str]:
    """A referral's facts, its source and its referrer's id."""
    state = rng.choice(STATES)
    referrer_type = rng.choices(["employee", "partner", "customer"], weights=[70, 20, 10])[0]
    value = None if rng.random() < 0.15 else Decimal(int(rng.lognormvariate(11.5, 1.3)))
    facts = ReferralFacts(
        expressed_interest=rng.choice(PRODUCTS),
        city=rng.choice(PLACES[state]) if rng.random() < 0.9 else None,
        state=state,
        value=value,
        referrer_type=referrer_type,
        referrer_line_of_business=rng.choice(LOBS) if referrer_type == "employee" else None,
    )
    return facts, rng.choice(SOURCES), f"ref-{rng.randint(0, 499)}"


def converts(rng: random.Random, facts: ReferralFacts, source: str) -> bool:
    p = PRODUCT_RATE[facts.expressed_interest]
    if facts.referrer_line_of_business == LineOfBusiness.wealth:
        p += 0.15
    if facts.referrer_type == "partner":
        p -= 0.1
    if source == "meeting":
        p += 0.1
    return rng.random() < p


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    rng = random.Random(7)
    rules = load_routing_rules()
    team = employees(rng)
    by_id = {c.employee_id: c for c in team}

    started = time.perf_counter()
    history = []
    per_referrer: dict[str, list[int]] = {}
    for _ in range(PAST_OUTCOMES):
        facts, source, referrer = referral(rng)
        won = converts(rng, facts, source)
        history.append((LeadFeatures.from_facts(facts, source), won))
        per_referrer.setdefault(referrer, [0, 0])[0 if won else 1] += 1
    model = LeadModel.from_outcomes(history)
    bank_converted, bank_decided = model.won, model.won + model.lost
    train_s = time.perf_counter() - started
    workload = [referral(rng) for _ in range(REFERRALS)]

    score_ms: list[float] = []
    route_ms: list[float] = []
    open_work: deque[str] = deque()
    outcomes: Counter[str] = Counter()
    clock = time.perf_counter
    for i, (facts, source, referrer) in enumerate(workload):
        now = T0 + timedelta(seconds=30 * i)
        t0 = clock()
        lead = model.score(LeadFeatures.from_facts(facts, source))
        won, lost = per_referrer.get(referrer, (0, 0))
        ref = referrer_score(won, won + lost, bank_converted, bank_decided)
        priority(lead.score, ref, timedelta(0), SLA)
        t1 = clock()
        decision = route(rules, facts, team)
        t2 = clock()
        score_ms.append((t1 - t0) * 1e3)
        route_ms.append((t2 - t1) * 1e3)
        outcomes[decision.rule or f"queue {decision.queue}"] += 1
        # As the service would: the recipient's load rises; every other referral, the
        # oldest open one is worked and closed, so loads stay near a steady state.
        if decision.assignee_id is not None:
            winner = by_id[decision.assignee_id]
            winner.open_load += 1
            winner.last_assigned_at = now
            open_work.append(decision.assignee_id)
        if i % 2 and open_work:
            by_id[open_work.popleft()].open_load -= 1

    both_ms = [s + r for s, r in zip(score_ms, route_ms, strict=False)]
    total_s = sum(both_ms) / 1e3
    print(
        f"{EMPLOYEES:,} employees, lead model trained on {PAST_OUTCOMES:,} outcomes in {train_s:.2f} s "
        f"({model.won:,} won / {model.lost:,} lost)"
    )
    print(f"{REFERRALS:,} referrals scored and routed in {total_s:.2f} s: {REFERRALS / total_s:,.0f} referrals/s")
    for name, samples in (("score", score_ms), ("route", route_ms), ("both", both_ms)):
        print(f"  {name:<6} mean {statistics.fmean(samples):.3f} ms   p99 {percentile(samples, 0.99):.3f} ms")
    mean, p99 = statistics.fmean(both_ms), percentile(both_ms, 0.99)
    print(
        f"budget used: {mean / BUDGET_MS:.3f} × {BUDGET_MS:g} ms (mean), {p99 / BUDGET_MS:.3f} × {BUDGET_MS:g} ms (p99)"
    )
    print("decisions: " + ", ".join(f"{k}: {v:,}" for k, v in outcomes.most_common()))


if __name__ == "__main__":
    main()
