"""needflow's own signing page, for banks with no DocuSign account configured.

Each envelope gets an unguessable single-use token; the customer opens
`{base_url}/sign/{token}`, reads the document and signs with their typed name. Only the
token's SHA-256 is looked up; the API marks the token used through the workflow.
"""

from __future__ import annotations

import hashlib
import secrets

from esign.provider import Envelope


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LocalSigningProvider:
    name = "local"

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
