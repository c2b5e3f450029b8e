"""The mortgage journey through DocuSign, and its failure paths: the real docusign-esign SDK
against the DocuSign fake (tests/fakes/docusign.py, HTTPS), the Temporal dev server, a
worker and the API app on their own task queue with `esign_provider = docusign`.

Connect messages are delivered by the fake to the in-process app at
http://testserver/v1/webhooks/docusign, HMAC-signed with the configured secret. A webhook
is only a prompt: what DocuSign's envelope API says decides. Unless a test is about the
poll, the poll is an hour long, so only a webhook can move an opportunity.

"Nothing happened" is decided from the workflow's history (a signal and a look at the
envelope are events in it) and its query, never from a sleep.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

import worker as worker_module
from activities.mail import Mailer
from activities.opportunity import SENDING, STRAYS_SWEPT_FOR, OpportunityActivities
from config import Settings
from domain import records
from domain.opportunity import CheckpointView, OpportunityState
from domain.process import load_catalog
from domain.types import Trigger
from esign.docusign import DocuSignError, DocuSignProvider
from esign.provider import Envelope, EnvelopeState
from store.db import make_async_engine, make_session_factory
from store.models import Checkpoint, Consent, SignatureRequest, SignedDocument
from tests.fakes.docusign import DocuSignFake
from tests.helpers import Api, Inbox, assert_error, count, serve_app, until, within
from worker import build_worker
from workflows.opportunity import OpportunityWorkflow

WEBHOOK = "http://testserver/v1/webhooks/docusign"
#: Long enough that only a Connect message can make the workflow look at an envelope.
NO_POLL = 3600.0
#: The process catalog the activities judge records by (the practice audit).
CATALOG = load_catalog(Path(__file__).resolve().parent.parent / "processes")
STAGES_WON = ["interested", "searching", "applied", "approved", "closed_won"]


# ---------------------------------------------------------------- the fake, once per module


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """The integration key's RSA key pair: the private key's file, the public key's PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("docusign-journey-key") / "private.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, public


@pytest.fixture(scope="module")
def server(rsa_key: tuple[Path, bytes], tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocuSignFake]:
    fake = DocuSignFake(integration_key=str(uuid.uuid4()), user_id=str(uuid.uuid4()), public_key_pem=rsa_key[1])
    with fake.start(tmp_path_factory.mktemp("docusign-journey-fake")):
        yield fake


@pytest.fixture
def fake(server: DocuSignFake) -> DocuSignFake:
    server.reset()
    return server


# ---------------------------------------------------------------- a DocuSign stack per test


@dataclass
class Stack:
    """A worker and the API app on their own task queue, with DocuSign as the provider."""

    client: Client
    settings: Settings
    http: httpx.AsyncClient
    api: Api
    fake: DocuSignFake

    @property
    def secret(self) -> str:
        assert self.settings.docusign is not None
        return self.settings.docusign.connect_hmac_secrets[0]

    async def owner(self) -> dict:
        return await self.api.employee(name="Dan", email=f"dan-{uuid.uuid4().hex[:8]}@bank.example")

    async def approved(self) -> tuple[dict, dict, str]:
        """A mortgage brought to Approved: (its owner, the opportunity as the API reads it,
        the id of the envelope the approval sent to DocuSign)."""
        owner = await self.owner()
        approved = await self.api.mortgage_to_approved(owner=owner)
        opp = await self.read(approved["id"])
        assert (opp["stage"], opp["status"]) == ("approved", "open")
        assert (opp["signature"]["provider"], opp["signature"]["status"]) == ("docusign", "sent")
        return owner, opp, opp["signature"]["envelope_id"]

    async def read(self, opportunity_id: str) -> dict:
        return (await self.api.get(f"/v1/opportunities/{opportunity_id}")).json()

    async def connect(self, envelope_id: str, **options: Any) -> list[int]:
        """Connect delivers the envelope's message (signed with the configured secret unless
        `secret` is given) to the webhook; the status of each delivery."""
        secret = options.pop("secret", self.secret)
        responses = await within(
            self.fake.deliver_connect(envelope_id, WEBHOOK, secret, client=self.http, **options), "Connect delivery"
        )
        return [r.status_code for r in responses]

    async def won(self, opportunity_id: str, seconds: float = 10) -> dict:
        async def check() -> dict | None:
            opp = await self.read(opportunity_id)
            return opp if opp["status"] == "won" else None

        return await until(check, f"opportunity {opportunity_id} won", seconds)

    def handle(self, opp: dict) -> WorkflowHandle[OpportunityWorkflow, OpportunityState]:
        return self.client.get_workflow_handle_for(OpportunityWorkflow.run, opp["workflow_id"])

    async def state(self, opp: dict) -> OpportunityState:
        return await within(self.handle(opp).query(OpportunityWorkflow.current_state), "the opportunity's state")

    async def consents(self, opp: dict) -> list[dict]:
        journey = (await self.api.get(f"/v1/customers/{opp['customer_id']}/journey")).json()
        return [c for c in journey["consents"] if c["opportunity_id"] == opp["id"]]

    async def served_documents(self, envelope_id: str) -> tuple[bytes, bytes]:
        """The combined document and the certificate as the fake serves them (the SDK's
        download, as a DocuSign client of the bank's own would fetch them)."""
        provider = DocuSignProvider(self.fake.settings(self.settings.docusign.private_key_file), webhook_url=WEBHOOK)
        try:
            docs = await within(provider.download(envelope_id), "download from the fake")
        finally:
            provider.close()
        return docs.combined_pdf, docs.certificate_pdf


@asynccontextmanager
async def docusign_stack(
    client: Client, settings: Settings, keys: dict[str, str], fake: DocuSignFake, key_file: Path, poll_seconds: float
) -> AsyncIterator[Stack]:
    stack_settings = settings.model_copy(
        update={
            "esign_provider": "docusign",
            "docusign": fake.settings(key_file),
            "esign_poll_seconds": poll_seconds,
            "public_base_url": "http://testserver",
        }
    )
    task_queue = f"needflow-docusign-{uuid.uuid4().hex[:8]}"
    async with build_worker(client, stack_settings, task_queue), serve_app(stack_settings, client, task_queue) as http:
        yield Stack(client, stack_settings, http, Api(http, keys["all"]), fake)


@pytest_asyncio.fixture
async def stack(
    client: Client, settings: Settings, keys: dict[str, str], fake: DocuSignFake, rsa_key: tuple[Path, bytes]
) -> AsyncIterator[Stack]:
    """Only a Connect message moves an envelope's opportunity here (the poll is an hour)."""
    async with docusign_stack(client, settings, keys, fake, rsa_key[0], NO_POLL) as s:
        yield s


@pytest_asyncio.fixture
async def polling_stack(
    client: Client, settings: Settings, keys: dict[str, str], fake: DocuSignFake, rsa_key: tuple[Path, bytes]
) -> AsyncIterator[Stack]:
    """The workflow looks at its envelope every half second."""
    async with docusign_stack(client, settings, keys, fake, rsa_key[0], 0.5) as s:
        yield s


# ---------------------------------------------------------------- the workflow's history


@dataclass
class Trace:
    """What a workflow's history says about its envelope: prompts and looks."""

    signals: int  # envelope_changed signals taken (a webhook that verified)
    looks_scheduled: int  # check_signature activities scheduled
    looks_done: int  # ... and completed
    timers: int  # waits started (the watcher waits once per look, plus its first)


async def trace(handle: WorkflowHandle) -> Trace:
    history = await within(handle.fetch_history(), f"the history of {handle.id}")
    looks: set[int] = set()
    signals = done = timers = 0
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            signals += e.workflow_execution_signaled_event_attributes.signal_name == "envelope_changed"
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if e.activity_task_scheduled_event_attributes.activity_type.name == records.CHECK_SIGNATURE:
                looks.add(e.event_id)
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done += e.activity_task_completed_event_attributes.scheduled_event_id in looks
        elif e.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            timers += 1
    return Trace(signals=signals, looks_scheduled=len(looks), looks_done=done, timers=timers)


async def looked_and_waiting(handle: WorkflowHandle, looks: int) -> Trace:
    """Wait until the workflow has looked at its envelope `looks` times and waits again
    (a new timer after the last look): what the look found is taken by then."""

    async def check() -> Trace | None:
        t = await trace(handle)
        return t if t.looks_done == looks and t.timers == looks + 1 else None

    return await until(check, f"{handle.id}: {looks} look(s) done, then waiting again")


def signed_documents(db: Engine, envelope_id: str) -> dict[str, SignedDocument]:
    with db.connect() as conn:
        rows = conn.execute(select(SignedDocument).where(SignedDocument.envelope_id == envelope_id)).all()
    return {r.kind: r for r in rows}


def closed_won_checkpoints(db: Engine, opportunity_id: str) -> int:
    return count(db, Checkpoint, Checkpoint.opportunity_id == opportunity_id, Checkpoint.stage == "closed_won")


# ---------------------------------------------------------------- 1. the journey


async def test_mortgage_to_closed_won_through_docusign(stack: Stack, db: Engine) -> None:
    fake = stack.fake
    _, opp, envelope_id = await stack.approved()

    # Exactly one envelope, as the bank means it: tagged with the opportunity, the
    # customer as the signer, Connect (HMAC-signed) to needflow's webhook.
    assert fake.envelopes_created == 1
    envelope = fake.envelope(envelope_id)
    assert envelope.status == "sent"
    assert envelope.field("opportunity_id") == opp["id"]
    assert envelope.field("request_no") == "1"
    assert [(s["name"], s["email"]) for s in envelope.signers] == [("Rachel Adams", "rachel@example.com")]
    notification = envelope.event_notification
    assert notification is not None
    assert notification["url"] == WEBHOOK
    assert notification["includeHMAC"] == "true"
    assert "envelope-completed" in notification["events"]
    assert envelope.email_subject == "Your mortgage closing documents"

    fake.sign(envelope_id)
    assert await stack.connect(envelope_id) == [200]
    won = await stack.won(opp["id"])

    assert (won["stage"], won["probability"]) == ("closed_won", 100)
    assert [c["stage"] for c in won["checkpoints"]] == STAGES_WON
    assert (won["signature"]["envelope_id"], won["signature"]["status"]) == (envelope_id, "completed")

    combined, certificate = await stack.served_documents(envelope_id)
    stored = signed_documents(db, envelope_id)
    assert set(stored) == {"combined", "certificate"}
    assert (stored["combined"].content, stored["certificate"].content) == (combined, certificate)
    assert stored["combined"].sha256 == hashlib.sha256(combined).hexdigest()
    assert stored["certificate"].sha256 == hashlib.sha256(certificate).hexdigest()

    [consent] = await stack.consents(opp)
    assert (consent["channel"], consent["product"], consent["customer_id"]) == (
        "esignature",
        "mortgage",
        opp["customer_id"],
    )
    evidence = consent["evidence"]
    assert evidence["provider"] == "docusign"
    assert evidence["envelope_id"] == envelope_id
    assert evidence["document_sha256"] == hashlib.sha256(combined).hexdigest()
    assert evidence["certificate_sha256"] == hashlib.sha256(certificate).hexdigest()
    assert evidence["signer_name"] == "Rachel Adams"
    assert won["checkpoints"][-1]["evidence"]["envelope_id"] == envelope_id
    assert fake.envelopes_created == 1

    # The run is over: nothing outstanding is left to watch.
    final = await within(stack.handle(opp).result(), "the workflow's result")
    assert final.status.value == "won"


# ---------------------------------------------------------------- 2. forged messages


async def test_a_forged_or_unsigned_message_is_401_and_moves_nothing(stack: Stack, db: Engine) -> None:
    fake = stack.fake
    _, opp, envelope_id = await stack.approved()
    fake.sign(envelope_id)  # DocuSign would say signed: only a genuine prompt may look

    assert await stack.connect(envelope_id, tamper=True) == [401]
    assert await stack.connect(envelope_id, secret="not-the-configured-secret") == [401]
    body = fake.connect_message(envelope_id)
    unsigned = await stack.api.request(
        "POST", "/v1/webhooks/docusign", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(unsigned, 401, "unauthenticated")
    signed_elsewhere = await stack.api.request(
        "POST",
        "/v1/webhooks/docusign",
        content=body,
        headers=fake.signature_headers(body, ["an-old-secret", "another-bank's-secret"]),
    )
    assert_error(signed_elsewhere, 401, "unauthenticated")

    # The webhook answers after its signal is in history: none was sent, nothing looked.
    assert await trace(stack.handle(opp)) == Trace(signals=0, looks_scheduled=0, looks_done=0, timers=1)
    state = await stack.state(opp)
    assert (state.stage, state.signature.status) == ("approved", "sent")
    now = await stack.read(opp["id"])
    assert (now["stage"], now["status"], now["signature"]["status"]) == ("approved", "open", "sent")
    assert signed_documents(db, envelope_id) == {}
    assert count(db, Consent, Consent.opportunity_id == opp["id"]) == 0

    # The same message, genuinely signed, moves it: the refusals above were the HMAC's.
    assert await stack.connect(envelope_id) == [200]
    await stack.won(opp["id"])


# ---------------------------------------------------------------- 3. replays


async def test_one_message_delivered_three_times_wins_once(stack: Stack, db: Engine) -> None:
    _, opp, envelope_id = await stack.approved()
    stack.fake.sign(envelope_id)

    assert await stack.connect(envelope_id, copies=3) == [200, 200, 200]
    won = await stack.won(opp["id"])
    await within(stack.handle(opp).result(), "the workflow's result")  # every prompt taken

    assert [c["stage"] for c in won["checkpoints"]] == STAGES_WON
    assert closed_won_checkpoints(db, opp["id"]) == 1
    assert count(db, Consent, Consent.opportunity_id == opp["id"]) == 1
    assert len(await stack.consents(opp)) == 1
    assert set(signed_documents(db, envelope_id)) == {"combined", "certificate"}
    # A late copy of the same message, after the run is over: acknowledged, harmless.
    assert await stack.connect(envelope_id) == [200]
    assert closed_won_checkpoints(db, opp["id"]) == 1


# ---------------------------------------------------------------- 4. out of order, and a lie


async def test_completed_before_sent_still_wins_once(stack: Stack, db: Engine) -> None:
    _, opp, envelope_id = await stack.approved()
    stack.fake.sign(envelope_id)

    # Connect delivers "completed" first, then the older "sent" arrives late.
    assert await stack.connect(envelope_id, event="envelope-completed") == [200]
    assert await stack.connect(envelope_id, event="envelope-sent") == [200]
    won = await stack.won(opp["id"])
    await within(stack.handle(opp).result(), "the workflow's result")

    assert [c["stage"] for c in won["checkpoints"]] == STAGES_WON
    assert closed_won_checkpoints(db, opp["id"]) == 1
    assert count(db, Consent, Consent.opportunity_id == opp["id"]) == 1
    assert won["signature"]["status"] == "completed"


async def test_a_message_saying_completed_while_docusign_says_sent_moves_nothing(stack: Stack, db: Engine) -> None:
    fake = stack.fake
    _, opp, envelope_id = await stack.approved()

    # A genuinely signed message that claims the envelope is completed (event and summary)
    # while DocuSign's envelope API says it is still out for signature.
    body = fake.connect_message(envelope_id, event="envelope-completed").replace(
        b'"status": "sent"', b'"status": "completed"', 1
    )
    assert b'"status": "completed"' in body
    r = await stack.api.request(
        "POST", "/v1/webhooks/docusign", content=body, headers=fake.signature_headers(body, stack.secret)
    )
    assert r.status_code == 200, r.text

    # The prompt was taken and the envelope looked at: the API said sent, so nothing moved.
    seen = await looked_and_waiting(stack.handle(opp), looks=1)
    assert (seen.signals, seen.looks_scheduled) == (1, 1)
    assert any(m == "GET" and p.endswith(f"/envelopes/{envelope_id}") for m, p, _ in fake.requests)
    state = await stack.state(opp)
    assert (state.stage, state.status.value, state.signature.status) == ("approved", "open", "sent")
    now = await stack.read(opp["id"])
    assert (now["stage"], now["signature"]["status"]) == ("approved", "sent")
    assert signed_documents(db, envelope_id) == {}
    assert count(db, Consent, Consent.opportunity_id == opp["id"]) == 0

    # When she does sign, the next message wins it.
    fake.sign(envelope_id)
    assert await stack.connect(envelope_id) == [200]
    await stack.won(opp["id"])
    assert closed_won_checkpoints(db, opp["id"]) == 1


# ---------------------------------------------------------------- 5. decline, then resend


async def test_decline_tells_the_owner_and_a_resend_is_a_second_envelope_that_wins(
    stack: Stack, db: Engine, smtp_inbox: Inbox
) -> None:
    fake = stack.fake
    owner, opp, first = await stack.approved()

    fake.decline(first, "wrong amount")
    assert await stack.connect(first) == [200]

    async def declined() -> dict | None:
        now = await stack.read(opp["id"])
        return now if now["signature"]["status"] == "declined" else None

    now = await until(declined, "the signature declined")
    assert (now["stage"], now["status"]) == ("approved", "open")
    assert [c["stage"] for c in now["checkpoints"]] == STAGES_WON[:-1]
    state = await stack.state(opp)
    assert (state.stage, state.signature.envelope_id, state.signature.status) == ("approved", first, "declined")

    subject = f"Signature declined on opportunity {opp['id']}"

    async def mailed() -> list:
        return smtp_inbox.about(owner["email"], subject)

    [mail] = await until(mailed, "the owner's e-mail")
    assert "wrong amount" in mail.get_content() and first in mail.get_content()

    async def recorded() -> list[dict]:  # marked sent by the e-mail sender
        outbox = (await stack.api.get(f"/v1/outbox?to_employee_id={owner['id']}")).json()["items"]
        return [m for m in outbox if m["subject"] == subject and m["sent_at"] is not None]

    [message] = await until(recorded, "the owner's e-mail in the outbox, sent")
    assert "wrong amount" in message["body"]

    resent = (
        await stack.api.post(f"/v1/opportunities/{opp['id']}/resend-signature", {"actor_id": owner["id"]}, expect=200)
    ).json()
    second = resent["signature"]["envelope_id"]
    assert second != first
    assert (resent["signature"]["provider"], resent["signature"]["status"]) == ("docusign", "sent")
    assert fake.envelopes_created == 2
    assert (fake.envelope(first).field("request_no"), fake.envelope(second).field("request_no")) == ("1", "2")
    assert fake.envelope(second).field("opportunity_id") == opp["id"]
    assert fake.envelope(second).status == "sent"

    fake.sign(second)
    assert await stack.connect(second) == [200]
    won = await stack.won(opp["id"])
    assert [c["stage"] for c in won["checkpoints"]] == STAGES_WON
    assert (won["signature"]["envelope_id"], won["signature"]["status"]) == (second, "completed")
    [consent] = await stack.consents(opp)
    assert consent["evidence"]["envelope_id"] == second
    with db.connect() as conn:
        rows = dict(
            conn.execute(
                select(SignatureRequest.request_no, SignatureRequest.status).where(
                    SignatureRequest.opportunity_id == opp["id"]
                )
            ).all()
        )
    assert rows == {1: "declined", 2: "completed"}


# ---------------------------------------------------------------- 6. the poll


async def test_without_any_webhook_the_poll_wins_it(polling_stack: Stack, db: Engine) -> None:
    stack = polling_stack
    _, opp, envelope_id = await stack.approved()
    stack.fake.sign(envelope_id)  # and Connect never delivers anything

    won = await stack.won(opp["id"])
    assert [c["stage"] for c in won["checkpoints"]] == STAGES_WON
    assert (await trace(stack.handle(opp))).signals == 0
    combined, certificate = await stack.served_documents(envelope_id)
    [consent] = await stack.consents(opp)
    assert consent["evidence"]["document_sha256"] == hashlib.sha256(combined).hexdigest()
    assert consent["evidence"]["certificate_sha256"] == hashlib.sha256(certificate).hexdigest()
    assert consent["evidence"]["signer_name"] == "Rachel Adams"
    assert stack.fake.envelopes_created == 1


# ---------------------------------------------------------------- 7. a crash after the send


class Crash(Exception):
    """The worker died after DocuSign created the envelope, before it was recorded."""


class Around:
    """The DocuSign provider as an activity attempt sees it; a subclass changes `send`."""

    def __init__(self, inner: DocuSignProvider) -> None:
        self.inner = inner
        self.name = inner.name
        self.remote = inner.remote

    async def send(self, **kw: Any) -> Envelope:
        return await self.inner.send(**kw)

    async def envelopes(self, opportunity_id: str, request_no: int) -> list[Envelope]:
        return await self.inner.envelopes(opportunity_id, request_no)

    async def status(self, envelope_id: str) -> EnvelopeState:
        return await self.inner.status(envelope_id)

    async def void(self, envelope_id: str, reason: str) -> EnvelopeState:
        return await self.inner.void(envelope_id, reason)


class CrashAfterSend(Around):
    """The DocuSign provider, but the process dies right after `send` returned."""

    def __init__(self, inner: DocuSignProvider) -> None:
        super().__init__(inner)
        self.sent: list[Envelope] = []

    async def send(self, **kw: Any) -> Envelope:
        envelope = await self.inner.send(**kw)
        self.sent.append(envelope)
        raise Crash(envelope.envelope_id)


async def _ready_to_sign(api: Api, application_id: str) -> tuple[dict, records.SignatureRequestInput]:
    """A mortgage one approval short of its documents, and the activity's request for them."""
    opp = await api.opportunity(owner=await api.employee(email=f"olga-{uuid.uuid4().hex[:8]}@bank.example"))
    await api.advance(opp, "searching", {"realtor": "Jane Realty"})
    await api.event("mortgage.application_submitted", opp["id"], {"application_id": application_id})
    ask = records.SignatureRequestInput(
        opportunity_id=opp["id"], request_no=1, template="mortgage_closing", subject="Your mortgage closing documents"
    )
    return opp, ask


async def test_a_retry_after_a_crash_between_send_and_record_makes_one_envelope(
    api: Api, fake: DocuSignFake, rsa_key: tuple[Path, bytes], database_url: str, db: Engine
) -> None:
    opp, ask = await _ready_to_sign(api, "APP-7")
    provider = DocuSignProvider(fake.settings(rsa_key[0]), webhook_url=WEBHOOK)
    crashing = CrashAfterSend(provider)
    engine = make_async_engine(database_url)
    sessions = make_session_factory(engine)
    mailer = Mailer()
    try:
        with pytest.raises(Crash):
            await within(
                OpportunityActivities(sessions, crashing, mailer, CATALOG, poll_seconds=NO_POLL).request_signature(ask),
                "the first try",
            )
        [created] = crashing.sent
        assert fake.envelopes_created == 1
        with db.connect() as conn:
            [(marker_status,)] = conn.execute(
                select(SignatureRequest.status).where(SignatureRequest.opportunity_id == opp["id"])
            ).all()
        assert marker_status == SENDING  # the crash left the marker, not the envelope

        acts = OpportunityActivities(sessions, provider, mailer, CATALOG, poll_seconds=NO_POLL)
        sent = await within(acts.request_signature(ask), "the retry")
        assert (sent.provider, sent.envelope_id, sent.status, sent.poll_seconds) == (
            "docusign",
            created.envelope_id,
            "sent",
            NO_POLL,
        )
        assert fake.envelopes_created == 1
        assert await within(acts.request_signature(ask), "a retry after the record") == sent
        assert fake.envelopes_created == 1
    finally:
        provider.close()
        await engine.dispose()

    with db.connect() as conn:
        rows = conn.execute(
            select(SignatureRequest.envelope_id, SignatureRequest.status, SignatureRequest.provider).where(
                SignatureRequest.opportunity_id == opp["id"]
            )
        ).all()
    assert [tuple(r) for r in rows] == [(created.envelope_id, "sent", "docusign")]
    assert fake.envelope(created.envelope_id).field("opportunity_id") == opp["id"]


class SlowSend(Around):
    """The DocuSign provider, but `send` waits for `go` first: an attempt that timed out
    and is still running while its retry sends and records."""

    def __init__(self, inner: DocuSignProvider) -> None:
        super().__init__(inner)
        self.sending = asyncio.Event()
        self.go = asyncio.Event()

    async def send(self, **kw: Any) -> Envelope:
        self.sending.set()
        await self.go.wait()
        return await self.inner.send(**kw)


async def test_an_attempt_that_ran_on_beside_its_retry_leaves_one_live_envelope(
    api: Api, fake: DocuSignFake, rsa_key: tuple[Path, bytes], database_url: str, db: Engine
) -> None:
    """The first attempt is slow to send; its retry finds no envelope yet, sends and records
    one. When the first attempt's envelope comes back, the retry's stands: the first one's
    is voided at DocuSign (the customer cannot sign twice) and both answer the same."""
    async with _race(api, fake, rsa_key, database_url, "APP-8", outage=False) as x:
        assert fake.envelope(x.other).voided_reason == "sent twice: another envelope for this request stands"
        assert x.live() == [x.stands.envelope_id]
    with db.connect() as conn:
        rows = conn.execute(
            select(SignatureRequest.envelope_id, SignatureRequest.status).where(
                SignatureRequest.opportunity_id == x.opp["id"]
            )
        ).all()
    assert [tuple(r) for r in rows] == [(x.stands.envelope_id, "sent")]


class SearchDown(Around):
    """DocuSign answers every envelope search with a 503."""

    async def envelopes(self, opportunity_id: str, request_no: int) -> list[Envelope]:
        raise DocuSignError("DocuSign search envelopes: 503 SERVICE_UNAVAILABLE", retryable=True)


class SlowSendThenOutage(SlowSend):
    """SlowSend, and DocuSign answers the attempt's next call with a 503."""

    def __init__(self, inner: DocuSignProvider, fake: DocuSignFake) -> None:
        super().__init__(inner)
        self.fake = fake

    async def send(self, **kw: Any) -> Envelope:
        envelope = await super().send(**kw)
        self.fake.fail_next(503)
        return envelope


@dataclass
class Race:
    """An attempt slow to send, beside its retry that sent, recorded and returned (`_race`)."""

    opp: dict
    ask: records.SignatureRequestInput
    provider: DocuSignProvider
    acts: OpportunityActivities
    #: What both attempts answered: the retry's envelope.
    stands: records.SignatureSent
    #: The slow attempt's envelope.
    other: str
    #: The envelopes of the opportunity the customer could still sign.
    live: Callable[[], list[str]]


@asynccontextmanager
async def _race(
    api: Api,
    fake: DocuSignFake,
    rsa_key: tuple[Path, bytes],
    database_url: str,
    application_id: str,
    *,
    outage: bool,
) -> AsyncIterator[Race]:
    """The race above. With `outage`, DocuSign fails the slow attempt's clean-up (a 503):
    its envelope stays open, left to the watcher's looks."""
    opp, ask = await _ready_to_sign(api, application_id)
    provider = DocuSignProvider(fake.settings(rsa_key[0]), webhook_url=WEBHOOK)
    slow = SlowSendThenOutage(provider, fake) if outage else SlowSend(provider)
    engine = make_async_engine(database_url)
    sessions = make_session_factory(engine)

    def live() -> list[str]:
        return sorted(
            e
            for e, env in list(fake.envelopes.items())
            if env.field("opportunity_id") == opp["id"] and env.voided_reason is None
        )

    try:
        slower = asyncio.create_task(
            OpportunityActivities(sessions, slow, Mailer(), CATALOG, poll_seconds=NO_POLL).request_signature(ask)
        )
        await within(slow.sending.wait(), "the first attempt to start sending")
        acts = OpportunityActivities(sessions, provider, Mailer(), CATALOG, poll_seconds=NO_POLL)
        stands = await within(acts.request_signature(ask), "the retry")
        slow.go.set()
        assert await within(slower, "the first attempt") == stands
        assert stands.strays_possible
        ours = [e for e, env in list(fake.envelopes.items()) if env.field("opportunity_id") == opp["id"]]
        [other] = [e for e in ours if e != stands.envelope_id]  # one envelope each
        yield Race(opp, ask, provider, acts, stands, other, live)
    finally:
        provider.close()
        await engine.dispose()


async def test_a_void_that_failed_is_made_good_by_the_next_attempt(
    api: Api, fake: DocuSignFake, rsa_key: tuple[Path, bytes], database_url: str
) -> None:
    """The activity's next attempt finds the request recorded and voids every other
    envelope before it answers."""
    async with _race(api, fake, rsa_key, database_url, "APP-9", outage=True) as x:
        assert x.other in x.live()  # the customer could sign either
        assert await within(x.acts.request_signature(x.ask), "the next attempt") == x.stands
        assert x.live() == [x.stands.envelope_id]


async def test_a_stray_envelope_no_attempt_cleans_up_is_voided_by_the_watchers_look(
    api: Api, fake: DocuSignFake, rsa_key: tuple[Path, bytes], database_url: str
) -> None:
    """As it happens under Temporal: the slow attempt had timed out, so it is retried by no
    one, and the attempt that stands has returned. The stray stays open until the
    workflow's next look at the recorded envelope voids it."""
    async with _race(api, fake, rsa_key, database_url, "APP-10", outage=True) as x:

        def look_at(sent_at: datetime) -> Any:
            check = records.SignatureCheck(
                opportunity_id=x.opp["id"],
                envelope_id=x.stands.envelope_id,
                sent_at=sent_at,
                strays_possible=x.stands.strays_possible,
            )
            return within(x.acts.check_signature(check), "the watcher's look")

        # A look more than an hour after the envelope was recorded spends no call on strays.
        assert (await look_at(datetime.now(UTC) - STRAYS_SWEPT_FOR)).outcome is None
        assert x.other in x.live()
        # DocuSign fails the sweep: the look still answers what it saw (a signature is never
        # taken late for a sweep), and leaves the stray to the next.
        searching_down = OpportunityActivities(x.acts.sessions, SearchDown(x.provider), Mailer(), CATALOG)
        check = records.SignatureCheck(
            opportunity_id=x.opp["id"], envelope_id=x.stands.envelope_id, sent_at=datetime.now(UTC)
        )
        assert (await within(searching_down.check_signature(check), "a look, the search down")).outcome is None
        assert x.other in x.live()

        # An envelope of another request of the same opportunity (a resend's) is not the
        # sweep's: only this request's envelopes but the recorded one are voided.
        resent = await x.provider.send(
            opportunity_id=x.opp["id"],
            request_no=x.ask.request_no + 1,
            subject=x.ask.subject,
            document_html="<p>By signing you confirm the documents.</p>",
            signer_name="Ann Customer",
            signer_email="ann@example.com",
        )
        look = await look_at(datetime.now(UTC))
        assert look.outcome is None  # the recorded envelope is still out for signature
        assert x.live() == sorted([x.stands.envelope_id, resent.envelope_id])
        assert fake.envelope(x.other).voided_reason == "sent twice: another envelope for this request stands"


async def test_closing_lost_voids_a_stray_envelope_too(
    api: Api, fake: DocuSignFake, rsa_key: tuple[Path, bytes], database_url: str
) -> None:
    """The opportunity is closed lost while the stray is still open (no look swept it):
    nothing of a closed opportunity stays signable."""
    async with _race(api, fake, rsa_key, database_url, "APP-11", outage=True) as x:
        assert x.other in x.live()  # the customer could sign either
        closing = CheckpointView(
            seq=4, stage="closed_lost", entered_at=datetime.now(UTC), trigger=Trigger.manual, actor="someone"
        )
        change = records.StageChange(
            opportunity_id=x.opp["id"],
            checkpoint=closing,
            probability=0,
            status="lost",
            lost_reason="chose another bank",
            void_envelope_id=x.stands.envelope_id,
        )
        await within(x.acts.record_stage_change(change), "the close")
        assert x.live() == []
        assert fake.envelope(x.stands.envelope_id).voided_reason == "the opportunity was closed"


# ---------------------------------------------------------------- 8. closed lost


async def test_closing_lost_voids_the_outstanding_envelope(stack: Stack, db: Engine) -> None:
    fake = stack.fake
    owner, opp, envelope_id = await stack.approved()

    closed = (
        await stack.api.post(
            f"/v1/opportunities/{opp['id']}/close-lost",
            {"actor_id": owner["id"], "reason": "The customer chose another bank"},
            expect=200,
        )
    ).json()
    assert (closed["stage"], closed["status"], closed["lost_reason"]) == (
        "closed_lost",
        "lost",
        "The customer chose another bank",
    )
    assert (closed["signature"]["envelope_id"], closed["signature"]["status"]) == (envelope_id, "voided")
    envelope = fake.envelope(envelope_id)
    assert envelope.status == "voided"
    assert envelope.voided_reason == "the opportunity was closed"
    assert (await stack.state(opp)).signature.status == "voided"

    # Closing stops the envelope's watch at once (not at its next poll, an hour away), so
    # the run ends; DocuSign's envelope-voided message that follows changes nothing.
    final = await within(stack.handle(opp).result(), "the workflow's result", 5)
    assert await stack.connect(envelope_id) == [200]
    assert (final.status.value, final.signature.status) == ("lost", "voided")
    assert count(db, Consent, Consent.opportunity_id == opp["id"]) == 0
    assert fake.envelopes_created == 1


async def test_signed_just_before_the_close_is_recorded_as_signed(stack: Stack, db: Engine) -> None:
    """The customer signs a moment before the banker closes the opportunity lost: DocuSign
    keeps the envelope completed (a void cannot undo it), and so does the store; the
    opportunity stays lost and records no consent (the bank withdrew the offer)."""
    fake = stack.fake
    owner, opp, envelope_id = await stack.approved()
    fake.sign(envelope_id)  # no Connect message yet
    body = {"actor_id": owner["id"], "reason": "The customer chose another bank"}
    closed = (await stack.api.post(f"/v1/opportunities/{opp['id']}/close-lost", body, expect=200)).json()
    assert closed["status"] == "lost" and fake.envelope(envelope_id).status == "completed"
    with db.connect() as conn:
        stored = conn.scalar(select(SignatureRequest.status).where(SignatureRequest.envelope_id == envelope_id))
    assert stored == "completed"
    assert count(db, Consent, Consent.opportunity_id == opp["id"]) == 0


# ---------------------------------------------------------------- a prompt during a look


class HeldLook:
    """The worker's DocuSign provider, whose first `status` answer is held back (after
    DocuSign answered) until the test lets it go: a look that is under way."""

    def __init__(self, inner: DocuSignProvider) -> None:
        self.inner = inner
        self.read = asyncio.Event()
        self.release = asyncio.Event()
        self._held = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def status(self, envelope_id: str) -> EnvelopeState:
        state = await self.inner.status(envelope_id)
        if not self._held:
            self._held = True
            self.read.set()
            await self.release.wait()
        return state


async def test_a_message_arriving_during_a_look_is_not_lost(
    client: Client,
    settings: Settings,
    keys: dict[str, str],
    fake: DocuSignFake,
    rsa_key: tuple[Path, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held: list[HeldLook] = []

    def provider(s: Settings) -> HeldLook:
        held.append(HeldLook(DocuSignProvider.from_settings(s)))
        return held[0]

    monkeypatch.setattr(worker_module, "esign_provider", provider)
    try:
        async with docusign_stack(client, settings, keys, fake, rsa_key[0], NO_POLL) as stack:
            try:
                _, opp, envelope_id = await stack.approved()
                fake.open(envelope_id)
                assert await stack.connect(envelope_id) == [200]  # "delivered": the workflow looks
                await within(held[0].read.wait(), "the look reading the envelope")

                # While that look is under way (it read "delivered"), she signs and Connect says so.
                fake.sign(envelope_id)
                assert await stack.connect(envelope_id) == [200]
                assert (await trace(stack.handle(opp))).signals == 2
                held[0].release.set()

                await stack.won(opp["id"], seconds=2)
            finally:
                held[0].release.set()
    finally:
        if held:
            held[0].inner.close()
