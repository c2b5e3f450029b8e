"""Resource ids: a prefix and a random UUID, or one derived from the Idempotency-Key."""

from __future__ import annotations

import uuid

from api.deps import Principal
from api.idempotency import derived_id


def new_id(prefix: str, principal: Principal | None = None, key: str | None = None) -> str:
    if principal is not None and key:
        return derived_id(principal, key, f"{prefix}_")
    return f"{prefix}_{uuid.uuid4().hex}"
