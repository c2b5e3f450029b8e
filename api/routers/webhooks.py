"""POST /v1/webhooks/docusign: DocuSign Connect tells needflow an envelope changed.

No API key: the message is authenticated by its HMAC instead. `X-DocuSign-Signature-N`
is verified against every configured secret (DOCUSIGN_CONNECT_HMAC_SECRETS) over the raw
body before anything is parsed; a message that does not verify is 401 and does nothing.

A verified message is only a prompt: the opportunity's workflow is signalled to look at
the envelope through DocuSign's envelope API now, and that look decides (a completed
envelope's documents are downloaded and hashed first). So a duplicate, a retry or a
message that arrives out of order is harmless, and the answer is 200 at once — DocuSign
retries a message it got no 200 for. A message about an envelope needflow did not send
is acknowledged and ignored.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from temporalio.service import RPCError

from api.deps import ServicesDep
from api.errors import ApiError
from domain.ids import opportunity_workflow_id
from esign.connect import ConnectMessageError, parse_message, verify_signature
from store.models import SignatureRequest
from workflows.opportunity import OpportunityWorkflow

router = APIRouter(tags=["webhooks"])
log = logging.getLogger("needflow.webhooks")


@router.post("/v1/webhooks/docusign", response_class=JSONResponse)
async def docusign_connect(request: Request, svc: ServicesDep) -> JSONResponse:
    settings = svc.settings.docusign
    body = await request.body()
    if not verify_signature(body, request.headers, settings.connect_hmac_secrets if settings else []):
        raise ApiError(401, "unauthenticated", "the message's X-DocuSign-Signature does not verify")
    try:
        event = parse_message(body)
    except ConnectMessageError as exc:
        raise ApiError(400, "validation_error", f"not a DocuSign Connect message: {exc}") from None
    async with svc.sessions() as session:
        opportunity_id = await session.scalar(
            select(SignatureRequest.opportunity_id).where(SignatureRequest.envelope_id == event.envelope_id)
        )
    if opportunity_id is None:
        log.info("Connect message about an envelope needflow did not send: %s", event.envelope_id)
        return JSONResponse({"received": True, "envelope_id": event.envelope_id})
    handle = svc.client.get_workflow_handle(opportunity_workflow_id(opportunity_id))
    try:
        await handle.signal(OpportunityWorkflow.envelope_changed, event.envelope_id)
    except RPCError as exc:  # the workflow is closed: nothing left to decide
        log.info("Connect message for closed opportunity %s: %s", opportunity_id, exc.message)
    return JSONResponse({"received": True, "envelope_id": event.envelope_id})
