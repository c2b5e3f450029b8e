"""E-mail to employees: every message goes to the outbox table, and through SMTP when
NEEDFLOW_SMTP_URL is set (`smtp://[user:password@]host[:port]`).

Delivery is idempotent per (message id, recipient): a retried activity finds the outbox
row and sends only what is not marked sent. A crash between the SMTP hand-off and the
mark may send one message twice (at-least-once); it never loses one.
"""

from __future__ import annotations

import asyncio
import smtplib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.models import Employee, Notification


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> SmtpSettings:
        parts = urlsplit(url)
        if parts.scheme != "smtp" or not parts.hostname:
            raise ValueError(f"NEEDFLOW_SMTP_URL must look like smtp://host:port, not {url!r}")
        return cls(
            host=parts.hostname,
            port=parts.port or 25,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


class Mailer:
    def __init__(self, smtp: SmtpSettings | None, sender: str) -> None:
        self.smtp = smtp
        self.sender = sender

    def _send(self, to: str, subject: str, body: str, message_id: str) -> None:
        assert self.smtp is not None
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = to
        msg["Subject"] = subject
        msg["X-Needflow-Message"] = message_id
        msg.set_content(body)
        with smtplib.SMTP(self.smtp.host, self.smtp.port, timeout=20) as smtp:
            if self.smtp.username:
                smtp.login(self.smtp.username, self.smtp.password or "")
            smtp.send_message(msg)

    async def record(
        self,
        session: AsyncSession,
        message_id: str,
        to_address: str,
        subject: str,
        body: str,
        *,
        to_employee_id: str | None = None,
    ) -> str:
        """Put a message in the outbox inside the caller's transaction, so it is there
        exactly when what it tells of is (a retry finds it by id and adds nothing). Send it
        after the commit with `send_pending`. Returns the message's id."""
        if await session.get(Notification, message_id) is None:
            session.add(
                Notification(
                    id=message_id, to_employee_id=to_employee_id, to_address=to_address, subject=subject, body=body
                )
            )
        return message_id

    async def send_pending(self, sessions: async_sessionmaker, message_ids: list[str]) -> None:
        """Send these outbox messages over SMTP if they are not sent yet (none without SMTP:
        the outbox is the delivery). Each is marked sent in the transaction that sends it."""
        if self.smtp is None:
            return
        for message_id in message_ids:
            async with sessions.begin() as session:
                row = await session.get(Notification, message_id, with_for_update=True)
                if row is None or row.sent_at is not None:
                    continue
                await asyncio.to_thread(self._send, row.to_address, row.subject, row.body, row.id)
                row.sent_at = datetime.now(UTC)

    async def deliver(
        self,
        sessions: async_sessionmaker,
        message_id: str,
        recipients: list[Employee],
        subject: str,
        body: str,
    ) -> int:
        """Record the message for each recipient, then send what is unsent; returns how many."""
        async with sessions.begin() as session:
            ids = [
                await self.record(session, f"{message_id}:{e.id}", e.email, subject, body, to_employee_id=e.id)
                for e in recipients
            ]
        await self.send_pending(sessions, ids)
        return len(recipients)
