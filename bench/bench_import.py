"""The import of a large book of business (POST /v1/imports' work, without HTTP): 100,000
won or lost opportunities with three checkpoints each, their customers, households, needs
and consents, and 200 employees, into a fresh database. Prints the time of each phase:
checking every record's shape (`parse`), looking up references and checking the whole
book (`check`), and writing it in chunks of `store.imports.CHUNK` rows, one transaction
per chunk (`write`); then the same book again (all unchanged).

Open opportunities are left out: each gets a workflow, which needs a Temporal server (the
API starts them, 32 at a time, after the rows are written).

    .venv/bin/python bench/bench_import.py              # SQLite (temp file)
    DATABASE_URL=postgresql://root@127.0.0.1:5432/test .venv/bin/python bench/bench_import.py
    BENCH_OPPORTUNITIES=10000 ...                        # a shorter run
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domain.imports import check, parse  # noqa: E402
from domain.process import load_catalog  # noqa: E402
from store import imports as store  # noqa: E402
from store.db import make_async_engine, make_session_factory  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from tests.dbutil import fresh_database_url  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2020, 1, 1, tzinfo=UTC)


def book(n: int) -> dict[str, Any]:
    employees = [
        {
            "external_id": f"E{i}",
            "name": f"Employee {i}",
            "email": f"e{i}@bank.example",
            "role": "mortgage_broker",
            "line_of_business": "mortgage",
            "products": ["mortgage", "insurance"],
            "capacity": 20,
        }
        for i in range(200)
    ]
    customers, needs, opportunities, consents = [], [], [], []
    for i in range(n // 2):
        customers.append({"external_id": f"C{i}", "name": f"Customer {i}", "household": f"H{i // 2}"})
        needs.append(
            {
                "external_id": f"N{i}",
                "customer": f"C{i}",
                "kind": "protect_family",
                "description": "cover",
                "recorded_by": f"E{i % 200}",
                "recorded_at": (START + timedelta(minutes=i)).isoformat(),
            }
        )
    for i in range(n):
        c = i // 2
        opened = START + timedelta(minutes=c, hours=1)
        won = i % 3 != 0
        stages = [("interested", {}), ("proposal", {"proposal_id": f"P{i}"})]
        stages.append(("closed_won", {"envelope_id": f"ENV{i}"}) if won else ("closed_lost", {"reason": "price"}))
        opportunities.append(
            {
                "external_id": f"O{i}",
                "customer": f"C{c}",
                "product": "insurance",
                "owner": f"E{i % 200}",
                "need": f"N{c}",
                "opened_at": opened.isoformat(),
                "status": "won" if won else "lost",
                "lost_reason": None if won else "price",
                "checkpoints": [
                    {
                        "stage": s,
                        "entered_at": (opened + timedelta(days=d)).isoformat(),
                        "trigger": "manual",
                        "actor": f"E{i % 200}",
                        "evidence": ev,
                    }
                    for d, (s, ev) in enumerate(stages)
                ],
            }
        )
        if won:
            consents.append(
                {
                    "external_id": f"K{i}",
                    "customer": f"C{c}",
                    "product": "insurance",
                    "opportunity": f"O{i}",
                    "channel": "esignature",
                    "evidence": {"envelope_id": f"ENV{i}"},
                    "granted_at": (opened + timedelta(days=1)).isoformat(),
                }
            )
    return {
        "source": "bench",
        "employees": employees,
        "customers": customers,
        "needs": needs,
        "opportunities": opportunities,
        "consents": consents,
    }


async def run(url: str, n: int) -> None:
    catalog = load_catalog(ROOT / "processes")
    raw = book(n)
    engine = make_async_engine(url)
    sessions = make_session_factory(engine)
    try:
        for attempt in ("first import", "same book again"):
            t0 = time.perf_counter()
            parsed, problems = parse(raw)
            assert parsed is not None and not problems, problems[:5]
            t1 = time.perf_counter()
            async with sessions() as session:
                known, campaigns = await store.known(session, parsed)
            plan, problems = check(parsed, catalog, known, campaigns)
            assert not problems, problems[:5]
            t2 = time.perf_counter()
            outcome = await store.write(sessions, catalog, plan)
            t3 = time.perf_counter()
            print(f"{attempt}: {n:,} opportunities")
            print(
                f"  parse {t1 - t0:7.1f} s · check {t2 - t1:7.1f} s · write {t3 - t2:7.1f} s · total {t3 - t0:7.1f} s"
            )
            print(f"  created   {outcome.created}")
            print(f"  unchanged {outcome.unchanged}")
    finally:
        await engine.dispose()


def main() -> None:
    n = int(os.environ.get("BENCH_OPPORTUNITIES", "100000"))
    logging.basicConfig(level=logging.WARNING)
    base = os.environ.get("DATABASE_URL")
    with fresh_database_url(base) as url:
        upgrade(url)
        print(f"database: {url.split('://')[0]} ({'temp file' if not base else 'fresh database'})")
        asyncio.run(run(url, n))


if __name__ == "__main__":
    main()
