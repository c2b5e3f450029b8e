"""The reports at bank scale (issue 8, item 9): 1,000,000 referrals, 250,000 opportunities
with ~4 checkpoints each, 2,000,000 customer-health events, ~200,000 customers and 2,000
employees in a manager hierarchy, seeded into a fresh PostgreSQL database with bulk SQL
(INSERT ... SELECT FROM generate_series; rows go in in time order, as the live system
writes them; customer-health events with the scorecard facts the events API records beside
their JSON, domain.customer_health.signal_facts), then the practice audit's kept verdicts built by the code the activities
keep them with (store/audit_findings.refresh_stale, timed), then each report timed by
calling the same
functions, with the same arguments, as the API's routers: referrers, pipeline (bank and a
manager's team), scorecards for a month (bank and one manager's team), the practice audit
(a month unfiltered, one owner over all time and over the month) and one customer's
journey with its review. Prints p50 / max ms and the ratio to the 300 ms budget; it never
asserts a timing.

    .venv/bin/python bench/bench_bank_scale.py                 # full scale (~3 min to seed)
    .venv/bin/python bench/bench_bank_scale.py --scale 0.01    # a quick run
    .venv/bin/python bench/bench_bank_scale.py --keep          # keep the database (its URL is printed)

The server comes from DATABASE_URL (default postgresql://root@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.routers.reports import AUDIT_PAGE  # noqa: E402
from api.routers.scorecards import PAGE as SCORECARD_PAGE  # noqa: E402
from domain.process import load_catalog  # noqa: E402
from store.audit import customer_review, practice_audit  # noqa: E402
from store.audit_findings import refresh_stale  # noqa: E402
from store.db import make_async_engine, make_session_factory  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from store.queries import customer_journey, referral_records  # noqa: E402
from store.reports import pipeline_report, referrer_report  # noqa: E402
from store.scorecards import scorecards  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUDGET_MS = 300.0
#: What GET /v1/reports/practice-audit asks the store for: a page and one more.
PAGE = AUDIT_PAGE + 1
RUNS = 5
NOW = datetime.now(UTC).replace(microsecond=0)
#: Three years of history, ending now.
SPAN_DAYS = 3 * 365

# Stage keys of processes/*.v1.yaml, in order, without the closing stages.
SEED_SQL = """
CREATE TEMP TABLE bench_products (n int PRIMARY KEY, product text, stages text[]);
INSERT INTO bench_products VALUES
  (0, 'mortgage', ARRAY['interested','searching','applied','approved']),
  (1, 'checking', ARRAY['interested','authorised']),
  (2, 'insurance', ARRAY['interested','proposal']),
  (3, 'wealth', ARRAY['interested','proposal']);

INSERT INTO employees (id, name, email, role, line_of_business, products, cities, states, capacity,
                       manager_id, created_at, active)
SELECT 'E' || lpad(i::text, 5, '0'), 'Employee ' || i, 'e' || i || '@bank.example',
       CASE WHEN i <= 101 THEN 'manager' ELSE (ARRAY['banker','mortgage_officer','advisor'])[1 + i % 3] END,
       (ARRAY['retail','mortgage','wealth','insurance'])[1 + i % 4],
       '["checking","mortgage"]'::jsonb, '[]'::jsonb, '["NY"]'::jsonb, 50,
       CASE WHEN i = 1 THEN NULL
            WHEN i <= 101 THEN 'E00001'
            ELSE 'E' || lpad((2 + i % 100)::text, 5, '0') END,
       %(start)s, i % 50 <> 0
FROM generate_series(1, %(employees)s) i;

INSERT INTO households (id, name, created_at)
SELECT 'H' || i, 'Household ' || i, %(start)s FROM generate_series(1, %(customers)s) i;

INSERT INTO customers (id, household_id, name, email, city, state, created_at)
SELECT 'C' || i, 'H' || i, 'Customer ' || i, 'c' || i || '@mail.example', 'City ' || (i % 300),
       (ARRAY['NY','NJ','CT','PA','MA'])[1 + i % 5], %(start)s + (i % 1000) * interval '1 hour'
FROM generate_series(1, %(customers)s) i;

-- One need per opportunity (2% recorded after the opportunity opened), plus as many again.
CREATE TEMP TABLE bench_opps AS
SELECT i,
       'O' || i AS id,
       'C' || (1 + (hashint4(i) & 2147483647) % %(customers)s) AS customer_id,
       (hashint4(i + 7) & 2147483647) % 4 AS pn,
       'E' || lpad((102 + (hashint4(i + 13) & 2147483647) % (%(employees)s - 101))::text, 5, '0') AS owner_id,
       %(now)s - ((hashint4(i + 17) & 2147483647) % (%(span)s * 1440)) * interval '1 minute' AS opened_at,
       CASE WHEN (hashint4(i + 19) & 2147483647) % 10 < 4 THEN 'won'
            WHEN (hashint4(i + 19) & 2147483647) % 10 < 7 THEN 'lost' ELSE 'open' END AS status,
       (hashint4(i + 23) & 2147483647) % 60 + 1 AS days
FROM generate_series(1, %(opportunities)s) i;
-- An open opportunity opened more than a few months ago would be unusual: keep them recent.
UPDATE bench_opps SET status = 'won' WHERE status = 'open' AND opened_at < %(now)s - interval '120 days';
UPDATE bench_opps SET days = 0 WHERE status = 'open';

INSERT INTO needs (id, customer_id, kind, description, recorded_by, recorded_at)
SELECT 'N' || i, customer_id, (ARRAY['buy_home','daily_banking','protect_family','grow_savings'])[1 + pn],
       'Need ' || i, owner_id,
       CASE WHEN i % 50 = 0 THEN opened_at + interval '2 days' ELSE opened_at - interval '3 days' END
FROM bench_opps;
INSERT INTO needs (id, customer_id, kind, description, recorded_by, recorded_at)
SELECT 'NX' || i, 'C' || (1 + (hashint4(i + 31) & 2147483647) % %(customers)s), 'daily_banking', 'Need', 'E00002',
       %(now)s - ((hashint4(i + 37) & 2147483647) % %(span)s) * interval '1 day'
FROM generate_series(1, %(opportunities)s) i;

INSERT INTO opportunities (id, customer_id, product, process_version, owner_id, need_id, amount, referral_id,
                           campaign_id, stage, probability, status, lost_reason, last_seq, workflow_id,
                           opened_at, closed_at)
SELECT o.id, o.customer_id, p.product, 1, o.owner_id, 'N' || o.i,
       CASE WHEN p.product = 'mortgage' THEN 100000 + (o.i % 400) * 1000
            WHEN p.product = 'wealth' THEN 5000 + (o.i % 100) * 500 END,
       NULL, NULL,
       CASE o.status WHEN 'won' THEN 'closed_won' WHEN 'lost' THEN 'closed_lost'
                     ELSE p.stages[1 + o.i % array_length(p.stages, 1)] END,
       CASE o.status WHEN 'won' THEN 100 WHEN 'lost' THEN 0 ELSE 40 END,
       o.status, CASE WHEN o.status = 'lost' THEN 'price' END, 4, 'opportunity-' || o.id,
       o.opened_at, CASE WHEN o.status <> 'open' THEN o.opened_at + o.days * interval '1 day' END
FROM bench_opps o JOIN bench_products p ON p.n = o.pn
ORDER BY o.opened_at;

-- Checkpoints: the process's stages in order (a few skip one), then closed_won / closed_lost.
INSERT INTO checkpoints (opportunity_id, seq, stage, entered_at, trigger, actor, via, evidence)
SELECT o.id, s.seq, p.stages[s.seq], o.opened_at + (s.seq - 1) * interval '1 hour',
       CASE WHEN s.seq = 1 THEN 'create' ELSE 'command' END, 'employee:' || o.owner_id, 'crm',
       '{"note": "met the customer", "application_id": "APP", "approval_id": "APR", "account_number": "ACC"}'::jsonb
FROM bench_opps o JOIN bench_products p ON p.n = o.pn
CROSS JOIN LATERAL generate_series(1, CASE WHEN o.status = 'open' THEN 1 + o.i % array_length(p.stages, 1)
                                           ELSE array_length(p.stages, 1) END) AS s(seq)
WHERE NOT (o.i % 97 = 0 AND s.seq = 2);
INSERT INTO checkpoints (opportunity_id, seq, stage, entered_at, trigger, actor, via, evidence)
SELECT o.id, array_length(p.stages, 1) + 1, CASE o.status WHEN 'won' THEN 'closed_won' ELSE 'closed_lost' END,
       o.opened_at + o.days * interval '1 day', 'command', 'employee:' || o.owner_id, 'crm',
       '{"note": "signed", "signature_id": "SIG"}'::jsonb
FROM bench_opps o JOIN bench_products p ON p.n = o.pn WHERE o.status <> 'open';

-- Consents: won sales have one (1% granted after the win, 1% none); some open ones too.
INSERT INTO consents (id, customer_id, opportunity_id, product, channel, evidence, granted_at, actor, via)
SELECT 'K' || o.i, o.customer_id, o.id, p.product, 'branch', '{}'::jsonb,
       CASE WHEN o.i % 100 = 1 THEN o.opened_at + (o.days + 1) * interval '1 day'
            ELSE o.opened_at + interval '1 hour' END,
       'employee:' || o.owner_id, 'crm'
FROM bench_opps o JOIN bench_products p ON p.n = o.pn
WHERE (o.status = 'won' AND o.i % 100 <> 2) OR (o.status = 'open' AND o.i % 2 = 0);

INSERT INTO referrals (id, status, referrer_type, referrer_id, referrer_line_of_business, customer_id, prospect,
                       expressed_interest, value, city, state, source, assignee_id, lead_score,
                       lead_score_factors, features, opportunity_id, workflow_id, last_seq, created_at,
                       assigned_at, accepted_at, decided_at)
SELECT 'R' || r.i, r.status,
       CASE WHEN r.i % 5 = 0 THEN 'customer' ELSE 'employee' END,
       CASE WHEN r.i % 5 = 0 THEN 'C' || (1 + (hashint4(r.i + 41) & 2147483647) % %(customers)s)
            ELSE 'E' || lpad((1 + (hashint4(r.i + 43) & 2147483647) % %(employees)s)::text, 5, '0') END,
       CASE WHEN r.i % 5 = 0 THEN NULL ELSE (ARRAY['retail','mortgage','wealth','insurance'])[1 + r.i % 4] END,
       'C' || (1 + (hashint4(r.i + 47) & 2147483647) % %(customers)s), NULL,
       (ARRAY['mortgage','checking','insurance','wealth'])[1 + r.i % 4], 1000 + r.i % 5000,
       'City ' || (r.i % 300), 'NY', 'branch',
       CASE WHEN r.status = 'unassigned' THEN NULL
            ELSE 'E' || lpad((102 + (hashint4(r.i + 53) & 2147483647) % (%(employees)s - 101))::text, 5, '0') END,
       1 + r.i % 99, '[]'::jsonb, '{"channel": "branch"}'::jsonb, NULL, 'referral-R' || r.i, 1,
       r.created_at, r.created_at + interval '5 minutes',
       CASE WHEN r.status IN ('accepted','converted') THEN r.created_at + interval '4 hours' END,
       CASE WHEN r.status IN ('converted','closed') THEN r.created_at + r.days * interval '1 day' END
FROM (
  SELECT i, %(now)s - ((hashint4(i + 59) & 2147483647) % (%(span)s * 1440)) * interval '1 minute' AS created_at,
         (hashint4(i + 61) & 2147483647) % 30 AS days,
         (hashint4(i + 67) & 2147483647) % 100 AS roll
  FROM generate_series(1, %(referrals)s) i
) AS q(i, created_at, days, roll)
CROSS JOIN LATERAL (SELECT q.i, q.created_at, q.days,
  CASE WHEN q.created_at > %(now)s - interval '60 days' AND q.roll < 40
            THEN (ARRAY['assigned','accepted','unassigned','assigned'])[1 + q.roll % 4]
       WHEN q.created_at <= %(now)s - interval '60 days' AND q.roll < 1 THEN 'accepted'
       WHEN q.roll < 45 THEN 'converted' ELSE 'closed' END) AS r(i, created_at, days, status)
ORDER BY r.created_at;
-- No decision in the future.
UPDATE referrals SET decided_at = %(now)s WHERE decided_at > %(now)s;

-- Customer health: NPS (25%), account activity (50%), mortgage payments (25%).
CREATE TEMP TABLE bench_mortgages AS
SELECT row_number() OVER (ORDER BY o.i) AS n, o.id, o.customer_id, o.opened_at + o.days * interval '1 day' AS won_at
FROM bench_opps o WHERE o.pn = 0 AND o.status = 'won';

INSERT INTO processed_events (id, type, subject_id, body_sha256, processed_at)
SELECT 'EV' || i, 'nps.response', 'C' || (1 + (hashint4(i + 71) & 2147483647) % %(customers)s), md5(i::text),
       %(now)s - ((hashint4(i + 73) & 2147483647) % (%(span)s * 1440)) * interval '1 minute'
FROM generate_series(1, %(nps)s) i
ORDER BY 5;
INSERT INTO customer_signals (event_id, customer_id, type, data, occurred_at, received_at, month, score)
SELECT id, subject_id, type,
       jsonb_build_object('score', (hashtext(id) & 2147483647) % 11,
                          'comment', 'ok'),
       processed_at - interval '1 minute', processed_at,
       to_char((processed_at - interval '1 minute') AT TIME ZONE 'UTC', 'YYYY-MM'),
       (hashtext(id) & 2147483647) % 11
FROM processed_events WHERE type = 'nps.response'
ORDER BY processed_at;

INSERT INTO processed_events (id, type, subject_id, body_sha256, processed_at)
SELECT 'EA' || i, 'account.activity', 'C' || (1 + (hashint4(i + 83) & 2147483647) % %(customers)s), md5(i::text),
       date_trunc('month', %(now)s) - ((i % 36)) * interval '1 month' + interval '2 days'
FROM generate_series(1, %(activity)s) i
ORDER BY 5;
INSERT INTO customer_signals (event_id, customer_id, type, data, occurred_at, received_at, month, transactions)
SELECT id, subject_id, type,
       jsonb_build_object('product', (ARRAY['checking','savings','mortgage'])[1 + (hashtext(id || 'p') & 2147483647) % 3],
                          'period', to_char(processed_at - interval '1 month', 'YYYY-MM'),
                          'transactions', (hashtext(id) & 2147483647) % 40),
       processed_at - interval '1 minute', processed_at,
       to_char(processed_at - interval '1 month', 'YYYY-MM'), (hashtext(id) & 2147483647) % 40
FROM processed_events WHERE type = 'account.activity'
ORDER BY processed_at;

INSERT INTO processed_events (id, type, subject_id, body_sha256, processed_at)
SELECT 'EP' || i, 'mortgage.payment', m.customer_id, m.id,
       least(%(now)s, m.won_at + (1 + i / (SELECT count(*) FROM bench_mortgages)) * interval '1 month')
FROM generate_series(1, %(payments)s) i
JOIN bench_mortgages m ON m.n = 1 + i % (SELECT count(*) FROM bench_mortgages)
ORDER BY 5;
INSERT INTO customer_signals (event_id, customer_id, type, data, occurred_at, received_at, month, opportunity_id,
                              on_time)
SELECT id, subject_id, type,
       jsonb_build_object('opportunity_id', body_sha256,
                          'due_date', to_char(processed_at - interval '2 days', 'YYYY-MM-DD'),
                          'paid_date', to_char(processed_at - CASE WHEN (hashtext(id) & 2147483647) % 10 = 0 THEN interval '0 days'
                                                                   ELSE interval '3 days' END, 'YYYY-MM-DD'),
                          'amount', '1450.00'),
       processed_at - interval '1 minute', processed_at,
       to_char(processed_at - interval '2 days', 'YYYY-MM'), body_sha256,
       (hashtext(id) & 2147483647) % 10 <> 0
FROM processed_events WHERE type = 'mortgage.payment'
ORDER BY processed_at;
UPDATE processed_events SET body_sha256 = md5(id) WHERE type = 'mortgage.payment';
"""


def counts(scale: float) -> dict[str, int]:
    n = lambda x: max(int(x * scale), 1)  # noqa: E731
    return {
        "employees": max(n(2_000), 150),
        "customers": n(200_000),
        "opportunities": n(250_000),
        "referrals": n(1_000_000),
        "nps": n(500_000),
        "activity": n(1_000_000),
        "payments": n(500_000),
    }


def seed(dsn: str, scale: float) -> None:
    params: dict[str, Any] = {**counts(scale), "now": NOW, "start": NOW - timedelta(days=SPAN_DAYS + 30)}
    params["span"] = SPAN_DAYS
    text = SEED_SQL
    for key, value in params.items():  # trusted numbers and times: inlined as literals
        literal = f"'{value.isoformat()}'::timestamptz" if isinstance(value, datetime) else str(int(value))
        text = text.replace(f"%({key})s", literal)
    statements = [s.strip() for s in text.split(";\n") if s.strip()]
    with psycopg.connect(dsn) as conn:
        for stmt in statements:
            t0 = time.perf_counter()
            cur = conn.execute(stmt)  # type: ignore[call-overload]
            head = " ".join(line for line in stmt.splitlines() if not line.startswith("--"))[:60]
            print(f"  {time.perf_counter() - t0:7.1f} s  {cur.rowcount:>9} rows  {head}", flush=True)
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        print(f"  {time.perf_counter() - t0:7.1f} s  VACUUM ANALYZE", flush=True)
        for table in ("referrals", "opportunities", "checkpoints", "consents", "needs", "customer_signals"):
            print(
                f"  {table:>18}: {conn.execute(sql.SQL('SELECT count(*) FROM {}').format(sql.Identifier(table))).fetchone()[0]:>9}"
            )  # type: ignore[index]


async def timed(
    label: str, make: Callable[[], Awaitable[Any]], size: Callable[[Any], int]
) -> tuple[str, float, float, int]:
    times = []
    n = 0
    for _ in range(RUNS + 1):  # the first run warms the caches and is not counted
        t0 = time.perf_counter()
        result = await make()
        times.append((time.perf_counter() - t0) * 1000)
        n = size(result)
    times = times[1:]
    return label, statistics.median(times), max(times), n


async def judge_all(url: str) -> None:
    """Build the practice audit's kept verdicts as the activities keep them, and time it."""
    catalog = load_catalog(ROOT / "processes")
    engine = make_async_engine(url)
    t0 = time.perf_counter()
    n = await refresh_stale(make_session_factory(engine), catalog)
    seconds = time.perf_counter() - t0
    print(f"judged {n} opportunities in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f}/s)", flush=True)
    await engine.dispose()
    # What autovacuum does after a bulk change: the planner learns the new rows, and the
    # visibility map lets index-only scans skip the heap.
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


async def run_reports(url: str) -> None:
    catalog = load_catalog(ROOT / "processes")
    engine = make_async_engine(url)
    sessions = make_session_factory(engine)
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
        manager = conn.execute(
            "SELECT manager_id FROM employees WHERE manager_id IS NOT NULL AND manager_id <> 'E00001' LIMIT 1"
        ).fetchone()[0]  # type: ignore[index]
        team = [r[0] for r in conn.execute("SELECT id FROM employees WHERE manager_id = %s ORDER BY id", (manager,))]
        owner = conn.execute(
            "SELECT owner_id FROM opportunities GROUP BY owner_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()[0]  # type: ignore[index]
        customer = conn.execute(
            "SELECT customer_id FROM opportunities GROUP BY customer_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()[0]  # type: ignore[index]
        # Where the scorecards' last page starts: after the employee a page before the end.
        last_page = tuple(
            conn.execute(
                "SELECT name, id FROM employees ORDER BY name DESC, id DESC OFFSET %s LIMIT 1", (SCORECARD_PAGE,)
            ).fetchone()
        )  # type: ignore[arg-type]
    last_month = (NOW.replace(day=1) - timedelta(days=1)).replace(day=1).date()
    month_end = NOW.replace(day=1).date() - timedelta(days=1)
    year_start = date(NOW.year - 1, NOW.month, 1)
    window = timedelta(days=90)

    async def with_session(fn: Callable[[Any], Awaitable[Any]]) -> Any:
        async with sessions() as session:
            return await fn(session)

    async def journey(session: Any) -> int:
        j = await customer_journey(session, customer)
        assert j is not None
        refs = await referral_records(
            session, j.referrals, now=datetime.now(UTC), window=window, accept_sla=timedelta(hours=24)
        )
        review = await customer_review(session, catalog, customer)
        return len(j.opportunities) + len(refs) + len(review)

    cases: list[tuple[str, Callable[[], Awaitable[Any]], Callable[[Any], int]]] = [
        (
            "referrers (90 days, top 100)",
            lambda: with_session(lambda s: referrer_report(s, now=datetime.now(UTC), window_days=90, limit=100)),
            lambda r: len(r.items),
        ),
        (
            "pipeline (bank)",
            lambda: with_session(lambda s: pipeline_report(s, now=datetime.now(UTC))),
            lambda r: r.open_total,
        ),
        (
            f"pipeline (team of {manager})",
            lambda: with_session(lambda s: pipeline_report(s, now=datetime.now(UTC), owner_ids=team)),
            lambda r: r.open_total,
        ),
        (
            f"scorecards {last_month:%Y-%m} (bank, a page)",
            lambda: with_session(lambda s: scorecards(s, period=last_month, limit=SCORECARD_PAGE + 1)),
            len,
        ),
        (
            f"scorecards {last_month:%Y-%m} (bank, last page)",
            lambda: with_session(lambda s: scorecards(s, period=last_month, after=last_page, limit=SCORECARD_PAGE + 1)),
            len,
        ),
        (
            f"scorecards {last_month:%Y-%m} (team)",
            lambda: with_session(lambda s: scorecards(s, period=last_month, manager_id=manager)),
            len,
        ),
        (
            f"audit {last_month:%Y-%m} (unfiltered, a page)",
            lambda: with_session(
                lambda s: practice_audit(s, catalog, opened_from=last_month, opened_to=month_end, limit=PAGE)
            ),
            len,
        ),
        (
            f"audit {last_month:%Y-%m} (owner, a page)",
            lambda: with_session(
                lambda s: practice_audit(
                    s, catalog, opened_from=last_month, opened_to=month_end, owner_id=owner, limit=PAGE
                )
            ),
            len,
        ),
        (
            "audit all time (owner, a page)",
            lambda: with_session(lambda s: practice_audit(s, catalog, owner_id=owner, limit=PAGE)),
            len,
        ),
        (
            "audit 12 months (unfiltered, a page)",
            lambda: with_session(
                lambda s: practice_audit(s, catalog, opened_from=year_start, opened_to=month_end, limit=PAGE)
            ),
            len,
        ),
        ("journey + review (one customer)", lambda: with_session(journey), lambda n: n),
    ]
    print(f"\n{'report':<36} {'p50 ms':>9} {'max ms':>9} {'÷300ms':>7} {'rows':>8}")
    for label, make, size in cases:
        name, p50, mx, n = await timed(label, make, size)
        flag = "" if p50 <= BUDGET_MS else "  OVER"
        print(f"{name:<36} {p50:9.1f} {mx:9.1f} {p50 / BUDGET_MS:7.2f} {n:>8}{flag}", flush=True)
    await engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the bank-scale row counts (default 1.0)")
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards")
    ap.add_argument("--url", help="reuse this existing, seeded database (skips creating and seeding it)")
    args = ap.parse_args()

    if args.url:
        t0 = time.perf_counter()
        upgrade(args.url)  # a database seeded by an older revision: its migrations run here, timed
        print(f"migrated in {time.perf_counter() - t0:.1f} s")
        asyncio.run(judge_all(args.url))
        asyncio.run(run_reports(args.url))
        return
    base = make_url(os.environ.get("DATABASE_URL") or "postgresql://root@127.0.0.1:5432/postgres")
    if base.get_backend_name() != "postgresql":
        sys.exit("bench_bank_scale needs PostgreSQL (DATABASE_URL=postgresql://...)")
    name = f"needflow_bench_{secrets.token_hex(4)}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    url = base.set(database=name).render_as_string(hide_password=False)
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        print(f"database {url}, scale {args.scale}: {counts(args.scale)}")
        t0 = time.perf_counter()
        upgrade(url)
        print(f"migrated in {time.perf_counter() - t0:.1f} s; seeding:")
        t0 = time.perf_counter()
        seed(dsn, args.scale)
        print(f"seeded in {time.perf_counter() - t0:.1f} s")
        asyncio.run(judge_all(url))
        asyncio.run(run_reports(url))
    finally:
        if args.keep:
            print(f"kept {url}")
        else:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
