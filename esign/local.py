"""needflow's own signing page, for banks with no DocuSign account configured.

Each envelope gets an unguessable single-use token; the customer opens
`{base_url}/sign/{token}`, reads the document and signs with their typed name. Only the
token's SHA-256 is looked up; the API marks the token used through the workflow.

Of the remote-provider methods of `ESignatureProvider`: `find` answers None (a local
envelope exists only once the activity has recorded it, so a retried send has nothing to
recover); `void` changes nothing here (a link dies in needflow's store, where the
activity marks it) and reports the envelope voided; `status` and `download` raise
NotImplementedError: the signing page reports to the workflow directly, and the signed
document is the HTML already stored with the request.
"""

from __future__ import annotations

import hashlib
import secrets

from esign.provider import Envelope, EnvelopeState, EnvelopeStatus, SignedDocuments


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LocalSigningProvider:
    name = "local"
    remote = False

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

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
        token = secrets.token_urlsafe(32)
        return Envelope(
            provider=self.name,
            envelope_id=f"local-{opportunity_id}-{request_no}",
            signing_url=f"{self.base_url}/sign/{token}",
            token_sha256=token_sha256(token),
        )

    async def envelopes(self, opportunity_id: str, request_no: int) -> list[Envelope]:
        return []

    async def status(self, envelope_id: str) -> EnvelopeState:
        raise NotImplementedError("local signing reports to the workflow; its state is in needflow's store")

    async def void(self, envelope_id: str, reason: str) -> EnvelopeState:
        return EnvelopeState(envelope_id=envelope_id, status=EnvelopeStatus.VOIDED, raw_status="voided", reason=reason)

    async def download(self, envelope_id: str) -> SignedDocuments:
        raise NotImplementedError("a local envelope's document is the HTML stored with its signature request")
