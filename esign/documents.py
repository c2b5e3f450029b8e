"""Documents sent for signature, rendered from per-product templates (HTML).

The rendered bytes are what the customer sees and signs; their SHA-256 goes into the
consent, so a document can later be proved unchanged.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from pydantic import BaseModel

TEMPLATES = Path(__file__).parent / "templates"

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
)


class DocumentContext(BaseModel):
    opportunity_id: str
    product: str
    customer_name: str
    customer_city: str | None = None
    customer_state: str | None = None
    amount: Decimal | None = None
    owner_name: str
    need_description: str
    issued_at: datetime


def render_document(template: str, ctx: DocumentContext) -> str:
    return _env.get_template(f"{template}.html").render(doc=ctx)


def sha256_hex(document: str) -> str:
    return hashlib.sha256(document.encode("utf-8")).hexdigest()
