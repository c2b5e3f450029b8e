"""The local signing page (no DocuSign account configured): GET and POST /sign/{token}.

The token is single-use: once the workflow has taken a signature or a decline for the
envelope, the link answers 409. The consent records the document's SHA-256, the typed
name, the time and the client's address.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from api.deps import Services, ServicesDep
from api.errors import ApiError
from api.workflows import update_opportunity
from domain.opportunity import OpportunityState, SignatureOutcome
from esign.local import token_sha256
from store.models import SignatureRequest
from workflows.opportunity import OpportunityWorkflow

router = APIRouter(tags=["signing"], include_in_schema=True)
templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")


def _page(request: Request, status: int, title: str, **ctx: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, "sign.html", {"title": title, **ctx}, status_code=status)


async def _envelope(svc: Services, token: str) -> SignatureRequest | None:
    async with svc.sessions() as session:
        return await session.scalar(
            select(SignatureRequest).where(
                SignatureRequest.token_sha256 == token_sha256(token), SignatureRequest.provider == "local"
            )
        )


def _closed(request: Request, sig: SignatureRequest) -> HTMLResponse:
    return _page(
        request,
        409,
        "This signing link is no longer valid",
        message=f"This document was already {sig.status}. Ask your adviser if you need a new link.",
        error=True,
    )


@router.get("/sign/{token}", response_class=HTMLResponse)
async def show(token: str, request: Request, svc: ServicesDep):
    sig = await _envelope(svc, token)
    if sig is None:
        return _page(request, 404, "Unknown signing link", message="This link is not valid.", error=True)
    if sig.status != "sent":
        return _closed(request, sig)
    return _page(request, 200, sig.subject, document=sig.document_html, sha256=sig.document_sha256, show_form=True)


@router.post("/sign/{token}", response_class=HTMLResponse)
async def sign(
    token: str,
    request: Request,
    svc: ServicesDep,
    full_name: Annotated[str, Form(max_length=200)] = "",
    agree: Annotated[str, Form()] = "",
    action: Annotated[str, Form()] = "sign",
):
    sig = await _envelope(svc, token)
    if sig is None:
        return _page(request, 404, "Unknown signing link", message="This link is not valid.", error=True)
    if sig.status != "sent":
        return _closed(request, sig)
    now = datetime.now(UTC)
    client = request.client.host if request.client else None
    if action == "decline":
        outcome = SignatureOutcome(
            envelope_id=sig.envelope_id,
            status="declined",
            reason="declined by the customer",
            client_address=client,
            at=now,
        )
    else:
        if not full_name.strip() or agree != "yes":
            return _page(
                request,
                422,
                sig.subject,
                document=sig.document_html,
                sha256=sig.document_sha256,
                show_form=True,
                full_name=full_name,
                error=True,
                message="To sign, type your full name and tick the box to say you agree.",
            )
        outcome = SignatureOutcome(
            envelope_id=sig.envelope_id,
            status="completed",
            signer_name=full_name.strip(),
            document_sha256=sig.document_sha256,
            client_address=client,
            at=now,
        )
    try:
        # A fresh update id per POST: a second use of the token is refused by the
        # workflow's validator rather than answered from the first one's result.
        await update_opportunity(
            svc,
            sig.opportunity_id,
            OpportunityWorkflow.signature_outcome,
            outcome,
            update_id=None,
            result_type=OpportunityState,
        )
    except ApiError as exc:
        if exc.status != 409:
            raise
        return _page(request, 409, "This signing link is no longer valid", message=exc.message, error=True)
    if outcome.status == "declined":
        return _page(request, 200, "You declined to sign", message="Your adviser has been told.")
    return _page(
        request,
        200,
        "Signed — thank you",
        message=f"Signed by {outcome.signer_name} at {now:%Y-%m-%d %H:%M} UTC. You can close this page.",
    )
