"""Activities that record an opportunity's lifecycle in the system of record.

Each write is keyed so that a retry finds its rows already there: the opportunity by
id, a checkpoint by (opportunity, seq), a consent by its deterministic id, an envelope
by (opportunity, request number), an outbox message by its id, an owner change by
(opportunity, seq).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Row, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.mail import Mailer
from domain import records
from domain.invariants import required
from domain.opportunity import CheckpointView, SignatureOutcome
from domain.process import ProcessCatalog
from esign.documents import DocumentContext, render_document, sha256_hex
from esign.provider import Envelope, EnvelopeStatus, ESignatureProvider
from store.audit_findings import consent_affects, judge, judge_locked
from store.db import insert_if_missing
from store.models import (
    Checkpoint,
    Consent,
    Customer,
    Employee,
    Need,
    Opportunity,
    OwnerChange,
    ProcessedEvent,
    SignatureRequest,
    SignedDocument,
    UTCDateTime,
)

log = logging.getLogger("needflow.signatures")


async def _add_checkpoint(session: AsyncSession, opportunity_id: str, cp: CheckpointView) -> None:
    """The checkpoint, once: a retry finds (opportunity, seq) taken and writes nothing."""
    await insert_if_missing(
        session,
        Checkpoint,
        opportunity_id=opportunity_id,
        seq=cp.seq,
        stage=cp.stage,
        entered_at=cp.entered_at,
        trigger=cp.trigger.value,
        actor=cp.actor,
        via=cp.via,
        evidence=cp.evidence,
    )


#: The stage change's read and write of its opportunity's row, built once (store/audit.py
#: `_BY_IDS` says why): the row locked, with what the change and its judging read of it,
#: then its stage and status. Plain rows, not the ORM's objects: no identity map to keep
#: and no flush to plan, on the path of every command. The UPDATE leaves the session's
#: objects alone (`synchronize_session=False`: the ORM would evaluate its parameters as
#: None), so its transaction must hold no `Opportunity` object: `_record_stage_change`
#: holds none. `to_closed_at` carries the column's type: inside COALESCE it would
#: otherwise reach SQLite without UTCDateTime's conversion to naive UTC.
_LOCKED = (
    select(Opportunity.id, Opportunity.customer_id, Opportunity.last_seq, Opportunity.audit_stale)
    .where(Opportunity.id == bindparam("opportunity_id"))
    .with_for_update()
)
_ENTERED = (
    update(Opportunity)
    .where(Opportunity.id == bindparam("opportunity_id"))
    .values(
        last_seq=bindparam("to_seq"),
        stage=bindparam("to_stage"),
        probability=bindparam("to_probability"),
        status=bindparam("to_status"),
        lost_reason=bindparam("to_lost_reason"),
        closed_at=func.coalesce(bindparam("to_closed_at", type_=UTCDateTime), Opportunity.closed_at),
    )
    .execution_options(synchronize_session=False)
)


async def _lock_opportunity(session: AsyncSession, opportunity_id: str) -> Row:
    """The opportunity's row, locked for this transaction (`_LOCKED`): the one way the
    store writes lock it. Missing, it is a broken invariant: an earlier step of the same
    workflow recorded it."""
    return required(
        (await session.execute(_LOCKED, {"opportunity_id": opportunity_id})).one_or_none(),
        f"opportunity {opportunity_id}",
    )


#: The status of a remote envelope's marker row while the provider is being called.
SENDING = "sending"

#: How long after the workflow had a remote envelope recorded its watcher's looks also
#: void stray envelopes sent for the same request (`check_signature`): far longer than an
#: attempt that timed out can run on past that (its provider calls each have a timeout),
#: short enough to spare the provider's quota. Only requests sent by more than one attempt
#: are swept (`SignatureSent.strays_possible`).
STRAYS_SWEPT_FOR = timedelta(hours=1)
#: The most a best-effort sweep may take of its activity's time (ACTIVITY_TIMEOUT, 30 s).
SWEEP_BUDGET = timedelta(seconds=10)


def _link_mail(customer_name: str, owner_name: str, opportunity_id: str, link: str, expires_at: datetime) -> str:
    return (
        f"Dear {customer_name},\n\n"
        f"{owner_name} has prepared your documents (reference {opportunity_id}). Please read them and, "
        "if you agree, sign them here:\n\n"
        f"{link}\n\n"
        f"The link works once and until {expires_at:%Y-%m-%d %H:%M} UTC. It is yours alone: please do not "
        "forward it. If you did not expect this message, tell your bank.\n"
    )


class OpportunityActivities:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        esign: ESignatureProvider,
        mailer: Mailer,
        catalog: ProcessCatalog,
        link_ttl: timedelta = timedelta(days=7),
        poll_seconds: float = 900,
    ) -> None:
        self.sessions = sessions
        #: The process versions the practice audit judges records by (store/audit_findings.py).
        self.catalog = catalog
        self.esign = esign
        self.mailer = mailer
        #: How long a signing link of ours works (NEEDFLOW_SIGNING_LINK_TTL).
        self.link_ttl = link_ttl
        #: How often a workflow looks at a remote envelope (NEEDFLOW_ESIGN_POLL_SECONDS).
        self.poll_seconds = poll_seconds

    @activity.defn(name=records.OPEN_OPPORTUNITY)
    async def open_opportunity(self, rec: records.OpenOpportunity) -> None:
        """Record the opened opportunity and its first checkpoint, each row once, and judge
        it. An imported one is recorded already, with its every checkpoint, by the import
        that resumes it (domain/imports.py plans those rows, store/imports.py writes them
        before any workflow starts): it is only judged here."""
        async with self.sessions.begin() as session:
            # Inserted unless there, then locked as `judge_locked` needs it: a retry, or an
            # attempt that timed out and runs on beside its retry, finds the row and goes
            # on as if it were its own (every write below is keyed), never a duplicate key.
            first = rec.first_checkpoint
            if rec.imported is None:
                await insert_if_missing(
                    session,
                    Opportunity,
                    id=rec.opportunity_id,
                    customer_id=rec.customer_id,
                    product=rec.product.value,
                    process_version=rec.process_version,
                    owner_id=rec.owner_id,
                    need_id=rec.need_id,
                    amount=rec.amount,
                    referral_id=rec.referral_id,
                    campaign_id=rec.campaign_id,
                    stage=first.stage,
                    probability=rec.probability,
                    status="open",
                    last_seq=first.seq,
                    workflow_id=rec.workflow_id,
                    opened_at=first.entered_at,
                    audit_stale=False,  # judged below, in this transaction
                )
            # Missing here: the insert met another key, or an import did not write its row.
            opp = await _lock_opportunity(session, rec.opportunity_id)
            if rec.imported is None:
                await _add_checkpoint(session, rec.opportunity_id, first)
            await judge_locked(session, self.catalog, opp)

    @activity.defn(name=records.RECORD_STAGE_CHANGE)
    async def record_stage_change(self, change: records.StageChange) -> records.SignatureSent | None:
        """Record a checkpoint and what changes with it, in one transaction; then, when the
        stage sends documents for signature, request it (`request_signature`, keyed by its
        request number) and return the envelope. A retry finds the checkpoint recorded and
        the envelope too, whichever of the two the last attempt reached."""
        await self._record_stage_change(change)
        if change.signature_request is None:
            return None
        return await self.request_signature(change.signature_request)

    async def _record_stage_change(self, change: records.StageChange) -> None:
        voided_as = "voided"
        if change.void_envelope_id is not None:
            voided_as = await self._void_at_provider(change.void_envelope_id)
        async with self.sessions.begin() as session:
            opp = await _lock_opportunity(session, change.opportunity_id)
            cp = change.checkpoint
            await _add_checkpoint(session, opp.id, cp)
            if cp.seq > opp.last_seq:
                await session.execute(
                    _ENTERED,
                    {
                        "opportunity_id": opp.id,
                        "to_seq": cp.seq,
                        "to_stage": cp.stage,
                        "to_probability": change.probability,
                        "to_status": change.status,
                        "to_lost_reason": change.lost_reason,
                        "to_closed_at": None if change.status == "open" else cp.entered_at,  # None: kept
                    },
                )
            if change.void_envelope_id is not None:
                # The outstanding request dies with the opportunity: the customer can no
                # longer consent to what the bank no longer offers.
                await session.execute(
                    update(SignatureRequest)
                    .where(SignatureRequest.envelope_id == change.void_envelope_id, SignatureRequest.status == "sent")
                    .values(status=voided_as)
                )
            # Each once, by its key: a retry finds them written and writes nothing.
            if change.consent:
                c = change.consent
                await insert_if_missing(
                    session,
                    Consent,
                    id=c.consent_id,
                    customer_id=c.customer_id,
                    opportunity_id=opp.id,
                    product=c.product.value,
                    channel=c.channel.value,
                    evidence=c.evidence,
                    granted_at=c.granted_at,
                    actor=c.actor,
                    via=c.via,
                )
            if change.processed_event:
                e = change.processed_event
                await insert_if_missing(
                    session, ProcessedEvent, id=e.event_id, type=e.type, subject_id=opp.id, body_sha256=e.body_sha256
                )
            if change.signature_completion:
                done = change.signature_completion
                sig = await session.get(SignatureRequest, done.envelope_id)
                if sig is not None and sig.status != "completed":
                    sig.status = "completed"
                    sig.signer_name = done.signer_name
                    sig.client_address = done.client_address
                    sig.completed_at = done.completed_at
            # The practice audit's verdicts on what changed (store/audit_findings.py): a
            # consent can change those of every opportunity of its customer and product.
            if change.consent:
                await judge(session, self.catalog, *consent_affects(opp.customer_id, change.consent.product.value))
            else:
                await judge_locked(session, self.catalog, opp)

    async def _void_at_provider(self, envelope_id: str) -> str:
        """Void a remote envelope at its provider, and any stray envelope sent for the same
        request (`_void_others`: nothing of a closed opportunity stays signable); the status
        to record for it: `voided`, or what the provider says when the customer finished
        first (`completed`, `declined`: the store keeps the truth, the opportunity stays
        closed)."""
        async with self.sessions() as session:
            row = await session.get(SignatureRequest, envelope_id)
        if row is not None and row.status == "sent" and self.esign.remote and row.provider == self.esign.name:
            state = await self.esign.void(envelope_id, "the opportunity was closed")
            await self._void_others(row.opportunity_id, row.request_no, envelope_id)
            return state.status.value
        return "voided"

    @activity.defn(name=records.REQUEST_SIGNATURE)
    async def request_signature(self, req: records.SignatureRequestInput) -> records.SignatureSent:
        """Render the documents, send them for signature, record the envelope: once per
        request number (a retry after the envelope is recorded returns it).

        The link reaches the customer only. With the local provider it is e-mailed to her
        (the outbox row is written in the transaction that records the envelope, so a retry
        finds both or neither), only its SHA-256 is stored, it expires after
        NEEDFLOW_SIGNING_LINK_TTL, and it is in no answer, history or log. A remote
        provider (DocuSign) e-mails her itself. A customer with no e-mail address: the
        request is recorded `undeliverable`, nothing is sent, and the owner is told.

        One envelope per request, even when the activity is retried after a crash between
        the provider's answer and the commit: for a remote provider a `sending` marker
        (holding the rendered document) is committed before the call, and a retry that
        finds it asks the provider for the envelope by its custom fields before sending
        again. (For the local provider such a crash is harmless: the first token was never
        stored or mailed.)
        """
        sent, settle = await self._request_signature(req)
        if settle:  # a retry, or two attempts met: no envelope but the recorded one stays open
            await self._sweep(req.opportunity_id, req.request_no, sent.envelope_id)
        return sent.model_copy(update={"strays_possible": settle})

    async def _request_signature(self, req: records.SignatureRequestInput) -> tuple[records.SignatureSent, bool]:
        """`request_signature`'s work, and whether other envelopes may exist at the provider
        for this request (a remote one, on a retry or when another attempt recorded first)."""
        async with self.sessions.begin() as session:
            # The opportunity locked first: an attempt that timed out and runs on, beside
            # its retry, waits here for the other's commit, then finds its request
            # (PostgreSQL's row lock; on SQLite the write gate's turn, store/write_gate.py).
            opp = required(
                await session.get(Opportunity, req.opportunity_id, with_for_update=True),
                f"opportunity {req.opportunity_id}",
            )
            existing = await session.scalar(
                select(SignatureRequest).where(
                    SignatureRequest.opportunity_id == req.opportunity_id,
                    SignatureRequest.request_no == req.request_no,
                )
            )
            if existing is not None and existing.status != SENDING:  # a retry after it was recorded
                return self._sent(existing), self._is_remote(existing)
            customer = await session.get(Customer, opp.customer_id)
            owner = await session.get(Employee, opp.owner_id)
            # An imported opportunity may have no need (its old system recorded none).
            need = await session.get(Need, opp.need_id) if opp.need_id else None
            assert customer is not None and owner is not None
            if existing is not None:  # a remote send was under way when the last try stopped
                row = existing
            else:
                now = datetime.now(UTC)
                document = render_document(
                    req.template,
                    DocumentContext(
                        opportunity_id=opp.id,
                        product=opp.product,
                        customer_name=customer.name,
                        customer_city=customer.city,
                        customer_state=customer.state,
                        amount=opp.amount,
                        owner_name=owner.name,
                        need_description=need.description if need else "",
                        issued_at=now,
                    ),
                )
                row = SignatureRequest(
                    opportunity_id=opp.id,
                    request_no=req.request_no,
                    provider=self.esign.name,
                    subject=req.subject,
                    document_html=document,
                    document_sha256=sha256_hex(document),
                    created_at=now,
                )
                if not customer.email:
                    row.envelope_id = f"undeliverable-{opp.id}-{req.request_no}"
                    row.status = "undeliverable"
                    session.add(row)
                    await self.mailer.record(
                        session,
                        f"signature-undeliverable-{row.envelope_id}",
                        owner.email,
                        f"Signature request undeliverable on opportunity {opp.id}",
                        f"The documents for opportunity {opp.id} could not be sent for signature: the "
                        "customer has no e-mail address on record. Add one, then resend the signature request.",
                        to_employee_id=owner.id,
                    )
                elif self.esign.remote:
                    row.envelope_id = f"{SENDING}-{opp.id}-{req.request_no}"
                    row.status = SENDING
                    session.add(row)  # committed before the provider is called
                else:
                    envelope = await self._send(req, row.document_html, customer.name, customer.email)
                    row.envelope_id = envelope.envelope_id
                    row.provider = envelope.provider
                    row.status = "sent"
                    row.token_sha256 = envelope.token_sha256
                    if envelope.signing_url is not None:  # ours to deliver: by e-mail, to her only
                        row.expires_at = now + self.link_ttl
                        await self.mailer.record(
                            session,
                            f"signature-link-{envelope.envelope_id}",
                            customer.email,
                            req.subject,
                            _link_mail(customer.name, owner.name, opp.id, envelope.signing_url, row.expires_at),
                        )
                    session.add(row)
            customer_name, customer_email = customer.name, customer.email
        if row.status != SENDING:
            return self._sent(row), False

        # A remote provider: find what an earlier try sent, else send, then record it.
        found = await self.esign.envelopes(req.opportunity_id, req.request_no) if existing is not None else []
        envelope = found[0] if found else await self._send(req, row.document_html, customer_name, customer_email)
        async with self.sessions.begin() as session:
            # One recorder at a time; an attempt that timed out and ran on may have
            # recorded its own envelope meanwhile: that one stands, ours is voided after.
            await _lock_opportunity(session, req.opportunity_id)
            recorded = await session.scalar(
                select(SignatureRequest).where(
                    SignatureRequest.opportunity_id == req.opportunity_id,
                    SignatureRequest.request_no == req.request_no,
                    SignatureRequest.status != SENDING,
                )
            )
            if recorded is None:
                marker = await session.get(SignatureRequest, row.envelope_id)
                if marker is not None:
                    await session.delete(marker)
                    await session.flush()
                recorded = SignatureRequest(
                    envelope_id=envelope.envelope_id,
                    opportunity_id=req.opportunity_id,
                    request_no=req.request_no,
                    provider=envelope.provider,
                    status="sent",
                    subject=req.subject,
                    document_html=row.document_html,
                    document_sha256=row.document_sha256,
                    created_at=row.created_at,
                )
                session.add(recorded)
        return self._sent(recorded), existing is not None or recorded.envelope_id != envelope.envelope_id

    def _is_remote(self, row: SignatureRequest) -> bool:
        return self.esign.remote and row.provider == self.esign.name and row.status != "undeliverable"

    async def _sweep(self, opportunity_id: str, request_no: int, keep: str) -> None:
        """`_void_others`, best effort and within SWEEP_BUDGET: what the activity is for
        (the envelope recorded and answered, the look at it) must not wait on, or fail for,
        a stray's clean-up. A sweep that failed or ran out of time is logged (ids only) and
        left to the watcher's next look (`check_signature`), which sweeps this request
        while it is young."""
        try:
            async with asyncio.timeout(SWEEP_BUDGET.total_seconds()):
                await self._void_others(opportunity_id, request_no, keep)
        except Exception as exc:  # noqa: BLE001 (any provider's failure or slowness: the next look sweeps again)
            log.warning(
                "stray envelopes of %s #%s not swept this time: %s", opportunity_id, request_no, type(exc).__name__
            )

    async def _void_others(self, opportunity_id: str, request_no: int, keep: str) -> None:
        """Void at the provider every envelope sent for this request but `keep`, the
        recorded one: the customer must not be able to sign twice, and the workflow listens
        to the recorded envelope alone. Run after the request is recorded, by any attempt
        that may have met another (a retry, or one that found another's envelope recorded),
        by the watcher's looks while the request is young, and when the opportunity closes
        (a void is harmless on an envelope already voided). The first two are best effort
        (`_sweep`); a close fails, and is retried, until the provider has voided them."""
        for envelope in await self.esign.envelopes(opportunity_id, request_no):
            if envelope.envelope_id == keep:
                continue
            state = await self.esign.void(envelope.envelope_id, "sent twice: another envelope for this request stands")
            if (
                state.status == EnvelopeStatus.COMPLETED
            ):  # signed before the void: that signature is not the one recorded
                log.warning(
                    "envelope %s of %s #%s was signed, but %s is the one recorded",
                    envelope.envelope_id,
                    opportunity_id,
                    request_no,
                    keep,
                )

    async def _send(
        self, req: records.SignatureRequestInput, document_html: str | None, name: str, email: str | None
    ) -> Envelope:
        """The one call to the provider, local or remote."""
        return await self.esign.send(
            opportunity_id=req.opportunity_id,
            request_no=req.request_no,
            subject=req.subject,
            document_html=document_html or "",
            signer_name=name,
            signer_email=email,
        )

    def _sent(self, row: SignatureRequest) -> records.SignatureSent:
        return records.SignatureSent(
            provider=row.provider,
            envelope_id=row.envelope_id,
            document_sha256=row.document_sha256,
            status="undeliverable" if row.status == "undeliverable" else "sent",
            poll_seconds=self.poll_seconds if self.esign.remote and row.status != "undeliverable" else None,
        )

    @activity.defn(name=records.CHECK_SIGNATURE)
    async def check_signature(self, req: records.SignatureCheck) -> records.SignatureLook:
        """Look at a remote envelope. Finished and signed: download the combined document
        and the certificate of completion, keep them in the store (once per envelope and
        kind), and answer the consent's evidence (their SHA-256s and the signer) — the
        signature is confirmed with the provider's envelope API, whatever a webhook said.
        Declined, voided or expired: the outcome with its reason. Still open: nothing.

        Then, for a request sent by more than one attempt (`strays_possible`) and while it
        is young (STRAYS_SWEPT_FOR since the workflow had the envelope recorded), void any
        other envelope sent for it: an attempt that timed out and ran on can send one after
        the attempt that stands has cleaned up, and if its own clean-up then fails, Temporal
        retries it never (it dropped that attempt), so the customer could sign an envelope
        the bank does not listen to. Only while young: such an attempt ends within its
        provider calls' timeouts, and each sweep costs calls against the provider's hourly
        quota. The sweep comes after the status and is best effort (`_sweep`): a signature
        is never taken late for it, and the next look sweeps again."""
        state = await self.esign.status(req.envelope_id)
        if req.strays_possible:
            async with self.sessions() as session:
                row = await session.get(SignatureRequest, req.envelope_id)
            if row is not None and datetime.now(UTC) - (req.sent_at or row.created_at) < STRAYS_SWEPT_FOR:
                await self._sweep(row.opportunity_id, row.request_no, req.envelope_id)
        if not state.terminal:
            return records.SignatureLook()
        at = state.completed_at or state.status_changed_at or datetime.now(UTC)
        if state.status != EnvelopeStatus.COMPLETED:
            return records.SignatureLook(
                outcome=SignatureOutcome(
                    envelope_id=req.envelope_id,
                    status=state.status.value,  # type: ignore[arg-type]
                    reason=state.reason,
                    at=at,
                )
            )
        docs = await self.esign.download(req.envelope_id)
        async with self.sessions.begin() as session:
            for kind, content, digest in (
                ("combined", docs.combined_pdf, docs.document_sha256),
                ("certificate", docs.certificate_pdf, docs.certificate_sha256),
            ):
                await insert_if_missing(
                    session, SignedDocument, envelope_id=req.envelope_id, kind=kind, sha256=digest, content=content
                )
        return records.SignatureLook(
            outcome=SignatureOutcome(
                envelope_id=req.envelope_id,
                status="completed",
                signer_name=state.signer_name,
                document_sha256=docs.document_sha256,
                certificate_sha256=docs.certificate_sha256,
                at=at,
            )
        )

    @activity.defn(name=records.RECORD_SIGNATURE_FAILURE)
    async def record_signature_failure(self, rec: records.SignatureFailureRecord) -> None:
        subject = f"Signature {rec.status} on opportunity {rec.opportunity_id}"
        body = (
            f"The customer's signature request {rec.envelope_id} was {rec.status}"
            + (f": {rec.reason}" if rec.reason else ".")
            + " The opportunity stays where it is: resend the documents or close it lost."
        )
        async with self.sessions.begin() as session:
            sig = await session.get(SignatureRequest, rec.envelope_id)
            if sig is not None and sig.status == "sent":
                sig.status = rec.status
            owner = await session.get(Employee, rec.owner_id)
            await self.mailer.record_for(
                session, f"signature-{rec.status}-{rec.envelope_id}", [owner] if owner else [], subject, body
            )

    @activity.defn(name=records.RECORD_OWNER_CHANGE)
    async def record_owner_change(self, rec: records.OwnerChangeRecord) -> None:
        """The owner change row and the opportunity's owner, together. A retry finds the
        row (by opportunity and seq) and writes nothing; an older change never moves the
        owner back past a newer one."""
        async with self.sessions.begin() as session:
            opp = required(
                await session.get(Opportunity, rec.opportunity_id, with_for_update=True),
                f"opportunity {rec.opportunity_id}",
            )
            recorded = list(await session.scalars(select(OwnerChange.seq).where(OwnerChange.opportunity_id == opp.id)))
            if rec.seq in recorded:
                return
            session.add(
                OwnerChange(
                    opportunity_id=opp.id,
                    seq=rec.seq,
                    from_owner_id=rec.from_owner_id,
                    to_owner_id=rec.to_owner_id,
                    at=rec.at,
                    actor=rec.actor,
                    via=rec.via,
                    reason=rec.reason,
                )
            )
            if rec.seq > max(recorded, default=0):
                opp.owner_id = rec.to_owner_id
                await judge_locked(session, self.catalog, opp)

    def all(self) -> list:
        return [
            self.open_opportunity,
            self.record_stage_change,
            self.request_signature,
            self.check_signature,
            self.record_signature_failure,
            self.record_owner_change,
        ]
