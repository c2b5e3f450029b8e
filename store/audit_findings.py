"""The practice audit's findings, kept: what `store.audit.findings` says of each
opportunity, stored in `audit_findings` by the transaction of every write that changes
what the rules read, so that `GET /v1/reports/practice-audit` reads an index range
instead of judging every record it covers (at bank scale, a year is 85,000 opportunities
with 300,000 checkpoints). The rules themselves stay in store/audit.py, written once;
this module stores their verdicts and nothing else.

The writes that change what the rules read, each calling `judge` in its transaction:

- an opportunity opened (activities/opportunity.py `open_opportunity`) or imported
  (store/imports.py, after its rows are written);
- a stage change: its checkpoint, status and close, and the e-signature consent it may
  carry, for every opportunity of that customer and product (`record_stage_change`);
- an owner change (the findings carry the owner for the report's filter;
  `record_owner_change`);
- a consent given in branch or withdrawn (api/routers/consents.py), for every
  opportunity of that customer and product;
- a prequalification (api/routers/campaigns.py), for that customer's opportunities in
  that campaign.

Needs and checkpoints are never changed once written, so nothing else moves a verdict.

One opportunity whose row the writing transaction holds already (a stage change without
a consent, an owner change, an opening) is judged by `judge_locked`: the same verdicts,
written only when they changed.

Concurrency: `judge` first locks the opportunities' rows (PostgreSQL `FOR UPDATE`; SQLite
has one writer at a time), then reads their facts. Two writes that touch one opportunity
(a checkpoint by the worker, a consent through the API) therefore judge it one after the
other, and the second, reading after the first committed, sees both.

Never wrong, at worst slower: the report passes over the rows here of an opportunity
whose `audit_stale` is set, and judges it on the spot (`store.audit.practice_audit`). Opportunities are
left stale by migration 0009 (which adds the column with every opportunity stale), by bulk
SQL, and by a change to a rule: whoever changes a rule's verdict or sentence adds a
migration that sets `audit_stale` on every opportunity. `refresh_stale` catches them up in
batches, each its own transaction; the daily review runs it, as does
`starter.py audit refresh`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from domain.process import ProcessCatalog
from store.audit import findings, load_facts_of
from store.db import writer_pause
from store.models import AuditFinding, Opportunity

log = logging.getLogger("needflow.audit")

#: Opportunities judged per transaction by `refresh_stale` (and per `IN (...)` by `judge`):
#: small enough that a batch holds its locks (SQLite: the database's write lock) for a
#: moment, not seconds, beside live writes.
BATCH = 200


def consent_affects(customer_id: str, product: str) -> tuple[Any, ...]:
    """The opportunities a consent (given or withdrawn) can change the verdicts of: every
    one of its customer for its product (`consent_missing` reads them all)."""
    return (Opportunity.customer_id == customer_id, Opportunity.product == product)


def prequalification_affects(customer_id: str, campaign_id: str) -> tuple[Any, ...]:
    """The opportunities a prequalification can change the verdicts of: its customer's in
    its campaign (`campaign_not_prequalified`)."""
    return (Opportunity.customer_id == customer_id, Opportunity.campaign_id == campaign_id)


async def judge(session: AsyncSession, catalog: ProcessCatalog, *where: Any) -> int:
    """Judge again every opportunity matching `where` (conditions on `Opportunity`), in
    the caller's transaction: lock their rows, replace their findings, clear their
    `audit_stale`. Returns how many were judged."""
    ids = list(await session.scalars(select(Opportunity.id).where(*where).order_by(Opportunity.id).with_for_update()))
    for start in range(0, len(ids), BATCH):
        await _judge_ids(session, catalog, ids[start : start + BATCH])
    return len(ids)


async def judge_locked(session: AsyncSession, catalog: ProcessCatalog, opp: Any) -> None:
    """`judge` for one opportunity whose row this transaction has locked (read `FOR
    UPDATE`, or inserted) and written already: a stage change, an owner change, an
    opening. `opp` is that row as the caller read it (an `Opportunity`, or a row with its
    `id` and `audit_stale`). The same verdicts in fewer statements, on the path every
    command takes: no second lock, the findings written only when they changed (most stage
    changes change none), and `audit_stale` cleared only when it is set."""
    verdicts = await _verdicts(session, catalog, [opp.id])
    kept = await session.execute(_KEPT, {"opportunity_id": opp.id})
    if sorted(map(tuple, kept)) != sorted(tuple(v[c.key] for c in _FINDING_COLUMNS) for v in verdicts):
        await _write_findings(session, [opp.id], verdicts)
    if opp.audit_stale:
        await session.execute(_JUDGED, {"ids": [opp.id]})


#: What a kept finding holds, in the order `judge_locked` compares them.
_FINDING_COLUMNS = (
    AuditFinding.opportunity_id,
    AuditFinding.rule,
    AuditFinding.detail,
    AuditFinding.owner_id,
    AuditFinding.product,
    AuditFinding.opened_at,
)

# The statements of every judging, built once (store/audit.py `_BY_IDS` says why). The
# ORM cannot evaluate a parameter it has not seen in the objects it holds (it reads the
# `ids` as None and leaves them unchanged), so the UPDATE and the DELETE have the rows
# they touched returned and set those objects from them: "fetch".
_KEPT = select(*_FINDING_COLUMNS).where(AuditFinding.opportunity_id == bindparam("opportunity_id"))
_IDS = bindparam("ids", expanding=True)
_FETCH = {"synchronize_session": "fetch"}
_DELETE_FINDINGS = delete(AuditFinding).where(AuditFinding.opportunity_id.in_(_IDS)).execution_options(**_FETCH)
_INSERT_FINDINGS = insert(AuditFinding)
_JUDGED = update(Opportunity).where(Opportunity.id.in_(_IDS)).values(audit_stale=False).execution_options(**_FETCH)


async def _verdicts(session: AsyncSession, catalog: ProcessCatalog, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The findings rows of `ids`, as the rules judge them now."""
    return [
        {
            "opportunity_id": o.id,
            "rule": f.rule,
            "detail": f.detail,
            "owner_id": o.owner_id,
            "product": o.product,
            "opened_at": o.opened_at,
        }
        for o in await load_facts_of(session, catalog, ids)
        for f in findings(o)
    ]


async def _write_findings(session: AsyncSession, ids: Sequence[str], verdicts: list[dict[str, Any]]) -> None:
    await session.execute(_DELETE_FINDINGS, {"ids": list(ids)})
    if verdicts:
        await session.execute(_INSERT_FINDINGS, verdicts)


async def _judge_ids(session: AsyncSession, catalog: ProcessCatalog, ids: Sequence[str]) -> None:
    # Read everything first, then write: on SQLite a transaction holds the one write lock
    # from its first write to its commit, so the writes come last and close together.
    verdicts = await _verdicts(session, catalog, ids)
    await _write_findings(session, ids, verdicts)
    await session.execute(_JUDGED, {"ids": list(ids)})


async def refresh_stale(
    sessions: async_sessionmaker[AsyncSession],
    catalog: ProcessCatalog,
    *where: Any,
    batch: int = BATCH,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Judge every stale opportunity (matching `where`), `batch` per transaction, oldest
    first, with progress in the log (and to `progress`, after each batch: an activity's
    heartbeat). Returns how many were judged. Safe beside live writes: each batch locks
    its rows, skipping those a write holds, and a row judged meanwhile is no longer stale."""
    done = 0
    while True:
        async with sessions.begin() as session:
            ids = list(
                await session.scalars(
                    select(Opportunity.id)
                    .where(Opportunity.audit_stale, *where)
                    .order_by(Opportunity.opened_at, Opportunity.id)
                    .limit(batch)
                    .with_for_update(skip_locked=True)
                )
            )
            if not ids:
                break
            await _judge_ids(session, catalog, ids)
        done += len(ids)
        log.info("audit findings: %d stale opportunities judged", done)
        if progress is not None:
            progress(done)
        if (pause := writer_pause(sessions)) is not None:  # SQLite: let waiting writers in
            await asyncio.sleep(pause)
    return done
