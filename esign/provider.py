"""The interface every e-signature provider implements."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel


class Envelope(BaseModel):
    provider: str
    envelope_id: str
    #: Where the customer signs (a local page, or a provider's recipient view).
    signing_url: str | None = None
    #: Local provider: sha256 of the single-use signing token in the URL.
    token_sha256: str | None = None


class ESignatureProvider(Protocol):
    name: str

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
        """Send one document to one signer; return the envelope that tracks it."""
        ...
