"""Pages of a long report: `limit` items, and `next`, an opaque cursor (URL-safe base64 of
a JSON array of strings: where the last item stands in the report's order) that the next
request passes back as `after`. The practice audit and the scorecards page this way."""

from __future__ import annotations

import base64
import binascii
import json

from api.errors import ApiError, invalid


def write_cursor(*place: str) -> str:
    """The `next` of a page whose last item stands at `place` in the report's order."""
    return base64.urlsafe_b64encode(json.dumps(list(place)).encode()).decode()


def read_cursor(text: str, size: int) -> list[str]:
    """The place `write_cursor` wrote (`size` strings); a 422 naming `query.after` for
    anything it did not write."""
    try:
        place = json.loads(base64.urlsafe_b64decode(text.encode()))
    except (binascii.Error, UnicodeError, ValueError):
        place = None
    if not isinstance(place, list) or len(place) != size or not all(isinstance(p, str) for p in place):
        raise _unreadable()
    return place


def _unreadable() -> ApiError:
    return invalid("'after' is not the 'next' of a page of this report", field="query.after")
