"""The e-mail sender (activities/mail.py, workflows/mail.py): mail is recorded with the
change that causes it and delivered apart from it, so an SMTP outage or a refused address
delays mail and never an answer or a re-route; each message is retried with a doubling
back-off, reaches each recipient at most once, and credentials never travel in clear.

Each test runs its own SMTP server (aiosmtpd, with the behaviour the test needs), its own
worker (its own task queue, so its own sender) and API, on a database of this module's
own: no other test's sender can deliver (or fail to deliver) its messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import Engine, select
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.mail import SmtpSettings
from config import Settings
from domain.mail import SEND_DUE, MailSenderInput, SendDue, SendReport, retry_delay
from store.db import make_async_engine, make_session_factory, make_sync_engine
from store.keys import ALL_SCOPES, register_api_key
from store.migrate import upgrade
from store.models import Notification
from store.outbox import mail_queue
from tests.dbutil import fresh_database_url, test_database_base_url
from tests.helpers import Api, IsolatedSettings, serve_app, territory, until, until_equal, within
from worker import build_worker
from workflows.mail import POLL_AFTER_FAILURE, MailSenderWorkflow, sender_workflow_id

#: How fast an answer must come while mail cannot go out: the lifecycle never waits on SMTP.
PROMPT = 5.0

#: The sender's pace in these tests: seconds, not minutes.
FAST = {
    "smtp_timeout": 1.0,
    "mail_max_attempts": 3,
    "mail_retry_seconds": 0.3,
    "mail_retry_max_seconds": 1.0,
    "mail_poll_seconds": 60.0,
}


# ---------------------------------------------------------------- the database


@pytest.fixture(scope="module")
def mail_database() -> Iterator[str]:
    with fresh_database_url(test_database_base_url()) as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="module")
def mail_db(mail_database: str) -> Iterator[Engine]:
    engine = make_sync_engine(mail_database)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def admin_key(mail_db: Engine) -> str:
    return register_api_key(mail_db, "mail-tests", ALL_SCOPES)


# ---------------------------------------------------------------- SMTP servers


@dataclass
class Smtp:
    """An aiosmtpd handler whose behaviour a test sets: refuse a recipient with a reply,
    or sit on a message's content before answering."""

    #: address -> the reply to its RCPT TO ("550 5.1.1 …", "451 4.3.0 …").
    refuse: dict[str, str] = field(default_factory=dict)
    #: address -> seconds to wait after its content before answering 250.
    stall: dict[str, float] = field(default_factory=dict)
    #: (address, time.monotonic()) of every RCPT TO seen.
    rcpts: list[tuple[str, float]] = field(default_factory=list)
    #: address -> how many times its content arrived (answered or not).
    contents: dict[str, int] = field(default_factory=dict)
    #: Messages answered 250, with whether the session was TLS and authenticated.
    delivered: list[tuple[str, bool, bool]] = field(default_factory=list)
    #: (login, password, over TLS) of every AUTH.
    logins: list[tuple[str, str, bool]] = field(default_factory=list)
    url: str = ""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list) -> str:  # noqa: N802
        self.rcpts.append((address, time.monotonic()))
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        [to] = envelope.rcpt_tos
        self.contents[to] = self.contents.get(to, 0) + 1
        if to in self.stall:
            await asyncio.sleep(self.stall[to])
        self.delivered.append((to, _tls(server), bool(session.authenticated)))
        return "250 Message accepted"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        self.logins.append((auth_data.login.decode(), auth_data.password.decode(), _tls(server)))
        return AuthResult(success=(auth_data.login, auth_data.password) == (b"needflow", b"s3cret!"))

    def to(self, address: str) -> list[tuple[str, bool, bool]]:
        return [d for d in self.delivered if d[0] == address]


def _tls(server: Any) -> bool:
    return server.transport is not None and server.transport.get_extra_info("ssl_object") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def smtp_server(handler: Smtp, port: int | None = None, scheme: str = "smtp", **kwargs: Any) -> Iterator[Smtp]:
    """`handler` served on 127.0.0.1 (`port`, or a free one) until the block ends."""
    port = port or free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    handler.url = f"{scheme}://127.0.0.1:{port}"
    try:
        yield handler
    finally:
        controller.stop()


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (the client trusts exactly it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "needflow test SMTP")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "smtp.crt", tmp / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def server_tls(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


# ---------------------------------------------------------------- a stack per test


@dataclass
class MailStack:
    api: Api
    client: Client
    task_queue: str
    settings: Settings

    async def outbox(self, address: str) -> list[dict]:
        return await self.api.outbox(address)

    async def message(self, address: str, status: str | None = None) -> dict:
        """The one message to `address`, once it has `status` (any, when None)."""

        async def found() -> dict | None:
            items = await self.outbox(address)
            assert len(items) <= 1, items
            return items[0] if items and (status is None or items[0]["status"] == status) else None

        return await until(found, f"the message to {address} {status or 'recorded'}")

    async def queue(self) -> Any:
        engine = make_async_engine(self.settings.resolved_database_url)
        try:
            async with make_session_factory(engine)() as session:
                return await mail_queue(session)
        finally:
            await engine.dispose()


@asynccontextmanager
async def mail_stack(
    client: Client, settings: Settings, database_url: str, key: str, smtp_url: str, **changes: Any
) -> AsyncIterator[MailStack]:
    """A worker and the API on this module's database, with the SMTP server at `smtp_url`."""
    task_queue = f"needflow-mail-{uuid.uuid4().hex[:8]}"
    stack_settings = settings.model_copy(update={"database_url": database_url, "smtp_url": smtp_url, **FAST, **changes})
    try:
        async with (
            build_worker(client, stack_settings, task_queue),
            serve_app(stack_settings, client, task_queue) as http,
        ):
            yield MailStack(Api(http, key), client, task_queue, stack_settings)
    finally:
        with contextlib.suppress(RPCError):  # its sender ends with its worker
            await within(client.get_workflow_handle(sender_workflow_id(task_queue)).terminate("test over"), "terminate")


async def timed(aw: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = await within(aw, "an answer", seconds=PROMPT)
    return result, time.monotonic() - started


# ---------------------------------------------------------------- an SMTP outage


async def test_an_smtp_outage_delays_mail_never_an_answer_or_a_reroute(
    client: Client, settings: Settings, mail_database: str, admin_key: str
) -> None:
    port = free_port()  # nothing listens there yet: the SMTP server is down
    async with mail_stack(client, settings, mail_database, admin_key, f"smtp://127.0.0.1:{port}") as stack:
        api, state = stack.api, territory()
        people = await api.staff(state)
        bob, kevin = people["bob"], people["kevin"]
        ann = await api.broker(state)

        # Created, routed and Bob told: answered at once, though no e-mail can go out.
        ref, took = await timed(api.refer(people["ryan"], state))
        assert (ref["status"], ref["assignee_id"]) == ("assigned", bob["id"]) and took < PROMPT
        # Bob rejects: re-routed to Ann (and she told), at once too.
        answer, took = await timed(
            api.post(f"/v1/referrals/{ref['id']}/reject", {"actor_id": bob["id"], "reason": "too busy"}, expect=200)
        )
        assert answer.json()["assignee_id"] == ann["id"] and took < PROMPT
        # Ann leaves the bank: the PATCH re-routes her referral and tells Kevin, at once.
        left, took = await timed(
            api.request("PATCH", f"/v1/employees/{ann['id']}", json={"active": False}, headers=api.headers())
        )
        assert left.status_code == 200, left.text
        assert left.json()["deactivation"]["notified"] == [kevin["id"]] and took < PROMPT

        # Every message is in the outbox, waiting; the outage used up none of their attempts.
        for address in (bob["email"], ann["email"]):
            mail = await stack.message(address)
            assert (mail["status"], mail["attempts"], mail["sent_at"]) == ("pending", 0, None), mail
        queue = await stack.queue()
        assert queue.pending >= 4 and queue.oldest_pending_age_seconds is not None
        await asyncio.sleep(1.5)  # a few rounds of the sender's back-off
        assert (await stack.message(bob["email"]))["status"] == "pending"

        # The server comes back: everything goes out, once each.
        with smtp_server(Smtp(), port) as smtp:
            for address in (bob["email"], ann["email"]):
                mail = await stack.message(address, "sent")
                assert mail["attempts"] == 1 and mail["last_error"] is None

            async def kevins() -> list[dict] | None:  # the deactivation, and Ann's referral unplaced
                items = await stack.outbox(kevin["email"])
                return items if len(items) == 2 and all(m["status"] == "sent" for m in items) else None

            told = await until(kevins, "Kevin's e-mails sent")
            assert any("Employee deactivated" in m["subject"] for m in told)
            assert [len(smtp.to(a)) for a in (bob["email"], ann["email"], kevin["email"])] == [1, 1, 2]
        queue = await stack.queue()
        assert queue.pending == 0 and queue.oldest_pending_age_seconds is None


# ---------------------------------------------------------------- refused recipients


async def test_a_refused_address_fails_for_that_recipient_alone(
    client: Client, settings: Settings, mail_database: str, admin_key: str
) -> None:
    state, elsewhere = territory(), territory()
    bob = f"bob.{state}@bank.example"
    with smtp_server(Smtp(refuse={bob: "550 5.1.1 <bob>: no such mailbox"})) as smtp:
        async with mail_stack(client, settings, mail_database, admin_key, smtp.url) as stack:
            api = stack.api
            people = await api.staff(state)
            ref, took = await timed(api.refer(people["ryan"], state))
            assert ref["assignee_id"] == people["bob"]["id"] and took < PROMPT
            others = await api.staff(elsewhere)
            await api.refer(others["ryan"], elsewhere)

            # A permanent refusal (5xx) is final at once: no retry can make it succeed.
            failed = await stack.message(bob, "failed")
            assert failed["attempts"] == 1 and failed["sent_at"] is None
            assert failed["last_error"].startswith("RCPT TO: 550 5.1.1"), failed
            listed = (await api.get(f"/v1/outbox?status=failed&to={quote(bob)}")).json()["items"]
            assert [m["id"] for m in listed] == [failed["id"]]
            assert (await api.get(f"/v1/outbox?status=sent&to={quote(bob)}")).json()["items"] == []
            # Everyone else's mail goes out; Bob's referral goes on (he can still accept it).
            await stack.message(others["bob"]["email"], "sent")
            assert len(smtp.to(others["bob"]["email"])) == 1 and smtp.to(bob) == []
            await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": people["bob"]["id"]}, expect=200)
            await asyncio.sleep(1.0)
            assert [a for a, _ in smtp.rcpts].count(bob) == 1


async def test_a_temporary_refusal_is_retried_with_a_doubling_backoff_then_fails(
    client: Client, settings: Settings, mail_database: str, admin_key: str
) -> None:
    state = territory()
    bob = f"bob.{state}@bank.example"
    with smtp_server(Smtp(refuse={bob: "451 4.3.0 mailbox busy, try again later"})) as smtp:
        async with mail_stack(client, settings, mail_database, admin_key, smtp.url) as stack:
            api = stack.api
            people = await api.staff(state)
            await api.refer(people["ryan"], state)

            async def retrying() -> dict | None:  # refused once, waiting for its next attempt
                m = await stack.message(bob)
                return m if m["status"] == "pending" and m["attempts"] >= 1 else None

            waiting = await until(retrying, "the refused message waiting for its retry")
            assert waiting["last_error"].startswith("RCPT TO: 451") and waiting["sent_at"] is None
            failed = await stack.message(bob, "failed")
            assert failed["attempts"] == 3 == stack.settings.mail_max_attempts
            assert failed["last_error"] == "RCPT TO: 451 4.3.0 mailbox busy, try again later (gave up after 3 attempts)"
            # Three tries, the second after one back-off, the third after twice that.
            times = [t for a, t in smtp.rcpts if a == bob]
            assert len(times) == 3
            first_wait, second_wait = times[1] - times[0], times[2] - times[1]
            assert first_wait >= retry_delay(1, 0.3, 1.0) - 0.05, times
            assert second_wait >= retry_delay(2, 0.3, 1.0) - 0.05, times
            await asyncio.sleep(1.5)
            assert len([a for a, _ in smtp.rcpts if a == bob]) == 3  # bounded: no fourth


# ---------------------------------------------------------------- at most once


async def test_a_send_that_times_out_after_its_content_is_never_sent_again(
    client: Client, settings: Settings, mail_database: str, admin_key: str
) -> None:
    state, later = territory(), territory()
    bob = f"bob.{state}@bank.example"
    # The server takes the content, then answers after the client has given up waiting.
    with smtp_server(Smtp(stall={bob: 3.0})) as smtp:
        async with mail_stack(client, settings, mail_database, admin_key, smtp.url) as stack:
            api = stack.api
            people = await api.staff(state)
            await api.refer(people["ryan"], state)

            mail = await stack.message(bob, "unknown")
            assert mail["attempts"] == 1 and mail["sent_at"] is None
            assert "no reply after the content was sent" in mail["last_error"]
            assert "not sent again automatically" in mail["last_error"]
            assert smtp.contents[bob] == 1
            # Long after any retry would have come: still the one copy.
            await asyncio.sleep(3 * retry_delay(3, 0.3, 1.0))
            assert smtp.contents[bob] == 1 and [a for a, _ in smtp.rcpts].count(bob) == 1
            assert (await stack.message(bob))["status"] == "unknown"
            listed = (await api.get(f"/v1/outbox?status=unknown&to={quote(bob)}")).json()["items"]
            assert [m["id"] for m in listed] == [mail["id"]]
            # The sender goes on with a new session for the next message.
            others = await api.staff(later)
            await api.refer(others["ryan"], later)
            await stack.message(others["bob"]["email"], "sent")


async def test_a_message_left_sending_by_a_sender_that_died_becomes_unknown(
    client: Client, settings: Settings, mail_database: str, admin_key: str, mail_db: Engine
) -> None:
    address = f"orphan.{territory()}@bank.example"
    message_id = f"test:orphan:{uuid.uuid4().hex}"
    now = dt.datetime.now(dt.UTC)
    with mail_db.begin() as conn:  # claimed by a sender that stopped mid-send, its lease run out
        conn.execute(
            Notification.__table__.insert().values(
                id=message_id,
                to_address=address,
                subject="orphaned",
                body="?",
                created_at=now,
                next_attempt_at=now,
                status="sending",
                attempts=0,
                attempt_id="dead-sender",
                lease_until=now - dt.timedelta(seconds=1),
            )
        )
    with smtp_server(Smtp()) as smtp:
        async with mail_stack(client, settings, mail_database, admin_key, smtp.url) as stack:
            mail = await stack.message(address, "unknown")
            assert mail["attempts"] == 1 and "lease expired" in mail["last_error"]
            await asyncio.sleep(1.0)
            assert smtp.contents.get(address) is None
    with mail_db.connect() as conn:
        assert conn.execute(select(Notification.status).where(Notification.id == message_id)).scalar() == "unknown"


# ---------------------------------------------------------------- TLS and credentials


async def test_with_credentials_the_session_is_upgraded_with_starttls_before_auth(
    client: Client, settings: Settings, mail_database: str, admin_key: str, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    state = territory()
    bob = f"bob.{state}@bank.example"
    handler = Smtp()
    with smtp_server(
        handler,
        authenticator=handler.authenticate,
        tls_context=server_tls(cert, key),
        require_starttls=True,
        auth_required=True,
    ) as smtp:
        url = f"smtp://needflow:{quote('s3cret!')}@127.0.0.1:{smtp.url.rsplit(':', 1)[1]}"
        async with mail_stack(client, settings, mail_database, admin_key, url, smtp_ca_file=cert) as stack:
            people = await stack.api.staff(state)
            await stack.api.refer(people["ryan"], state)
            await stack.message(bob, "sent")
    assert smtp.logins and all(login == ("needflow", "s3cret!", True) for login in smtp.logins)
    assert smtp.to(bob) == [(bob, True, True)]  # over TLS, authenticated


async def test_smtps_is_tls_from_the_first_byte(
    client: Client, settings: Settings, mail_database: str, admin_key: str, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    state = territory()
    bob = f"bob.{state}@bank.example"
    handler = Smtp()
    # aiosmtpd counts only STARTTLS as TLS for AUTH; the login's own record checks the socket.
    tls = server_tls(cert, key)
    with smtp_server(
        handler, scheme="smtps", authenticator=handler.authenticate, ssl_context=tls, auth_require_tls=False
    ) as smtp:
        url = f"smtps://needflow:{quote('s3cret!')}@127.0.0.1:{smtp.url.rsplit(':', 1)[1]}"
        async with mail_stack(client, settings, mail_database, admin_key, url, smtp_ca_file=cert) as stack:
            people = await stack.api.staff(state)
            await stack.api.refer(people["ryan"], state)
            await stack.message(bob, "sent")
    assert smtp.logins == [("needflow", "s3cret!", True)]
    assert smtp.to(bob) == [(bob, True, True)]


async def test_credentials_are_never_sent_to_a_server_without_starttls(
    client: Client, settings: Settings, mail_database: str, admin_key: str
) -> None:
    state = territory()
    bob = f"bob.{state}@bank.example"
    handler = Smtp()
    # A server that would take AUTH in clear: the sender must not offer it.
    with smtp_server(handler, authenticator=handler.authenticate, auth_require_tls=False) as smtp:
        url = f"smtp://needflow:{quote('s3cret!')}@127.0.0.1:{smtp.url.rsplit(':', 1)[1]}"
        async with mail_stack(client, settings, mail_database, admin_key, url) as stack:
            people = await stack.api.staff(state)
            ref, took = await timed(stack.api.refer(people["ryan"], state))
            assert ref["status"] == "assigned" and took < PROMPT
            await asyncio.sleep(2.0)  # several rounds of the sender
            mail = await stack.message(bob)
            assert (mail["status"], mail["attempts"]) == ("pending", 0)
            handle = client.get_workflow_handle(sender_workflow_id(stack.task_queue))

            async def reported() -> str | None:  # what the Web UI shows of the sender
                metadata = await within(handle.query("__temporal_workflow_metadata"), "the sender's details")
                return metadata.current_details or None

            text = await until(reported, "the sender's current details")
            assert "SMTP server unavailable" in text and "offers no STARTTLS" in text and "s3cret" not in text
    assert smtp.logins == [] and smtp.delivered == []


def test_smtp_url_settings_pick_tls_and_keep_the_password_out_of_sight() -> None:
    plain = SmtpSettings.from_url("smtp://relay.bank.example")
    assert (plain.port, plain.tls, plain.username) == (25, "none", None)
    upgraded = SmtpSettings.from_url("smtp://needflow:p%40ss@relay.bank.example:587")
    assert (upgraded.port, upgraded.tls, upgraded.username, upgraded.password) == (587, "starttls", "needflow", "p@ss")
    assert "p@ss" not in repr(upgraded)
    implicit = SmtpSettings.from_url("smtps://needflow:x@relay.bank.example")
    assert (implicit.port, implicit.tls) == (465, "smtps")
    with pytest.raises(ValueError) as refused:
        SmtpSettings.from_url("http://needflow:hunter2@relay.bank.example")
    assert "hunter2" not in str(refused.value)


async def test_the_sender_continues_as_new_and_goes_on_delivering(
    client: Client, settings: Settings, mail_database: str, admin_key: str
) -> None:
    """With a low threshold (2 rounds a run; 200 in production) the sender continues as
    new before its history grows: the first run ends CONTINUED_AS_NEW, the same workflow id
    runs on, and every message recorded across the runs is delivered once."""
    states = [territory() for _ in range(3)]
    with smtp_server(Smtp()) as smtp:
        async with mail_stack(client, settings, mail_database, admin_key, smtp.url) as stack:
            sender_id = sender_workflow_id(stack.task_queue)
            first = await within(
                client.start_workflow(
                    MailSenderWorkflow.run,
                    MailSenderInput(rounds_per_run=2),
                    id=sender_id,
                    task_queue=stack.task_queue,
                    # The worker's own sender (or one a wake restarted) gives way to ours.
                    id_conflict_policy=WorkflowIDConflictPolicy.TERMINATE_EXISTING,
                ),
                "start the sender",
            )
            for state in states:  # each referral records mail, and its commit wakes the sender
                people = await stack.api.staff(state)
                await stack.api.refer(people["ryan"], state)
                await stack.message(people["bob"]["email"], "sent")

            async def first_run_status() -> str:
                described = await within(
                    client.get_workflow_handle(sender_id, run_id=first.first_execution_run_id).describe(), "describe"
                )
                return described.status.name if described.status else ""

            await until_equal(first_run_status, "CONTINUED_AS_NEW", "the first run continuing as new")
            current = await within(client.get_workflow_handle(sender_id).describe(), "describe")
            assert current.run_id != first.first_execution_run_id and current.status.name == "RUNNING"
            for state in states:
                assert len(smtp.to(f"bob.{state}@bank.example")) == 1


async def test_a_round_that_fails_for_good_does_not_end_the_sender(skipping_env: WorkflowEnvironment) -> None:
    """A round the worker's interceptor turned into a failure for good (activities/errors.py:
    the database refused a write) does not fail the sender: it looks again after
    POLL_AFTER_FAILURE, not before, and not never: mail cannot stall until the next wake. The
    round's activity is a stand-in that fails its first call as the interceptor would."""
    calls: list[int] = []

    @activity.defn(name=SEND_DUE)
    async def send_due(req: SendDue) -> SendReport:
        calls.append(1)
        if len(calls) == 1:
            raise ApplicationError("the database refused the write", type="IntegrityError", non_retryable=True)
        return SendReport(sent=1, wait_seconds=3600)

    queue = f"mail-failure-{uuid.uuid4().hex[:8]}"
    async with Worker(skipping_env.client, task_queue=queue, workflows=[MailSenderWorkflow], activities=[send_due]):
        handle = await skipping_env.client.start_workflow(
            MailSenderWorkflow.run, MailSenderInput(rounds_per_run=2), id=f"sender-{queue}", task_queue=queue
        )
        try:
            await until_equal(lambda: asyncio.sleep(0, len(calls)), 1, "the failing round")
            await skipping_env.sleep(POLL_AFTER_FAILURE - dt.timedelta(seconds=30))
            assert len(calls) == 1, "looked again before POLL_AFTER_FAILURE"
            desc = await handle.describe()
            assert desc.status == WorkflowExecutionStatus.RUNNING
            await skipping_env.sleep(dt.timedelta(seconds=31))
            await until_equal(lambda: asyncio.sleep(0, len(calls)), 2, "the round after the failure")
            assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        finally:
            await handle.terminate("test over")


def test_an_unreadable_smtp_ca_file_stops_the_start_not_every_round(tmp_path: Path) -> None:
    """NEEDFLOW_SMTP_CA_FILE is read when settings load: a missing or malformed file is an
    error naming the variable, not an 'SMTP server unavailable' retried for ever."""
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    for path in (tmp_path / "missing.pem", garbage):
        with pytest.raises(ValueError, match="NEEDFLOW_SMTP_CA_FILE"):
            IsolatedSettings(smtp_ca_file=path)
    cert, _key = self_signed(tmp_path)
    assert IsolatedSettings(smtp_ca_file=cert).smtp_ca_file == cert
