"""E-mail: recorded in the outbox with the change it tells of, delivered by a sender of its
own, so that an SMTP outage or a refused address delays mail and never a lifecycle step.

Recording (`Mailer`)
--------------------
`Mailer.record` adds an outbox row (one per recipient, `pending`) in the caller's
transaction: the message exists exactly when what it tells of does, and a retry finds it
by id and adds nothing. Nothing here talks to SMTP: the lifecycle activities and the API
only record. When that transaction commits, the mailer wakes the sender (`wake`, a
signal to `workflows.mail.MailSenderWorkflow`; best effort: the sender also looks on its
own every `NEEDFLOW_MAIL_POLL_SECONDS`).

Sending (`MailSender`, activity `mail.send_due`)
------------------------------------------------
Each round opens one SMTP session and sends the due messages in a batch, heartbeating
throughout. Per message:

1. it is claimed: `pending` -> `sending` with a fresh attempt id and a lease, committed
   before a word about it goes to the server (a conditional update, so two senders never
   take the same message);
2. MAIL FROM, RCPT TO, DATA, the content; then the outcome is written, for that attempt
   only:
   - 250 after the content: `sent`;
   - an SMTP 5xx reply (RCPT refused, content rejected): `failed` at once with the reply
     (a permanent refusal, RFC 5321 4.2.1: repeating it cannot succeed). Only this
     recipient's row fails; every other message goes on;
   - a 4xx reply, or the connection lost before the content was sent: `pending` again,
     due after `retry_delay` (NEEDFLOW_MAIL_RETRY_SECONDS, doubling, at most
     NEEDFLOW_MAIL_RETRY_MAX_SECONDS); at the NEEDFLOW_MAIL_MAX_ATTEMPTS-th such failure
     `failed`, with the last error;
   - no reply after the content (a timeout, a dropped connection): `unknown`. The server
     may have taken it, so it is NEVER sent again automatically: each message reaches each
     recipient at most once. A message left `sending` by a sender that died (its lease
     expired) becomes `unknown` for the same reason. An operator who has checked the
     recipient did not get it can set it back to `pending`.

The session itself (connect, EHLO, STARTTLS, AUTH, the server refusing our sender
address) concerns no message: when it fails, no message is claimed or counted, the round
reports the SMTP server down, and the sender tries again after the same doubling delay.
An outage therefore never uses up a message's attempts, however long it lasts.

Credentials are never sent in clear: with a user in NEEDFLOW_SMTP_URL (`smtp://`), the
session must be upgraded with STARTTLS first (a server that does not offer it is refused
before any AUTH); `smtps://` is TLS from the first byte (port 465). The server's
certificate is always verified (the system's roots, or NEEDFLOW_SMTP_CA_FILE).
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import hashlib
import logging
import re
import smtplib
import ssl
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from temporalio import activity

from domain.mail import SEND_DUE, SendDue, SendReport, retry_delay
from domain.validation import printable
from observability.logs import redact
from store import outbox
from store.db import insert_if_missing
from store.models import Notification

log = logging.getLogger("needflow.mail")

T = TypeVar("T")

TlsMode = Literal["none", "starttls", "smtps"]


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to reach the SMTP server (NEEDFLOW_SMTP_URL and friends)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: `smtps`: TLS from the first byte; `starttls`: upgrade before anything else (always
    #: when there are credentials); `none`: plain (no credentials, local relay).
    tls: TlsMode = "none"
    #: Seconds each network operation may take.
    timeout: float = 30.0
    #: A CA bundle (PEM) to verify the server's certificate with, instead of the system's.
    ca_file: str | None = None

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 30.0, ca_file: str | None = None) -> SmtpSettings:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(
                "NEEDFLOW_SMTP_URL must look like smtp://[user:password@]host[:port] or smtps://…, "
                f"not {parts.scheme or '?'}://{parts.hostname or '?'}…"  # never echo a password
            )
        username = unquote(parts.username) if parts.username else None
        tls: TlsMode = "smtps" if parts.scheme == "smtps" else "starttls" if username else "none"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if tls == "smtps" else 25),
            username=username,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            timeout=timeout,
            ca_file=ca_file,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the server's certificate and name, always."""
        return ssl.create_default_context(cafile=self.ca_file)


# ---------------------------------------------------------------- recording


#: session.info key: this session's transaction recorded mail; wake the sender on commit.
_WAKE_ON_COMMIT = "needflow.mail.wake"


class Addressee(Protocol):
    """Whom `Mailer.record_for` writes to: an employee row, or just their id and address."""

    @property
    def id(self) -> str: ...

    @property
    def email(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Contact:
    """An employee's id and address, read without their row (routing reads them with the
    candidates' work)."""

    id: str
    email: str


class Mailer:
    """Records e-mail in the outbox, in the caller's transaction; never talks to SMTP.

    `wake` is called (synchronously, from the commit) when a transaction that recorded
    mail commits: `workflows.mail.MailWake` signals the sender. None: the sender finds
    the message on its next look.
    """

    def __init__(self, wake: Callable[[], None] | None = None) -> None:
        self.wake = wake

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
        """Put one message for one recipient in the outbox inside the caller's transaction,
        so it is there exactly when what it tells of is (a retry finds it by id and adds
        nothing). The sender delivers it after the commit. Returns the message's id."""
        if await insert_if_missing(
            session,
            Notification,
            id=message_id,
            to_employee_id=to_employee_id,
            to_address=to_address,
            subject=subject,
            body=body,
        ):
            self._wake_on_commit(session)
        return message_id

    async def record_for(
        self, session: AsyncSession, message_id: str, recipients: Sequence[Addressee], subject: str, body: str
    ) -> list[str]:
        """The message for each employee, as `<message_id>:<employee id>`."""
        return [
            await self.record(session, f"{message_id}:{e.id}", e.email, subject, body, to_employee_id=e.id)
            for e in recipients
        ]

    def _wake_on_commit(self, session: AsyncSession) -> None:
        if self.wake is None:
            return
        sync = session.sync_session
        if not sync.info.get(_WAKE_ON_COMMIT):
            sync.info[_WAKE_ON_COMMIT] = True
            event.listen(sync, "after_commit", self._committed, once=True)

    def _committed(self, session: Session) -> None:
        if session.info.pop(_WAKE_ON_COMMIT, False) and self.wake is not None:
            try:
                self.wake()
            except Exception:  # noqa: BLE001 - a wake is a hint; the sender polls too
                log.warning("could not wake the mail sender", exc_info=True)


# ---------------------------------------------------------------- SMTP


class SessionRefused(Exception):
    """The SMTP session could not be set up as it must be (no STARTTLS before credentials,
    our sender address refused): concerns no message."""


@dataclass(frozen=True)
class Outcome:
    """What became of one message's attempt."""

    kind: Literal["sent", "refused", "retry", "unknown", "session"]
    error: str = ""


#: The most of an SMTP reply or error kept in `last_error`: a server's text is not ours.
ERROR_TEXT_MAX = 500


def _kept(text: str) -> str:
    """A server's or library's text as the outbox may store it: control characters
    escaped (PostgreSQL refuses NUL in text: a reply holding one must not fail the round
    for ever) and at most ERROR_TEXT_MAX characters."""
    return printable(text)[:ERROR_TEXT_MAX]


def _reply(step: str, code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return _kept(f"{step}: {code} {text}".strip())


def _by_code(step: str, code: int, reply: bytes | str) -> Outcome:
    """An explicit refusal: 5xx permanent, anything else temporary."""
    return Outcome("refused" if 500 <= code < 600 else "retry", _reply(step, code, reply))


def _error(exc: BaseException) -> str:
    return _kept(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


_LEADING_DOT = re.compile(rb"(?m)^\.")


class SmtpConnection:
    """One SMTP session (blocking: run it in a thread), kept open for a batch."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self.smtp: smtplib.SMTP | None = None
        #: Set when the session can carry no more messages (closed, timed out, 421).
        self.broken = False

    def open(self) -> None:
        s = self.settings
        if s.tls == "smtps":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=s.ssl_context())
        else:
            smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        self.smtp = smtp
        smtp.ehlo()
        if s.tls == "starttls":
            if not smtp.has_extn("starttls"):
                raise SessionRefused(
                    f"{s.host}:{s.port} offers no STARTTLS: the SMTP credentials are never sent in clear"
                )
            smtp.starttls(context=s.ssl_context())
            smtp.ehlo()
        if s.username:
            smtp.login(s.username, s.password or "")

    def send(self, sender: str, to: str, content: bytes) -> Outcome:
        """One message to one recipient. Only a failure after the content went out leaves
        the outcome unknown; every earlier one is known not to have delivered it."""
        smtp = self.smtp
        assert smtp is not None
        content_sent = False
        try:
            code, reply = smtp.mail(sender)
            if code != 250:
                self._rset(code)
                return Outcome("session", _reply("MAIL FROM", code, reply))
            code, reply = smtp.rcpt(to)
            if code not in (250, 251):
                self._rset(code)
                return _by_code("RCPT TO", code, reply)
            smtp.putcmd("data")
            code, reply = smtp.getreply()
            if code != 354:
                self._rset(code)
                return _by_code("DATA", code, reply)
            data = _LEADING_DOT.sub(b"..", content)
            if not data.endswith(b"\r\n"):
                data += b"\r\n"
            content_sent = True  # from the first byte on, the server may take it
            smtp.send(data + b".\r\n")
            code, reply = smtp.getreply()
            if code != 250:
                self.broken = self.broken or code == 421
                return _by_code("end of DATA", code, reply)
            return Outcome("sent")
        except (smtplib.SMTPException, OSError) as exc:
            self.broken = True
            if content_sent:
                return Outcome("unknown", f"no reply after the content was sent ({_error(exc)})")
            return Outcome("retry", f"connection lost before the content was sent ({_error(exc)})")
        except Exception as exc:  # noqa: BLE001 - e.g. an address that cannot be encoded
            self.broken = True
            if content_sent:
                return Outcome("unknown", f"failed after the content was sent ({_error(exc)})")
            return Outcome("refused", f"cannot be sent ({_error(exc)})")

    def _rset(self, code: int) -> None:
        if code == 421:  # the server is closing the session
            self.broken = True
            return
        try:
            self.smtp.rset()  # type: ignore[union-attr]
        except (smtplib.SMTPException, OSError):
            self.broken = True

    def close(self) -> None:
        if self.smtp is None:
            return
        try:
            if not self.broken:
                self.smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            self.smtp.close()
            self.smtp = None


def message_bytes(row: Any, sender: str) -> bytes:
    """The message as it goes over the wire (CRLF line ends). Its Message-ID derives from
    the outbox id, so a recipient's client can tell one message from another."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = row.to_address
    msg["Subject"] = row.subject
    msg["Date"] = email.utils.format_datetime(row.created_at.astimezone(UTC))
    domain = sender.rpartition("@")[2] or "needflow"
    msg["Message-ID"] = f"<{hashlib.sha256(row.id.encode()).hexdigest()[:32]}@{domain}>"
    msg["X-Needflow-Message"] = row.id
    msg.set_content(row.body)
    return msg.as_bytes(policy=email.policy.SMTP)


# ---------------------------------------------------------------- sending


#: How often a round heartbeats while it waits on the SMTP server.
HEARTBEAT_EVERY = 2.0
#: The shortest wait between two rounds (a message due in a moment).
MIN_WAIT = 0.05


@dataclass(frozen=True)
class SenderPolicy:
    """How the sender retries and paces itself (NEEDFLOW_MAIL_*)."""

    max_attempts: int = 8
    retry_seconds: float = 60.0
    retry_max_seconds: float = 3600.0
    poll_seconds: float = 300.0
    #: Messages per round, and the time a round may spend before it hands over.
    batch: int = 100
    batch_seconds: float = 60.0


class MailSender:
    """The activity that delivers the outbox (module docstring), run by
    `workflows.mail.MailSenderWorkflow`."""

    def __init__(
        self,
        engine: AsyncEngine,
        smtp: SmtpSettings | None,
        sender: str,
        policy: SenderPolicy | None = None,
    ) -> None:
        # Every write of the sender is one statement (store/outbox.py), run in autocommit:
        # a claim or an outcome holds the database's write lock only while it runs.
        self.db = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.smtp = smtp
        self.sender = sender
        self.policy = policy or SenderPolicy()

    @property
    def lease(self) -> timedelta:
        """How long a claim holds: longer than one message's exchange can take (five
        network operations, each bounded by the SMTP timeout), with room to spare."""
        timeout = self.smtp.timeout if self.smtp else 30.0
        return timedelta(seconds=6 * timeout + 60)

    @activity.defn(name=SEND_DUE)
    async def send_due(self, req: SendDue) -> SendReport:
        """One round: the due messages, over one SMTP session (module docstring)."""
        p = self.policy
        if self.smtp is None:  # no SMTP server: the outbox is the delivery
            return SendReport(wait_seconds=p.poll_seconds)
        loop = asyncio.get_running_loop()
        started = loop.time()
        report = SendReport()
        async with self.db.connect() as db:
            report.unknown += await outbox.expire_leases(db, _now())
            ids = await outbox.due(db, _now(), p.batch)
        conn: SmtpConnection | None = None
        try:
            for i, message_id in enumerate(ids):
                activity.heartbeat(i)
                if i and loop.time() - started > p.batch_seconds:
                    report.more = True
                    break
                if conn is None or conn.broken:
                    if conn is not None:
                        await self._blocking(conn.close)
                    conn = SmtpConnection(self.smtp)
                    try:
                        await self._blocking(conn.open)
                    except (SessionRefused, smtplib.SMTPException, OSError) as exc:
                        report.smtp_down = redact(_error(exc))  # shown in the Web UI
                        break
                # Shielded: a cancelled round (worker stopping) still records what became
                # of the message in flight, then stops.
                attempt = asyncio.ensure_future(self._attempt(conn, message_id, report))
                try:
                    await asyncio.shield(attempt)
                except asyncio.CancelledError:
                    await attempt
                    raise
                if report.smtp_down:
                    break
            else:
                report.more = len(ids) == p.batch
        finally:
            if conn is not None:
                await asyncio.shield(self._blocking(conn.close))
        if report.smtp_down:
            # A server's reply may quote an address (the login, the recipient): redacted in logs.
            log.warning("SMTP server %s:%s unavailable: %s", self.smtp.host, self.smtp.port, redact(report.smtp_down))
            report.wait_seconds = retry_delay(req.outage_streak + 1, p.retry_seconds, p.retry_max_seconds)
        elif report.more:
            report.wait_seconds = 0
        else:
            async with self.db.connect() as db:
                due_at = await outbox.next_due(db)
            wait = p.poll_seconds if due_at is None else (due_at - _now()).total_seconds()
            report.wait_seconds = min(p.poll_seconds, max(MIN_WAIT, wait))
        return report

    async def _attempt(self, conn: SmtpConnection, message_id: str, report: SendReport) -> None:
        """Claim, send and settle one message."""
        assert self.smtp is not None
        attempt_id = uuid.uuid4().hex
        now = _now()
        async with self.db.connect() as db:
            if not await outbox.claim(db, message_id, attempt_id, now, now + self.lease):
                return  # another sender took it
            row = await outbox.message(db, message_id)
        assert row is not None
        attempts = row.attempts + 1
        try:
            content: bytes | None = message_bytes(row, self.sender)
        except Exception as exc:  # noqa: BLE001 - a message that cannot be written out never will be
            content, outcome = None, Outcome("refused", f"cannot be written out ({_error(exc)})")
        if content is not None:
            outcome = await self._blocking(conn.send, self.sender, row.to_address, content)
        p = self.policy
        async with self.db.connect() as db:
            if outcome.kind == "sent":
                await outbox.mark_sent(db, message_id, attempt_id, _now())
                report.sent += 1
            elif outcome.kind == "refused":
                await outbox.mark_failed(db, message_id, attempt_id, outcome.error)
                report.failed += 1
            elif outcome.kind == "unknown":
                await outbox.mark_unknown(
                    db,
                    message_id,
                    attempt_id,
                    f"{outcome.error}: the server may have accepted it, so it is not sent again automatically",
                )
                report.unknown += 1
            elif outcome.kind == "session":
                await outbox.release(db, message_id, attempt_id)
                report.smtp_down = redact(outcome.error)  # shown in the Web UI
            elif attempts >= p.max_attempts:
                await outbox.mark_failed(
                    db, message_id, attempt_id, f"{outcome.error} (gave up after {attempts} attempts)"
                )
                report.failed += 1
            else:
                delay = retry_delay(attempts, p.retry_seconds, p.retry_max_seconds)
                await outbox.mark_retry(db, message_id, attempt_id, outcome.error, _now() + timedelta(seconds=delay))
                report.retrying += 1
        if outcome.kind not in ("sent", "session"):
            log.warning("mail %s, attempt %d: %s (%s)", message_id, attempts, outcome.kind, redact(outcome.error))

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a thread, heartbeating while it runs (a slow server is not a dead
        worker). The thread cannot be interrupted: its network operations time out."""
        task: Awaitable[T] = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY)  # type: ignore[arg-type]
            if done:
                return await task
            activity.heartbeat()

    def all(self) -> list:
        return [self.send_due]


def _now() -> datetime:
    return datetime.now(UTC)
