"""The local signing page (no DocuSign account configured): GET and POST /sign/{token}.

The link reached the customer by e-mail only (the token's SHA-256 is all the store
keeps). It works once, until it expires (NEEDFLOW_SIGNING_LINK_TTL), and dies when the
opportunity closes or a new request replaces it: a dead link answers 410 with a page
that says so. An expired link found here is reported to the workflow (the owner is
told). Every page is sent with `Cache-Control: no-store`, `Referrer-Policy:
no-referrer`, a strict CSP and frame denial, and shows the customer only the document
she is asked to sign. The consent records the document's SHA-256, the typed name, the
time and the client's address.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from api.deps import Services, ServicesDep
from api.errors import ERROR_RESPONSES, ApiError
from api.workflows import NotAnswered, update_opportunity
from domain.opportunity import OpportunityAnswer, SignatureOutcome
from domain.validation import character_problem
from esign.local import token_sha256
from store.models import SignatureRequest
from workflows.opportunity import OpportunityWorkflow

#: What every signing page is sent with: nothing cached or framed, no referrer leaking
#: the link to another site, no script at all (the page needs none).
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


class RedactSigningLinks(logging.Filter):
    """Keeps signing tokens out of the access log (uvicorn logs every request's path):
    `/sign/<token>` is logged as `/sign/…`."""

    _TOKEN = re.compile(r"(/sign/)[^/?\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._TOKEN.sub(r"\1…", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self._TOKEN.sub(r"\1…", record.msg)
        return True


def redact_signing_links_in_logs() -> None:
    """Install the filter on uvicorn's access log, once per process."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSigningLinks) for f in access.filters):
        access.addFilter(RedactSigningLinks())


_PAGE = {"text/html": {"schema": {"type": "string"}}}
#: The API's error shape, named as a JSON answer: on these HTML routes FastAPI would file
#: a `model` under text/html.
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
#: What else the pages answer, declared so that /openapi.json says so (schemathesis found
#: a 404 page and a JSON 422 the document did not list): pages for a browser, and the
#: API's error shape for what is refused before a page is made (api/limits.py,
#: api/access.py, a form field FastAPI refuses).
PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "An unknown signing link: a page saying so", "content": _PAGE},
    410: {"description": "An expired, used or withdrawn link: a page saying so", "content": _PAGE},
    413: {"description": ERROR_RESPONSES[413]["description"], "content": _ERROR},
    422: {
        "description": "The form again, saying what is missing (a page); or a path or form field refused "
        "before it (`validation_error`)",
        "content": {**_PAGE, **_ERROR},
    },
    429: {
        "description": ERROR_RESPONSES[429]["description"],
        "headers": ERROR_RESPONSES[429]["headers"],
        "content": _ERROR,
    },
    500: {"description": ERROR_RESPONSES[500]["description"], "content": _ERROR},
    503: {
        "description": "The opportunity's workflow did not answer in time: a page saying to come back",
        "headers": ERROR_RESPONSES[503]["headers"],
        "content": _PAGE,
    },
}
router = APIRouter(tags=["signing"], include_in_schema=True, responses=PAGE_RESPONSES)
templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")


def _page(request: Request, status: int, title: str, **ctx: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "sign.html", {"title": title, **ctx}, status_code=status, headers=SECURITY_HEADERS
    )


async def _envelope(svc: Services, token: str) -> SignatureRequest | None:
    async with svc.sessions() as session:
        return await session.scalar(
            select(SignatureRequest).where(
                SignatureRequest.token_sha256 == token_sha256(token), SignatureRequest.provider == "local"
            )
        )


def _gone(request: Request, message: str) -> HTMLResponse:
    return _page(request, 410, "This signing link is no longer valid", message=message, error=True)


def _not_answered(request: Request, exc: NotAnswered, message: str) -> HTMLResponse:
    """The opportunity's workflow did not answer in time (api/workflows.py): a page that
    says to come back, with the 503's Retry-After, rather than the API's JSON."""
    page = _page(request, 503, "Please try again in a minute", message=message, error=True)
    page.headers["Retry-After"] = str(exc.retry_after)
    return page


async def _refused(request: Request, svc: Services, token: str) -> HTMLResponse:
    """The workflow refused her answer. When the store still says the request is out
    (`sent`), the workflow has not caught up with it yet: the activity that sent it
    commits before the workflow hears of it, and after a worker dies that takes seconds
    (the fault tests saw up to 33 s). So she is asked to come back, not told the link is
    dead; once the store says otherwise, the page says why."""
    sig = await _envelope(svc, token)
    if sig is not None and sig.status != "sent":
        return _dead(request, sig)
    page = _page(
        request,
        503,
        "Please try again in a minute",
        message="We could not record your answer just now. Open this link again in a minute and answer again.",
        error=True,
    )
    page.headers["Retry-After"] = str(svc.settings.update_retry_after)
    return page


def _dead(request: Request, sig: SignatureRequest) -> HTMLResponse:
    what = {
        "completed": "These documents have been signed already.",
        "declined": "You declined these documents.",
        "voided": "These documents were withdrawn by the bank.",
        "expired": "This link has expired.",
    }.get(sig.status, "This link no longer works.")
    return _gone(request, f"{what} Ask your adviser if you need a new link.")


def _expires_at(svc: Services, sig: SignatureRequest) -> datetime:
    """When the link stops working (a link issued before links expired: its age counts)."""
    at = sig.expires_at or sig.created_at + timedelta(seconds=svc.settings.signing_link_ttl)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


async def _usable(request: Request, svc: ServicesDep, token: str) -> SignatureRequest | HTMLResponse:
    """The envelope this link may still sign, or the page to answer with instead. An
    expired link is reported to the workflow, once (the update id is the envelope's), so
    the owner is told and the request can be resent."""
    sig = await _envelope(svc, token)
    if sig is None:
        return _page(request, 404, "Unknown signing link", message="This link is not valid.", error=True)
    if sig.status != "sent":
        return _dead(request, sig)
    if datetime.now(UTC) >= _expires_at(svc, sig):
        outcome = SignatureOutcome(
            envelope_id=sig.envelope_id, status="expired", reason="the signing link expired", at=datetime.now(UTC)
        )
        try:
            await update_opportunity(
                svc,
                sig.opportunity_id,
                OpportunityWorkflow.signature_outcome,
                outcome,
                update_id=f"expire:{sig.envelope_id}",
                result_type=OpportunityAnswer,
            )
        except NotAnswered as exc:
            return _not_answered(request, exc, "We could not check this link just now.")
        except ApiError as exc:
            if exc.status != 409:  # 409: the workflow already closed it some other way
                raise
        return _gone(request, "This link has expired. Ask your adviser for a new one.")
    return sig


@router.get("/sign/{token}", response_class=HTMLResponse)
async def show(token: str, request: Request, svc: ServicesDep):
    sig = await _usable(request, svc, token)
    if isinstance(sig, HTMLResponse):
        return sig
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
    sig = await _usable(request, svc, token)
    if isinstance(sig, HTMLResponse):
        return sig
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
        # The name goes into the consent's evidence: one line, no control characters
        # (domain/validation.py, the API's rule for every name).
        unusable = character_problem(full_name) is not None
        if not full_name.strip() or agree != "yes" or unusable:
            return _page(
                request,
                422,
                sig.subject,
                document=sig.document_html,
                sha256=sig.document_sha256,
                show_form=True,
                full_name="" if unusable else full_name,
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
            result_type=OpportunityAnswer,
        )
    except NotAnswered as exc:
        return _not_answered(
            request,
            exc,
            "We could not confirm your answer yet. Open this link again in a minute: it will say "
            "whether it was recorded, and if it was not, you can answer again.",
        )
    except ApiError as exc:
        if exc.status != 409:
            raise
        return await _refused(request, svc, token)
    if outcome.status == "declined":
        return _page(request, 200, "You declined to sign", message="Your adviser has been told.")
    return _page(
        request,
        200,
        "Signed — thank you",
        message=f"Signed by {outcome.signer_name} at {now:%Y-%m-%d %H:%M} UTC. You can close this page.",
    )
