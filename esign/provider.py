"""The interface every e-signature provider implements.

A provider sends one document to one signer (`send`) and, when it is remote (DocuSign),
answers for the envelope afterwards: `find` it again after a crash, read its `status`,
`void` it, `download` the signed result. The local provider keeps its state in needflow's
own store, so only `send` (and a no-op `void`) mean anything there; see esign/local.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel


class Envelope(BaseModel):
    provider: str
    envelope_id: str
    #: The local page's link, for the activity to e-mail to the customer; never stored,
    #: answered or logged. None for a remote provider (DocuSign e-mails her itself).
    signing_url: str | None = None
    #: Local provider: sha256 of the single-use signing token in the URL.
    token_sha256: str | None = None


class EnvelopeStatus(StrEnum):
    """An envelope's status, normalised across providers."""

    SENT = "sent"  # sent, not opened yet (also DocuSign's transitional statuses)
    DELIVERED = "delivered"  # the signer opened it
    COMPLETED = "completed"  # signed by everyone: terminal
    DECLINED = "declined"  # the signer refused: terminal, `reason` is hers
    VOIDED = "voided"  # cancelled by the sender: terminal, `reason` is the sender's
    EXPIRED = "expired"  # not signed in time (DocuSign voids it "Envelope has expired."): terminal

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {EnvelopeStatus.COMPLETED, EnvelopeStatus.DECLINED, EnvelopeStatus.VOIDED, EnvelopeStatus.EXPIRED}
)


class EnvelopeState(BaseModel):
    """What a provider reports about an envelope now."""

    envelope_id: str
    status: EnvelopeStatus
    #: The provider's own word for it (DocuSign: created, sent, delivered, signed, …).
    raw_status: str
    #: Declined: the signer's reason. Voided or expired: the void reason.
    reason: str | None = None
    status_changed_at: datetime | None = None
    completed_at: datetime | None = None
    #: The (first) signer as the provider has her: consent evidence `signer_name`.
    signer_name: str | None = None
    #: The envelope's custom fields, when the provider carries them (DocuSign does).
    opportunity_id: str | None = None
    request_no: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status.terminal


@dataclass(frozen=True)
class SignedDocuments:
    """A completed envelope's documents as downloaded: keep the bytes in the system of
    record (never in workflow history), put their digests in the consent evidence."""

    #: All documents of the envelope combined into one signed PDF.
    combined_pdf: bytes
    #: The provider's certificate of completion (audit trail), a PDF.
    certificate_pdf: bytes

    @property
    def document_sha256(self) -> str:
        return hashlib.sha256(self.combined_pdf).hexdigest()

    @property
    def certificate_sha256(self) -> str:
        return hashlib.sha256(self.certificate_pdf).hexdigest()


class ESignatureProvider(Protocol):
    #: "local" or "docusign": recorded with every envelope.
    name: str
    #: True when the envelope lives at the provider (status, find, download answer from
    #: there); False for needflow's own signing page, whose state is needflow's store.
    remote: bool

    async def send(
        self,
        *,
        opportunity_id: str,
        request_no: int,
        subject: str,
        document_html: str,
        signer_name: str,
        signer_email: str | None,
    ) -> Envelope:
        """Send one document to one signer; return the envelope that tracks it.

        Not idempotent by itself: a remote provider tags the envelope with
        (opportunity_id, request_no), and a retry after an unrecorded send calls `find`
        first (see esign/docusign.py)."""
        ...

    async def envelopes(self, opportunity_id: str, request_no: int) -> list[Envelope]:
        """Every envelope earlier `send`s created for this opportunity and request number,
        newest first (none: an empty list). A retried send looks here before sending
        again; the request's record voids any but the one it keeps."""
        ...

    async def status(self, envelope_id: str) -> EnvelopeState:
        """The envelope's current, normalised status, read from the provider."""
        ...

    async def void(self, envelope_id: str, reason: str) -> EnvelopeState:
        """Void an envelope that is still open; return its state afterwards. Harmless on
        one already terminal: nothing is changed and its state (completed, declined,
        voided, expired) is returned, so a caller racing the signer sees who won."""
        ...

    async def download(self, envelope_id: str) -> SignedDocuments:
        """The combined signed PDF and the certificate of completion. Call it once
        `status` says completed: the provider serves the documents in any state."""
        ...
