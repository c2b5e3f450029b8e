"""The service path of routing plus scoring: the activities that record and score a new
referral and route it, against a real database with 1,000 employees and a lead model
learned from 20,000 past referrals. 10,000 referrals, one after another.

bench_routing_scoring.py measures the pure functions; this one adds what the service
pays around them (reading the lead model, candidates and loads; writing the referral,
its history and assignment). The budget is 3 ms per referral for routing plus
scoring. E-mail and Temporal round trips are not part of that figure. The new referral's
record, score and first routing are one activity, one transaction.

    .venv/bin/python bench/bench_referral_service.py              # SQLite (temp file)
    DATABASE_URL=postgresql://root@127.0.0.1:5432/test .venv/bin/python bench/bench_referral_service.py
    BENCH_REFERRALS=2000 ...                                       # a shorter run
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from activities.mail import Mailer  # noqa: E402
from activities.referral import TOTAL, ReferralActivities  # noqa: E402
from domain import records  # noqa: E402
from domain.referral import HistoryEntry, Prospect, ReferralInput, ReferralSla, Referrer  # noqa: E402
from domain.routing import ReferralFacts, load_routing_rules  # noqa: E402
from domain.scoring import FEATURES, LeadFeatures, LeadModel  # noqa: E402
from domain.types import LineOfBusiness, Product, Role  # noqa: E402
from store.db import make_async_engine, make_session_factory, make_sync_engine  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from store.models import Employee, LeadFeatureCount  # noqa: E402
from tests.dbutil import fresh_database_url  # noqa: E402

EMPLOYEES = 1_000
PAST = 20_000
REFERRALS = int(os.environ.get("BENCH_REFERRALS", "10000"))
BUDGET_MS = 3.0  # issue 10 (issue 6 asked 5 ms)
PLACES = {
    "ON": ["Toronto", "Ottawa"],
    "QC": ["Montréal", "Laval"],
    "BC": ["Vancouver", "Victoria"],
    "NY": ["New York", "Buffalo"],
    "CA": ["Los Angeles", "San Francisco"],
    "TX": ["Houston", "Austin"],
    "IL": ["Chicago"],
    "AB": ["Calgary"],
    "MB": ["Winnipeg"],
    "NS": ["Halifax"],
}
PRODUCTS = list(Product)


def seed(url: str, rng: random.Random) -> None:
    engine = make_sync_engine(url)
    with Session(engine) as s, s.begin():
        for i in range(EMPLOYEES):
            state = rng.choice(list(PLACES))
            s.add(
                Employee(
                    id=f"emp{i:04d}",
                    name=f"Employee {i}",
                    email=f"e{i}@bank.example",
                    role=rng.choice([Role.advisor, Role.banker, Role.mortgage_broker, Role.insurance_agent]).value,
                    line_of_business=rng.choice(list(LineOfBusiness)).value,
                    products=[p.value for p in rng.sample(PRODUCTS, k=rng.randint(1, 3))],
                    cities=rng.sample(PLACES[state], k=rng.randint(0, 1)),
                    states=[state],
                    capacity=rng.randint(20, 60),
                )
            )
        model = LeadModel.from_outcomes(
            (LeadFeatures.from_facts(facts(rng), rng.choice(["employee", "partner", "customer"])), rng.random() < 0.3)
            for _ in range(PAST)
        ).to_dict()
        s.add(LeadFeatureCount(feature=TOTAL, value=TOTAL, won=model["won"], lost=model["lost"]))
        for feature in FEATURES:
            for value, (won, lost) in model["counts"][feature].items():
                s.add(LeadFeatureCount(feature=feature, value=value, won=won, lost=lost))
    if engine.dialect.name == "postgresql":  # statistics, as autovacuum keeps them on a live database
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    engine.dispose()


def facts(rng: random.Random) -> ReferralFacts:
    state = rng.choice(list(PLACES))
    return ReferralFacts(
        expressed_interest=rng.choice(PRODUCTS),
        city=rng.choice(PLACES[state]),
        state=state,
        value=Decimal(rng.choice([20_000, 120_000, 500_000, 1_500_000])),
        referrer_type="employee",
        referrer_line_of_business=rng.choice(list(LineOfBusiness)),
    )


async def run(url: str) -> None:
    rng = random.Random(7)
    t = time.perf_counter()
    seed(url, rng)
    print(f"seeded {EMPLOYEES:,} employees and a model of {PAST:,} outcomes in {time.perf_counter() - t:.1f} s")
    engine = make_async_engine(url)
    acts = ReferralActivities(
        make_session_factory(engine),
        Mailer(),
        starts=None,  # type: ignore[arg-type]  # the benchmark opens no opportunity
        referrer_window_days=90,
    )
    rules = load_routing_rules()
    sla = ReferralSla(accept_seconds=3600, followup_seconds=86400)
    now = datetime.now(UTC)
    open_ms: list[float] = []
    route_ms: list[float] = []
    assigned = 0
    t_all = time.perf_counter()
    for i in range(REFERRALS):
        f = facts(rng)
        ref = ReferralInput(
            referral_id=f"ref_bench_{i}",
            referrer=Referrer(type="employee", id=f"emp{rng.randrange(EMPLOYEES):04d}"),
            referrer_line_of_business=f.referrer_line_of_business,
            prospect=Prospect(name=f"Prospect {i}", city=f.city, state=f.state),
            expressed_interest=f.expressed_interest,
            value=f.value,
            city=f.city,
            state=f.state,
            source="employee",
            rules=rules,
            sla=sla,
        )
        at = now + timedelta(seconds=i)
        t0 = time.perf_counter()
        opened = await acts.open_referral(
            records.OpenReferral(
                input=ref,
                workflow_id=f"referral-{ref.referral_id}",
                created=HistoryEntry(seq=1, status="created", at=at, actor=ref.referrer.id),
                route=records.RouteReferral(
                    referral_id=ref.referral_id,
                    rules=rules,
                    facts=ref.facts(),
                    exclude=[],
                    seq=2,
                    at=at,
                    actor="needflow",
                    accept_deadline=at + timedelta(hours=1),
                ),
            )
        )
        t1 = time.perf_counter()
        # Every tenth referral is later re-routed (a rejection): the route activity alone.
        if i % 10 == 0:
            rerouted = await acts.route_referral(
                records.RouteReferral(
                    referral_id=ref.referral_id,
                    rules=rules,
                    facts=ref.facts(),
                    exclude=[opened.routed.decision.assignee_id or ""],
                    seq=4,
                    at=at,
                    actor="needflow",
                    preceding=HistoryEntry(seq=3, status="rejected", at=at, actor="bench", note="rejected: bench"),
                    accept_deadline=at + timedelta(hours=1),
                )
            )
            route_ms.append((time.perf_counter() - t1) * 1000)
            assigned += rerouted.decision.assignee_id is not None
        open_ms.append((t1 - t0) * 1000)
    total = time.perf_counter() - t_all
    await engine.dispose()

    def p99(xs: list[float]) -> float:
        return statistics.quantiles(xs, n=100)[98]

    print(
        f"{REFERRALS:,} referrals in {total:.1f} s: {REFERRALS / total:,.0f} referrals/s "
        f"(plus {len(route_ms):,} re-routings; {assigned:,} re-routed to someone)"
    )
    print(
        f"  record+score+route (one transaction)  mean {statistics.fmean(open_ms):.2f} ms   p99 {p99(open_ms):.2f} ms"
    )
    print(
        f"  re-route after a rejection            mean {statistics.fmean(route_ms):.2f} ms   p99 {p99(route_ms):.2f} ms"
    )
    print(
        f"budget used: {statistics.fmean(open_ms) / BUDGET_MS:.2f} × {BUDGET_MS:g} ms (mean), "
        f"{p99(open_ms) / BUDGET_MS:.2f} × (p99)"
    )


def main() -> None:
    base = os.environ.get("DATABASE_URL")
    with fresh_database_url(base) as url:
        upgrade(url)
        print(f"database: {url.split('://')[0]} ({'temp file' if not base else 'fresh database'})")
        asyncio.run(run(url))


if __name__ == "__main__":
    main()
