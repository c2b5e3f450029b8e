"""Rate limits: how many requests one caller may make to one API process.

A caller is its API key (the key's id, whatever route it calls) or, without a live key,
its client address. Each has its own counters for `NEEDFLOW_RATE_LIMIT` (per key) or
`NEEDFLOW_RATE_LIMIT_ANONYMOUS` (per address), in the `limits` package's notation
(`6000/minute`, `100/second;6000/minute`: every part must hold). A request over a limit
answers 429 `rate_limited` in the API's error shape with `Retry-After` (whole seconds),
before any route, so it changes nothing and stores no Idempotency-Key answer.

Why `limits`: its strategies and storages are the ones Flask-Limiter and SlowAPI are
built on, kept and tested there; needflow adds only who a caller is and the answer.
The sliding window counter keeps two counters a caller (constant memory, however high
the limit), and, unlike a fixed window, never lets a caller spend a whole window's
allowance at the end of one window and again at the start of the next.

The counters live in this process's memory (`limits`' async memory storage): N API
processes behind a load balancer let a caller make up to N times the limit. That is the
price of no shared store on every request; a bank that wants one limit across processes
puts it in its gateway (or points `limits` at Redis, which it supports).
"""

from __future__ import annotations

import math
import time

from fastapi.responses import JSONResponse
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from api.errors import ApiError


def rate_limited(retry_after: int, limit: RateLimitItem, whose: str) -> JSONResponse:
    """The 429 answer, in the API's error shape, with Retry-After."""
    response = ApiError(
        429,
        "rate_limited",
        f"too many requests from this {whose}: at most {limit}; retry after {retry_after} s",
        {"limit": str(limit), "retry_after_seconds": retry_after},
    ).response()
    response.headers["Retry-After"] = str(retry_after)
    return response


class RateLimits:
    """The two limits of one process and their counters."""

    def __init__(self, per_key: str | None, anonymous: str | None) -> None:
        self.per_key = parse_many(per_key) if per_key else []
        self.anonymous = parse_many(anonymous) if anonymous else []
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())

    @classmethod
    def from_settings(cls, settings: object) -> RateLimits:
        """`rate_limit` and `rate_limit_anonymous` of the settings (config.py); none without."""
        return cls(getattr(settings, "rate_limit", None), getattr(settings, "rate_limit_anonymous", None))

    async def refusal(self, key_id: str | None, address: str) -> JSONResponse | None:
        """Count this request against its caller and None; or, when it is over a limit,
        the 429 to answer (and the request is not counted)."""
        items, kind, who = (self.per_key, "key", key_id) if key_id is not None else (self.anonymous, "address", address)
        # Every part first, then count: a refused request uses up none of them.
        over = [item for item in items if not await self._limiter.test(item, kind, who)]
        if not over:
            over = [item for item in items if not await self._limiter.hit(item, kind, who)]  # a race lost: rare
        if not over:
            return None
        waits = []
        for item in over:
            stats = await self._limiter.get_window_stats(item, kind, who)
            waits.append((max(1, math.ceil(stats.reset_time - time.time())), item))
        retry_after, item = max(waits, key=lambda wait: wait[0])
        return rate_limited(retry_after, item, "API key" if kind == "key" else "client address")
