"""The store's side of an import (`POST /v1/imports`; the checks are domain/imports.py).

- `known`: what the store already holds of the ids a book refers to, in a few queries of
  up to `LOOKUP_CHUNK` ids each (never one per record).
- `write`: the rows `domain.imports.check` planned, kind by kind in dependency order, in
  transactions of `CHUNK` rows each, with progress in the log. Rows whose (derived) id is
  already there are counted `unchanged` and left as they are, so importing the same book
  again writes nothing, and a re-import after a failure half-way finishes the work
  (checkpoints are found by opportunity and seq).

Then the practice audit's verdicts (store/audit_findings.py): the book's opportunities
are judged, `audit_findings.BATCH` per transaction, and so is every other opportunity of
a customer and product a new consent belongs to.

All or nothing is kept by validating the whole book before the first write: `write` is
only called with a plan that had no problem. (A database failure between chunks leaves
the chunks written so far; sending the same import again completes it.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from domain.imports import KINDS, Book, Known, Plan, lookups
from domain.process import ProcessCatalog
from store.audit_findings import judge, refresh_stale
from store.models import Campaign, Checkpoint, Consent, Customer, Employee, Household, Need, Opportunity

log = logging.getLogger("needflow.imports")


def _progress_shows() -> None:
    """Progress is for the operator: under uvicorn (which configures only its own loggers)
    it goes to stderr, the API's log; where logging is configured, through that."""
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)


#: Rows per transaction when writing.
CHUNK = 2000
#: Ids per `IN (...)` when looking rows up.
LOOKUP_CHUNK = 500

MODELS: dict[str, Any] = {
    "households": Household,
    "employees": Employee,
    "customers": Customer,
    "needs": Need,
    "opportunities": Opportunity,
    "checkpoints": Checkpoint,
    "consents": Consent,
}

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _present(session: AsyncSession, model: Any, ids: Iterable[str]) -> set[str]:
    found: set[str] = set()
    wanted = sorted(set(ids))
    for part in chunks(wanted, LOOKUP_CHUNK):
        found |= set(await session.scalars(select(model.id).where(model.id.in_(part))))
    return found


async def known(session: AsyncSession, book: Book) -> tuple[Known, set[str]]:
    """What the store holds of the references `book` does not resolve itself, and the
    campaign ids it names that exist."""
    out = Known()
    for kind, ids in lookups(book).items():
        model = MODELS[kind]
        wanted = sorted(ids)
        for part in chunks(wanted, LOOKUP_CHUNK):
            if kind in ("needs", "opportunities"):
                rows = (await session.execute(select(model.id, model.customer_id).where(model.id.in_(part)))).all()
                out.ids[kind] |= {r[0] for r in rows}
                out.customer_of |= {r[0]: r[1] for r in rows}
            else:
                out.ids[kind] |= set(await session.scalars(select(model.id).where(model.id.in_(part))))
    named = {o.campaign_id for _, o in book.opportunities if o.campaign_id is not None}
    campaigns = await _present(session, Campaign, named) if named else set()
    return out, campaigns


@dataclass
class Outcome:
    created: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    unchanged: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    #: The opportunities that exist (made now or before) and are still open in the store.
    open_opportunities: set[str] = field(default_factory=set)


async def write(
    sessions: async_sessionmaker[AsyncSession], catalog: ProcessCatalog, plan: Plan, chunk: int = CHUNK
) -> Outcome:
    """Write what is not there yet, `chunk` rows per transaction, kind by kind; then judge
    what the practice audit says of it (module docstring)."""
    _progress_shows()
    outcome = Outcome()
    started = time.monotonic()
    async with sessions() as session:
        present = {
            kind: await _present(session, MODELS[kind], (r["id"] for r in plan.rows[kind]))
            for kind in KINDS
            if kind != "checkpoints"
        }
        # Checkpoints by (opportunity, seq): a re-import after a failure between the
        # opportunities' chunks and their checkpoints' still writes the missing ones.
        recorded: set[tuple[str, int]] = set()
        for part in chunks(sorted(present["opportunities"]), LOOKUP_CHUNK):
            rows = await session.execute(
                select(Checkpoint.opportunity_id, Checkpoint.seq).where(Checkpoint.opportunity_id.in_(part))
            )
            recorded |= {(r[0], r[1]) for r in rows}
        opp_ids = [r["id"] for r in plan.rows["opportunities"]]
        for part in chunks(opp_ids, LOOKUP_CHUNK):
            outcome.open_opportunities |= set(
                await session.scalars(
                    select(Opportunity.id).where(Opportunity.id.in_(part), Opportunity.status == "open")
                )
            )
    new: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        rows = plan.rows[kind]
        if kind == "checkpoints":
            new[kind] = [r for r in rows if (r["opportunity_id"], r["seq"]) not in recorded]
        else:
            new[kind] = [r for r in rows if r["id"] not in present[kind]]
        outcome.created[kind] = len(new[kind])
        outcome.unchanged[kind] = len(rows) - len(new[kind])
    total = sum(outcome.created.values())
    done = 0
    for kind in KINDS:
        for part in chunks(new[kind], chunk):
            async with sessions.begin() as session:
                await session.execute(insert(MODELS[kind]), list(part))
            done += len(part)
            log.info(
                "import %s: %d %s written; %d of %d new rows (%.1f s)",
                plan.source,
                len(part),
                kind,
                done,
                total,
                time.monotonic() - started,
            )
    outcome.open_opportunities |= {
        r["id"] for r in plan.rows["opportunities"] if r["status"] == "open" and r["id"] not in present["opportunities"]
    }
    # A new consent can change the verdicts of opportunities from elsewhere (live ones, or
    # another import's) of its customer and product; the book's own are judged below.
    pairs = sorted({(r["customer_id"], r["product"]) for r in new["consents"]})
    for part in chunks(pairs, LOOKUP_CHUNK):
        async with sessions.begin() as session:
            await judge(
                session,
                catalog,
                tuple_(Opportunity.customer_id, Opportunity.product).in_(part),
                Opportunity.source.is_distinct_from(plan.source),
            )
    judged = await refresh_stale(sessions, catalog, Opportunity.source == plan.source)
    log.info("import %s: %d opportunities judged by the practice audit", plan.source, judged)
    log.info(
        "import %s: done in %.1f s; created %s; unchanged %s",
        plan.source,
        time.monotonic() - started,
        outcome.created,
        outcome.unchanged,
    )
    return outcome
