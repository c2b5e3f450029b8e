"""Records kept only for a while, purged by the daily review (workflows/daily.py):

- idempotency records (`idempotency_keys`, api/idempotency.py): a client retries a
  request within minutes, not weeks; after `IDEMPOTENCY_RETENTION` the same key is a new
  request;
- event claims (`event_claims`, api/routers/events.py): they settle a race between
  copies of one delivery; once the event is applied, `processed_events` (kept for ever)
  answers every later copy as `duplicate`, so `CLAIM_RETENTION` is short.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.models import EventClaim, IdempotencyRecord

IDEMPOTENCY_RETENTION = timedelta(days=7)
CLAIM_RETENTION = timedelta(days=1)


@dataclass(frozen=True)
class Purged:
    idempotency_records: int
    event_claims: int


async def purge_expired(sessions: async_sessionmaker[AsyncSession], now: datetime) -> Purged:
    """Delete the records older than their retention, as of `now`; how many of each."""
    async with sessions.begin() as session:
        keys = await session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.created_at < now - IDEMPOTENCY_RETENTION)
        )
        claims = await session.execute(delete(EventClaim).where(EventClaim.claimed_at < now - CLAIM_RETENTION))
    return Purged(idempotency_records=keys.rowcount, event_claims=claims.rowcount)
