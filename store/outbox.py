"""The outbox as a mail queue: what the sender (`activities.mail.MailSender`) claims and
settles, and the queue's depth and age for the metrics.

Every state change is one conditional UPDATE (compare-and-set on the status or on the
attempt id), so two senders on one database never send one message twice, on SQLite and
PostgreSQL alike; `domain/mail.py` defines the statuses. Being single statements, they
need no transaction around them: the sender runs them in autocommit, so it holds a write
lock only while a statement runs (on SQLite, never across an await of its event loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from domain.mail import FAILED, PENDING, QUEUED, SENDING, SENT, UNKNOWN
from store.models import Notification

#: A session, or a connection (the sender's, in autocommit).
Db = AsyncSession | AsyncConnection


@dataclass(frozen=True)
class MailQueue:
    """The mail queue now: messages not handed to the SMTP server yet (`pending` and
    `sending`) and how long the oldest of them has waited; and the messages that need a
    person (`failed`, `unknown`), which the sender will not try again."""

    pending: int
    oldest_pending_age_seconds: float | None
    failed: int
    unknown: int


async def mail_queue(session: Db, now: datetime | None = None) -> MailQueue:
    """The queue's depth and the age of its oldest message, for the metrics (one query,
    on the `(status, created_at)` index)."""
    now = now or datetime.now(UTC)
    rows = await session.execute(
        select(Notification.status, func.count(), func.min(Notification.created_at))
        .where(Notification.status.in_([*QUEUED, FAILED, UNKNOWN]))
        .group_by(Notification.status)
    )
    counts: dict[str, int] = {}
    oldest: datetime | None = None
    for status, n, first in rows:
        counts[status] = n
        if status in QUEUED and first is not None:
            oldest = first if oldest is None else min(oldest, first)
    return MailQueue(
        pending=sum(counts.get(s, 0) for s in QUEUED),
        oldest_pending_age_seconds=max(0.0, (now - oldest).total_seconds()) if oldest is not None else None,
        failed=counts.get(FAILED, 0),
        unknown=counts.get(UNKNOWN, 0),
    )


async def due(session: Db, now: datetime, limit: int) -> list[str]:
    """The ids of pending messages due by `now`, those due first first."""
    return list(
        await session.scalars(
            select(Notification.id)
            .where(Notification.status == PENDING, Notification.next_attempt_at <= now)
            .order_by(Notification.next_attempt_at, Notification.created_at, Notification.id)
            .limit(limit)
        )
    )


async def next_due(session: Db) -> datetime | None:
    """When the next pending message falls due (None: nothing is pending)."""
    return await session.scalar(select(func.min(Notification.next_attempt_at)).where(Notification.status == PENDING))


async def claim(session: Db, message_id: str, attempt_id: str, now: datetime, lease_until: datetime) -> bool:
    """Mark a due pending message `sending` for this attempt; False when another sender
    took it first (or it is not due or pending any more)."""
    result = await session.execute(
        update(Notification)
        .where(Notification.id == message_id, Notification.status == PENDING, Notification.next_attempt_at <= now)
        .values(status=SENDING, attempt_id=attempt_id, lease_until=lease_until)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


async def message(session: Db, message_id: str) -> Row | None:
    """What sending a message needs of its row: id, to_address, subject, body, created_at,
    attempts."""
    n = Notification
    return (
        await session.execute(
            select(n.id, n.to_address, n.subject, n.body, n.created_at, n.attempts).where(n.id == message_id)
        )
    ).first()


async def _settle(session: Db, message_id: str, attempt_id: str, **values: object) -> bool:
    """Write an attempt's outcome, if the message is still this attempt's (a message the
    lease sweep marked `unknown` meanwhile takes the outcome its attempt learnt)."""
    result = await session.execute(
        update(Notification)
        .where(Notification.id == message_id, Notification.attempt_id == attempt_id)
        .values(lease_until=None, **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


async def mark_sent(session: Db, message_id: str, attempt_id: str, now: datetime) -> bool:
    return await _settle(
        session, message_id, attempt_id, status=SENT, sent_at=now, attempts=Notification.attempts + 1, last_error=None
    )


async def mark_failed(session: Db, message_id: str, attempt_id: str, error: str) -> bool:
    return await _settle(
        session, message_id, attempt_id, status=FAILED, attempts=Notification.attempts + 1, last_error=error
    )


async def mark_unknown(session: Db, message_id: str, attempt_id: str, error: str) -> bool:
    return await _settle(
        session, message_id, attempt_id, status=UNKNOWN, attempts=Notification.attempts + 1, last_error=error
    )


async def mark_retry(session: Db, message_id: str, attempt_id: str, error: str, at: datetime) -> bool:
    """A temporary failure: pending again, due `at`."""
    return await _settle(
        session,
        message_id,
        attempt_id,
        status=PENDING,
        attempts=Notification.attempts + 1,
        last_error=error,
        next_attempt_at=at,
    )


async def release(session: Db, message_id: str, attempt_id: str) -> bool:
    """Give a claimed message back untried (the server refused the session, not it):
    pending again, due at once, no attempt counted."""
    return await _settle(session, message_id, attempt_id, status=PENDING)


async def expire_leases(session: Db, now: datetime) -> int:
    """Mark `unknown` every message still `sending` after its lease: the sender that
    claimed it stopped mid-send, so whether the server took it is not known."""
    result = await session.execute(
        update(Notification)
        .where(Notification.status == SENDING, Notification.lease_until < now)
        .values(
            status=UNKNOWN,
            attempts=Notification.attempts + 1,
            lease_until=None,
            last_error="the sender stopped while sending it (its lease expired): the SMTP server may have "
            "accepted it, so it is not sent again automatically",
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0
